"""The classic fixed image filters as HWIO kernels, and a frozen convolution that applies them.

Each function returns a ``(k, k, 1, 1)`` float32 kernel (one input, one output channel);
:func:`FixedConv` applies such a kernel to every channel of an image on its own (a depthwise
convolution), with nothing to train.

>>> import numpy as np
>>> sobel_x()[:, :, 0, 0].tolist()
[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxcnn import ops
from jaxcnn._types import Array, Padding
from jaxcnn.errors import LayerError
from jaxcnn.layers import (
    Layer,
    LayerInfo,
    _check_padding,
    _check_shape,
    _eval_out_shape,
    _make,
    _pair,
    _wrap_apply,
)

__all__ = ["FixedConv", "box_blur", "gaussian", "laplacian", "sharpen", "sobel_edges", "sobel_x",
           "sobel_y"]


def _hwio(k: np.ndarray) -> np.ndarray:
    return np.asarray(k, np.float32)[:, :, None, None]


def sobel_x() -> np.ndarray:
    """Sobel kernel responding to intensity rising left to right (the x gradient)."""
    return _hwio([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def sobel_y() -> np.ndarray:
    """Sobel kernel responding to intensity rising top to bottom (the y gradient)."""
    return _hwio([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])


def gaussian(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """Normalised Gaussian blur: exp(-(x^2 + y^2) / (2 sigma^2)) over a size x size grid centred
    on 0, divided by its sum (so flat regions keep their value)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"gaussian: size must be a positive int, got {size!r}")
    if not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"gaussian: sigma must be > 0, got {sigma!r}")
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return _hwio(g / g.sum())


def box_blur(size: int = 3) -> np.ndarray:
    """Mean over a size x size window."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"box_blur: size must be a positive int, got {size!r}")
    return _hwio(np.full((size, size), 1.0 / size**2))


def sharpen() -> np.ndarray:
    """5 at the centre, -1 at the four neighbours: identity plus a negated Laplacian, which
    emphasises high frequencies."""
    return _hwio([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])


def laplacian() -> np.ndarray:
    """The 4-neighbour Laplacian: sum of neighbours minus 4x the centre."""
    return _hwio([[0, 1, 0], [1, -4, 1], [0, 1, 0]])


def FixedConv(kernel: np.ndarray | Array, *, padding: Padding = "SAME", stride: int = 1,
              name: str | None = None, kind: str = "FixedConv") -> Layer:
    """A frozen convolution: ``kernel`` (kh, kw, 1, 1) or (kh, kw) applied to each input channel
    on its own; (N, H, W, C) -> (N, H', W', C). Its params are empty, so training never changes it.
    """
    k = np.asarray(kernel, np.float32)
    if k.ndim == 2:
        k = k[:, :, None, None]
    if k.ndim != 4 or k.shape[2:] != (1, 1):
        raise LayerError(kind, name, f"kernel must have shape (kh, kw) or (kh, kw, 1, 1), got "
                         f"{k.shape}")
    window = (k.shape[0], k.shape[1])
    strides = _pair(stride, "stride", kind, name)
    _check_padding(padding, kind, name)

    def apply_(params, state, x, *, key=None, train=False):
        c = x.shape[-1]
        w = jnp.tile(jnp.asarray(k), (1, 1, 1, c))
        return ops.conv2d(x, w, stride=strides, padding=padding, groups=c), state

    apply = _wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        _check_shape(kind, name, in_shape, 4, "(N, H, W, C)")
        return _eval_out_shape(apply, {}, {}, in_shape), {}, {}

    def macs(in_shape, out_shape):
        return math.prod(out_shape[1:]) * window[0] * window[1]

    return _make(init, apply, LayerInfo(kind, kind.lower(), name, window, strides, macs=macs,
                                        per_example=True))


def sobel_edges(x: Array) -> tuple[Array, Array]:
    """Gradient magnitude and orientation (radians, atan2(gy, gx)) of each channel.

    x: (N, H, W, C) -> two arrays (N, H, W, C), SAME padding.
    """
    def grad(kernel):
        c = x.shape[-1]
        return ops.conv2d(x, jnp.tile(jnp.asarray(kernel), (1, 1, 1, c)), padding="SAME",
                          groups=c)

    gx, gy = grad(sobel_x()), grad(sobel_y())
    return jnp.hypot(gx, gy), jnp.arctan2(gy, gx)
