"""Per-piece timings of the convolutions of simple_cnn and lenet5: forward, input gradient (dX)
and weight gradient (dW), XLA's own against each formulation of :mod:`jaxcnn.cpu.conv`.

    .venv/bin/python benchmarks/conv_breakdown.py                 # batch 128, all layers
    .venv/bin/python benchmarks/conv_breakdown.py --batch 1024 --layers simple_cnn/conv2

Each piece is timed two ways: ``top`` (one jitted call: how a jitted step without a scan runs
it) and ``scan`` (inside a ``lax.scan`` of ``--reps`` iterations over different inputs: how
``jaxcnn.train.make_epoch_fn`` runs it). Times are ms per call, medians over ``--passes``
interleaved passes (the order rotates each pass), with GFLOP/s (2 x MACs of the piece; the
``xla`` forward of a 1-channel convolution and the like count the same FLOPs as any other).
A ``*`` marks the formulation :func:`jaxcnn.cpu.plan_for` picks.
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
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from jaxcnn.cpu import conv as cc  # noqa: E402

# name: (H, W, C_in, C_out, k, padding) of each convolution, 28x28x1 inputs
LAYERS = {
    "simple_cnn/conv1": (28, 28, 1, 32, 3, "SAME"),
    "simple_cnn/conv2": (14, 14, 32, 64, 3, "SAME"),
    "lenet5/conv1": (28, 28, 1, 6, 5, "SAME"),
    "lenet5/conv2": (14, 14, 6, 16, 5, "VALID"),
}
FORMS = {"fwd": ("lax", "taps"), "dX": ("conv", "gemm"), "dW": ("conv", "gemm")}
SPLITS = {"lax": (1, 4), "conv": (1, 4), "taps": (1,), "gemm": (1,)}  # batch slices


def _pads(k: int, padding: str):
    p = k // 2 if padding == "SAME" else 0
    return ((p, k - 1 - p), (p, k - 1 - p))


def pieces(h, w, cin, cout, k, padding):
    """{(piece, formulation): fn(x, w, g) -> array} for one layer."""
    pads = _pads(k, padding)

    def lax_conv(x, wt):
        return lax.conv_general_dilated(x, wt, (1, 1), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = {
        ("fwd", "xla"): lambda x, wt, g: lax_conv(x, wt),
        ("dX", "xla"): lambda x, wt, g: jax.vjp(lambda x: lax_conv(x, wt), x)[1](g)[0],
        ("dW", "xla"): lambda x, wt, g: jax.vjp(lambda wt: lax_conv(x, wt), wt)[1](g)[0],
    }
    def cfg(**plan):
        return cc._Cfg((1, 1), pads, (1, 1), 1, cc.Plan(**plan))

    for form in FORMS["fwd"]:
        for split in SPLITS[form]:
            c = cfg(fwd=form, split=split)
            out["fwd", _name(form, split)] = lambda x, wt, g, c=c: cc._forward(x, wt, c,
                                                                               train=True)
    for form in FORMS["dX"]:
        for split in SPLITS[form]:
            c = cfg(dx=form, split=split)
            out["dX", _name(form, split)] = lambda x, wt, g, c=c: jax.vjp(
                lambda dx: cc._tangent_x(dx, wt, c), x)[1](g)[0]
    for form in FORMS["dW"]:
        for split in SPLITS[form]:
            c = cfg(dw=form, split=split)
            out["dW", _name(form, split)] = lambda x, wt, g, c=c: jax.vjp(
                lambda dw: cc._tangent_w(x, dw, c), wt)[1](g)[0]
    return out


def _name(form: str, split: int) -> str:
    return form if split == 1 else f"{form}/{split}"


def compile_piece(fn, args, reps: int, mode: str):
    if mode == "top":
        f = jax.jit(fn).lower(*(a[0] for a in args)).compile()
        return lambda: f(*(a[0] for a in args))

    # Accumulate whole outputs: each iteration stores its result, as a training step does (a
    # scalar sum would let XLA fuse the reduction into the convolution, which changes how it
    # runs).
    out_shape = jax.eval_shape(fn, *(a[0] for a in args))

    def run(*stacked):
        def body(acc, a):
            return acc + fn(*a), None
        return lax.scan(body, jnp.zeros(out_shape.shape, out_shape.dtype), stacked)[0]

    f = jax.jit(run).lower(*args).compile()
    return lambda: f(*args)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--layers", default=",".join(LAYERS), help=f"from {', '.join(LAYERS)}")
    p.add_argument("--modes", default="top,scan", help="top, scan or both")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--reps", type=int, default=4, help="scan length / calls per timing")
    args = p.parse_args(argv)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    modes = [s.strip() for s in args.modes.split(",") if s.strip()]
    n, r = args.batch, args.reps
    print(f"batch {n}; {os.cpu_count()} cores; jax {jax.__version__}; ms per call, median of "
          f"{args.passes} interleaved passes; load average {os.getloadavg()[0]:.1f}")
    for name in layers:
        h, w, cin, cout, k, padding = LAYERS[name]
        pads = _pads(k, padding)
        ho = h + sum(pads[0]) - k + 1
        wo = w + sum(pads[1]) - k + 1
        keys = jax.random.split(jax.random.key(0), 3)
        xs = jax.random.normal(keys[0], (r, n, h, w, cin))
        ws = jax.random.normal(keys[1], (r, k, k, cin, cout))
        gs = jax.random.normal(keys[2], (r, n, ho, wo, cout))
        flops = 2.0 * n * ho * wo * k * k * cin * cout
        chosen = cc.plan_for((n, h, w, cin), (k, k, cin, cout))
        pick = {piece: _name(form, chosen.split if len(SPLITS[form]) > 1 else 1)
                for piece, form in (("fwd", chosen.fwd), ("dX", chosen.dx), ("dW", chosen.dw))}
        fns = {}
        for (piece, form), fn in pieces(h, w, cin, cout, k, padding).items():
            for mode in modes:
                fns[piece, form, mode] = compile_piece(fn, (xs, ws, gs), r, mode)
        times = {key: [] for key in fns}
        order = list(fns)
        for pass_ in range(args.passes):
            shift = pass_ * 3 % len(order)
            for key in order[shift:] + order[:shift]:
                calls = r if key[2] == "top" else 1
                jax.block_until_ready(fns[key]())
                t = time.perf_counter()
                for _ in range(calls):
                    out = fns[key]()
                jax.block_until_ready(out)
                times[key].append((time.perf_counter() - t) * 1e3 / r)
        print(f"\n{name}: x ({n}, {h}, {w}, {cin}), w ({k}, {k}, {cin}, {cout}), {padding}: "
              f"{flops / 1e6:.0f} MFLOP per piece")
        print("| piece | formulation | " + " | ".join(f"{m} ms | {m} GFLOP/s" for m in modes)
              + " |")
        print("|---|---|" + "---:|---:|" * len(modes))
        for piece in ("fwd", "dX", "dW"):
            forms = [_name(f, s) for f in FORMS[piece] for s in SPLITS[f]]
            for form in ("xla", *forms):
                cells = []
                for mode in modes:
                    ms = statistics.median(times[piece, form, mode])
                    cells += [f"{ms:.2f}", f"{flops / ms / 1e6:.1f}"]
                mark = "*" if form == pick[piece] else ""
                print(f"| {piece} | {form}{mark} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
