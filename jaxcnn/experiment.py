"""The experiment runner: a config in, a run folder with everything about the run out.

:func:`run` (the Flax example's ``train_and_evaluate(config, workdir)``, with the work folder
made for it) trains a classifier as :class:`jaxcnn.config.Config` describes; :func:`resume`
continues one from its run folder. Each run gets its own folder
``<runs_dir>/<experiment>/<YYYYmmdd-HHMMSS>-<6 hex>/`` holding:

- ``config.json`` (the resolved config), ``summary.txt`` (the model table), ``run.json`` (status,
  epochs, final and best accuracy, wall time, the number of devices and processes, and when the
  first step could start: ``first_step_time``, ``time_to_first_step_s``; rewritten atomically
  each epoch; ``status`` "failed" with the ``error`` when a run crashes). Bad input (a model
  that does not fit the data, data that fail their checks, an impossible validation split)
  is refused before the folder is made;
- ``checkpoints/``: one checkpoint per epoch (:mod:`jaxcnn.checkpoint`), the newest
  ``keep_checkpoints`` and the best (by validation accuracy) kept;
- TensorBoard event files (:class:`jaxcnn.tracking.TensorBoardWriter`), with these tags, where
  step ``s`` means "after ``s`` optimizer steps":

  - scalars ``train/loss``, ``train/accuracy``, ``train/learning_rate`` every ``log_every``
    steps (means over the steps since the previous point); each epoch ``val/loss``,
    ``val/accuracy``, ``test/loss``, ``test/accuracy``, ``train/epoch_loss``,
    ``train/epoch_accuracy``, ``perf/images_per_second``, ``perf/epoch_time_s`` (and
    ``train/skipped_steps`` with ``on_nonfinite="skip"``);
  - histograms ``params/<path>`` and ``grads/<path>`` for every parameter, each epoch (gradients
    on a fixed training batch);
  - images each epoch: ``filters/<conv path>`` (:func:`jaxcnn.visualize.filter_grid`),
    ``features/input`` (``num_feature_samples`` fixed test images, unnormalised) and
    ``features/<conv path>`` (:func:`jaxcnn.visualize.feature_map_grid` of their maps after every
    conv layer, at most 64 channels), ``test/confusion_matrix`` and ``test/misclassified``
    (when there are mistakes);
  - texts ``config`` and ``model_summary`` at step 0; hparams (the config with the final
    metrics ``hparams/*``) once, when the run completes.

Training runs as compiled calls of ``steps_per_call`` steps each
(:func:`jaxcnn.train.make_epoch_fn`), whose per-step metrics stay on the device and come back
at the epoch's end, to be logged with their global step numbers (on a terminal, each finished
call's also come back while the next one runs, to move the epoch's progress bar). Resuming
restores the exact TrainState, history and data order, and opens the event writer with
``purge_step`` so the curves continue with no step twice: the result equals an uninterrupted
run with the same seed, bit for bit. SIGINT or SIGTERM lets the running steps finish (at most
two calls), saves a checkpoint in the middle of the epoch (the state, and the metrics of the
epoch's steps so far, which are logged when the resumed run ends the epoch), flushes the events
and raises :class:`RunInterrupted` naming the resume command (the command line exits 130 or
143); a second signal stops at once.

``data_parallel`` trains over a :class:`jax.sharding.Mesh` of every device (batches split by
rows, state replicated); ``distributed`` first joins a multi-process run
(:func:`jaxcnn.distributed.initialize`) and then does the same over every process's devices:
process 0 makes the run folder and broadcasts its path, and alone writes the folder's files,
while every process computes alike (the programs are collective).

Two things a resume cannot undo: extending a finished run (``epochs`` raised) stretches its
learning-rate schedule over the new length, so it is not the run a longer fresh one would be;
and it writes a second hparams record (hparams summaries carry no step to purge).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import checkpoint as ckpt
from jaxcnn import config as config_lib
from jaxcnn import data as data_lib
from jaxcnn import distributed, memory, models, train, visualize
from jaxcnn import filters as filters_lib
from jaxcnn import layers as layers_lib
from jaxcnn._types import Array, Params, State
from jaxcnn.config import Config, FiltersConfig
from jaxcnn.errors import CheckpointError, ConfigError, NonFiniteLossError, RunError
from jaxcnn.layers import Layer, layer_info
from jaxcnn.losses import softmax_cross_entropy
from jaxcnn.summarize import summary
from jaxcnn.tracking import MetricWriter, MultiWriter, TensorBoardWriter, scalar_steps

__all__ = [
    "RunInterrupted", "RunResult", "build_model", "build_optimizer", "build_schedule",
    "conv_kernels", "filters_summary", "intermediates", "load_run_config", "make_run_dir",
    "model_summary", "resume", "run", "run_filters", "setup_compilation_cache",
]

CHECKPOINTS = "checkpoints"
STATUS_FILE = "run.json"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.txt"
_MAX_FEATURE_CHANNELS = 64
_MAX_MISCLASSIFIED = 36
_HPARAMS_MARKER = "hparams/test_accuracy"  # the last hparams scalar written, at the final step


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its folder, config, the last epoch's metrics (``final``: e.g.
    ``test_accuracy``, ``val_accuracy``, ``train_loss``), the best test accuracy over epochs,
    one dict of metrics per epoch, and whether it ran all ``config.epochs`` (False when stopped
    by ``stop_after_epochs``)."""

    run_dir: Path
    config: Any
    final: dict[str, float]
    best_test_accuracy: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    completed: bool = True

    @property
    def test_accuracy(self) -> float | None:
        return self.final.get("test_accuracy")


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after a checkpoint; ``exit_code`` is 130 or 143 and
    ``resume_command`` the command that continues it."""

    def __init__(self, message: str, *, exit_code: int, run_dir: Path, resume_command: str):
        super().__init__(message)
        self.exit_code, self.run_dir, self.resume_command = exit_code, run_dir, resume_command


# ----------------------------------------------------------------------------------------------
# Building blocks


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


def make_run_dir(runs_dir: str | os.PathLike[str], experiment: str) -> Path:
    """Create and return a new ``<runs_dir>/<experiment>/<YYYYmmdd-HHMMSS>-<6 hex>`` folder.

    Created with ``mkdir(exist_ok=False)`` and a random id, retried on a collision, so runs
    started in the same second never share a folder.
    """
    parent = Path(runs_dir) / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the runs folder {parent} ({e.strerror or e}); pass "
                       f"--runs-dir with a folder you can write") from None
    for _ in range(100):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            folder.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(f"cannot create a run folder in {parent} ({e.strerror or e}); pass "
                           f"--runs-dir with a folder you can write") from None
        return folder
    raise RunError(f"could not create a new run folder in {parent} after 100 tries")


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


def _keep_freed_memory() -> None:
    """On the CPU, malloc keeps what it frees (:mod:`jaxcnn.memory`): no page faults on every
    step's fresh buffers. Before the data are read, so that the arrays normalisation makes
    reuse the memory the decompressed files freed."""
    if jax.default_backend() == "cpu":
        memory.keep_freed_memory()


def _is_main(config: Config) -> bool:
    # Only process 0 of a distributed run writes the run folder, events and checkpoints.
    return not config.distributed or distributed.is_main_process()


def _new_run_dir(config: Config) -> Path:
    """A new run folder, made by process 0 alone in a distributed run and its path sent to the
    others (a collective: every process calls this)."""
    if not config.distributed:
        return make_run_dir(config.runs_dir, config.experiment)
    from jax.experimental import multihost_utils

    made, error = b"", None
    if distributed.is_main_process():
        try:
            made = os.fsencode(make_run_dir(config.runs_dir, config.experiment))
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


def _local(tree: Any) -> Any:
    """``tree`` with every array replicated over several processes replaced by this process's
    own copy, so the main process can save it without a collective."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) and
                        not x.is_fully_addressable else x, tree)


