"""The leaf layers: convolution, dense, pooling, activations, softmax, Lambda, Dropout and
BatchNorm. Each is a constructor that checks its configuration and returns a
:class:`~jaxcnn.layers.Layer` (the convention is in :mod:`jaxcnn.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import cpu, ops
from jaxcnn.checks import is_int, is_real
from jaxcnn.errors import LayerError
from jaxcnn.layers.core import (
    Layer,
    LayerInfo,
    check_padding,
    check_pair,
    check_params,
    check_positive_int,
    check_shape,
    check_window_fits,
    eval_out_shape,
    format_shape,
    make_layer,
    wrap_apply,
)
from jaxcnn.typedefs import Array, Initializer, Padding

__all__ = [
    "AvgPool", "BatchNorm", "Conv", "Dense", "Dropout", "Elu", "Flatten", "GlobalAvgPool",
    "GlobalMaxPool", "Lambda", "LeakyRelu", "LogSoftmax", "MaxPool", "Relu", "Sigmoid", "Softmax",
    "Tanh",
]


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
    features = check_positive_int(features, "features", kind, name)
    kernel = check_pair(kernel_size, "kernel_size", kind, name)
    strides = check_pair(stride, "stride", kind, name)
    dil = check_pair(dilation, "dilation", kind, name)
    groups = check_positive_int(groups, "groups", kind, name)
    padding = check_padding(padding, kind, name)
    if features % groups:
        raise LayerError(kind, name, f"features ({features}) must be divisible by groups "
                         f"({groups})")
    w_init = w_init or jax.nn.initializers.lecun_normal()
    b_init = b_init or jax.nn.initializers.zeros

    def apply_(params, state, x, *, key=None, train=False):
        check_params(kind, name, params)
        y = ops.conv2d(x, params["w"], params.get("b"), stride=strides, padding=padding,
                       dilation=dil, groups=groups)
        return y, state

    apply = wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        check_shape(kind, name, in_shape, 4, "(N, H, W, C)")
        cin = in_shape[3]
        if cin % groups:
            raise LayerError(kind, name, f"input channels ({cin}, input shape "
                             f"{format_shape(in_shape)}) must be divisible by groups "
                             f"({groups})")
        check_window_fits(kind, name, in_shape, kernel, strides, dil, padding, "kernel_size")
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (*kernel, cin // groups, features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(kb, (features,), jnp.float32)
        return eval_out_shape(apply, params, {}, in_shape), params, {}

    def macs(in_shape, out_shape):
        return math.prod(out_shape[1:]) * kernel[0] * kernel[1] * (in_shape[3] // groups)

    return make_layer(init, apply, LayerInfo(kind, "conv", name, kernel, strides, dil,
                                             macs=macs, per_example=True))


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
    features = check_positive_int(features, "features", kind, name)
    w_init = w_init or jax.nn.initializers.lecun_normal()
    b_init = b_init or jax.nn.initializers.zeros

    def apply_(params, state, x, *, key=None, train=False):
        check_params(kind, name, params)
        if x.ndim != 2 or x.shape[1] != params["w"].shape[0]:
            raise LayerError(kind, name, f"expects input (N, {params['w'].shape[0]}), got "
                             f"shape {tuple(x.shape)}")
        y = x @ params["w"]
        return (y + params["b"] if "b" in params else y), state

    def init(key, in_shape):
        check_shape(kind, name, in_shape, 2, "(N, features)")
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (in_shape[1], features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(kb, (features,), jnp.float32)
        return eval_out_shape(apply, params, {}, in_shape), params, {}

    apply = wrap_apply(kind, name, apply_)
    return make_layer(init, apply, LayerInfo(kind, "dense", name,
                                             macs=lambda i, o: i[1] * o[1], per_example=True))


def _pool(kind: str, base: str, op: Callable, window, stride, padding, ceil_mode, name,
          **op_kwargs) -> Layer:
    win = check_pair(window, "window", kind, name)
    strides = win if stride is None else check_pair(stride, "stride", kind, name)
    padding = check_padding(padding, kind, name)

    def apply_(params, state, x, *, key=None, train=False):
        return op(x, win, stride=strides, padding=padding, ceil_mode=ceil_mode, **op_kwargs), state

    apply = wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        check_shape(kind, name, in_shape, 4, "(N, H, W, C)")
        check_window_fits(kind, name, in_shape, win, strides, (1, 1), padding, "window")
        return eval_out_shape(apply, {}, {}, in_shape), {}, {}

    return make_layer(init, apply, LayerInfo(kind, base, name, win, strides, per_example=True))


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

    apply = wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        check_shape(kind, name, in_shape, rank, layout, min_rank=min_rank)
        return eval_out_shape(apply, {}, {}, in_shape), {}, {}

    return make_layer(init, apply, LayerInfo(kind, base, name, window=window, stride=stride,
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
    if not is_real(negative_slope) or not math.isfinite(negative_slope):
        raise LayerError("LeakyRelu", name, f"negative_slope must be a finite number, got "
                         f"{negative_slope!r}")
    negative_slope = float(negative_slope)
    return _stateless("LeakyRelu", "leakyrelu", lambda x: ops.leaky_relu(x, negative_slope), name)


def Elu(alpha: float = 1.0, *, name: str | None = None) -> Layer:
    """x for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""
    if not is_real(alpha) or not math.isfinite(alpha):
        raise LayerError("Elu", name, f"alpha must be a finite number, got {alpha!r}")
    alpha = float(alpha)
    return _stateless("Elu", "elu", lambda x: ops.elu(x, alpha), name)


