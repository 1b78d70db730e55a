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

Whole models are cut into batch slices too: :func:`batch_slices` is how many slices the
training pass of a per-example model computes a batch in on this host (32 rows a slice with
AVX-512, else 16), which :func:`jaxcnn.layers.serial` and :func:`jaxcnn.steps.make_train_step`
apply; :func:`whole_batch` stops a slice from being cut again.

Because it is a custom JVP rather than a custom VJP, forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.hessian``), reverse mode, ``vmap`` and higher-order derivatives all keep
working; the tangent of an argument that is not differentiated (the images, for the first
layer) is a symbolic zero and costs nothing.

When: :func:`enabled` decides at trace time from ``JAXCNN_CONV_IMPL``: ``auto`` (default:
this path when JAX's default backend is the CPU; GPU and TPU keep ``lax.conv_general_dilated``
as it is), ``cpu`` (always) or ``xla`` (never: plain ``lax.conv_general_dilated`` and JAX's
own derivatives, e.g. to compare). :func:`use_xla_conv` forces ``xla`` for the functions traced
inside it, whatever the variable says: :func:`jaxcnn.export.export_model` traces so for a
program lowered for GPU or TPU too.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Iterator, Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxcnn.checks import is_int
from jaxcnn.typedefs import Array

__all__ = [
    "CPU_MAX_SLICES", "CPU_MIN_SLICED_BATCH", "CPU_SLICE_ROWS", "ENV_VAR", "Plan", "batch_slices",
    "concat_slices", "conv2d", "cpu_slice_rows", "enabled", "plan_for", "use_xla_conv",
    "whole_batch",
]

#: Environment variable that picks the implementation at trace time: auto, cpu or xla.
ENV_VAR = "JAXCNN_CONV_IMPL"

Pads = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")

# Set only by use_xla_conv, for the current thread or task (a ContextVar, not a global flag):
# another thread tracing at the same time keeps JAXCNN_CONV_IMPL's choice.
_FORCE_XLA: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxcnn_force_xla_conv",
                                                                 default=False)


@contextlib.contextmanager
def use_xla_conv() -> Iterator[None]:
    """Functions traced inside this block use ``lax.conv_general_dilated`` and JAX's own
    derivatives (:func:`enabled` is False), as ``JAXCNN_CONV_IMPL=xla`` would; for programs
    that must not carry this CPU-specific formulation, e.g. ones lowered for GPU as well.

    >>> with use_xla_conv():
    ...     enabled()
    False
    """
    token = _FORCE_XLA.set(True)
    try:
        yield
    finally:
        _FORCE_XLA.reset(token)


def enabled() -> bool:
    """Whether :func:`jaxcnn.ops.conv2d` takes this path; read from ``JAXCNN_CONV_IMPL`` when a
    function is traced, so a jitted function keeps the choice it was compiled with. Always
    False inside :func:`use_xla_conv`."""
    if _FORCE_XLA.get():
        return False
    impl = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if impl not in ("auto", "cpu", "xla"):
        raise ValueError(f"{ENV_VAR} must be 'auto', 'cpu' or 'xla', got {impl!r}; unset it "
                         f"or pick one of those")
    if impl == "auto":
        return jax.default_backend() == "cpu"
    return impl == "cpu"


def cpu_slice_rows(features: Mapping[str, bool] | None = None) -> int:
    """Rows per batch slice on this CPU: 32 with AVX-512, else 16. A core with wider vectors
    finishes a slice's operations sooner, so their fixed cost weighs more and larger slices win
    (``benchmarks/README.md``, CPU mechanisms, item 8). ``features``: NumPy's runtime CPU
    feature table (the host's when None)."""
    if features is None:
        features = _numpy_cpu_features()
    return 32 if features.get("AVX512F") else 16


