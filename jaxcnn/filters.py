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
from jaxcnn.checks import is_int, is_real
from jaxcnn.errors import LayerError
from jaxcnn.layers.core import (
    Layer,
    LayerInfo,
    check_padding,
    check_pair,
    check_shape,
    eval_out_shape,
    make_layer,
    wrap_apply,
)
from jaxcnn.typedefs import Array, Padding

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
    if not is_int(size) or size < 1:
        raise ValueError(f"gaussian: size must be a positive int, got {size!r}")
    if not is_real(sigma) or not sigma > 0:
        raise ValueError(f"gaussian: sigma must be > 0, got {sigma!r}")
    size, sigma = int(size), float(sigma)
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return _hwio(g / g.sum())


def box_blur(size: int = 3) -> np.ndarray:
    """Mean over a size x size window."""
    if not is_int(size) or size < 1:
        raise ValueError(f"box_blur: size must be a positive int, got {size!r}")
    size = int(size)
    return _hwio(np.full((size, size), 1.0 / size**2))


def sharpen() -> np.ndarray:
    """5 at the centre, -1 at the four neighbours: identity plus a negated Laplacian, which
    emphasises high frequencies."""
    return _hwio([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])


def laplacian() -> np.ndarray:
    """The 4-neighbour Laplacian: sum of neighbours minus 4x the centre."""
    return _hwio([[0, 1, 0], [1, -4, 1], [0, 1, 0]])


def _depthwise(k: np.ndarray, x: Array) -> Array:
    """``k`` (kh, kw, 1, 1) repeated for each channel of x, in x's dtype where that is floating
    (else float32, and ops.conv2d refuses the input)."""
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return jnp.tile(jnp.asarray(k, dtype), (1, 1, 1, x.shape[-1]))


def FixedConv(kernel: np.ndarray | Array, *, padding: Padding = "SAME", stride: int = 1,
              name: str | None = None, kind: str = "FixedConv") -> Layer:
    """A frozen convolution: ``kernel`` (kh, kw, 1, 1) or (kh, kw) applied to each input channel
    on its own; (N, H, W, C) -> (N, H', W', C). Its params are empty, so training never changes it.

    The output keeps the input's floating dtype, the kernel being cast to it: float16 images are
    filtered in float16 (the kernel rounded to float16), float64 ones (with x64 enabled) in
    float64 with the kernel as given. Integer images are refused, as by :func:`ops.conv2d`.
    """
    k = np.asarray(kernel, np.float64)
    if k.ndim == 2:
        k = k[:, :, None, None]
    if k.ndim != 4 or k.shape[2:] != (1, 1):
        raise LayerError(kind, name, f"kernel must have shape (kh, kw) or (kh, kw, 1, 1), got "
                         f"{k.shape}")
    window = (k.shape[0], k.shape[1])
    strides = check_pair(stride, "stride", kind, name)
    padding = check_padding(padding, kind, name)

    def apply_(params, state, x, *, key=None, train=False):
        w = _depthwise(k, x)
        return ops.conv2d(x, w, stride=strides, padding=padding, groups=x.shape[-1]), state

    apply = wrap_apply(kind, name, apply_)

    def init(key, in_shape):
        check_shape(kind, name, in_shape, 4, "(N, H, W, C)")
        return eval_out_shape(apply, {}, {}, in_shape), {}, {}

    def macs(in_shape, out_shape):
        return math.prod(out_shape[1:]) * window[0] * window[1]

    return make_layer(init, apply, LayerInfo(kind, kind.lower(), name, window, strides,
                                             macs=macs, per_example=True))


def sobel_edges(x: Array) -> tuple[Array, Array]:
    """Gradient magnitude and orientation (radians, atan2(gy, gx)) of each channel.

    x: (N, H, W, C) -> two arrays (N, H, W, C) in x's floating dtype, SAME padding.
    """
    def grad(kernel):
        return ops.conv2d(x, _depthwise(kernel, x), padding="SAME", groups=x.shape[-1])

    gx, gy = grad(sobel_x()), grad(sobel_y())
    return jnp.hypot(gx, gy), jnp.arctan2(gy, gx)
