"""What the experiment runner's logging costs: its epoch against the bare compiled epoch.

    .venv/bin/python benchmarks/logging_overhead.py                    # the README table
    .venv/bin/python benchmarks/logging_overhead.py --quick            # a smoke run (digits)
    .venv/bin/python benchmarks/logging_overhead.py --cases mnist:lenet5 --passes 5

Each case (``dataset:model``) takes its config from the experiment script of that model
(``experiments/mnist_lenet5.py``, ``mnist_simple_cnn.py``, ``digits_cnn.py``) with the dataset
swapped in, builds the runner's own loop (:class:`jaxcnn.train.Loop`, with the arguments
``jaxcnn.experiment.run`` gives it, writing a run folder in a temporary directory) and times, on
its one model, data and train state:

- ``bare``: ``train.make_epoch_fn``'s compiled epoch alone, as one ``lax.scan`` over the
  shuffled batches (``steps_per_call=None``), the per-step metrics fetched once at its end, on
  the loop's own train step and data;
- ``bare+eval``: that, then the validation and test evaluation the runner does each epoch (any
  loop that reports a test accuracy needs it, with or without TensorBoard);
- ``runner``: the loop's ``train_epoch``: the same epoch, run as the runner runs it (calls
  of ``steps_per_call`` steps, between which it listens for signals), and evaluation plus
  everything the runner logs and saves: ``train/*`` scalars every ``log_every`` steps and the
  epoch scalars, histograms of every parameter and of the gradients on a fixed batch, the
  conv filters, the feature maps of ``num_feature_samples`` test images after every conv
  layer, the confusion matrix and the misclassified test images, all to a TensorBoard event
  file, and a checkpoint and ``run.json``. Each block of runner epochs ends with
  ``writer.flush()`` (the event writer runs on a background thread), counted in the last
  epoch's time.

A pass runs ``--epochs`` epochs of each contender back to back; passes rotate the order, so a
slow drift of a shared machine hits all alike. The table gives the median seconds per epoch
over the passes (min-max) and the ratios. ``--breakdown`` adds where the runner's extra time
goes (the calling thread's wall time in each part of ``train_epoch``).

Datasets: MNIST and Fashion-MNIST are read from ``$JAXCNN_DATA`` or ``../shared/data`` (never
downloaded here); a case whose files are missing is skipped with a note. Fashion-MNIST has
MNIST's shapes and sizes (60,000 28x28x1 training images), so its epochs cost the same.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from jaxcnn import cli, components, cpu, registry, runs, train  # noqa: E402
from jaxcnn import config as config_lib  # noqa: E402
from jaxcnn import data as data_lib  # noqa: E402
from jaxcnn.errors import DataError  # noqa: E402
from jaxcnn.signals import StopSignals  # noqa: E402
from jaxcnn.tracking import TensorBoardWriter  # noqa: E402

SCRIPTS = {"lenet5": "mnist_lenet5", "simple_cnn": "mnist_simple_cnn", "vgg_small": "digits_cnn"}
DEFAULT_CASES = "digits:vgg_small,mnist:lenet5,mnist:simple_cnn"
CONTENDERS = ("bare", "bare+eval", "runner")


def _data_dir() -> Path | None:
    shared = ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def case_config(dataset: str, model: str, runs_dir: str) -> config_lib.Config:
    """The experiment script's config of ``model`` with ``dataset`` swapped in."""
    base = cli.load_experiment(SCRIPTS[model]).get_config()
    data_dir = None if os.environ.get("JAXCNN_DATA") or dataset == "digits" else _data_dir()
    return config_lib.override(base, {
        "dataset": dataset, "model": model, "runs_dir": runs_dir, "epochs": 1000,
        "experiment": f"bench_{dataset}_{model}",
        "data_dir": str(data_dir) if data_dir is not None else None})


def available(dataset: str) -> str | None:
    """None if ``dataset``'s files are there, else why not."""
    if dataset == "digits":
        return None
    data_dir = None if os.environ.get("JAXCNN_DATA") else _data_dir()
    try:
        data_lib.load(dataset, data_dir=data_dir, download=False)
    except DataError as e:
        return str(e).split(";")[0]
    return None