def _numpy_cpu_features() -> Mapping[str, bool]:
    """NumPy's runtime CPU feature table (``numpy._core`` in NumPy 2, ``numpy.core`` in 1.x);
    empty where neither has it, which means the narrower vectors."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return importlib.import_module(module).__cpu_features__
        except (ImportError, AttributeError):
            continue
    return {}


#: Rows a batch slice aims at on this host (:func:`cpu_slice_rows`).
CPU_SLICE_ROWS = cpu_slice_rows()
#: The most slices a batch is computed in.
CPU_MAX_SLICES = 16
#: Smaller batches run whole: slices of fewer than 16 rows gained nothing.
CPU_MIN_SLICED_BATCH = 64

# Set by whole_batch while a caller computes the batch's slices itself.
_WHOLE: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxcnn_whole_batch",
                                                             default=False)


@contextlib.contextmanager
def whole_batch() -> Iterator[None]:
    """Inside this block :func:`batch_slices` is 1: for a caller that already computes the
    batch in slices (a model nested in a sliced one, a step with explicit ``batch_slices``),
    so no slice is cut again, or to train a model whole in a step of your own. Read when a
    function is traced: a jitted function keeps what it was first traced with, so enter the
    block inside the function, or around its first call."""
    token = _WHOLE.set(True)
    try:
        yield
    finally:
        _WHOLE.reset(token)


def batch_slices(batch_size: object) -> int:
    """How many slices the training pass of a per-example model computes a batch of
    ``batch_size`` rows in, where this CPU path is on (:func:`enabled`) and there is one device:
    the largest power of two of slices with at least :data:`CPU_SLICE_ROWS` rows each, at least
    4 and at most :data:`CPU_MAX_SLICES`, from :data:`CPU_MIN_SLICED_BATCH` rows on (with 32
    rows: 4 for batch 64-255, 8 for 256-511, 16 from 512 on). Else 1, and always 1 for a batch
    that is not a concrete int (symbolic under ``jax.export``) or inside :func:`whole_batch`.

    Why: XLA's CPU runtime runs most single operations on one core but independent ones side
    by side, so slices whose logits are concatenated keep both cores busy: the same function
    of the batch up to float rounding. :func:`jaxcnn.layers.serial` applies it in training
    mode, so a hand-written ``jax.jit(jax.value_and_grad(...))`` step gets it too."""
    if (_WHOLE.get() or not is_int(batch_size) or batch_size < CPU_MIN_SLICED_BATCH
            or not enabled() or jax.device_count() != 1):
        return 1
    fit = max(1, int(batch_size) // CPU_SLICE_ROWS)
    return min(CPU_MAX_SLICES, max(4, 1 << (fit.bit_length() - 1)))


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


def plan_for(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int = 1) -> Plan:
    """The formulation of each piece for a convolution of these shapes (x NHWC, w HWIO), as
    measured in whole training steps and with ``benchmarks/conv_breakdown.py`` on a 2-core
    AVX2 CPU: the 1-channel forward as taps (for inference only up to 16 output channels), the
    input gradient of a 1-channel input as a GEMM, the weight gradient as a
    GEMM from 32 output channels on (or with groups) and as a convolution below; in training,
    from batch 64 on, the convolutions run as 4 batch slices. A batch that is not a concrete
    int (None, or symbolic under ``jax.export``) runs whole."""
    kh, kw, cin_g, cout = w_shape
    single = groups == 1
    fwd = "taps" if single and cin_g == 1 else "lax"
    dx = "gemm" if single and cin_g == 1 else "conv"
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


def concat_slices(fn, x: Array, parts: int) -> Array:
    """``fn`` over ``parts`` near-equal slices of the batch (1 <= parts <= N), concatenated:
    independent work that XLA's CPU runtime runs on different cores, where it runs most single
    operations (a convolution among them) on one core. ``fn`` runs inside :func:`whole_batch`,
    so no model it applies cuts a slice again."""
    n = x.shape[0]
    bounds = [n * k // parts for k in range(parts + 1)]
    with whole_batch():
        return jnp.concatenate([fn(x[a:b])
                                for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


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
