"""Paired A/B of ``make_train_step(batch_slices=...)``: how many slices a training step runs in.

    .venv/bin/python benchmarks/batch_slices.py                 # the table in benchmarks/README
    .venv/bin/python benchmarks/batch_slices.py --models lenet5 --batches 128 \\
        --slices 4,auto,16 --passes 30
    .venv/bin/python benchmarks/batch_slices.py --batches 1024 --slices 1,auto

For a model that mixes examples (BatchNorm; e.g. ``vgg``), ``auto`` shows 1 slice in the
table, the step's own count, while its serials cut their runs of per-example layers
(``jaxcnn.layers.serial``); ``1`` runs it whole.
A model is a name from ``jaxcnn.models`` or an experiment (``scripts.load_experiment``: a name
or a script's path) whose ``get_model`` builds it, e.g. ``fashion_augmented``.
For each model and batch, one compiled epoch per ``batch_slices`` value (``train.make_epoch_fn``,
``driver="scan"``, ``--steps`` steps of device-resident random 28x28x1 images, SGD with
momentum), run in interleaved passes whose order rotates. This machine's speed drifts by tens of
percent within minutes, so besides each value's median images/s the table gives the median over
the passes of its ratio to the first value's epoch *in the same pass*, and in how many passes it
was the faster of the two: a steadier comparison than two medians taken minutes apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxcnn import cpu, models, scripts  # noqa: E402
from jaxcnn import train as train_lib  # noqa: E402
from jaxcnn.losses import softmax_cross_entropy  # noqa: E402


def _value(text: str) -> int | str:
    return text if text == "auto" else int(text)


def random_data(batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` batches of random 28x28x1 images and labels, the same for every call."""
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 28, 28, 1), np.float32)
    return x, rng.integers(0, 10, batch * steps).astype(np.int32)


def make_model(name: str):
    """``jaxcnn.models.<name>()``, or the model of experiment ``name`` (its ``get_model``)."""
    if hasattr(models, name):
        return getattr(models, name)()
    module = scripts.load_experiment(name)
    return module.get_model(module.get_config())


def build(model_name: str, batch: int, slices, x: np.ndarray, y: np.ndarray,
          steps_per_call: int | None = None):
    """A function of the epoch number that runs one compiled epoch over (x, y) (SGD with
    momentum; ``steps_per_call`` as in ``train.make_epoch_fn``), compiled and warmed up."""
    model = make_model(model_name)
    opt = optax.sgd(0.01, momentum=0.9)
    step = train_lib.make_train_step(model, softmax_cross_entropy, opt, jit=False,
                                     batch_slices=slices)
    epoch = train_lib.make_epoch_fn(step, x, y, batch, driver="scan",
                                    steps_per_call=steps_per_call)
    ts = train_lib.create_train_state(model, opt, jax.random.key(0), (None, 28, 28, 1))
    jax.block_until_ready(epoch(ts, seed=0, epoch=0))
    return lambda e: jax.block_until_ready(epoch(ts, seed=0, epoch=e))


def interleave(runs: dict, passes: int) -> dict[object, list[float]]:
    """Seconds of each ``runs[v](epoch)`` in ``passes`` passes whose order rotates."""
    values = list(runs)
    secs = {v: [] for v in values}
    for k in range(passes):
        for v in values[k % len(values):] + values[:k % len(values)]:
            t = time.perf_counter()
            runs[v](k + 1)
            secs[v].append(time.perf_counter() - t)
    return secs


def paired(secs: dict[object, list[float]], images: int) -> dict[object, str]:
    """For each value: "img/s (median) | median ratio to the first value's epoch in the same
    pass | passes won" as table cells."""
    first = next(iter(secs))
    ref = np.array(secs[first])
    out = {}
    for v, t in secs.items():
        ratio = ref / np.array(t)  # > 1: faster than the first value
        won = "" if v == first else f"{int((ratio > 1).sum())}/{len(t)}"
        out[v] = (f"{statistics.median(images / np.array(t)):,.0f} | "
                  f"{statistics.median(ratio):.3f} | {won}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet5,simple_cnn")
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--slices", default="4,auto", help="values to compare; the first is the "
                   "reference (an int or auto)")
    p.add_argument("--passes", type=int, default=20)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (default: 2,560 // "
                   "batch, at least 2)")
    args = p.parse_args(argv)
    cpu.keep_freed_memory()  # as the runner does
    values = list(dict.fromkeys(_value(s.strip()) for s in args.slices.split(",") if s.strip()))
    print(f"{os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()}); "
          f"{args.passes} interleaved passes; load average {os.getloadavg()[0]:.2f}")
    print("\n| model | batch | batch_slices | slices | img/s (median) | x first, same pass "
          "(median) | passes won |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
            steps = args.steps or max(2, 2560 // batch)
            # One copy of the data for every value, so that they differ in their program only.
            x, y = random_data(batch, steps)
            runs = {v: build(model_name, batch, v, x, y) for v in values}
            model = make_model(model_name)
            counts = {v: train_lib.batch_slices_for(model, batch, v) for v in values}
            cells = paired(interleave(runs, args.passes), batch * steps)
            for v in values:
                print(f"| {model_name} | {batch} | {v} | {counts[v]} | {cells[v]} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
