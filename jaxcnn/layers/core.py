"""The :class:`Layer` type, its :class:`LayerInfo`, and the checks every layer shares.

The helpers here are public for code that builds its own leaf layers the way
:mod:`jaxcnn.layers` does (:mod:`jaxcnn.filters`): :func:`make_layer` attaches the info and the
key and input checks, :func:`wrap_apply` turns an op's ``ValueError`` into the layer's
:class:`~jaxcnn.errors.LayerError`, :func:`eval_out_shape` gives ``init`` its output shape, and
the ``check_*`` functions validate configuration (in the constructor) and shapes (in ``init``)
with one-sentence errors naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxcnn import ops
from jaxcnn.checks import is_int
from jaxcnn.errors import LayerError
from jaxcnn.typedefs import Array, Key, Padding, Params, Shape, State

__all__ = [
    "ApplyFn", "InitFn", "Layer", "LayerInfo", "check_padding", "check_pair", "check_params",
    "check_positive_int", "check_shape", "check_window_fits", "eval_out_shape", "format_shape",
    "layer_info", "make_layer", "wrap_apply",
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
    """What a layer is, for naming, :func:`jaxcnn.summary` and :mod:`jaxcnn.walk`; attached to
    ``init``.

    ``window``/``stride``/``dilation`` are the spatial geometry (None for layers that act on
    each position alone); ``is_global`` marks layers whose outputs see the whole input
    (global pooling, flatten); ``children`` are a combinator's sublayers, by name.
    ``branches`` say how a combinator wires them: each branch is a tuple of child names applied
    in series to the combinator's input (an empty one is the identity), and ``combine`` merges
    the branches' outputs (``"concat"`` along the last axis, ``"sum"``, or None for a single
    branch passed on as it is; :func:`jaxcnn.layers.combinators.merge_branches`). Serial is
    one branch of all its children, parallel one branch per child, residual its body and its
    shortcut. The combinators' own ``apply`` and :mod:`jaxcnn.walk` both follow them.
    ``per_example``: in training too, a batch computed in slices
    (:func:`jaxcnn.cpu.concat_slices`) gives what the whole batch gives: each example's output
    depends on that example's input alone (not BatchNorm, not an unmarked Lambda or a user's
    own Layer, not a softmax along an axis that may be the batch's), or, for Dropout, also on
    its row of the batch, which a slice knows (:func:`jaxcnn.cpu.slice_position`). A
    ``Layer(init, apply)`` built from another layer's ``init`` keeps that layer's info, this
    mark included.
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
    branches: tuple[tuple[str, ...], ...] = ()


def layer_info(layer: Layer) -> LayerInfo:
    """The :class:`LayerInfo` of ``layer``; a user's own ``Layer(init, apply)`` gets a generic
    one."""
    info = getattr(layer.init, "info", None)
    if info is None:
        name = getattr(layer.init, "__name__", "layer")
        return LayerInfo(kind="Layer", base=name if name.isidentifier() else "layer")
    return info


def make_layer(init: Callable, apply: Callable, info: LayerInfo) -> Layer:
    """The Layer, its ``init`` refusing a key that is not a PRNG key and its ``apply`` an
    input that is not an array, with this layer's own error instead of one from inside JAX."""

    def init_checked(key, in_shape):
        if not _is_prng_key(key):
            raise LayerError(info.kind, info.name, f"init needs a PRNG key, e.g. "
                             f"jax.random.key(0), got {type(key).__name__} {key!r:.60}")
        if isinstance(in_shape, tuple | list):
            in_shape = type(in_shape)(int(d) if is_int(d) else d for d in in_shape)
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


def eval_out_shape(apply: Callable, params: Params, state: State, in_shape: Shape) -> Shape:
    """The shape ``apply`` returns for an input of ``in_shape``, traced without computing."""
    x = jax.ShapeDtypeStruct(_concrete(in_shape), jnp.float32)
    y, _ = jax.eval_shape(lambda p, s, x: apply(p, s, x), params, state, x)
    return (in_shape[0], *y.shape[1:])


