"""Paired A/B of the cost of augmentation inside the compiled epoch (``make_train_step``'s
``augment=``): a plain epoch against the same epoch with each augmentation spec.

    .venv/bin/python benchmarks/augment_overhead.py          # the table in benchmarks/README
    .venv/bin/python benchmarks/augment_overhead.py --specs translate:2,crop:2:flip --passes 10

For each spec (``;``-separated, each in :func:`jaxcnn.augment.parse`'s syntax), one compiled
epoch of ``simple_cnn`` (``train.make_epoch_fn``, ``driver="scan"``, ``--steps`` steps of
device-resident random 28x28x1 MNIST-shaped images at ``--batch``, SGD with momentum), built as
``benchmarks/batch_slices.py`` builds them, run in interleaved passes whose order rotates. The
table gives each epoch's median images/s and the median, over the passes, of its wall time
over the plain epoch's in the same pass (1.05 = 5% more), and in how many passes it was slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from batch_slices import random_data  # noqa: E402

from jaxcnn import augment, cpu, models  # noqa: E402
from jaxcnn import train as train_lib  # noqa: E402
from jaxcnn.losses import softmax_cross_entropy  # noqa: E402


def build(batch: int, spec: str, x: np.ndarray, y: np.ndarray, model_name: str):
    """A function of the epoch number running one compiled, warmed-up epoch over (x, y)."""
    model = getattr(models, model_name)()
    opt = optax.sgd(0.01, momentum=0.9)
    aug = augment.parse(spec, num_classes=10)
    step = train_lib.make_train_step(model, softmax_cross_entropy, opt, jit=False, augment=aug)
    epoch = train_lib.make_epoch_fn(step, x, y, batch, driver="scan", steps_per_call=20)
    ts = train_lib.create_train_state(model, opt, jax.random.key(0), (None, 28, 28, 1))
    jax.block_until_ready(epoch(ts, seed=0, epoch=0))
    return lambda e: jax.block_until_ready(epoch(ts, seed=0, epoch=e))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--specs", default="translate:2;crop:2,flip;crop:2,flip,cutout:8;mixup:0.2",
                   help="';'-separated augmentation specs, each against the plain epoch")
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    args = p.parse_args(argv)
    cpu.keep_freed_memory()  # as the runner does
    specs = ["", *[s.strip() for s in args.specs.split(";") if s.strip()]]
    print(f"{os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()}); "
          f"{args.model} batch {args.batch}, {args.steps} steps an epoch; {args.passes} "
          f"interleaved passes; load average {os.getloadavg()[0]:.2f}")
    x, y = random_data(args.batch, args.steps)
    runs = {s: build(args.batch, s, x, y, args.model) for s in specs}
    secs = {s: [] for s in specs}
    for k in range(args.passes):
        order = specs[k % len(specs):] + specs[:k % len(specs)]
        for s in order:
            t = time.perf_counter()
            runs[s](k + 1)
            secs[s].append(time.perf_counter() - t)
    plain = np.array(secs[""])
    print("\n| augment | img/s (median) | epoch time / plain, same pass (median) | "
          "passes slower |")
    print("|---|---:|---:|---:|")
    for s in specs:
        ratio = np.array(secs[s]) / plain
        slower = "" if not s else f"{int((ratio > 1).sum())}/{args.passes}"
        speed = statistics.median(args.batch * args.steps / np.array(secs[s]))
        print(f"| {s or '(none)'} | {speed:,.0f} | {statistics.median(ratio):.3f} | {slower} |",
              flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
