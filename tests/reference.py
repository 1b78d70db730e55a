"""NumPy references for :mod:`jaxcnn.ops`, written from the definitions, not from its code.

Every function works in float64 and is the plain loop a textbook would write: pad, then slide a
window over the input one output position at a time. They are slow on purpose; use them on tiny
tensors only (N <= 2, H, W <= 9, C <= 4).

Conventions match the library: activations NHWC ``(N, H, W, C)``, kernels HWIO
``(kh, kw, C_in // groups, C_out)``, convolution is cross-correlation (the kernel is not flipped).
Padding is ``"VALID"``, ``"SAME"``, an int per side or ``((top, bottom), (left, right))``.

Import it from a test module as ``import reference as ref`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_pair",
    "avg_pool",
    "conv2d",
    "elu",
    "explicit_padding",
    "global_avg_pool",
    "global_max_pool",
    "leaky_relu",
    "log_softmax",
    "max_pool",
    "output_size",
    "relu",
    "same_padding",
    "sigmoid",
    "softmax",
    "tanh",
    "window_starts",
]


def as_pair(value):
    """An int or a pair as ``(h, w)``."""
    return (value, value) if isinstance(value, int) else tuple(value)


def same_padding(n, kernel, stride=1, dilation=1):
    """``(lo, hi)`` of SAME along one axis: output ``ceil(n / stride)``, odd pixel at the end.

    The total is ``max((out - 1) * stride + span - n, 0)`` with ``span = dilation * (kernel - 1)
    + 1``; ``lo = total // 2`` and ``hi`` gets the rest (the bottom/right side).
    """
    out = -(-n // stride)
    span = dilation * (kernel - 1) + 1
    total = max((out - 1) * stride + span - n, 0)
    return total // 2, total - total // 2


def explicit_padding(padding, spatial, kernel, stride=1, dilation=1):
    """Any padding spec as ``((top, bottom), (left, right))`` for input ``spatial = (H, W)``."""
    kernel, stride, dilation = as_pair(kernel), as_pair(stride), as_pair(dilation)
    if isinstance(padding, str):
        if padding == "VALID":
            return (0, 0), (0, 0)
        assert padding == "SAME", padding
        return tuple(
            same_padding(n, k, s, d)
            for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True)
        )
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    (top, bottom), (left, right) = padding
    return (top, bottom), (left, right)


def window_starts(n, kernel, stride=1, lo=0, hi=0, dilation=1, ceil_mode=False):
    """Start offsets, in padded coordinates, of every window along one axis, by enumeration.

    A window spans ``dilation * (kernel - 1) + 1`` positions of the padded axis
    (``lo + n + hi`` long). Without ``ceil_mode`` a window is kept only if it fits entirely.
    With ``ceil_mode`` one more, partial, window is kept when the previous one stopped short of the
    end, provided it starts inside the input or its left padding (``start < lo + n``; PyTorch's
    rule). Assumes the padding on each side is smaller than the window, as PyTorch requires.
    """
    length = n + lo + hi
    span = dilation * (kernel - 1) + 1
    assert span <= length, (span, length)
    starts = [0]
    while True:
        t = starts[-1] + stride
        if t + span <= length:
            starts.append(t)
        elif ceil_mode and starts[-1] + span < length and t < n + lo:
            starts.append(t)
            break
        else:
            break
    return starts


def output_size(n, kernel, stride=1, lo=0, hi=0, dilation=1, ceil_mode=False):
    """Number of windows along one axis (see :func:`window_starts`)."""
    return len(window_starts(n, kernel, stride, lo, hi, dilation, ceil_mode))


def conv2d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1):
    """Cross-correlation plus bias by the sliding-window loop.

    x: (N, H, W, C_in); w: (kh, kw, C_in // groups, C_out); b: (C_out,) or None.
    Pad with zeros; at every output position take the window (every ``dilation``-th pixel),
    multiply it element-wise with the kernel, sum, add the bias; move by ``stride``. ``groups``
    splits the input and output channels into that many slices, convolved independently.
    Returns (N, H_out, W_out, C_out) float64.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, _ = x.shape
    kh, kw, cin_g, cout = w.shape
    (sh, sw), (dh, dw) = as_pair(stride), as_pair(dilation)
    (top, bottom), (left, right) = explicit_padding(padding, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    rows = window_starts(h, kh, sh, top, bottom, dh)
    cols = window_starts(wd, kw, sw, left, right, dw)
    cout_g = cout // groups
    y = np.zeros((n, len(rows), len(cols), cout))
    for g in range(groups):
        xg = xp[..., g * cin_g:(g + 1) * cin_g]
        wg = w[..., g * cout_g:(g + 1) * cout_g]
        for oy, ty in enumerate(rows):
            for ox, tx in enumerate(cols):
                patch = xg[:, ty:ty + dh * (kh - 1) + 1:dh, tx:tx + dw * (kw - 1) + 1:dw, :]
                # (N, kh, kw, cin_g, 1) * (kh, kw, cin_g, cout_g), summed over the window
                y[:, oy, ox, g * cout_g:(g + 1) * cout_g] = np.sum(
                    patch[..., None] * wg, axis=(1, 2, 3)
                )
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def _pool(x, window, stride, padding, ceil_mode, reduce):
    """Slide a window; ``reduce(real_pixels, positions_inside_padded_input) -> (N, C)``."""
    x = np.asarray(x, np.float64)
    n, h, wd, c = x.shape
    (kh, kw) = as_pair(window)
    (sh, sw) = (kh, kw) if stride is None else as_pair(stride)
    (top, bottom), (left, right) = explicit_padding(padding, (h, wd), (kh, kw), (sh, sw))
    rows = window_starts(h, kh, sh, top, bottom, ceil_mode=ceil_mode)
    cols = window_starts(wd, kw, sw, left, right, ceil_mode=ceil_mode)
    y = np.zeros((n, len(rows), len(cols), c))
    for oy, ty in enumerate(rows):
        for ox, tx in enumerate(cols):
            # the window in input coordinates, then clipped to the real pixels
            y0, x0 = ty - top, tx - left
            real = x[:, max(y0, 0):min(y0 + kh, h), max(x0, 0):min(x0 + kw, wd), :]
            # positions of the window inside the padded input (ceil_mode may run past it)
            inside = (min(y0 + kh, h + bottom) - y0) * (min(x0 + kw, wd + right) - x0)
            y[:, oy, ox, :] = reduce(real, inside)
    return y


def max_pool(x, window, *, stride=None, padding="VALID", ceil_mode=False):
    """Max over each window of real pixels (padding is -inf, so it never wins).

    x: (N, H, W, C) -> (N, H_out, W_out, C) float64; ``stride`` defaults to ``window``.
    """

    def reduce(real, inside):
        return real.max(axis=(1, 2))

    return _pool(x, window, stride, padding, ceil_mode, reduce)


def avg_pool(x, window, *, stride=None, padding="VALID", ceil_mode=False,
             count_include_pad=True):
    """Mean over each window: sum of real pixels / divisor.

    The divisor is, with ``count_include_pad``, the number of window positions inside the
    padded input (padding counts, positions that exist only because ``ceil_mode`` rounded up do
    not); without it, the number of real pixels in the window.
    x: (N, H, W, C) -> (N, H_out, W_out, C) float64; ``stride`` defaults to ``window``.
    """

    def reduce(real, inside):
        count = inside if count_include_pad else real.shape[1] * real.shape[2]
        return real.sum(axis=(1, 2)) / count

    return _pool(x, window, stride, padding, ceil_mode, reduce)


def global_max_pool(x):
    """(N, H, W, C) -> (N, C): max over every position of each channel."""
    return np.asarray(x, np.float64).max(axis=(1, 2))


def global_avg_pool(x):
    """(N, H, W, C) -> (N, C): sum over every position of each channel / (H * W)."""
    x = np.asarray(x, np.float64)
    return x.sum(axis=(1, 2)) / (x.shape[1] * x.shape[2])


def relu(x):
    """max(0, x)."""
    return np.maximum(0.0, x)


def sigmoid(x):
    """1 / (1 + e^-x)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def tanh(x):
    """(e^x - e^-x) / (e^x + e^-x); keep |x| moderate."""
    x = np.asarray(x, np.float64)
    return (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x))


def leaky_relu(x, negative_slope=0.01):
    """x for x >= 0, ``negative_slope * x`` otherwise."""
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, x, negative_slope * x)


def elu(x, alpha=1.0):
    """x for x > 0, ``alpha * (e^x - 1)`` otherwise."""
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))


def softmax(x, axis=-1):
    """e^x / sum(e^x) along ``axis`` (shifted by the max, which cancels, so it cannot overflow)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """x - log(sum(e^x)) along ``axis``, shifted by the max."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
