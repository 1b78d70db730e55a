"""2-D convolution for XLA's CPU backend, with backward passes that XLA runs fast.

Why: on CPU, XLA's forward convolution (NHWC x HWIO, handed to YNNPACK) is fast, but the
gradients JAX derives for it are convolutions in unusual dimension orders. At the top level of
a jitted step XLA transposes those back to the canonical form and the weight gradient runs at
a third of the forward's speed (a convolution with a huge window and a 3x3 output); inside a
``lax.scan`` body, which is how :func:`jaxcnn.train.make_epoch_fn` trains, XLA does not, and
the gradients run through a naive loop emitter, 5 to 100 times slower than the forward
(``benchmarks/conv_breakdown.py`` measures each piece).

What: :func:`conv2d` is a ``jax.custom_jvp`` whose tangents are written so that *their*
transposes, which reverse mode evaluates, are the hand-derived backward equations in forms
XLA's CPU backend runs well. For Y = X * K (cross-correlation) and G = dE/dY:

- dE/dX is the full convolution of G with K rotated by 180 degrees, input and output
  channels swapped. ``dx="conv"``: the x-tangent convolves with the kernel given as HWOI, so
  that JAX's transpose rule produces exactly that correlation in canonical NHWC x HWIO order;
  ``dx="gemm"`` (few input channels): the x-tangent is im2col(dX) @ K, so dE/dX is one GEMM
  G @ K^T folded back onto the input (col2im: pads and adds XLA fuses).
- dE/dK is X correlated with G. ``dw="gemm"``: one GEMM of the (kh kw C_in) x (N H_out
  W_out) matrix of shifted input windows with G (batched over groups), the windows built in a
  layout whose copies XLA fuses; ``dw="conv"`` (few output channels): a canonical convolution
  of X laid out (C_in, H, W, N) with G laid out (H_out, W_out, N, C_out).
- The forward is ``lax.conv_general_dilated`` (``fwd="lax"``) or, for one input channel,
  the sum over the kh kw taps of shifted inputs times a kernel row, computed with the output
  channels outermost (``fwd="taps"``): one fused loop instead of a convolution whose 1-channel
  contraction wastes the vector units. Plain evaluation (nothing differentiated: inference)
  may use another forward than the differentiated pass (``infer``), as each runs best.
  Inputs of 2 to 7 channels are zero-padded to 8 for XLA's convolutions, which run faster so.
- XLA's CPU runtime runs a convolution whose output is stored on a single core, but runs
  independent operations of a training step side by side; so in the differentiated pass the
  convolutions run as ``split`` batch slices (4 from batch 64 on), concatenated. A symbolic
  batch (``jax.export`` with a ``"b, H, W, C"`` shape) is never split: the plan then depends
  on the kernel alone, and each slice's bounds would need the batch's value.

Because it is a custom JVP rather than a custom VJP, forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.hessian``), reverse mode, ``vmap`` and higher-order derivatives all keep
working; the tangent of an argument that is not differentiated (the images, for the first
layer) is a symbolic zero and costs nothing.

When: :func:`jaxcnn.ops.conv2d` takes this path where :func:`jaxcnn.cpu.enabled` (the switch,
``JAXCNN_CPU``) says so when a function is traced: by default where JAX's default backend is
the CPU; GPU and TPU keep ``lax.conv_general_dilated`` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxcnn.checks import is_int
from jaxcnn.cpu.features import has_avx512
from jaxcnn.cpu.slices import concat_slices
from jaxcnn.typedefs import Array

__all__ = ["Plan", "conv2d", "plan_for"]

Pads = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")


class Plan(NamedTuple):
    """The formulation of each piece (see the module docstring): ``fwd`` in {"lax", "taps"}
    (the forward when differentiated), ``dx`` in {"conv", "gemm"}, ``dw`` in {"conv", "gemm"};
    ``split``: how many batch slices the convolutions of the differentiated pass run as;
    ``infer`` in {"lax", "taps"}: the forward when nothing is differentiated."""

    fwd: str = "lax"
    dx: str = "conv"
    dw: str = "gemm"
    split: int = 1
    infer: str = "lax"


class _Cfg(NamedTuple):
    strides: tuple[int, int]
    pads: Pads
    dilation: tuple[int, int]
    groups: int
    plan: Plan


def plan_for(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int = 1, *,
             features: Mapping[str, bool] | None = None) -> Plan:
    """The formulation of each piece for a convolution of these shapes (x NHWC, w HWIO), as
    measured in whole training steps and with ``benchmarks/conv_breakdown.py`` on 2-core
    CPUs: the 1-channel forward as taps (for inference only up to 16 output channels), the
    input gradient as a GEMM for a 1-channel input and, with AVX-512, for 2 to 7 input
    channels (``benchmarks/conv_plans.py``), the weight gradient as a GEMM from 32 output
    channels on (or with groups) and as a convolution below; in training, from batch 64 on,
    the convolutions (not the GEMMs) run as 4 batch slices. A batch that is not a concrete
    int (None, or symbolic under ``jax.export``) runs whole. ``features``: a CPU feature
    table like :func:`jaxcnn.cpu.features.cpu_features`'s (the host's when None)."""
    kh, kw, cin_g, cout = w_shape
    single = groups == 1
    fwd = "taps" if single and cin_g == 1 else "lax"
    # XLA runs a convolution of so few channels in Eigen; the GEMM goes to YNNPACK, which uses
    # AVX-512 where the cores have it.
    few = cin_g == 1 or (cin_g < 8 and has_avx512(features))
    dx = "gemm" if single and few else "conv"
    dw = "gemm" if cout >= 32 or not single else "conv"
    # XLA's CPU runtime runs a convolution whose output is stored on one core; inside a
    # training step (a scan body) it runs independent ones side by side.
    split = 4 if is_int(x_shape[0]) and x_shape[0] >= 64 else 1
    infer = "taps" if fwd == "taps" and cout <= 16 else "lax"
    return Plan(fwd, dx, dw, split, infer)


def conv2d(x: Array, w: Array, *, strides: tuple[int, int], pads: Pads,
           dilation: tuple[int, int], groups: int = 1, plan: Plan | None = None) -> Array:
    """Cross-correlation of x (N, H, W, C_in) with w (kh, kw, C_in // groups, C_out) and
    explicit padding ``((top, bottom), (left, right))``: the value of
    ``lax.conv_general_dilated`` in NHWC x HWIO, with the derivatives of the module docstring.
    ``plan`` overrides :func:`plan_for` (benchmarks and tests use it)."""
    plan = plan_for(x.shape, w.shape, groups) if plan is None else Plan(*plan)
    if groups > 1 and (plan.fwd, plan.dx, plan.dw, plan.infer) != ("lax", "conv", "gemm",
                                                                    "lax"):
        raise ValueError(f"conv2d: groups > 1 supports only fwd='lax', dx='conv', dw='gemm', "
                         f"infer='lax', got {plan}")
    cfg = _Cfg(tuple(strides), tuple(tuple(p) for p in pads), tuple(dilation), groups, plan)
    return _conv_jit(x, w, cfg)


# ----------------------------------------------------------------------------- pieces


def _out_hw(x_shape, w_shape, cfg: _Cfg) -> tuple[int, int]:
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                 for n, k, s, (lo, hi), d in zip(x_shape[1:3], w_shape[:2], cfg.strides,
                                                 cfg.pads, cfg.dilation, strict=True))


def _strided(a: Array, spec: dict[int, tuple[int, int, int]]) -> Array:
    """``a`` sliced along each axis in ``spec`` as (start, count, step)."""
    start, limit, step = [0] * a.ndim, list(a.shape), [1] * a.ndim
    for ax, (off, count, s) in spec.items():
        start[ax], limit[ax], step[ax] = off, off + (count - 1) * s + 1, s
    return lax.slice(a, start, limit, step)


def _tap(a: Array, i: int, j: int, ho: int, wo: int, cfg: _Cfg, axes: tuple[int, int]):
    """Tap (i, j) of padded ``a``: the ho x wo window, strided and dilated, along ``axes``."""
    (sh, sw), (dh, dw) = cfg.strides, cfg.dilation
    return _strided(a, {axes[0]: (i * dh, ho, sh), axes[1]: (j * dw, wo, sw)})


def _patches(x: Array, kh: int, kw: int, cfg: _Cfg, ho: int, wo: int) -> Array:
    """im2col: (N * ho * wo, kh * kw * C), columns ordered (i, j, c) like w.reshape(-1, O)."""
    xp = jnp.pad(x, ((0, 0), *cfg.pads, (0, 0)))
    taps = [_tap(xp, i, j, ho, wo, cfg, (1, 2)) for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=3).reshape(x.shape[0] * ho * wo, kh * kw * x.shape[3])


def _patches_t(x: Array, kh: int, kw: int, cfg: _Cfg, ho: int, wo: int) -> Array:
    """Transposed im2col: (kh, kw, C, N * ho * wo).

    Built from x laid out (C, N, H, W) as the kw column shifts, then the kh row shifts of
    those: two small stacks that XLA's CPU backend fuses into one copy each (one stack of
    kh * kw slices it leaves as kh * kw copies and a concatenation)."""
    (sh, sw), (dh, dw) = cfg.strides, cfg.dilation
    xt = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), *cfg.pads))
    c, n = xt.shape[:2]
    cols = jnp.stack([_strided(xt, {3: (j * dw, wo, sw)}) for j in range(kw)])
    rows = jnp.stack([_strided(cols, {3: (i * dh, ho, sh)}) for i in range(kh)])
    return rows.reshape(kh, kw, c, n * ho * wo)  # rows: (kh, kw, C, N, ho, wo)


def _batch_split(fn, x: Array, parts: int) -> Array:
    """:func:`concat_slices` for a convolution's batch, left whole below 2 rows a slice or when
    the batch is symbolic (``jax.export``): a slice's bounds need its value."""
    if parts <= 1 or not is_int(x.shape[0]) or x.shape[0] < 2 * parts:
        return fn(x)
    return concat_slices(fn, x, parts)