def runner_loop(config: config_lib.Config, run_dir: Path) -> train.Loop:
    """The loop ``jaxcnn.experiment.run`` trains ``config`` with, built with the arguments the
    runner gives it: the same data preparation, optimizer, event file, checkpoints and a
    ``run.json`` rewritten after each checkpoint (one process, no mesh, no progress bar)."""
    parts = components.build(config, None, None, None)
    steps = len(parts.train.labels) // config.batch_size

    def status(loop: train.Loop) -> None:  # what the runner's on_save writes
        runs.write_status(run_dir, status="running", epochs_done=loop.epoch,
                          epochs=config.epochs, step=loop.step, final=loop.history[-1],
                          best=loop.history[loop.best["epoch"] - 1] if loop.best else None,
                          wall_time_s=loop.wall_time())

    return train.Loop(
        parts.model, registry.build_optimizer(config, steps), parts.train,
        epochs=config.epochs, batch_size=config.batch_size, loss_fn=parts.loss_fn,
        seed=config.seed, val=parts.val, test=parts.test, writer=TensorBoardWriter(run_dir),
        checkpoint_dir=run_dir / runs.CHECKPOINTS, keep_checkpoints=config.keep_checkpoints,
        metadata={"config": config_lib.to_dict(config)},
        loss_tolerance=config.loss_tolerance or None, log_every=config.log_every,
        on_nonfinite=config.on_nonfinite, driver=config.driver,
        steps_per_call=config.steps_per_call, num_feature_samples=config.num_feature_samples,
        show_images=parts.test_raw, class_names=parts.class_names, progress=False,
        verbose=True, name=config.experiment, on_save=status)


class Case:
    """One runner loop and the three ways of running its epoch."""

    def __init__(self, dataset: str, model: str, runs_dir: str) -> None:
        self.name = f"{dataset}:{model}"
        config = case_config(dataset, model, runs_dir)
        run_dir = runs.make_run_dir(config.runs_dir, config.experiment)
        self.loop = runner_loop(config, run_dir)
        self.config = config
        self.steps = self.loop.steps_per_epoch
        t = self.loop
        step = train.make_train_step(t.model, t.loss_fn, t.optimizer, jit=False)
        self.whole_epoch = train.make_epoch_fn(
            step, t.train.images, t.train.labels, config.batch_size,
            driver=config.driver, halt_on_nonfinite=config.on_nonfinite == "stop",
            steps_per_call=None)
        self.signals = StopSignals()  # asked between calls, as the runner's are

    def bare(self) -> None:
        t = self.loop
        ts, metrics = self.whole_epoch(t.ts, seed=self.config.seed, epoch=t.epoch)
        jax.block_until_ready(ts)

    def bare_eval(self) -> None:
        t = self.loop
        ts, metrics = self.whole_epoch(t.ts, seed=self.config.seed, epoch=t.epoch)
        if t.val is not None:
            train.evaluate(t.eval_step, ts.params, ts.state, t.val, t.eval_batch, mesh=t.mesh)
        train.evaluate(t.eval_step, ts.params, ts.state, t.test, t.eval_batch, mesh=t.mesh)

    def runner(self) -> None:
        self.loop.train_epoch(self.signals.heard)

    def flush(self) -> None:
        self.loop.writer.flush()

    def close(self) -> None:
        self.loop.close()


def timed_block(case: Case, contender: str, epochs: int) -> list[float]:
    run = {"bare": case.bare, "bare+eval": case.bare_eval, "runner": case.runner}[contender]
    times = []
    for i in range(epochs):
        t0 = time.perf_counter()
        run()
        if contender == "runner" and i == epochs - 1:
            case.flush()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------ breakdown