def _process_age() -> float | None:
    """Seconds since this process started, from Linux's /proc (10 ms resolution); else None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, since boot
        return round(float(Path("/proc/uptime").read_text().split()[0]) - started, 3)
    except (OSError, ValueError, IndexError):
        return None


def _vgg_small(num_classes: int) -> Layer:
    # Two VGG stages of one conv each (32, 64; BN, ReLU, 2x2 max-pool) and a dense 128: on 8x8
    # digits it beats simple_cnn (98%+ against ~97.5%) and trains as fast.
    return models.vgg(num_classes, stages=((32,), (64,)), dense=(128,))


def build_model(name: str, num_classes: int) -> Layer:
    """The model ``name`` (one of :data:`jaxcnn.config.MODELS`) with ``num_classes`` outputs;
    ``vgg_small`` is ``models.vgg(stages=((32,), (64,)), dense=(128,))``."""
    builders: dict[str, Callable[[int], Layer]] = {
        "simple_cnn": models.simple_cnn, "lenet5": models.lenet5, "vgg": models.vgg,
        "vgg_small": _vgg_small, "resnet20": models.resnet20}
    if name not in builders:
        raise ConfigError(f"model {name!r} is unknown; valid models are {', '.join(builders)}")
    return builders[name](num_classes)


def build_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule of ``config`` over ``config.epochs * steps_per_epoch`` steps."""
    total = max(config.epochs * steps_per_epoch, 1)
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, total)
    if config.schedule == "warmup_cosine":
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
        return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, total)
    epochs = config.decay_epochs or (config.epochs // 2, (3 * config.epochs) // 4)
    boundaries = {int(e) * steps_per_epoch: config.decay_factor for e in epochs if e > 0}
    return optax.piecewise_constant_schedule(config.lr, boundaries)


def build_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer of ``config``, built with ``optax.inject_hyperparams`` so the learning rate
    (a schedule) lives in ``opt_state`` where :func:`jaxcnn.train.learning_rate` reads it."""
    schedule = build_schedule(config, steps_per_epoch)
    wd = config.weight_decay
    if config.optimizer == "adamw":
        return optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, weight_decay=wd)

    def make(learning_rate):
        if config.optimizer == "adam":
            base = optax.adam(learning_rate)
        else:
            momentum = config.momentum if config.optimizer == "momentum" else None
            base = optax.sgd(learning_rate, momentum=momentum)
        return optax.chain(optax.add_decayed_weights(wd), base) if wd else base

    return optax.inject_hyperparams(make)(learning_rate=schedule)


def model_summary(config: Config) -> str:
    """The model table of ``config``'s model for its dataset's images."""
    info = data_lib.info(config.dataset)
    model = build_model(config.model, info.num_classes)
    return str(summary(model, (None, *info.image_shape)))


def conv_kernels(params: Params) -> dict[str, Array]:
    """``{layer path: kernel}`` for every 4-D ``w`` leaf of ``params`` (conv kernels, HWIO)."""
    return {path[: -len("/w")]: w for path, w in ckpt.flatten(params).items()
            if path.endswith("/w") and np.ndim(w) == 4}


def intermediates(model: Layer, params: Params, state: State, x: Array, *,
                  kinds: Sequence[str] = ("Conv",)) -> dict[str, Array]:
    """The outputs of every layer of kind in ``kinds`` (e.g. "Conv"), by path, in inference
    mode. x: (N, H, W, C). Walks serial models and recurses into nested serial, residual and
    parallel combinators, so it works for lenet5, simple_cnn, vgg and resnet20."""
    out: dict[str, Array] = {}
    _collect(model, params, state, x, "", tuple(kinds), out)
    return out


def _collect(layer: Layer, params: Params, state: State, x: Array, path: str,
             kinds: tuple[str, ...], out: dict[str, Array]) -> Array:
    info = layer_info(layer)
    prefix = f"{path}/" if path else ""

    def child(nm, sub, inp):
        return _collect(sub, params.get(nm, {}), state.get(nm, {}), inp, prefix + nm, kinds, out)

    if info.kind == "Serial":
        for nm, sub in info.children:
            x = child(nm, sub, x)
        return x
    if info.children:  # residual / parallel: record inside, then apply the whole layer
        h = x
        for nm, sub in info.children:
            if info.kind == "Residual" and nm != "shortcut":
                h = child(nm, sub, h)
            else:
                child(nm, sub, x)
    y, _ = layer.apply(params, state, x, train=False)
    if info.kind in kinds:
        out[path or info.base] = y
    return y


# ----------------------------------------------------------------------------------------------
# Run folders


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_status(run_dir: Path, *, drop: Sequence[str] = (), **values: Any) -> None:
    """Update run.json with ``values``, and without the keys in ``drop``."""
    status = {k: v for k, v in {**_status(run_dir), **values}.items() if k not in drop}
    ckpt.atomic_write(run_dir / STATUS_FILE, json.dumps(status, indent=1, allow_nan=True))


def _resume_command(run_dir: Path) -> str:
    return f"jaxcnn resume {shlex.quote(str(run_dir))}"


class _Signals:
    """Records SIGINT/SIGTERM while training runs, so the run can stop between two compiled
    calls with a checkpoint; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after the running steps, "
              f"with a checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def heard(self) -> bool:
        return self.received is not None

    def agreed(self) -> bool:
        """Whether any process of a multi-process run heard a signal (a collective: every
        process asks at the same points, so all stop at the same step)."""
        from jax.experimental import multihost_utils

        heard = np.int32(self.received is not None)
        return bool(np.asarray(multihost_utils.process_allgather(heard)).any())

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGTERM)  # SIGTERM: stopped for another process

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class _Data:
    train: data_lib.Split
    val: data_lib.Split | None
    test: data_lib.Split
    test_raw: np.ndarray
    info: data_lib.DatasetInfo


