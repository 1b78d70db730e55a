"""The experiment runner: a config (and, if you like, your own model, data and loss) in, a run
folder with everything about the run out.

:func:`run` (the Flax example's ``train_and_evaluate(config, workdir)``, with the work folder
made for it) trains as :class:`jaxcnn.config.Config` describes, with the one training loop of
:class:`jaxcnn.loop.Loop`; :func:`resume` continues a run from its folder. ``model=``,
``data=`` and ``loss_fn=`` replace the config's model, dataset and loss, each given as the
object itself or as a function of the config (as an experiment script's ``get_model``,
``get_data`` and ``get_loss``); the number of classes and the input shape come from the data.

Each run gets its own folder (:mod:`jaxcnn.runs`) holding ``config.json``, ``summary.txt``,
``run.json`` (status, epochs, the final and best-validation-epoch metrics, wall time, the
normalisation, the class names, the input shape, the devices and processes; ``status``
"failed" with the ``error`` when a run crashes), ``checkpoints/`` (one per epoch, the newest
``keep_checkpoints`` and the best by validation metric kept), the TensorBoard event files (the
tags of :mod:`jaxcnn.train`, the texts ``config`` and ``model_summary``, and hparams: the keys
that define the run with its final metrics, once it completes), and a copy of the script its
model, data or loss came from. Bad input (a model that does not fit the data, data that fail
their checks, an impossible validation split) is refused before the folder is made.

Resuming restores the exact state, history and data order, and opens the event writer with
``purge_step`` so the curves continue with no step twice: the result equals an uninterrupted
run with the same seed, bit for bit. A run killed before its first checkpoint starts over in
its folder. Resuming a run whose model, data or loss came from a script imports the run
folder's copy of that script, after checking its sha256: like loading a pickle, it runs that
code. SIGINT or SIGTERM lets the running steps finish (at most two calls of
``steps_per_call`` steps), saves a checkpoint in the middle of the epoch, flushes the events
and raises :class:`RunInterrupted` naming the resume command; a second signal stops at once.

``data_parallel`` trains over a :class:`jax.sharding.Mesh` of every device (batches split by
rows, state replicated); ``distributed`` first joins a multi-process run
(:func:`jaxcnn.distributed.initialize`): process 0 makes the run folder, broadcasts its path and
alone writes the folder's files, while every process computes alike.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jax
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import components, cpu, distributed, registry, runs, scripts, steps, train
from jaxcnn import config as config_lib
from jaxcnn import data as data_lib
from jaxcnn.components import Components, DataSpec, LossSpec, ModelSpec
from jaxcnn.config import Config, FiltersConfig
from jaxcnn.errors import CheckpointError, ConfigError, NonFiniteLossError, RunError
from jaxcnn.files import atomic_write
from jaxcnn.runs import RunResult
from jaxcnn.signals import StopSignals
from jaxcnn.summarize import summary
from jaxcnn.tracking import MetricWriter, MultiWriter, TensorBoardWriter

model_summary = components.model_summary

__all__ = ["RunInterrupted", "RunResult", "load_run_config", "model_summary", "resume", "run",
           "setup_compilation_cache"]



class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after a checkpoint; ``exit_code`` is 130 or 143 and
    ``resume_command`` the command that continues it."""

    def __init__(self, message: str, *, exit_code: int, run_dir: Path, resume_command: str):
        super().__init__(message)
        self.exit_code, self.run_dir, self.resume_command = exit_code, run_dir, resume_command