class Breakdown:
    """Wall time of the calling thread in each part of ``Loop.train_epoch``."""

    def __init__(self, loop: train.Loop) -> None:
        self.loop, self.totals, self._saved = loop, defaultdict(float), []

    def _wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[label] += time.perf_counter() - t0

        self._saved.append((owner, attr, original, attr in vars(owner)))
        setattr(owner, attr, timed)

    def __enter__(self) -> Breakdown:
        t = self.loop
        self._wrap(t, "_run_epoch", "train epoch (compiled calls)")
        self._wrap(train, "evaluate", "val + test evaluation")
        self._wrap(t, "_log_train", "train/* scalars every log_every steps")
        self._wrap(t, "epoch_images", "images: filters, feature maps, confusion, misclassified")
        self._wrap(t, "_checkpoint", "checkpoint + run.json")
        for method in ("write_scalars", "write_histograms", "write_images"):
            self._wrap(t.writer, method, f"writer.{method} (checks, host copies, queue)")
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, original, own in reversed(self._saved):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)


# ------------------------------------------------------------------------------ main


def _fmt(xs: list[float]) -> tuple[str, str]:
    return f"{statistics.median(xs):.3f}", f"{min(xs):.3f}-{max(xs):.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help=f"dataset:model,... (default {DEFAULT_CASES}; mnist falls back to "
                        f"fashion_mnist, same sizes, when its files are missing)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="epochs per contender per pass")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts of the runner's epoch")
    p.add_argument("--quick", action="store_true", help="digits only, 2 passes of 1 epoch")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.passes, args.epochs = "digits:vgg_small", 2, 1

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()})")
    print(f"command: logging_overhead.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"passes: {args.passes} x {args.epochs} epochs per contender, order rotated each pass")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    # The runner does this on the CPU; here it holds for bare and runner alike.
    print(f"malloc keeps freed memory: {cpu.keep_freed_memory()}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for spec in args.cases.split(","):
            dataset, model = spec.split(":")
            why = available(dataset)
            if why and dataset == "mnist" and available("fashion_mnist") is None:
                print(f"note: {why}; timing fashion_mnist instead (the same sizes)")
                dataset, why = "fashion_mnist", None
            if why:
                print(f"skipped {spec}: {why}")
                continue
            case = Case(dataset, model, runs_dir)
            print(f"{case.name}: {case.steps} steps of {case.config.batch_size} per epoch, "
                  f"log_every {case.config.log_every}; warming up", flush=True)
            for contender in CONTENDERS:  # compiles everything once
                timed_block(case, contender, 1)
            times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            for i in range(args.passes):
                order = CONTENDERS[i % 3:] + CONTENDERS[: i % 3]
                for contender in order:
                    times[contender] += timed_block(case, contender, args.epochs)
                print(f"  pass {i + 1}: " + ", ".join(
                    f"{c} {statistics.median(times[c][-args.epochs:]):.3f}s" for c in order),
                    flush=True)
            if args.breakdown:
                with Breakdown(case.loop) as b:
                    t0 = time.perf_counter()
                    for _ in range(args.epochs):
                        case.runner()
                    case.flush()
                    total = (time.perf_counter() - t0) / args.epochs
                print(f"  breakdown of the runner's epoch ({args.epochs} epochs, mean "
                      f"{total:.3f} s; parts overlap where one calls another):")
                for label, secs in sorted(b.totals.items(), key=lambda kv: -kv[1]):
                    print(f"    {secs / args.epochs:8.3f} s  {label}")
            case.close()
            med = {c: statistics.median(v) for c, v in times.items()}
            rows.append((case.name, case.steps, case.config.batch_size, times, med))

    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)\n")
    print("| case | steps x batch | contender | s/epoch | min-max | x bare | x bare+eval |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, steps, batch, times, med in rows:
        for j, c in enumerate(CONTENDERS):
            m, rng = _fmt(times[c])
            print(f"| {name if j == 0 else ''} | {f'{steps} x {batch}' if j == 0 else ''} | {c} "
                  f"| {m} | {rng} | {med[c] / med['bare']:.3f} | "
                  f"{med[c] / med['bare+eval']:.3f} |")


if __name__ == "__main__":
    main()
