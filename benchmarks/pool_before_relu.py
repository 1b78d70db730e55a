"""Paired A/B of a serial running ``Relu -> MaxPool`` as ``MaxPool -> Relu``
(``jaxcnn.layers.combinators.pool_before_relu``), on LeNet-5's training step.

    .venv/bin/python benchmarks/pool_before_relu.py --batches 128,1024 --passes 10

``written order`` is LeNet-5 with each ReLU a ``Lambda(jax.nn.relu, per_example=True)``, which
the serial does not move: the ReLU runs on the convolution's whole output, as written.
``jaxcnn`` is ``models.lenet5()``. Both train in a compiled epoch of ``make_train_step`` as in
``batch_slices.py`` (its ``build``), in passes whose order alternates; the table gives each
one's median images/s and the median of jaxcnn's ratio to the written order in the same pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batch_slices  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxcnn import layers as L  # noqa: E402
from jaxcnn import models  # noqa: E402


def written_order() -> L.Layer:
    """LeNet-5 whose ReLUs the serial cannot move (Lambdas)."""
    relu = lambda: L.Lambda(jax.nn.relu, per_example=True)  # noqa: E731
    return L.serial(L.Conv(6, 5, padding="SAME"), relu(), L.MaxPool(2), L.Conv(16, 5), relu(),
                    L.MaxPool(2), L.Flatten(), L.Dense(120), relu(), L.Dense(84), relu(),
                    L.Dense(10))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--passes", type=int, default=10)
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} cores; jax {jax.__version__}; {args.passes} passes; load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| batch | written order img/s | jaxcnn img/s | jaxcnn x written, same pass | won |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    makers = {"written": written_order, "jaxcnn": models.lenet5}
    for batch in [int(b) for b in args.batches.split(",")]:
        steps = max(2, 2560 // batch)
        x, y = batch_slices.random_data(batch, steps)
        runs = {}
        for name, make in makers.items():
            batch_slices.make_model = lambda _, make=make: make()
            runs[name] = batch_slices.build(name, batch, "auto", x, y)
        secs = {name: [] for name in runs}
        for k in range(args.passes):
            for name in (list(runs) if k % 2 == 0 else list(runs)[::-1]):
                t = time.perf_counter()
                runs[name](k + 1)
                secs[name].append(time.perf_counter() - t)
        ratio = np.array(secs["written"]) / np.array(secs["jaxcnn"])
        rate = {n: statistics.median(batch * steps / np.array(s)) for n, s in secs.items()}
        print(f"| {batch} | {rate['written']:,.0f} | {rate['jaxcnn']:,.0f} | "
              f"{statistics.median(ratio):.3f} | {int((ratio > 1).sum())}/{args.passes} |",
              flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
