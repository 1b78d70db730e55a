"""Layers as pairs of pure functions over plain dicts of arrays.

Every layer, leaf or combinator, is a :class:`Layer` ``(init, apply)`` with one signature:

    init(key, in_shape) -> (out_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, state)

- ``in_shape``/``out_shape`` include the batch dimension first, which may be ``None`` (open);
  activations are NHWC ``(N, H, W, C)``, conv kernels HWIO (see :mod:`jaxcnn.ops`).
- ``params`` are the trainable arrays, ``state`` the non-trainable ones (BatchNorm's running
  mean and variance); both are nested dicts with readable names (``{"conv1": {"w", "b"}}``)
  and ``{}`` for layers that have none. Combinators only keep entries for children that have
  something to store.
- ``key`` is an explicit ``jax.random.key``; only Dropout needs one, and only in training.
- ``train=True`` makes BatchNorm use batch statistics (and return updated running ones) and
  Dropout drop; ``train=False`` (the default) is inference.

Configuration is checked when a layer is constructed, shapes when ``init`` sees them; both
raise :class:`jaxcnn.errors.LayerError` (a ``ValueError``) naming the layer, the value given
and the value needed. Output shapes come from ``jax.eval_shape`` of ``apply`` itself, so the
shape ``init`` predicts is the shape ``apply`` returns.

>>> import jax
>>> from jaxcnn import layers as L
>>> net = L.serial(L.Conv(8, 3, padding="SAME"), L.Relu(), L.MaxPool(2), L.Flatten(), L.Dense(10))
>>> out_shape, params, state = net.init(jax.random.key(0), (None, 28, 28, 1))
>>> out_shape, sorted(params)
((None, 10), ['conv1', 'dense1'])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxcnn import ops
from jaxcnn._types import Array, Initializer, Key, Padding, Params, Shape, State
from jaxcnn.errors import LayerError
from jaxcnn.ops import _is_int, _is_real

__all__ = [
    "AvgPool", "BatchNorm", "Conv", "Dense", "Dropout", "Elu", "Flatten", "GlobalAvgPool",
    "GlobalMaxPool", "Lambda", "Layer", "LayerInfo", "LeakyRelu", "LogSoftmax", "MaxPool", "Relu",
    "Sigmoid", "Softmax", "Tanh", "child_names", "layer_info", "parallel", "residual", "serial",
]


class InitFn(Protocol):
    def __call__(self, key: Key, in_shape: Shape) -> tuple[Shape, Params, State]: ...


class ApplyFn(Protocol):
    def __call__(self, params: Params, state: State, x: Array, *, key: Key | None = None,
                 train: bool = False) -> tuple[Array, State]: ...


class Layer(NamedTuple):
    """A layer: ``init(key, in_shape) -> (out_shape, params, state)`` and
    ``apply(params, state, x, *, key=None, train=False) -> (y, state)``."""

    init: InitFn
    apply: ApplyFn


@dataclass(frozen=True)
class LayerInfo:
    """What a layer is, for naming and for :func:`jaxcnn.summary`; attached to ``init``.

    ``window``/``stride``/``dilation`` are the spatial geometry (None for layers that act on
    each position alone); ``is_global`` marks layers whose outputs see the whole input
    (global pooling, flatten); ``children`` are a combinator's sublayers, by name.
    ``per_example``: in training too, each example's output depends on that example's input
    alone, with no randomness (not BatchNorm, not Dropout, not an unmarked Lambda or a user's
    own Layer, not a softmax along an axis that may be the batch's), so a batch may be
    computed in slices (:func:`jaxcnn.train.make_train_step`). A ``Layer(init, apply)`` built
    from another layer's ``init`` keeps that layer's info, this mark included.
    """

    kind: str
    base: str
    name: str | None = None
    window: tuple[int, int] | None = None
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    is_global: bool = False
    children: tuple[tuple[str, Layer], ...] = field(default=())
    combine: str | None = None
    macs: Callable[[Shape, Shape], int] | None = None
    per_example: bool = False


def layer_info(layer: Layer) -> LayerInfo:
    """The :class:`LayerInfo` of ``layer``; a user's own ``Layer(init, apply)`` gets a generic
    one."""
    info = getattr(layer.init, "info", None)
    if info is None:
        name = getattr(layer.init, "__name__", "layer")
        return LayerInfo(kind="Layer", base=name if name.isidentifier() else "layer")
    return info


def _make(init: Callable, apply: Callable, info: LayerInfo) -> Layer:
    """The Layer, its ``init`` refusing a key that is not a PRNG key and its ``apply`` an
    input that is not an array, with this layer's own error instead of one from inside JAX."""

    def init_checked(key, in_shape):
        if not _is_prng_key(key):
            raise LayerError(info.kind, info.name, f"init needs a PRNG key, e.g. "
                             f"jax.random.key(0), got {type(key).__name__} {key!r:.60}")
        if isinstance(in_shape, tuple | list):
            in_shape = type(in_shape)(int(d) if _is_int(d) else d for d in in_shape)
        return init(key, in_shape)

    def apply_checked(params, state, x, *, key=None, train=False):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise LayerError(info.kind, info.name, f"input must be an array (N, ...), got "
                             f"{type(x).__name__}; convert it with jnp.asarray")
        return apply(params, state, x, key=key, train=train)

    init_checked.info = info  # type: ignore[attr-defined]
    return Layer(init_checked, apply_checked)


def _is_prng_key(key: Any) -> bool:
    """A typed key (``jax.random.key``) or a raw uint32 one (``jax.random.PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    if dtype is None or getattr(key, "ndim", 0) is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == jnp.uint32 and key.ndim >= 1


def _concrete(in_shape: Shape) -> tuple[int, ...]:
    """A shape with an open batch dimension (None or -1) replaced by 1, for eval_shape."""
    batch = in_shape[0]
    return (1 if batch is None or batch == -1 else batch, *in_shape[1:])


def _eval_out_shape(apply: Callable, params: Params, state: State, in_shape: Shape) -> Shape:
    """The shape ``apply`` returns for an input of ``in_shape``, traced without computing."""
    x = jax.ShapeDtypeStruct(_concrete(in_shape), jnp.float32)
    y, _ = jax.eval_shape(lambda p, s, x: apply(p, s, x), params, state, x)
    return (in_shape[0], *y.shape[1:])


def _check_shape(kind: str, name: str | None, in_shape: Any, rank: int | None,
                 layout: str, *, min_rank: int | None = None) -> None:
    ok = isinstance(in_shape, tuple | list) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in in_shape)
    if ok and (not len(in_shape) or any(d is None or d < 1 for d in in_shape[1:])
               or (in_shape[0] is not None and in_shape[0] < 1 and in_shape[0] != -1)):
        ok = False
    if not ok:
        raise LayerError(kind, name, f"in_shape must be a tuple of ints with the batch first "
                         f"(None allowed for the batch), got {in_shape!r}")
    if rank is not None and len(in_shape) != rank:
        hint = "; put Flatten() before it" if kind == "Dense" and len(in_shape) > 2 else ""
        raise LayerError(kind, name, f"expects input of rank {rank} {layout}, got shape "
                         f"{_fmt(in_shape)} of rank {len(in_shape)}{hint}")
    if min_rank is not None and len(in_shape) < min_rank:
        raise LayerError(kind, name, f"expects input of rank >= {min_rank} {layout}, got shape "
                         f"{_fmt(in_shape)} of rank {len(in_shape)}")


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join("N" if d is None or d == -1 else str(d) for d in shape) + ")"


def _pair(value: Any, what: str, kind: str, name: str | None, *,
          minimum: int = 1) -> tuple[int, int]:
    try:
        return ops.pair(value, what, kind, minimum=minimum)
    except ValueError as e:
        detail = str(e).split(": ", 1)[1]
        raise LayerError(kind, name, detail) from None


def _check_padding(padding: Padding, kind: str, name: str | None) -> Padding:
    """``padding`` checked, with NumPy integers made Python ints (pairs as tuples)."""
    try:
        ops.normalize_padding(padding, (1, 1), (1, 1), (1, 1), where=kind)
    except ValueError as e:
        raise LayerError(kind, name, str(e).split(": ", 1)[1]) from None
    if isinstance(padding, str):
        return padding
    if _is_int(padding):
        return int(padding)
    return tuple(tuple(int(v) for v in p) for p in padding)  # type: ignore[return-value]


def _check_window_fits(kind: str, name: str | None, in_shape: Shape, window: tuple[int, int],
                       stride: tuple[int, int], dilation: tuple[int, int], padding: Padding,
                       what: str) -> None:
    pads = ops.normalize_padding(padding, tuple(in_shape[1:3]), window, stride, dilation)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_shape[1:3], pads, strict=True))
    span = tuple(d * (k - 1) + 1 for k, d in zip(window, dilation, strict=True))
    if padded[0] < span[0] or padded[1] < span[1]:
        dil = f" with dilation {dilation}" if dilation != (1, 1) else ""
        raise LayerError(
            kind, name, f"{what} {window}{dil} spans {span[0]}x{span[1]} pixels, larger than the "
            f"padded input {padded[0]}x{padded[1]} (input shape {_fmt(in_shape)}, padding "
            f"{padding!r}); use a smaller {what}, more padding or a larger input")


def _positive_int(value: Any, what: str, kind: str, name: str | None) -> int:
    if not _is_int(value) or value < 1:
        raise LayerError(kind, name, f"{what} must be a positive int, got {value!r}")
    return int(value)


def _check_params(kind: str, name: str | None, params: Any, keys: Sequence[str] = ("w",), *,
                  what: str = "params") -> None:
    """A layer applied to params (or state, ``what``) that lack its ``keys`` (another model's,
    or ``{}``)."""
    if keys and (not isinstance(params, dict) or any(k not in params for k in keys)):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        need = " and ".join(repr(k) for k in keys)
        raise LayerError(kind, name, f"{what} must hold this layer's {need}, got {got}; pass the "
                         f"{what} that init returned for this model")


def _wrap_apply(kind: str, name: str | None, fn: Callable) -> Callable:
    """Turn a ValueError from an op (a wrong input at apply time) into this layer's LayerError."""

    def apply(params, state, x, *, key=None, train=False):
        try:
            return fn(params, state, x, key=key, train=train)
        except LayerError:
            raise
        except ValueError as e:
            raise LayerError(kind, name, str(e)) from None

    return apply


# ----------------------------------------------------------------------------- leaves


def Conv(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: Initializer | None = None,
    b_init: Initializer | None = None,
    name: str | None = None,
) -> Layer:
    """2-D convolution (cross-correlation): (N, H, W, C) -> (N, H', W', features).

    Params ``{"w": (kh, kw, C // groups, features), "b": (features,)}``. ``w`` starts
    LeCun-normal (variance 1 / fan_in), ``b`` at zero. Sizes follow
    :func:`jaxcnn.ops.conv_output_size`; ``padding`` is "VALID", "SAME", an int or
    ((top, bottom), (left, right)).
    """
    kind = "Conv"
    features = _positive_int(features, "features", kind, name)
    kernel = _pair(kernel_size, "kernel_size", kind, name)
    strides = _pair(stride, "stride", kind, name)
    dil = _pair(dilation, "dilation", kind, name)
    groups = _positive_int(groups, "groups", kind, name)
    padding = _check_padding(padding, kind, name)
    if features % groups:
        raise LayerError(kind, name, f"features ({features}) must be divisible by groups "
                         f"({groups})")
    w_init = w_init or jax.nn.initializers.lecun_normal()
    b_init = b_init or jax.nn.initializers.zeros

    def apply_(params, state, x, *, key=None, train=False):
        _check_params(kind, name, params)
        y = ops.conv2d(x, params["w"], params.get("b"), stride=strides, padding=padding,
                       dilation=dil, groups=groups)
        return y, state

    apply = _wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, 4, "(N, H, W, C)")
        cin = in_shape[3]
        if cin % groups:
            raise LayerError(kind, name, f"input channels ({cin}, input shape "
                             f"{_fmt(in_shape)}) must be divisible by groups ({groups})")
        _check_window_fits(kind, name, in_shape, kernel, strides, dil, padding, "kernel_size")
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (*kernel, cin // groups, features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(kb, (features,), jnp.float32)
        return _eval_out_shape(apply, params, {}, in_shape), params, {}

    def macs(in_shape, out_shape):
        return math.prod(out_shape[1:]) * kernel[0] * kernel[1] * (in_shape[3] // groups)

    return _make(init, apply, LayerInfo(kind, "conv", name, kernel, strides, dil, macs=macs,
                                        per_example=True))


def Dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: Initializer | None = None,
    b_init: Initializer | None = None,
    name: str | None = None,
) -> Layer:
    """Fully connected layer: (N, D) -> (N, features); ``{"w": (D, features), "b": (features,)}``.

    Needs a 2-D input: put :func:`Flatten` (or a global pooling) after conv layers.
    """
    kind = "Dense"
    features = _positive_int(features, "features", kind, name)
    w_init = w_init or jax.nn.initializers.lecun_normal()
    b_init = b_init or jax.nn.initializers.zeros

    def apply_(params, state, x, *, key=None, train=False):
        _check_params(kind, name, params)
        if x.ndim != 2 or x.shape[1] != params["w"].shape[0]:
            raise LayerError(kind, name, f"expects input (N, {params['w'].shape[0]}), got "
                             f"shape {tuple(x.shape)}")
        y = x @ params["w"]
        return (y + params["b"] if "b" in params else y), state

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, 2, "(N, features)")
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (in_shape[1], features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(kb, (features,), jnp.float32)
        return _eval_out_shape(apply, params, {}, in_shape), params, {}

    apply = _wrap_apply(kind, name, apply_)
    return _make(init, apply, LayerInfo(kind, "dense", name, macs=lambda i, o: i[1] * o[1],
                                        per_example=True))


def _pool(kind: str, base: str, op: Callable, window, stride, padding, ceil_mode, name,
          **op_kwargs) -> Layer:
    win = _pair(window, "window", kind, name)
    strides = win if stride is None else _pair(stride, "stride", kind, name)
    padding = _check_padding(padding, kind, name)

    def apply_(params, state, x, *, key=None, train=False):
        return op(x, win, stride=strides, padding=padding, ceil_mode=ceil_mode, **op_kwargs), state

    apply = _wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, 4, "(N, H, W, C)")
        _check_window_fits(kind, name, in_shape, win, strides, (1, 1), padding, "window")
        return _eval_out_shape(apply, {}, {}, in_shape), {}, {}

    return _make(init, apply, LayerInfo(kind, base, name, win, strides, per_example=True))