def _pad8(x: Array, w: Array, cfg: _Cfg, w_axis: int) -> tuple[Array, Array]:
    """x and w with the input channels zero-padded from 2-7 up to 8, on which XLA's CPU
    convolution runs faster (its transpose slices the 8 back to the input's channels)."""
    cin = x.shape[3]
    if cfg.groups > 1 or not 1 < cin < 8:
        return x, w
    pad_w = [(0, 0)] * 4
    pad_w[w_axis] = (0, 8 - cin)
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 8 - cin))), jnp.pad(w, pad_w)


def _fwd_lax(x: Array, w: Array, cfg: _Cfg) -> Array:
    x, w = _pad8(x, w, cfg, 2)
    return _batch_split(lambda x: lax.conv_general_dilated(
        x, w, cfg.strides, cfg.pads, rhs_dilation=cfg.dilation, dimension_numbers=_NHWC,
        feature_group_count=cfg.groups), x, cfg.plan.split)


def _fwd_taps(x: Array, w: Array, cfg: _Cfg) -> Array:
    """Sum over taps and input channels of shifted x times one kernel entry per output
    channel, computed as (C_out, N, H_out, W_out) so that XLA's fused loop runs along W (a few
    output channels as the innermost axis defeat vectorisation), then put back to NHWC."""
    kh, kw, cin, _ = w.shape
    ho, wo = _out_hw(x.shape, w.shape, cfg)
    xt = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), *cfg.pads))  # (C, N, Hp, Wp)
    y = None
    for i in range(kh):
        for j in range(kw):
            tap = _tap(xt, i, j, ho, wo, cfg, (2, 3))
            for c in range(cin):
                term = tap[c][None] * w[i, j, c][:, None, None, None]
                y = term if y is None else y + term
    return jnp.transpose(y, (1, 2, 3, 0))