def check_shape(kind: str, name: str | None, in_shape: Any, rank: int | None,
                layout: str, *, min_rank: int | None = None) -> None:
    """``in_shape`` is a shape (ints, batch first, None or -1 for an open batch) of ``rank``
    (or at least ``min_rank``); ``layout`` names the axes in the error, e.g. "(N, H, W, C)"."""
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
                         f"{format_shape(in_shape)} of rank {len(in_shape)}{hint}")
    if min_rank is not None and len(in_shape) < min_rank:
        raise LayerError(kind, name, f"expects input of rank >= {min_rank} {layout}, got shape "
                         f"{format_shape(in_shape)} of rank {len(in_shape)}")


def format_shape(shape: Shape) -> str:
    """``(N, 28, 28, 1)``: a shape as errors and tables print it, the open batch as N."""
    return "(" + ", ".join("N" if d is None or d == -1 else str(d) for d in shape) + ")"


def check_pair(value: Any, what: str, kind: str, name: str | None, *,
               minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints (each >= ``minimum``) as a pair of Python ints, e.g. a
    kernel size or a stride; ``what`` names the argument."""
    try:
        return ops.pair(value, what, kind, minimum=minimum)
    except ValueError as e:
        detail = str(e).split(": ", 1)[1]
        raise LayerError(kind, name, detail) from None


def check_padding(padding: Padding, kind: str, name: str | None) -> Padding:
    """``padding`` checked, with NumPy integers made Python ints (pairs as tuples)."""
    try:
        ops.normalize_padding(padding, (1, 1), (1, 1), (1, 1), where=kind)
    except ValueError as e:
        raise LayerError(kind, name, str(e).split(": ", 1)[1]) from None
    if isinstance(padding, str):
        return padding
    if is_int(padding):
        return int(padding)
    return tuple(tuple(int(v) for v in p) for p in padding)  # type: ignore[return-value]


def check_window_fits(kind: str, name: str | None, in_shape: Shape, window: tuple[int, int],
                      stride: tuple[int, int], dilation: tuple[int, int], padding: Padding,
                      what: str) -> None:
    """The (dilated) ``window`` fits in the padded spatial size of ``in_shape`` (N, H, W, C)."""
    pads = ops.normalize_padding(padding, tuple(in_shape[1:3]), window, stride, dilation)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_shape[1:3], pads, strict=True))
    span = tuple(d * (k - 1) + 1 for k, d in zip(window, dilation, strict=True))
    if padded[0] < span[0] or padded[1] < span[1]:
        dil = f" with dilation {dilation}" if dilation != (1, 1) else ""
        raise LayerError(
            kind, name, f"{what} {window}{dil} spans {span[0]}x{span[1]} pixels, larger than the "
            f"padded input {padded[0]}x{padded[1]} (input shape {format_shape(in_shape)}, padding "
            f"{padding!r}); use a smaller {what}, more padding or a larger input")


def check_positive_int(value: Any, what: str, kind: str, name: str | None) -> int:
    """``value`` (an int, not a bool, >= 1) as a Python int; ``what`` names the argument."""
    if not is_int(value) or value < 1:
        raise LayerError(kind, name, f"{what} must be a positive int, got {value!r}")
    return int(value)


def check_params(kind: str, name: str | None, params: Any, keys: Sequence[str] = ("w",), *,
                 what: str = "params") -> None:
    """A layer applied to params (or state, ``what``) that lack its ``keys`` (another model's,
    or ``{}``)."""
    if keys and (not isinstance(params, dict) or any(k not in params for k in keys)):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        need = " and ".join(repr(k) for k in keys)
        raise LayerError(kind, name, f"{what} must hold this layer's {need}, got {got}; pass the "
                         f"{what} that init returned for this model")


def wrap_apply(kind: str, name: str | None, fn: Callable) -> Callable:
    """Turn a ValueError from an op (a wrong input at apply time) into this layer's LayerError."""

    def apply(params, state, x, *, key=None, train=False):
        try:
            return fn(params, state, x, key=key, train=train)
        except LayerError:
            raise
        except ValueError as e:
            raise LayerError(kind, name, str(e)) from None

    return apply