def MaxPool(
    window: int | Sequence[int],
    *,
    stride: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    ceil_mode: bool = False,
    name: str | None = None,
) -> Layer:
    """Max pooling over ``window`` (stride defaults to the window); see :func:`ops.max_pool`."""
    return _pool("MaxPool", "maxpool", ops.max_pool, window, stride, padding, ceil_mode, name)


def AvgPool(
    window: int | Sequence[int],
    *,
    stride: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    name: str | None = None,
) -> Layer:
    """Average pooling over ``window``; how padding counts: see :func:`ops.avg_pool`."""
    return _pool("AvgPool", "avgpool", ops.avg_pool, window, stride, padding, ceil_mode, name,
                 count_include_pad=count_include_pad)


def _stateless(kind: str, base: str, fn: Callable[[Array], Array], name: str | None, *,
               rank: int | None = None, layout: str = "", min_rank: int | None = None,
               is_global: bool = False, window: tuple[int, int] | None = None,
               stride: tuple[int, int] = (1, 1), per_example: bool = True) -> Layer:
    def apply_(params, state, x, *, key=None, train=False):
        return fn(x), state

    apply = _wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, rank, layout, min_rank=min_rank)
        return _eval_out_shape(apply, {}, {}, in_shape), {}, {}

    return _make(init, apply, LayerInfo(kind, base, name, window=window, stride=stride,
                                        is_global=is_global, per_example=per_example))