def _forward(x: Array, w: Array, cfg: _Cfg, *, train: bool) -> Array:
    """The forward of the differentiated pass (``train``) or of plain evaluation."""
    if not train:
        cfg = cfg._replace(plan=cfg.plan._replace(split=1))
    form = cfg.plan.fwd if train else cfg.plan.infer
    return _fwd_taps(x, w, cfg) if form == "taps" else _fwd_lax(x, w, cfg)


def _tangent_x(dx: Array, w: Array, cfg: _Cfg) -> Array:
    """Linear in dx; its transpose (the input gradient) is what reverse mode evaluates."""
    kh, kw, cin, cout = w.shape
    if cfg.plan.dx == "gemm":  # groups == 1
        # transpose: G @ K^T (one GEMM), then col2im: the transposes of the slices, pads and
        # adds XLA fuses into one loop
        ho, wo = _out_hw(dx.shape, w.shape, cfg)
        cols = _patches(dx, kh, kw, cfg, ho, wo)
        return (cols @ w.reshape(kh * kw * cin, cout)).reshape(dx.shape[0], ho, wo, cout)
    # The kernel as HWOI: lax's transpose rule swaps I and O, so the input gradient becomes the
    # canonical NHWC x HWIO correlation of G with the rotated kernel.
    dx, wt = _pad8(dx, jnp.transpose(w, (0, 1, 3, 2)), cfg, 3)
    return _batch_split(lambda dx: lax.conv_general_dilated(
        dx, wt, cfg.strides, cfg.pads, rhs_dilation=cfg.dilation,
        dimension_numbers=("NHWC", "HWOI", "NHWC"), feature_group_count=cfg.groups),
        dx, cfg.plan.split)