def _import_in_background(module: str) -> threading.Thread:
    """Start importing ``module`` on a daemon thread; join it before relying on the import.

    Why: the validation split needs scikit-learn, whose import (about 1 s on a 2-core machine,
    SciPy included) otherwise follows the dataset's reading in every launch; reading, checking
    and decompressing the files release the GIL, so the two overlap (benchmarks/README.md,
    compilation cache). A failed import is left to the import that follows, which raises it.
    """
    def target() -> None:
        try:
            __import__(module)
        except BaseException:  # noqa: BLE001 - the caller's own import reports it
            pass

    thread = threading.Thread(target=target, name=f"import {module}", daemon=True)
    thread.start()
    return thread


def _load_data(config: Config) -> _Data:
    prefetch = (_import_in_background("sklearn.model_selection") if config.val_fraction > 0
                else None)
    splits = data_lib.load(config.dataset, data_dir=config.data_dir)
    train_split, val = splits.train, None
    if prefetch is not None:
        prefetch.join()
        try:
            train_split, val = data_lib.train_val_split(splits.train, config.val_fraction,
                                                        seed=config.seed)
        except ValueError as e:  # too few examples on one side for every class
            raise ConfigError(f"Config: val_fraction={config.val_fraction} cannot split the "
                              f"{len(splits.train.labels)} training examples of "
                              f"{config.dataset} with every class on both sides "
                              f"({e.__cause__ or e}); pass a "
                              f"larger --val-fraction, or 0 for no validation split") from None
    test = splits.test
    if config.normalize:
        mean, std = data_lib.channel_stats(train_split.images)

        def norm(s):
            return data_lib.Split(data_lib.normalize(s.images, mean, std), s.labels)

        train_split, test = norm(train_split), norm(test)
        val = norm(val) if val is not None else None
    if config.batch_size > len(train_split.labels):
        raise ConfigError(f"Config: batch_size={config.batch_size} is larger than the "
                          f"{len(train_split.labels)} training examples of {config.dataset}; "
                          f"pass a smaller --batch-size")
    return _Data(train_split, val, test, splits.test.images, data_lib.info(config.dataset))


def _hparams(config: Config) -> dict[str, Any]:
    d = config_lib.to_dict(config)
    d.pop("_class")
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in d.items()}


def _mean(values: np.ndarray, ok: np.ndarray) -> float:
    return float(np.mean(values[ok])) if ok.any() else float("nan")


def _fmt_metrics(record: Mapping[str, float]) -> str:
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
            "test_accuracy")
    return " ".join(f"{k}={record[k]:.4f}" for k in keys if k in record)