def GlobalMaxPool(*, name: str | None = None) -> Layer:
    """Max over all positions of each channel: (N, H, W, C) -> (N, C)."""
    return _stateless("GlobalMaxPool", "globalmaxpool", ops.global_max_pool, name, rank=4,
                      layout="(N, H, W, C)", is_global=True)


def GlobalAvgPool(*, name: str | None = None) -> Layer:
    """Mean over all positions of each channel: (N, H, W, C) -> (N, C)."""
    return _stateless("GlobalAvgPool", "globalavgpool", ops.global_avg_pool, name, rank=4,
                      layout="(N, H, W, C)", is_global=True)


def Flatten(*, name: str | None = None) -> Layer:
    """(N, ...) -> (N, prod(...)), row-major (H, then W, then C)."""
    return _stateless("Flatten", "flatten", lambda x: x.reshape(x.shape[0], -1), name,
                      min_rank=2, layout="(N, ...)", is_global=True)


def Relu(*, name: str | None = None) -> Layer:
    """max(0, x), elementwise."""
    return _stateless("Relu", "relu", ops.relu, name)


def Sigmoid(*, name: str | None = None) -> Layer:
    """1 / (1 + exp(-x)), elementwise."""
    return _stateless("Sigmoid", "sigmoid", ops.sigmoid, name)