def setup_compilation_cache(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``cache_dir`` (default
    ``<jaxcnn cache>/jax``; see :func:`jaxcnn.data.default_cache_dir`), caching every compile,
    even fast CPU ones. A cache folder already configured (by the user or an earlier run) is left
    as it is; returns the folder in use, or None if it cannot be created."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = Path(cache_dir) if cache_dir is not None else data_lib.default_cache_dir() / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


# ----------------------------------------------------------------------------------------------
# Processes and devices


def _join_processes(config: Config) -> None:
    """Join the multi-process run of a ``distributed`` config, before anything starts JAX's
    backend (once per process; a process that already joined is left as it is)."""
    if not config.distributed or jax.distributed.is_initialized():
        return
    try:
        distributed.initialize()
    except (RuntimeError, ValueError) as e:
        raise RunError(
            f"--distributed: this process could not join the multi-process run ({e}); start "
            f"every process with the same command and set {distributed.ENV_COORDINATOR}=host:port "
            f"(process 0's address), {distributed.ENV_NUM_PROCESSES} and "
            f"{distributed.ENV_PROCESS_ID} (or run under SLURM, Open MPI or on Cloud TPU), or "
            f"pass --no-distributed for a single process") from None


def _data_parallel_mesh(config: Config) -> jax.sharding.Mesh | None:
    """The 1-D mesh over every device (of every process) that ``data_parallel`` and
    ``distributed`` train on, or None; ConfigError if the batch does not split evenly."""
    if not (config.data_parallel or config.distributed):
        return None
    mesh = train.data_parallel_mesh()
    devices = mesh.devices.size
    if config.batch_size % devices:
        raise ConfigError(f"Config: batch_size={config.batch_size} does not split evenly over "
                          f"the {devices} devices of data-parallel training; pass a --batch-size "
                          f"that is a multiple of {devices}")
    return mesh


def _start_backend(config: Config) -> None:
    """Before anything compiles or starts JAX's backend: the compilation cache (JAX checks for
    it once), the multi-process run, and malloc keeping what it frees (:mod:`jaxcnn.cpu.memory`)
    where the CPU mechanisms are on (:func:`jaxcnn.cpu.enabled`), before the data are read."""
    setup_compilation_cache()
    _join_processes(config)
    if cpu.enabled():
        cpu.keep_freed_memory()


def _is_main(config: Config) -> bool:
    # Only process 0 of a distributed run writes the run folder, events and checkpoints.
    return not config.distributed or distributed.is_main_process()


def _new_run_dir(config: Config) -> Path:
    """A new run folder, made by process 0 alone in a distributed run and its path sent to the
    others (a collective: every process calls this)."""
    if not config.distributed:
        return runs.make_run_dir(config.runs_dir, config.experiment)
    from jax.experimental import multihost_utils

    made, error = b"", None
    if distributed.is_main_process():
        try:
            made = os.fsencode(runs.make_run_dir(config.runs_dir, config.experiment))
        except RunError as e:  # the others still wait for the path: send them an empty one
            error = e
    if len(made) > 4096:  # PATH_MAX: the buffer has the same shape in every process
        made, error = b"", RunError(f"the run folder's path is over 4096 bytes: {made!r}")
    buffer = np.zeros(4096, np.uint8)
    buffer[:len(made)] = np.frombuffer(made, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes().rstrip(b"\0")
    if error is not None:
        raise error
    if not shared:
        raise RunError("process 0 could not create the run folder (see its error); fix "
                       "--runs-dir and start every process again")
    return Path(os.fsdecode(shared))


def _process_age() -> float | None:
    """Seconds since this process started, from Linux's /proc (10 ms resolution); else None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, since boot
        return round(float(Path("/proc/uptime").read_text().split()[0]) - started, 3)
    except (OSError, ValueError, IndexError):
        return None


def _hparams(config: Config, sources: dict[str, str]) -> dict[str, Any]:
    """The keys that define the run (no housekeeping), user code by its source and, where the
    config set it, the value it replaced (``own_images.py:get_data (data/images)``)."""
    d = {k: v for k, v in config_lib.to_dict(config).items()
         if k != "_class" and k not in config_lib.HOUSEKEEPING_KEYS}
    defaults = config_lib.to_dict(type(config)())
    d.update({k: v if d[k] == defaults[k] else f"{v} ({d[k]})" for k, v in sources.items()})
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# Running


def _status(loop: train.Loop, config: Config, run_dir: Path, status: str,
            **extra: Any) -> None:
    """Write run.json's ``status`` and progress (with ``extra`` values), on process 0."""
    if not _is_main(config):
        return
    best = loop.history[loop.best["epoch"] - 1] if loop.best else None
    # A resumed run that goes on sheds the error of the crash it resumed from.
    runs.write_status(run_dir, drop=() if status == "failed" else ("error",), status=status,
                      epochs_done=loop.epoch, epochs=config.epochs, step=loop.step,
                      final=loop.history[-1] if loop.history else {}, best=best,
                      wall_time_s=loop.wall_time(), **extra)


def _interrupted(loop: train.Loop, config: Config, run_dir: Path, exit_code: int) -> NoReturn:
    """Mark the run interrupted (its checkpoint is saved), flush its events and raise
    RunInterrupted naming where it stopped and the resume command."""
    where = (f"at step {loop.step}, {loop.epoch_step} of {loop.steps_per_epoch} steps into "
             f"epoch {loop.epoch + 1} of {config.epochs}" if loop.epoch_step else
             f"after epoch {loop.epoch} of {config.epochs}")
    _status(loop, config, run_dir, "interrupted")
    loop.writer.flush()
    cmd = runs.resume_command(run_dir)
    raise RunInterrupted(f"run {run_dir} stopped {where} (checkpoint saved); continue it "
                         f"with: {cmd}", exit_code=exit_code, run_dir=run_dir,
                         resume_command=cmd)


def _train(config: Config, run_dir: Path, parts: Components, *, resume_from: Path | None,
           stop_after_epochs: int | None, extra_writers: Sequence[MetricWriter],
           progress: bool | None, resume_note: str | None = None,
           t_start: float | None = None, save_config: dict[str, str] | None = None
           ) -> RunResult:
    main = _is_main(config)
    status = runs.read_status(run_dir) if main else {}
    mesh = _data_parallel_mesh(config)
    # Signals are caught from here on: one during set-up stops the run after its first call.
    with StopSignals() as signals:
        steps_per_epoch = len(parts.train.labels) // config.batch_size
        rule = None
        if config.early_stopping_patience:  # Config refuses it without a validation split
            labels = np.asarray(parts.val.labels)
            kind = train.target_kind(labels, (1, labels.shape[-1] if labels.ndim == 2 else 2))
            metric = "val_accuracy" if kind else "val_loss"
            rule = train.EarlyStopping(metric, "max" if metric == "val_accuracy" else "min",
                                       config.early_stopping_patience)
        loop = train.Loop(
            parts.model, registry.build_optimizer(config, steps_per_epoch), parts.train,
            epochs=config.epochs, batch_size=config.batch_size, loss_fn=parts.loss_fn,
            seed=config.seed, val=parts.val, test=parts.test,
            checkpoint_dir=run_dir / runs.CHECKPOINTS, keep_checkpoints=config.keep_checkpoints,
            metadata={"config": config_lib.to_dict(config)}, early_stopping=rule,
            loss_tolerance=config.loss_tolerance or None, log_every=config.log_every,
            on_nonfinite=config.on_nonfinite, driver=config.driver,
            steps_per_call=config.steps_per_call, mesh=mesh, main=main,
            num_feature_samples=config.num_feature_samples, show_images=parts.test_raw,
            class_names=parts.class_names, progress=progress, verbose=True,
            name=config.experiment, restore_from=resume_from, augment=parts.augment,
            on_save=lambda lp: _status(lp, config, run_dir, "running"))
        # The events only once the checkpoint was restored: a refused one writes nothing.
        if main:
            tb = TensorBoardWriter(run_dir, purge_step=None if resume_from is None
                                   else loop.step + 1)
            writer: MetricWriter = MultiWriter([tb, *extra_writers]) if extra_writers else tb
        else:  # the other processes compute the same and write nothing
            writer = MultiWriter([])
        loop.writer = writer
        if t_start is not None:
            loop.t_start = t_start
        stop = signals.agreed if config.distributed else signals.heard
        if save_config is not None and main:  # only once the checkpoint was restored: a
            runs.save_config(run_dir, config, save_config)  # refused one changes nothing
        try:
            if resume_from is None:
                table = (run_dir / runs.SUMMARY_FILE).read_text() if main else ""
                writer.write_texts(0, {
                    "config": runs.code_block(config_lib.to_json(config)),
                    "model_summary": runs.code_block(table)})
                if parts.augment is not None:
                    writer.write_images(0, {"augment/examples": _augmented(parts, config)})
            elif resume_note:
                writer.write_texts(loop.step + 1, {"resume": resume_note})
            if loop.epoch < config.epochs:
                if main:
                    print(f"run {run_dir}: epochs {loop.epoch + 1} to {config.epochs} of "
                          f"{config.experiment} ({components.describe(config, parts.sources)})",
                          flush=True)
                loop.compile()
                if main:
                    runs.write_status(run_dir, first_step_time=time.time(),
                                      time_to_first_step_s=_process_age())
            outcome = loop.run(stop=stop, max_epochs=stop_after_epochs)
            if outcome == "stopped":
                _interrupted(loop, config, run_dir, signals.exit_code)
            completed = outcome in ("completed", "early_stopped")
            # A run killed after its last checkpoint but before "completed" may still owe its
            # hparams; one that wrote them (run.json says at which step) does not, and one
            # killed while writing them (run.json says it began) is asked of its events.
            owed = status.get("hparams_step") != loop.step and not (
                status.get("hparams_pending") == loop.step and runs.hparams_written(run_dir))
            if completed and (loop.epochs_run or owed):
                if main:
                    runs.write_status(run_dir, hparams_pending=loop.step)
                writer.write_hparams(_hparams(config, parts.sources), loop.final_metrics(),
                                     step=loop.step, write_metrics=False)
                writer.flush()  # on disk before the status says so
            if completed and main and status.get("hparams_step") != loop.step:
                runs.write_status(run_dir, hparams_step=loop.step)
            _status(loop, config, run_dir, "completed" if completed else "stopped")
        except NonFiniteLossError as e:
            _status(loop, config, run_dir, "failed", error=f"NonFiniteLossError: {e}"[:2000])
            last = ckpt.latest(run_dir / runs.CHECKPOINTS)
            hint = (f"resume from it with a smaller --lr: {runs.resume_command(run_dir)} "
                    f"--lr <smaller> --force" if last else "no checkpoint was written yet")
            raise NonFiniteLossError(f"{e} (run {run_dir}: {hint})") from None
        except Exception as e:  # a crash: the checkpoints stay, run.json says what happened
            _status(loop, config, run_dir, "failed", error=f"{type(e).__name__}: {e}"[:2000])
            raise
        finally:
            loop.close()
    final = dict(loop.history[-1]) if loop.history else {}
    final["wall_time_s"] = loop.wall_time()
    best = loop.history[loop.best["epoch"] - 1] if loop.best else None
    return RunResult(run_dir, config, final, best, list(loop.history), completed)


def _augmented(parts: Components, config: Config) -> np.ndarray:
    """What the network sees: the first 16 training images as loaded, augmented once (with a
    key of the run's seed), each scaled to [0, 1] for TensorBoard."""
    from jaxcnn.epoch_images import unit_range

    n = min(16, len(parts.train.labels))
    images = parts.train_raw[:n] if parts.train_raw is not None else parts.train.images[:n]
    out, _ = parts.augment(jax.random.key(config.seed), np.asarray(images, np.float32),
                           np.asarray(parts.train.labels[:n]))
    return np.clip(unit_range(np.asarray(out)), 0.0, 1.0)


def run(config: Config | FiltersConfig, *, model: ModelSpec = None, data: DataSpec = None,
        loss_fn: LossSpec = None, stop_after_epochs: int | None = None,
        extra_writers: Sequence[MetricWriter] = (), progress: bool | None = None) -> RunResult:
    """Run ``config`` in a new folder under ``config.runs_dir`` and return its result.

    ``model`` (a :class:`jaxcnn.layers.Layer`, or ``get_model(config) -> Layer``), ``data``
    (a :class:`jaxcnn.data.Splits`, or ``get_data(config) -> Splits``) and ``loss_fn`` (a
    ``loss(logits, labels[, mask=None])``, or ``get_loss(config) -> loss``: a function of one
    argument) replace ``config.model``, ``config.dataset`` and ``config.loss``; the run folder
    records where they came from, and keeps a copy of the script that defines them.
    ``stop_after_epochs`` stops cleanly (checkpoint saved, ``completed=False``) after that many
    epochs, to be continued by :func:`resume`; ``extra_writers`` also receive every metric
    (e.g. a :class:`jaxcnn.tracking.MemoryWriter`); ``progress`` forces the tqdm bar on or off
    (default: on where stderr is a terminal or in Jupyter, else one plain line per epoch).

    Raises NonFiniteLossError (NaN/Inf loss with ``on_nonfinite="stop"``), RunInterrupted
    (SIGINT/SIGTERM, after a checkpoint), ConfigError, DataError, LayerError, RunError.
    """
    if isinstance(config, FiltersConfig):
        from jaxcnn import filters_demo

        return filters_demo.run_filters(config)
    if not isinstance(config, Config):
        raise ConfigError(f"run: config must be a jaxcnn.config.Config or FiltersConfig, got "
                          f"{type(config).__name__}")
    t_start = time.perf_counter()
    _start_backend(config)
    # Refused before a folder exists: a batch that does not split over the devices, a model
    # that does not fit the dataset's images, data that fails its checks, a bad split.
    if scripts.importing() is not None:
        raise RunError(f"experiment.run was called while {scripts.importing()} was being "
                       f"imported to rebuild a run's model, data or loss: its top-level code "
                       f"starts a run; put that under if __name__ == \"__main__\":")
    if config.dataset not in data_lib.DATASETS and Path(config.dataset).is_dir():
        # a folder: kept absolute, so the run resumes from any folder
        config = config_lib.override(config, {"dataset": str(Path(config.dataset).resolve())})
    mesh = _data_parallel_mesh(config)
    parts = components.build(config, model, data, loss_fn)
    if mesh is not None and not steps.takes_mask(parts.loss_fn):
        raise ConfigError("data-parallel evaluation pads its batches with masked rows, but the "
                          "loss takes no mask keyword; give it one, mask=None, that averages "
                          "over the rows where mask is 1")
    table = str(summary(parts.model, (None, *parts.train.images.shape[1:])))
    run_dir = _new_run_dir(config)
    if _is_main(config):
        script = scripts.copy_script(parts.script, run_dir) if parts.script else None
        atomic_write(run_dir / runs.SUMMARY_FILE,
                     f"{components.describe(config, parts.sources)}\n{table}\n")
        runs.write_status(run_dir, experiment=config.experiment, run=run_dir.name,
                          start_time=datetime.now().isoformat(timespec="seconds"),
                          status="starting", epochs_done=0, epochs=config.epochs,
                          devices=1 if mesh is None else int(mesh.devices.size),
                          processes=jax.process_count(), script=script,
                          normalization=parts.normalization, class_names=parts.class_names,
                          input_shape=list(parts.train.images.shape[1:]))
        runs.save_config(run_dir, config, parts.sources)  # last: it makes this a run folder
    try:
        return _train(config, run_dir, parts, resume_from=None,
                      stop_after_epochs=stop_after_epochs, extra_writers=extra_writers,
                      progress=progress, t_start=t_start)
    except Exception as e:
        if _is_main(config) and runs.read_status(run_dir).get("status") == "starting":
            runs.write_status(run_dir, status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        raise


def load_run_config(run_dir: str | os.PathLike[str]) -> Any:
    """The config saved in run folder ``run_dir``; RunError if it is not a run folder."""
    return runs.load_config(run_dir)[0]


def _start_over(folder: Path) -> None:
    """Clear what a run killed before its first checkpoint left: its event files and any
    incomplete checkpoint."""
    for events in folder.glob("events.out.tfevents.*"):
        events.unlink()
    for leftover in (folder / runs.CHECKPOINTS).glob("*") if (folder / runs.CHECKPOINTS
                                                             ).is_dir() else ():
        if leftover.is_file():
            leftover.unlink()


def resume(run_dir: str | os.PathLike[str], *, model: ModelSpec = None, data: DataSpec = None,
           loss_fn: LossSpec = None, overrides: dict[str, Any] | None = None,
           force: bool = False, stop_after_epochs: int | None = None,
           extra_writers: Sequence[MetricWriter] = (), progress: bool | None = None
           ) -> RunResult:
    """Continue the run in ``run_dir`` from its latest complete checkpoint; a run with none
    yet starts over in the same folder.

    A run whose model, data or loss came from a script rebuilds them from the run folder's
    copy of the script (refused if its sha256 changed: importing it runs its code); one given
    objects from Python must be given them again (``model=``, ``data=``, ``loss_fn=``, as for
    :func:`run`). ``overrides`` may change :data:`jaxcnn.config.RESUMABLE_KEYS` (e.g.
    ``epochs`` to extend the run); changing any other key would make the result meaningless and
    raises RunError naming the keys, unless ``force``. A checkpoint that does not fit the
    model raises CheckpointError naming the first parameter that differs.
    """
    folder = Path(run_dir)
    old, sources = runs.load_config(folder)
    if isinstance(old, FiltersConfig):
        raise RunError(f"{folder} is a filters_demo run, which has nothing to resume; run it "
                       f"again instead")
    new = config_lib.override(old, dict(overrides or {}))
    changed = config_lib.changed_keys(old, new)
    refused = [k for k in changed if k not in config_lib.RESUMABLE_KEYS]
    if refused and not force:
        details = ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in refused)
        raise RunError(f"cannot resume {folder} with a changed {', '.join(refused)} ({details}): "
                       f"the result would not be a continuation of the run; start a new run, or "
                       f"pass --force (force=True) to resume anyway")
    t_start = time.perf_counter()
    _start_backend(new)  # every process reads the checkpoint: the folder must be shared
    model, data, loss_fn = components.user_code(folder, sources, model, data, loss_fn)
    parts = components.build(new, model, data, loss_fn)
    parts.sources = {**parts.sources, **sources}  # as recorded when the run started
    latest = ckpt.latest(folder / runs.CHECKPOINTS)
    if latest is None:
        if not (folder / runs.SUMMARY_FILE).is_file():
            raise CheckpointError(f"{folder} has no complete checkpoint to resume from and no "
                                  f"{runs.SUMMARY_FILE}; start a new run instead")
        print(f"{folder} has no complete checkpoint yet (it was stopped before its first): "
              f"starting the run over in the same folder", file=sys.stderr, flush=True)
        if _is_main(new):
            _start_over(folder)
            if changed:
                runs.save_config(folder, new, sources)
        return _train(new, folder, parts, resume_from=None, stop_after_epochs=stop_after_epochs,
                      extra_writers=extra_writers, progress=progress, t_start=t_start)
    note = None
    if changed:
        note = ("resumed with " + ", ".join(f"{k}={getattr(new, k)!r}" for k in changed)
                + (" (forced)" if refused else ""))
    return _train(new, folder, parts, resume_from=latest, stop_after_epochs=stop_after_epochs,
                  extra_writers=extra_writers, progress=progress, resume_note=note,
                  save_config=sources if changed else None)