def _tangent_w(x: Array, dw: Array, cfg: _Cfg) -> Array:
    """Linear in dw; its transpose (the weight gradient) is what reverse mode evaluates."""
    kh, kw, cin_g, cout = dw.shape
    n, g = x.shape[0], cfg.groups
    ho, wo = _out_hw(x.shape, dw.shape, cfg)
    if cfg.plan.dw == "gemm":
        # transpose: per group, patches_t (kh kw C_in/g, N ho wo) @ G (N ho wo, C_out/g): a
        # row-major GEMM that XLA hands to YNNPACK (G is used as it is when groups == 1).
        pt = _patches_t(x, kh, kw, cfg, ho, wo)  # (kh, kw, C_in, N ho wo)
        if g == 1:
            y = lax.dot_general(pt.reshape(kh * kw * cin_g, n * ho * wo),
                                dw.reshape(kh * kw * cin_g, cout), (((0,), (0,)), ((), ())))
            return y.reshape(n, ho, wo, cout)
        pt = jnp.transpose(pt.reshape(kh * kw, g, cin_g, n * ho * wo), (1, 0, 2, 3))
        k = dw.reshape(kh * kw * cin_g, g, cout // g).transpose(1, 0, 2)
        y = lax.dot_general(pt.reshape(g, kh * kw * cin_g, n * ho * wo), k,
                            (((1,), (1,)), ((0,), (0,))))  # (g, N ho wo, C_out/g)
        return jnp.transpose(y, (1, 0, 2)).reshape(n, ho, wo, cout)
    # groups == 1: x as (C, H, W, N) with batch and feature swapped in its spec, dw as (C, kh,
    # kw, O), the output as (ho, wo, N, O): lax's transpose rule for the kernel then is the
    # canonical b01f x 01io -> b01f convolution of x^T (batch C, features N) with G.
    def tangent(x):
        yt = lax.conv_general_dilated(
            jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dw, (2, 0, 1, 3)), cfg.strides,
            cfg.pads, rhs_dilation=cfg.dilation, dimension_numbers=("CHWN", "IHWO", "HWNC"))
        return jnp.transpose(yt, (2, 0, 1, 3))

    return _batch_split(tangent, x, cfg.plan.split)  # transposed: a sum of partial dW


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x: Array, w: Array, cfg: _Cfg) -> Array:
    return _forward(x, w, cfg, train=False)


def _conv_jvp(cfg: _Cfg, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _forward(x, w, cfg, train=True)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_tangent_x(dx, w, cfg))
    if not isinstance(dw, SymbolicZero):
        parts.append(_tangent_w(x, dw, cfg))
    if not parts:
        return y, jnp.zeros_like(y)
    return y, parts[0] if len(parts) == 1 else parts[0] + parts[1]


_conv.defjvp(_conv_jvp, symbolic_zeros=True)

# Applied outside ``jax.jit`` (in a notebook, or ``jax.grad`` of an unjitted function), the
# forms above would run as dozens to hundreds of separately dispatched operations (121 taps for
# an 11x11 kernel: 11 s the first time, 0.18 s a call after); jitted they run as one compiled
# call. ``inline`` puts the body straight into an enclosing jitted function's program.
_conv_jit = jax.jit(_conv, static_argnums=(2,), inline=True)