def Tanh(*, name: str | None = None) -> Layer:
    """tanh(x), elementwise."""
    return _stateless("Tanh", "tanh", ops.tanh, name)


def LeakyRelu(negative_slope: float = 0.01, *, name: str | None = None) -> Layer:
    """x for x >= 0, ``negative_slope * x`` otherwise."""
    if not _is_real(negative_slope) or not math.isfinite(negative_slope):
        raise LayerError("LeakyRelu", name, f"negative_slope must be a finite number, got "
                         f"{negative_slope!r}")
    negative_slope = float(negative_slope)
    return _stateless("LeakyRelu", "leakyrelu", lambda x: ops.leaky_relu(x, negative_slope), name)


def Elu(alpha: float = 1.0, *, name: str | None = None) -> Layer:
    """x for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""
    if not _is_real(alpha) or not math.isfinite(alpha):
        raise LayerError("Elu", name, f"alpha must be a finite number, got {alpha!r}")
    alpha = float(alpha)
    return _stateless("Elu", "elu", lambda x: ops.elu(x, alpha), name)


def _check_axis(axis: Any, kind: str, name: str | None) -> int:
    if not _is_int(axis):
        raise LayerError(kind, name, f"axis must be an int, got {axis!r}")
    return int(axis)


def _not_batch_axis(axis: int) -> bool:
    """Whether ``axis`` is surely not the batch axis (0), whatever the input's rank >= 2."""
    return axis >= 1 or axis == -1


def Softmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """Probabilities along ``axis`` (the classes, last by default)."""
    axis = _check_axis(axis, "Softmax", name)
    return _stateless("Softmax", "softmax", lambda x: ops.softmax(x, axis), name,
                      per_example=_not_batch_axis(axis))


def LogSoftmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """Log-probabilities along ``axis``."""
    axis = _check_axis(axis, "LogSoftmax", name)
    return _stateless("LogSoftmax", "logsoftmax", lambda x: ops.log_softmax(x, axis), name,
                      per_example=_not_batch_axis(axis))


def Lambda(fn: Callable[[Array], Array], *, kind: str = "Lambda", name: str | None = None,
           window: int | Sequence[int] | None = None, stride: int | Sequence[int] = 1,
           per_example: bool = False) -> Layer:
    """A stateless layer from any shape-static function of the input (no params, no state).

    ``kind`` names it in errors and in the summary table; its lowercase is the default name.
    ``window`` and ``stride`` describe its spatial geometry for the summary's receptive field
    and jump, when ``fn`` has one (e.g. ``window=1, stride=2`` for ``x[:, ::2, ::2]``).
    ``per_example=True`` promises that ``fn`` maps each example on its own (no mean over the
    batch, no randomness), which lets training on the CPU compute the batch in slices (see
    :class:`LayerInfo`).
    """
    if not callable(fn):
        raise LayerError(kind, name, f"fn must be callable, got {type(fn).__name__}")
    geometry = {} if window is None else {"window": _pair(window, "window", kind, name),
                                          "stride": _pair(stride, "stride", kind, name)}
    return _stateless(kind, kind.lower(), fn, name, per_example=per_example, **geometry)


