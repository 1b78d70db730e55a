"""Paired A/B of convolution plans (``jaxcnn.cpu.plan_for``) in a model's training step.

    .venv/bin/python benchmarks/conv_plans.py        # lenet5's conv2 dX: picked, conv, gemm
    .venv/bin/python benchmarks/conv_plans.py --models simple_cnn \\
        --plans "picked;conv2:dx=gemm;conv2:dw=conv,split=1"

Each plan is ``picked`` (what ``plan_for`` picks on this machine) or ``/``-separated overrides
``convK:field=value[,field=value]`` of the K-th convolution (in the model's order) of the plan
``plan_for`` picks, fields as in ``jaxcnn.cpu.Plan``. For each model and batch, one compiled epoch
per plan (``batch_slices.build``: the scanned epoch of ``make_train_step`` over random 28x28x1
images), in interleaved passes whose order rotates; the table gives each plan's median images/s,
its median ratio to the first plan's epoch in the same pass, and the passes it won.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batch_slices  # noqa: E402
import jax  # noqa: E402

from jaxcnn import cpu, walk  # noqa: E402
from jaxcnn.cpu import conv as cc  # noqa: E402

CHOICES = {"fwd": ("lax", "taps"), "dx": ("conv", "gemm"), "dw": ("conv", "gemm"),
           "infer": ("lax", "taps")}


def parse_plan(text: str) -> dict[int, dict[str, str | int]]:
    """``"conv2:dx=gemm,split=1/conv1:dw=gemm"`` -> {2: {"dx": "gemm", "split": 1}, 1: {...}};
    ``"picked"`` -> {}."""
    if text.strip() == "picked":
        return {}
    out: dict[int, dict[str, str | int]] = {}
    for part in text.split("/"):
        layer, _, fields = part.strip().partition(":")
        if not (layer.startswith("conv") and layer[4:].isdigit() and fields):
            raise SystemExit(f"conv_plans: a plan is 'picked' or 'convK:field=value,...' "
                             f"(K from 1), got {part!r}")
        over: dict[str, str | int] = {}
        for field in fields.split(","):
            key, _, value = field.partition("=")
            if key == "split" and value.isdigit() and int(value) >= 1:
                over[key] = int(value)
            elif value in CHOICES.get(key, ()):
                over[key] = value
            else:
                raise SystemExit(f"conv_plans: {field!r}: the fields are split=<int >= 1> and "
                                 + ", ".join(f"{k} in {v}" for k, v in CHOICES.items()))
        out[int(layer[4:])] = over
    return out


def kernel_shapes(model_name: str) -> list[tuple[int, ...]]:
    """The HWIO kernel shape of each convolution of the model, in the model's order (the
    layers' ``w`` params with 4 axes, walked by ``jaxcnn.walk.nodes``)."""
    model = batch_slices.make_model(model_name)
    _, params, _ = model.init(jax.random.key(0), (None, 28, 28, 1))
    kernels = (walk.subtree(params, node).get("w") for node in walk.nodes(model)
               if not node.info.children)
    return [tuple(w.shape) for w in kernels if getattr(w, "ndim", 0) == 4]


@contextlib.contextmanager
def planned(overrides: dict[int, dict], shapes: list[tuple[int, ...]]):
    """``plan_for`` with ``overrides`` applied to the convolutions of those kernel shapes while
    a step is traced."""
    picked = cc.plan_for
    by_shape = {}
    for k, over in overrides.items():
        if not 1 <= k <= len(shapes):
            raise SystemExit(f"conv_plans: conv{k}: the model has {len(shapes)} convolutions")
        if shapes.count(shapes[k - 1]) > 1:
            raise SystemExit(f"conv_plans: conv{k}'s kernel shape {shapes[k - 1]} is shared by "
                             f"another convolution, so its plan cannot be overridden alone")
        by_shape[shapes[k - 1]] = over

    def plan_for(x_shape, w_shape, groups=1, **kw):
        return picked(x_shape, w_shape, groups, **kw)._replace(
            **by_shape.get(tuple(w_shape), {}))

    cc.plan_for = plan_for
    try:
        yield
    finally:
        cc.plan_for = picked


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet5")
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--plans", default="picked;conv2:dx=conv;conv2:dx=gemm",
                   help="';'-separated plans; the first is the reference")
    p.add_argument("--passes", type=int, default=6)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (default: 8,192 // "
                   "batch for lenet5, 2,048 // batch otherwise, at least 2)")
    args = p.parse_args(argv)
    cpu.keep_freed_memory()  # as the runner does
    plans = [s.strip() for s in args.plans.split(";") if s.strip()]
    overrides = {s: parse_plan(s) for s in plans}
    print(f"{os.cpu_count()} cores, AVX-512: {cpu.has_avx512()}; jax {jax.__version__}; "
          f"{args.passes} interleaved passes; load average {os.getloadavg()[0]:.2f}")
    print("\n| model | batch | plan | img/s (median) | x first, same pass (median) | passes "
          "won |\n|---|---:|---|---:|---:|---:|")
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        shapes = kernel_shapes(model_name)
        for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
            per = 8192 if model_name == "lenet5" else 2048
            steps = args.steps or max(2, per // batch)
            x, y = batch_slices.random_data(batch, steps)
            runs = {}
            for s in plans:
                with planned(overrides[s], shapes):
                    runs[s] = batch_slices.build(model_name, batch, "auto", x, y)
            cells = batch_slices.paired(batch_slices.interleave(runs, args.passes),
                                        batch * steps)
            for s in plans:
                print(f"| {model_name} | {batch} | {s} | {cells[s]} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