def _check_axis(axis: Any, kind: str, name: str | None) -> int:
    if not is_int(axis):
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
    geometry = {} if window is None else {"window": check_pair(window, "window", kind, name),
                                          "stride": check_pair(stride, "stride", kind, name)}
    return _stateless(kind, kind.lower(), fn, name, per_example=per_example, **geometry)


def Dropout(rate: float, *, name: str | None = None) -> Layer:
    """Inverted dropout: in training, zero each element with probability ``rate`` (the fraction
    *dropped*) and scale the rest by 1 / (1 - rate); identity at inference. Needs ``key`` when
    ``train=True``.

    Per-example all the same: traced on a slice of a batch (:func:`jaxcnn.cpu.concat_slices`,
    the CPU's batch slices), it draws the mask of the whole batch from ``key`` and keeps the
    slice's rows (:func:`jaxcnn.cpu.slice_position`), so the slices drop exactly what the whole
    batch would."""
    kind = "Dropout"
    if not is_real(rate) or not 0.0 <= rate < 1.0:
        raise LayerError(kind, name, f"rate (the fraction dropped) must be in [0, 1), got "
                         f"{rate!r}")
    rate = float(rate)

    def apply(params, state, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise LayerError(kind, name, "train=True needs a PRNG key to drop units: pass "
                             "key=jax.random.key(...) to apply")
        at = cpu.slice_position()
        if at is None:
            keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        elif x.shape[0] != at.rows:
            raise LayerError(kind, name, f"traced on rows {at.start}:{at.stop} of a batch of "
                             f"{at.total}, it got {x.shape[0]} rows ({format_shape(x.shape)}); a "
                             f"layer before it changed the batch size")
        else:  # the whole batch's mask (the same draw in every slice), this slice's rows
            keep = jax.random.bernoulli(key, 1.0 - rate, (at.total, *x.shape[1:]))
            keep = keep[at.start:at.stop]
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)), state

    def init(key, in_shape):
        check_shape(kind, name, in_shape, None, "")
        return eval_out_shape(apply, {}, {}, in_shape), {}, {}

    return make_layer(init, apply, LayerInfo(kind, "dropout", name, per_example=True))


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
        if not is_real(v) or not (lo <= v < hi and (what == "momentum" or v > 0)):
            need = "in [0, 1)" if what == "momentum" else "> 0"
            raise LayerError(kind, name, f"{what} must be {need}, got {v!r}")
    momentum, epsilon = float(momentum), float(epsilon)
    param_keys = tuple(k for k, used in (("scale", use_scale), ("bias", use_bias)) if used)

    def apply(params, state, x, *, key=None, train=False):
        check_params(kind, name, params, param_keys)
        check_params(kind, name, state, ("mean", "var"), what="state")
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
        check_shape(kind, name, in_shape, None, "(N, ..., C)", min_rank=2)
        c = in_shape[-1]
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((c,), jnp.float32)
        if use_bias:
            params["bias"] = jnp.zeros((c,), jnp.float32)
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return eval_out_shape(apply, params, state, in_shape), params, state

    return make_layer(init, apply, LayerInfo(kind, "batchnorm", name))