def Dropout(rate: float, *, name: str | None = None) -> Layer:
    """Inverted dropout: in training, zero each element with probability ``rate`` (the fraction
    *dropped*) and scale the rest by 1 / (1 - rate); identity at inference. Needs ``key`` when
    ``train=True``."""
    kind = "Dropout"
    if not _is_real(rate) or not 0.0 <= rate < 1.0:
        raise LayerError(kind, name, f"rate (the fraction dropped) must be in [0, 1), got "
                         f"{rate!r}")
    rate = float(rate)

    def apply(params, state, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise LayerError(kind, name, "train=True needs a PRNG key to drop units: pass "
                             "key=jax.random.key(...) to apply")
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)), state

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, None, "")
        return _eval_out_shape(apply, {}, {}, in_shape), {}, {}

    return _make(init, apply, LayerInfo(kind, "dropout", name, per_example=rate == 0.0))


def BatchNorm(
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    name: str | None = None,
) -> Layer:
    """Batch normalisation over every axis but the last (channels).

    Params ``{"scale": (C,), "bias": (C,)}``; state ``{"mean": (C,), "var": (C,)}``.
    In training, normalise with the batch mean and (biased) variance and return running
    statistics updated as ``running = momentum * running + (1 - momentum) * batch`` (Flax's
    convention; PyTorch's ``momentum=0.1`` is ours 0.9). In inference, use the running ones.
    """
    kind = "BatchNorm"
    for what, v, lo, hi in (("momentum", momentum, 0.0, 1.0), ("epsilon", epsilon, 0.0, math.inf)):
        if not _is_real(v) or not (lo <= v < hi and (what == "momentum" or v > 0)):
            need = "in [0, 1)" if what == "momentum" else "> 0"
            raise LayerError(kind, name, f"{what} must be {need}, got {v!r}")
    momentum, epsilon = float(momentum), float(epsilon)
    param_keys = tuple(k for k, used in (("scale", use_scale), ("bias", use_bias)) if used)

    def apply(params, state, x, *, key=None, train=False):
        _check_params(kind, name, params, param_keys)
        _check_params(kind, name, state, ("mean", "var"), what="state")
        if x.ndim < 2 or x.shape[-1] != state["mean"].shape[0]:
            raise LayerError(kind, name, f"expects input (N, ..., {state['mean'].shape[0]}) "
                             f"with the channels it was initialised on, got shape "
                             f"{tuple(x.shape)}")
        axes = tuple(range(x.ndim - 1))
        if train:
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            new_state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * jax.lax.stop_gradient(mean),
                "var": momentum * state["var"] + (1.0 - momentum) * jax.lax.stop_gradient(var),
            }
        else:
            mean, var, new_state = state["mean"], state["var"], state
        y = (x - mean) * jax.lax.rsqrt(var + epsilon)
        if use_scale:
            y = y * params["scale"]
        if use_bias:
            y = y + params["bias"]
        return y, new_state

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, None, "(N, ..., C)", min_rank=2)
        c = in_shape[-1]
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((c,), jnp.float32)
        if use_bias:
            params["bias"] = jnp.zeros((c,), jnp.float32)
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return _eval_out_shape(apply, params, state, in_shape), params, state

    return _make(init, apply, LayerInfo(kind, "batchnorm", name))