class _Trainer:
    """One segment of a run (fresh or resumed), from data loading to the last epoch."""

    def __init__(self, config: Config, run_dir: Path, *, resume_from: Path | None,
                 extra_writers: Sequence[MetricWriter], progress: bool | None,
                 resume_note: str | None, data: _Data | None = None,
                 t_start: float | None = None) -> None:
        self.config, self.run_dir = config, run_dir
        self.ckpt_dir = run_dir / CHECKPOINTS
        # When this segment began (run() reads the data before it makes the folder).
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.main = _is_main(config)
        self.mesh = _data_parallel_mesh(config)
        self.data = _load_data(config) if data is None else data
        self.model = build_model(config.model, self.data.info.num_classes)
        n_train = len(self.data.train.labels)
        self.steps_per_epoch = n_train // config.batch_size
        self.optimizer = build_optimizer(config, self.steps_per_epoch)
        in_shape = (None, *self.data.info.image_shape)

        def init(key):
            return train.create_train_state(self.model, self.optimizer, key, in_shape)

        key = jax.random.key(config.seed)
        self.history: list[dict[str, float]] = []
        self.epoch, self.skipped, self.wall_before = 0, 0, 0.0
        # The per-step metrics of the current epoch's steps done before a mid-epoch
        # checkpoint (None at an epoch's start).
        self.partial: dict[str, np.ndarray] | None = None
        self.best_val: float | None = None
        self.best_name: str | None = None
        if resume_from is None:
            ts = jax.jit(init)(key)  # one compile, not one per eager initializer op
        else:  # checked against, and restored into, the traced structure: nothing computed
            ts, meta = ckpt.restore(resume_from, jax.eval_shape(init, key))
            self.epoch, self.history = int(meta["epoch"]), list(meta["history"])
            self.skipped = int(meta.get("skipped_steps", 0))
            self.wall_before = float(meta.get("wall_time_s", 0.0))
            self.best_val, self.best_name = meta.get("best_value"), meta.get("best_checkpoint")
            if meta.get("epoch_step"):
                self.partial = {k: np.asarray(v["values"], v["dtype"])
                                for k, v in meta["partial_metrics"].items()}
        if self.mesh is not None:  # over every device of every process, from the same values
            ts = distributed.replicate(ts, self.mesh)
        self.ts = ts
        self.start_step = int(ts.step)
        self.summary_text = str(summary(self.model, in_shape))

        step = train.make_train_step(self.model, softmax_cross_entropy, self.optimizer, jit=False)
        self.run_epoch = train.make_epoch_fn(
            step, self.data.train.images, self.data.train.labels, config.batch_size,
            driver=config.driver, halt_on_nonfinite=config.on_nonfinite == "stop",
            mesh=self.mesh, steps_per_call=config.steps_per_call)
        self.eval_step = train.make_eval_step(self.model)
        sizes = [len(self.data.test.labels)] + ([len(self.data.val.labels)]
                                                if self.data.val is not None else [])
        self.eval_batch = min(1000, *sizes)  # one batch shape for val and test: one compile
        n_feat = min(config.num_feature_samples, len(self.data.test.labels))
        self.feature_images = self.data.test.images[:n_feat]
        self.feature_raw = self.data.test_raw[:n_feat]
        self.features_fn = jax.jit(functools.partial(intermediates, self.model))
        b = min(config.batch_size, n_train)
        grad_batch = (self.data.train.images[:b], self.data.train.labels[:b])
        self.grad_batch = (jax.tree.map(jnp.asarray, grad_batch) if self.mesh is None else
                           distributed.shard_batch(grad_batch, self.mesh))
        self.grads_fn = jax.jit(self._grads)

        if self.main:
            tb = TensorBoardWriter(run_dir, purge_step=None if resume_from is None
                                   else self.start_step + 1)
            self.writer: MetricWriter = (MultiWriter([tb, *extra_writers]) if extra_writers
                                         else tb)
        else:  # the other processes of a distributed run compute the same, and write nothing
            self.writer = MultiWriter([])
        if resume_from is None:
            self.writer.write_texts(0, {"config": _code_block(config_lib.to_json(config)),
                                        "model_summary": _code_block(self.summary_text)})
        elif resume_note:
            self.writer.write_texts(self.start_step + 1, {"resume": resume_note})
        tty = sys.stderr.isatty() if progress is None else progress
        self.show_bar = bool(tty and self.main)
        self.bar: Any = None  # the current epoch's tqdm bar

    def _grads(self, params, state, images, labels):
        def loss(p):
            logits, _ = self.model.apply(p, state, images, key=jax.random.key(0), train=True)
            return softmax_cross_entropy(logits, labels)

        return jax.grad(loss)(params)

    # -- one epoch -------------------------------------------------------------------------

    def _log_train(self, start: int, m: dict[str, np.ndarray]) -> None:
        every = self.config.log_every
        finite = np.asarray(m["finite"], bool)
        for j in range(len(finite)):
            g = start + j + 1
            if g % every:
                continue
            lo = max(0, j - every + 1)
            ok = finite[lo: j + 1]
            scalars = {"train/loss": _mean(m["loss"][lo: j + 1], ok),
                       "train/accuracy": _mean(m["accuracy"][lo: j + 1], ok)}
            if "learning_rate" in m:
                scalars["train/learning_rate"] = float(m["learning_rate"][j])
            self.writer.write_scalars(g, scalars)

    def _nonfinite(self, start: int, m: dict[str, np.ndarray]) -> None:
        bad = int(np.argmin(m["finite"]))
        self._log_train(start, {k: v[:bad] for k, v in m.items()})
        self.writer.flush()
        last = ckpt.latest(self.ckpt_dir)
        where = (f"the last good checkpoint {last} is intact; resume with "
                 f"{_resume_command(self.run_dir)} --lr <smaller> --force" if last else
                 "no checkpoint was written yet")
        if self.main:
            _write_status(self.run_dir, status="failed")
        raise NonFiniteLossError(
            f"the training loss became {float(m['loss'][bad])} at global step {start + bad + 1} "
            f"(epoch {self.epoch + 1}) in run {self.run_dir}; {where}; lower the learning rate, "
            f"or pass --on-nonfinite skip to drop such steps")

    def _epoch_images(self, params: Params, state: State, preds: np.ndarray) -> dict[str, Any]:
        images: dict[str, Any] = {f"filters/{p}": visualize.filter_grid(w)
                                  for p, w in conv_kernels(params).items()}
        if len(self.feature_images):
            feats = self.features_fn(params, state, self.feature_images)
            images["features/input"] = self.feature_raw  # (N, H, W, C) in [0, 1], as loaded
            for p, fmap in feats.items():
                images[f"features/{p}"] = visualize.feature_map_grid(
                    np.asarray(fmap), max_channels=_MAX_FEATURE_CHANNELS)
        labels = self.data.test.labels
        names = self.data.info.class_names
        cm = visualize.confusion_matrix(labels, preds, self.data.info.num_classes)
        images["test/confusion_matrix"] = visualize.confusion_matrix_image(cm, class_names=names)
        wrong_x, wrong_t, wrong_p = visualize.misclassified(self.data.test_raw, labels, preds)
        if len(wrong_t):
            images["test/misclassified"] = visualize.annotated_grid(
                wrong_x, wrong_t, wrong_p, class_names=names, max_images=_MAX_MISCLASSIFIED)
        return images

    def _open_bar(self) -> Callable[[dict[str, np.ndarray]], None] | None:
        """A tqdm bar over the steps of the epoch about to run (from where a mid-epoch
        checkpoint left it), and the ``progress`` feed of ``run_epoch`` that moves it on and
        shows the epoch's running loss and accuracy; None without a terminal."""
        if not self.show_bar:
            return None
        from tqdm import tqdm

        try:
            known = min(os.get_terminal_size(sys.stderr.fileno())) > 0
        except OSError:
            known = False
        # A terminal of unknown size (0 x 0, as `script` makes) would hide tqdm's bar.
        size = {"dynamic_ncols": True} if known else {"ncols": 130, "nrows": 24}
        cfg = self.config
        self.bar = tqdm(total=self.steps_per_epoch,
                        desc=f"{cfg.experiment} epoch {self.epoch + 1}/{cfg.epochs}",
                        unit="step", **size)
        sums = np.zeros(3)  # loss, accuracy, finite steps

        def feed(m: dict[str, np.ndarray]) -> None:
            ok = np.asarray(m["finite"], bool)
            sums[:] += (np.sum(m["loss"][ok]), np.sum(m["accuracy"][ok]), ok.sum())
            self.bar.update(len(ok))
            if sums[2]:
                self.bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}",
                                     acc=f"{sums[1] / sums[2]:.4f}", refresh=False)

        if self.partial is not None:  # the steps a mid-epoch checkpoint holds
            feed(self.partial)
        return feed

    def _close_bar(self, record: dict[str, float] | None = None) -> None:
        if self.bar is None:
            return
        if record is not None:
            self.bar.n = self.bar.total
            self.bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                                 acc=f"{record['train_accuracy']:.4f}",
                                 test_acc=f"{record['test_accuracy']:.4f}", refresh=False)
        self.bar.close()
        self.bar = None

    def train_epoch(self, stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """The next epoch (or the rest of one a mid-epoch checkpoint began), its evaluation,
        logging and checkpoint; its record, or None when ``stop`` said so before the epoch's end
        (then a mid-epoch checkpoint is saved and nothing of the epoch is logged yet)."""
        try:
            record = self._train_epoch(stop)
        except BaseException:
            self._close_bar()
            raise
        self._close_bar(record)
        return record

    def _train_epoch(self, stop: Callable[[], bool] | None) -> dict[str, float] | None:
        cfg, begun = self.config, self.epoch_step
        start = int(self.ts.step) - begun  # the global step before the epoch's first
        feed = self._open_bar()
        t0 = time.perf_counter()
        ts, m = self.run_epoch(self.ts, seed=cfg.seed, epoch=self.epoch, start=begun, stop=stop,
                               progress=feed)
        train_time = time.perf_counter() - t0
        ran = len(m["loss"])
        if self.partial is not None:
            m = {k: np.concatenate([self.partial[k], m[k]]) for k in m}
        finite = np.asarray(m["finite"], bool)
        if cfg.on_nonfinite == "stop" and not finite.all():
            self._nonfinite(start, m)
        self.ts = ts
        if len(finite) < self.steps_per_epoch:
            self.partial = m
            self._checkpoint_partial()
            return None
        self.partial = None
        self.skipped += int((~finite).sum())
        step = int(ts.step)
        self._log_train(start, m)
        record: dict[str, float] = {
            "epoch": self.epoch + 1, "step": step,
            "train_loss": _mean(m["loss"], finite), "train_accuracy": _mean(m["accuracy"], finite)}
        if self.data.val is not None:
            v = train.evaluate(self.eval_step, ts.params, ts.state, self.data.val,
                               self.eval_batch, mesh=self.mesh)
            record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        t = train.evaluate(self.eval_step, ts.params, ts.state, self.data.test, self.eval_batch,
                           mesh=self.mesh)
        record.update(test_loss=t["loss"], test_accuracy=t["accuracy"])
        record.update(epoch_time_s=time.perf_counter() - t0,
                      images_per_second=ran * cfg.batch_size / train_time)

        scalars = {"train/epoch_loss": record["train_loss"],
                   "train/epoch_accuracy": record["train_accuracy"],
                   "test/loss": record["test_loss"], "test/accuracy": record["test_accuracy"],
                   "perf/images_per_second": record["images_per_second"],
                   "perf/epoch_time_s": record["epoch_time_s"]}
        if "val_loss" in record:
            scalars.update({"val/loss": record["val_loss"], "val/accuracy": record["val_accuracy"]})
        if cfg.on_nonfinite == "skip":
            scalars["train/skipped_steps"] = self.skipped
        self.writer.write_scalars(step, scalars)
        grads = self.grads_fn(ts.params, ts.state, *self.grad_batch)
        self.writer.write_histograms(step, {
            **{f"params/{p}": v for p, v in ckpt.flatten(ts.params).items()},
            **{f"grads/{p}": v for p, v in ckpt.flatten(grads).items()}})
        self.writer.write_images(step, self._epoch_images(ts.params, ts.state,
                                                          t["predictions"]))
        self.epoch += 1
        self.history.append(record)
        self._checkpoint(record)
        return record

    def _checkpoint(self, record: dict[str, float]) -> None:
        name = f"ckpt-{self.epoch:06d}"
        judge = record.get("val_accuracy", record["test_accuracy"])
        if self.best_val is None or judge > self.best_val:
            self.best_val, self.best_name = judge, name
        if self.main:
            self._save(name, {})

    def _checkpoint_partial(self) -> None:
        """A checkpoint in the middle of epoch ``self.epoch + 1``: the state after its first
        ``epoch_step`` steps and their metrics, so a resume finishes the epoch (same batches,
        same order) and logs it as if it had never stopped. Named ``ckpt-<epochs
        done>_step<global step>``, after the epoch's own and before the next by name."""
        if not self.main:
            return
        partial = {k: {"dtype": np.asarray(v).dtype.name, "values": np.asarray(v).tolist()}
                   for k, v in self.partial.items()}
        self._save(f"ckpt-{self.epoch:06d}_step{int(self.ts.step):09d}",
                   {"epoch_step": self.epoch_step, "partial_metrics": partial})

    def _save(self, name: str, extra: dict[str, Any]) -> None:
        meta = {"epoch": self.epoch, "step": int(self.ts.step), "history": self.history,
                "early_stopping_history": self.history, "data_order_seed": self.config.seed,
                "config": config_lib.to_dict(self.config), "skipped_steps": self.skipped,
                "best_checkpoint": self.best_name, "best_value": self.best_val,
                "wall_time_s": self.wall_time(), **extra}
        # Events first: a resume starts after this checkpoint, so its steps must be on disk
        # before it exists, or a kill right after it would lose them for good.
        self.writer.flush()
        ckpt.save(self.ckpt_dir, name, _local(self.ts), meta)
        if self.best_name is not None:  # None: a mid-epoch checkpoint before any whole epoch
            ckpt.atomic_write(self.ckpt_dir / "best", f"{self.best_name}\n")
        ckpt.prune(self.ckpt_dir, self.config.keep_checkpoints,
                   protect=[self.best_name] if self.best_name else [])
        self._status("running")

    @property
    def epoch_step(self) -> int:
        """Steps of the current epoch already done (by a segment that a signal stopped)."""
        return 0 if self.partial is None else len(self.partial["loss"])

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    def compile_epoch(self) -> None:
        """Compile the epoch's program now (or load it from the persistent compilation
        cache), and note in run.json when the first step could start: ``first_step_time``
        (Unix seconds) and ``time_to_first_step_s`` (since this process started, where Linux's
        /proc tells)."""
        self.run_epoch.compile(self.ts)
        if self.main:
            _write_status(self.run_dir, first_step_time=time.time(),
                          time_to_first_step_s=_process_age())

    def _status(self, status: str, **extra: Any) -> None:
        """Write run.json's ``status`` and progress (with ``extra`` values), on process 0."""
        if not self.main:
            return
        final = self.history[-1] if self.history else {}
        tests = [h["test_accuracy"] for h in self.history if "test_accuracy" in h]
        # A resumed run that goes on sheds the error of the crash it resumed from.
        _write_status(self.run_dir, drop=() if status == "failed" else ("error",),
                      status=status, epochs_done=self.epoch,
                      epochs=self.config.epochs, step=int(self.ts.step), final=final,
                      best_test_accuracy=max(tests) if tests else None,
                      wall_time_s=self.wall_time(), **extra)

    def should_stop_early(self) -> bool:
        cfg = self.config
        if cfg.loss_tolerance > 0 and self.history and \
                self.history[-1]["train_loss"] < cfg.loss_tolerance:
            return True
        if cfg.early_stopping_patience > 0:
            rule = (train.EarlyStopping("val_accuracy", "max", cfg.early_stopping_patience)
                    if self.data.val is not None else
                    train.EarlyStopping("train_loss", "min", cfg.early_stopping_patience))
            return train.should_stop(rule, self.history)
        return False

    def report(self, record: dict[str, float]) -> None:
        if not self.main:
            return
        if not self.show_bar:  # the bar of the epoch showed its record when it closed
            print(f"epoch {self.epoch}/{self.config.epochs} step {record['step']}: "
                  f"{_fmt_metrics(record)} time={record['epoch_time_s']:.1f}s", flush=True)

    def finished_on_disk(self) -> bool:
        """Whether the event files already hold this run's final hparams metrics (written, and
        flushed, by a segment killed before it could say "completed")."""
        return int(self.ts.step) in scalar_steps(self.run_dir, _HPARAMS_MARKER)

    def finish(self) -> None:
        tests = [h["test_accuracy"] for h in self.history]
        final = self.history[-1]
        metrics = {_HPARAMS_MARKER: final["test_accuracy"],
                   "hparams/best_test_accuracy": max(tests),
                   "hparams/train_loss": final["train_loss"],
                   "hparams/epochs": float(self.epoch)}
        if "val_accuracy" in final:
            metrics["hparams/val_accuracy"] = final["val_accuracy"]
        self.writer.write_hparams(_hparams(self.config), metrics, step=int(self.ts.step))

    def close(self) -> None:
        self._close_bar()
        self.writer.close()

    def result(self, completed: bool) -> RunResult:
        tests = [h["test_accuracy"] for h in self.history]
        final = dict(self.history[-1]) if self.history else {}
        final["wall_time_s"] = self.wall_time()
        return RunResult(self.run_dir, self.config, final, max(tests) if tests else None,
                         list(self.history), completed)


def _code_block(text: str) -> str:
    # Indented by four spaces: TensorBoard renders texts as Markdown, this keeps them verbatim.
    return "\n".join("    " + line for line in text.splitlines())


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


def _interrupted(trainer: _Trainer, exit_code: int, where: str) -> NoReturn:
    """Mark the run interrupted (its checkpoint is saved), flush its events and raise
    RunInterrupted naming ``where`` it stopped and the resume command."""
    trainer._status("interrupted")
    trainer.writer.flush()
    cmd = _resume_command(trainer.run_dir)
    raise RunInterrupted(f"run {trainer.run_dir} stopped {where} (checkpoint saved); continue it "
                         f"with: {cmd}", exit_code=exit_code, run_dir=trainer.run_dir,
                         resume_command=cmd)


def _train(config: Config, run_dir: Path, *, resume_from: Path | None,
           stop_after_epochs: int | None, extra_writers: Sequence[MetricWriter],
           progress: bool | None, resume_note: str | None = None,
           save_config: bool = False, data: _Data | None = None,
           t_start: float | None = None) -> RunResult:
    # run() and resume() turned on the compilation cache before anything compiled.
    # A run killed after its last checkpoint but before "completed" may still owe its hparams.
    was_completed = _status(run_dir).get("status") == "completed"
    # Signals are caught from here on: one during set-up stops the run after its first call.
    with _Signals() as signals:
        trainer = _Trainer(config, run_dir, resume_from=resume_from,
                           extra_writers=extra_writers, progress=progress,
                           resume_note=resume_note, data=data, t_start=t_start)
        stop = signals.agreed if config.distributed else signals.heard
        try:
            if save_config and trainer.main:  # only once the checkpoint was restored: a
                # refused one changes nothing
                ckpt.atomic_write(run_dir / CONFIG_FILE, config_lib.to_json(config))
            if trainer.epoch < config.epochs and trainer.main:
                print(f"run {run_dir}: epochs {trainer.epoch + 1} to {config.epochs} of "
                      f"{config.experiment} ({config.model} on {config.dataset})", flush=True)
            if trainer.epoch < config.epochs:
                trainer.compile_epoch()
            done_here, early = 0, False
            while trainer.epoch < config.epochs:
                record = trainer.train_epoch(stop)
                if record is None:  # stopped by a signal in the middle of the epoch
                    _interrupted(trainer, signals.exit_code,
                                 f"at step {int(trainer.ts.step)}, {trainer.epoch_step} of "
                                 f"{trainer.steps_per_epoch} steps into epoch "
                                 f"{trainer.epoch + 1} of {config.epochs}")
                trainer.report(record)
                done_here += 1
                early = trainer.should_stop_early()
                if early:
                    break
                if trainer.epoch < config.epochs and stop():
                    _interrupted(trainer, signals.exit_code,
                                 f"after epoch {trainer.epoch} of {config.epochs}")
                if stop_after_epochs is not None and done_here >= stop_after_epochs:
                    break
            completed = early or trainer.epoch >= config.epochs
            if completed and (done_here or not (was_completed or trainer.finished_on_disk())):
                trainer.finish()
                trainer.writer.flush()  # on disk before the status says so
            trainer._status("completed" if completed else "stopped")
        except Exception as e:  # a crash: the checkpoints stay, run.json says what happened
            trainer._status("failed", error=_error_text(e))
            raise
        finally:
            trainer.close()
    return trainer.result(completed)


def run(config: Config | FiltersConfig, *, stop_after_epochs: int | None = None,
        extra_writers: Sequence[MetricWriter] = (), progress: bool | None = None) -> RunResult:
    """Run ``config`` in a new folder under ``config.runs_dir`` and return its result.

    ``stop_after_epochs`` stops cleanly (checkpoint saved, ``completed=False``) after that many
    epochs, to be continued by :func:`resume`; ``extra_writers`` also receive every metric
    (e.g. a :class:`jaxcnn.tracking.MemoryWriter`); ``progress`` forces the tqdm bar on or off
    (default: on when stderr is a terminal, else one plain line per epoch).

    Raises NonFiniteLossError (NaN/Inf loss with ``on_nonfinite="stop"``), RunInterrupted
    (SIGINT/SIGTERM, after a checkpoint), ConfigError, RunError.

    >>> result = run(Config(experiment="demo", epochs=1, runs_dir="/tmp/runs"))  # doctest: +SKIP
    >>> result.final["test_accuracy"]  # doctest: +SKIP
    """
    if isinstance(config, FiltersConfig):
        return run_filters(config)
    if not isinstance(config, Config):
        raise ConfigError(f"run: config must be a jaxcnn.config.Config or FiltersConfig, got "
                          f"{type(config).__name__}")
    t_start = time.perf_counter()
    setup_compilation_cache()  # before any compile: JAX checks for the cache only once
    _join_processes(config)  # before anything starts JAX's backend
    _keep_freed_memory()
    # Refused before a folder exists: a batch that does not split over the devices, a model
    # that does not fit the dataset's images, data that fails its checks, a bad split.
    mesh = _data_parallel_mesh(config)
    table = model_summary(config)
    data = _load_data(config)
    run_dir = _new_run_dir(config)
    if _is_main(config):
        ckpt.atomic_write(run_dir / CONFIG_FILE, config_lib.to_json(config))
        ckpt.atomic_write(run_dir / SUMMARY_FILE, table + "\n")
        _write_status(run_dir, experiment=config.experiment, run=run_dir.name,
                      start_time=datetime.now().isoformat(timespec="seconds"),
                      status="starting", epochs_done=0, epochs=config.epochs,
                      devices=1 if mesh is None else int(mesh.devices.size),
                      processes=jax.process_count())
    try:
        return _train(config, run_dir, resume_from=None, stop_after_epochs=stop_after_epochs,
                      extra_writers=extra_writers, progress=progress, data=data,
                      t_start=t_start)
    except Exception as e:
        if _is_main(config) and _status(run_dir).get("status") == "starting":
            _write_status(run_dir, status="failed", error=_error_text(e))
        raise


def load_run_config(run_dir: str | os.PathLike[str]) -> Any:
    """The config saved in run folder ``run_dir``; RunError if it is not a run folder."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunError(f"{folder} is not a run folder: it does not exist; pass a folder like "
                       f"runs/<experiment>/<timestamp>-<id>")
    try:
        text = (folder / CONFIG_FILE).read_text()
    except OSError:
        raise RunError(f"{folder} is not a run folder: it has no {CONFIG_FILE}; pass a folder "
                       f"like runs/<experiment>/<timestamp>-<id>") from None
    try:
        return config_lib.from_json(text)
    except ConfigError as e:  # named: "config JSON" alone does not say which file
        raise RunError(f"{folder / CONFIG_FILE} is not a valid run config: {e}") from None


def resume(run_dir: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None,
           force: bool = False, stop_after_epochs: int | None = None,
           extra_writers: Sequence[MetricWriter] = (), progress: bool | None = None
           ) -> RunResult:
    """Continue the run in ``run_dir`` from its latest complete checkpoint.

    ``overrides`` may change :data:`jaxcnn.config.RESUMABLE_KEYS` (e.g. ``epochs`` to extend the
    run); changing any other key (model, dataset, batch_size, seed, optimizer, lr, ...) would make
    the result meaningless and raises RunError naming the keys, unless ``force``. A checkpoint
    that does not fit the (forced) model raises CheckpointError naming the first parameter that
    differs. The TensorBoard curves continue with no duplicated steps.
    """
    folder = Path(run_dir)
    old = load_run_config(folder)
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
    setup_compilation_cache()
    _join_processes(new)  # every process reads the checkpoint: the folder must be shared
    _keep_freed_memory()
    latest = ckpt.latest(folder / CHECKPOINTS)
    if latest is None:
        raise CheckpointError(f"{folder} has no complete checkpoint to resume from (none was "
                              f"written, or all are incomplete); start a new run instead")
    note = None
    if changed:
        note = ("resumed with " + ", ".join(f"{k}={getattr(new, k)!r}" for k in changed)
                + (" (forced)" if refused else ""))
    return _train(new, folder, resume_from=latest, stop_after_epochs=stop_after_epochs,
                  extra_writers=extra_writers, progress=progress, resume_note=note,
                  save_config=bool(changed))


# ----------------------------------------------------------------------------------------------
# The fixed-filter demo


def _sample_photos(names: Sequence[str], max_size: int) -> dict[str, np.ndarray]:
    """scikit-learn's bundled photographs by file name, resized: {name: (H, W, 3) float32}."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    files = [Path(f).name for f in bunch.filenames]
    out = {}
    for name in names:
        if name not in files:
            raise ConfigError(f"FiltersConfig: images has {name!r}, which is not one of "
                              f"scikit-learn's sample images ({', '.join(files)})")
        img = Image.fromarray(bunch.images[files.index(name)])
        scale = max_size / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        out[Path(name).stem] = np.asarray(img, np.float32) / 255.0
    return out


def _filter_bank(config: FiltersConfig) -> dict[str, Layer]:
    return {
        "sobel_x": filters_lib.FixedConv(filters_lib.sobel_x(), name="sobel_x"),
        "sobel_y": filters_lib.FixedConv(filters_lib.sobel_y(), name="sobel_y"),
        "gaussian": filters_lib.FixedConv(
            filters_lib.gaussian(config.gaussian_size, config.gaussian_sigma), name="gaussian"),
        "sharpen": filters_lib.FixedConv(filters_lib.sharpen(), name="sharpen"),
    }


def filters_summary(config: FiltersConfig) -> str:
    """The table of the demo's filter bank (a parallel of fixed convolutions) on RGB images."""
    bank = layers_lib.parallel(*_filter_bank(config).values())
    return str(summary(bank, (None, config.max_size, config.max_size, 3)))


def _unit(x: np.ndarray) -> np.ndarray:
    """Signed responses shown around grey 0.5: 0 maps to 0.5, +-max|x| to 1 and 0."""
    m = float(np.max(np.abs(x)))
    return np.clip(0.5 + 0.5 * x / m, 0.0, 1.0) if m > 0 else np.full_like(x, 0.5)


def run_filters(config: FiltersConfig) -> RunResult:
    """Apply Sobel (x, y, magnitude), Gaussian and sharpen filters to real photographs and write
    each result beside its input (``filters/<photo>/<filter>``: input | output) to TensorBoard,
    with the kernels as images (``kernels/<filter>``) and the filter bank's summary."""
    photos = _sample_photos(config.images, config.max_size)  # unknown names: before a folder
    table = filters_summary(config)
    run_dir = make_run_dir(config.runs_dir, config.experiment)
    ckpt.atomic_write(run_dir / CONFIG_FILE, config_lib.to_json(config))
    ckpt.atomic_write(run_dir / SUMMARY_FILE, table + "\n")
    start = time.perf_counter()
    _write_status(run_dir, experiment=config.experiment, run=run_dir.name,
                  start_time=datetime.now().isoformat(timespec="seconds"), status="running")
    bank = _filter_bank(config)
    with TensorBoardWriter(run_dir) as writer:
        writer.write_texts(0, {"config": _code_block(config_lib.to_json(config)),
                               "model_summary": _code_block(table)})
        writer.write_images(0, {f"kernels/{k}": visualize.filter_grid(
            np.asarray(layer_kernel)) for k, layer_kernel in (
            ("sobel_x", filters_lib.sobel_x()), ("sobel_y", filters_lib.sobel_y()),
            ("gaussian", filters_lib.gaussian(config.gaussian_size, config.gaussian_sigma)),
            ("sharpen", filters_lib.sharpen()))})
        for photo, rgb in photos.items():
            x = jnp.asarray(rgb[None])
            grey = jnp.mean(x, axis=-1, keepdims=True)
            outputs = {}
            for name, layer in bank.items():
                src = grey if name.startswith("sobel") else x
                y, _ = layer.apply({}, {}, src)
                y = np.asarray(y[0])
                outputs[name] = _unit(y) if name.startswith("sobel") else np.clip(y, 0.0, 1.0)
            magnitude, _ = filters_lib.sobel_edges(grey)
            mag = np.asarray(magnitude[0])
            outputs["sobel_magnitude"] = mag / mag.max() if mag.max() > 0 else mag
            images = {}
            for name, out in outputs.items():
                if out.shape[-1] == 1:
                    out = np.repeat(out, 3, axis=-1)
                gap = np.ones((rgb.shape[0], 4, 3), np.float32)
                images[f"filters/{photo}/{name}"] = np.concatenate([rgb, gap, out], axis=1)
            writer.write_images(0, images)
    _write_status(run_dir, status="completed", wall_time_s=time.perf_counter() - start)
    return RunResult(run_dir, config, {}, None, [], True)