# ----------------------------------------------------------------------------- combinators


def child_names(layers: Sequence[Layer], where: str) -> tuple[str, ...]:
    """Names for a combinator's children: the user's ``name=`` where given, else the kind's
    base name with a counter per kind (``conv1``, ``conv2``, ``dense1``), skipping taken names."""
    given = [layer_info(la).name for la in layers]
    taken = {g for g in given if g}
    dupes = {g for g in taken if given.count(g) > 1}
    if dupes:
        raise LayerError(where, None, f"child names must be unique, got {sorted(dupes)} twice")
    counters: dict[str, int] = {}
    names = []
    for layer, g in zip(layers, given, strict=True):
        if g:
            names.append(g)
            continue
        base = layer_info(layer).base
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}{counters[base]}"
            if candidate not in taken:
                break
        taken.add(candidate)
        names.append(candidate)
    return tuple(names)


def _check_layers(layers: Sequence[Any], where: str) -> tuple[Layer, ...]:
    if not layers:
        raise LayerError(where, None, "needs at least one layer, got none")
    for i, la in enumerate(layers):
        if not (isinstance(la, tuple) and len(la) == 2 and all(callable(f) for f in la)):
            raise LayerError(where, None, f"argument {i} must be a Layer (init, apply), got "
                             f"{type(la).__name__}; did you forget to call it, e.g. Relu()?")
    return tuple(Layer(*la) if not isinstance(la, Layer) else la for la in layers)


def _init_children(named, key, in_shape):
    """Init each child on ``in_shape``; -> (out_shapes, params, state), errors located."""
    keys = jax.random.split(key, len(named))
    shapes, params, state = [], {}, {}
    for (nm, layer), k in zip(named, keys, strict=True):
        try:
            shape, p, s = layer.init(k, in_shape)
        except LayerError as e:
            raise e.at(nm) from None
        shapes.append(shape)
        if p:
            params[nm] = p
        if s:
            state[nm] = s
    return shapes, params, state


def _child(tree: Any, nm: str) -> Any:
    """The child's part of params or state; anything but a dict is passed on for the child's
    own check to name."""
    return tree.get(nm, {}) if isinstance(tree, dict) else tree


def _apply_child(nm, layer, params, state, x, key, train):
    try:
        y, s = layer.apply(_child(params, nm), _child(state, nm), x, key=key, train=train)
    except LayerError as e:
        raise e.at(nm) from None
    return y, s


def _all_per_example(named) -> bool:
    return all(layer_info(layer).per_example for _, layer in named)


def _split(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Layers one after another; params ``{child_name: child_params}``."""
    layers = _check_layers(layers, "Serial")
    named = tuple(zip(child_names(layers, "Serial"), layers, strict=True))

    def init(key, in_shape):
        shape, params, state = in_shape, {}, {}
        for (nm, layer), k in zip(named, jax.random.split(key, len(named)), strict=True):
            try:
                shape, p, s = layer.init(k, shape)
            except LayerError as e:
                raise e.at(nm) from None
            if p:
                params[nm] = p
            if s:
                state[nm] = s
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        new_state = {}
        for (nm, layer), k in zip(named, _split(key, len(named)), strict=True):
            x, s = _apply_child(nm, layer, params, state, x, k, train)
            if s:
                new_state[nm] = s
        return x, new_state

    return _make(init, apply, LayerInfo("Serial", "serial", name, children=named,
                                        per_example=_all_per_example(named)))


def parallel(*layers: Layer, combine: str = "concat", name: str | None = None) -> Layer:
    """Branches on the same input, merged by ``combine``: ``"concat"`` along the last axis
    (channels; Inception-style) or ``"sum"`` (shapes must match)."""
    kind = "Parallel"
    if combine not in ("concat", "sum"):
        raise LayerError(kind, name, f"combine must be 'concat' or 'sum', got {combine!r}")
    layers = _check_layers(layers, "Parallel")
    named = tuple(zip(child_names(layers, "Parallel"), layers, strict=True))

    def merge(ys):
        return jnp.concatenate(ys, axis=-1) if combine == "concat" else sum(ys[1:], ys[0])

    def apply(params, state, x, *, key=None, train=False):
        ys, new_state = [], {}
        for (nm, layer), k in zip(named, _split(key, len(named)), strict=True):
            y, s = _apply_child(nm, layer, params, state, x, k, train)
            ys.append(y)
            if s:
                new_state[nm] = s
        return merge(ys), new_state

    def init(key, in_shape):
        shapes, params, state = _init_children(named, key, in_shape)
        heads = {tuple(s[1:-1]) if combine == "concat" else tuple(s[1:]) for s in shapes}
        if len(heads) > 1 or len({len(s) for s in shapes}) > 1:
            need = "all but the last axis" if combine == "concat" else "every axis"
            listing = ", ".join(f"{nm}: {_fmt(s)}" for (nm, _), s in zip(named, shapes,
                                                                          strict=True))
            raise LayerError(kind, name, f"branch outputs must agree on {need} to {combine}, "
                             f"got {listing}")
        return _eval_out_shape(apply, params, state, in_shape), params, state

    return _make(init, apply, LayerInfo(kind, "parallel", name, children=named, combine=combine,
                                        per_example=_all_per_example(named)))


def residual(*layers: Layer, shortcut: Layer | None = None, name: str | None = None) -> Layer:
    """``body(x) + shortcut(x)``: ``body`` is ``layers`` in series, ``shortcut`` the identity
    unless given (e.g. a strided 1x1 Conv when the body changes the shape). The shortcut's params
    live under ``"shortcut"``."""
    kind = "Residual"
    body = _check_layers(layers, "Residual")
    names = child_names(body, "Residual")
    if "shortcut" in names:
        raise LayerError(kind, name, "the name 'shortcut' is reserved for the shortcut branch")
    named = tuple(zip(names, body, strict=True))
    all_named = named + ((("shortcut", _check_layers((shortcut,), "Residual")[0]),)
                         if shortcut is not None else ())
    chain = serial(*body)

    def apply(params, state, x, *, key=None, train=False):
        kb, ks = _split(key, 2)
        y, new_state = chain.apply(params, state, x, key=kb, train=train)
        if shortcut is not None:
            skip, s = _apply_child("shortcut", shortcut, params, state, x, ks, train)
            if s:
                new_state["shortcut"] = s
        else:
            skip = x
        return y + skip, new_state

    def init(key, in_shape):
        kb, ks = jax.random.split(key)
        out, params, state = chain.init(kb, in_shape)
        skip_shape = in_shape
        if shortcut is not None:
            (skip_shape,), p, s = _init_children((("shortcut", shortcut),), ks, in_shape)
            params, state = {**params, **p}, {**state, **s}
        if tuple(out[1:]) != tuple(skip_shape[1:]):
            fix = ("add a shortcut layer that maps the input to the body's shape, e.g. "
                   "shortcut=Conv(C, 1, stride=s)" if shortcut is None else
                   "make the shortcut's output shape match the body's")
            raise LayerError(kind, name, f"the body's output {_fmt(out)} and the shortcut's "
                             f"{_fmt(skip_shape)} differ, so they cannot be added; {fix}")
        return _eval_out_shape(apply, params, state, in_shape), params, state

    return _make(init, apply, LayerInfo(kind, "residual", name, children=all_named,
                                        combine="sum", per_example=_all_per_example(all_named)))
