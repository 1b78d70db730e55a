"""The pictures TensorBoard shows: kernels, feature maps, confusion matrices, mistakes.

NumPy in (``jax.Array`` works through ``np.asarray``), NumPy out: every function returns float32
images in [0, 1], ``(H, W, C)`` (or ``(N, H, W, C)``), ready for
:meth:`jaxcnn.tracking.MetricWriter.write_images`.

Grids share one layout rule. ``n`` tiles of ``h x w`` pixels go into a near-square grid filled
row by row::

    cols = ceil(sqrt(n)),  rows = ceil(n / cols)
    H = rows * h + (rows - 1) * pad,  W = cols * w + (cols - 1) * pad

with ``pad`` pixels of ``pad_value`` (white by default) between tiles and no outer border; the
unused cells of the last row are ``pad_value`` too. :func:`grid_size` computes this.

Normalisation is min-max per tile, over its finite values: the smallest value maps to 0, the
largest to 1; a constant tile maps to 0.5 and non-finite values to 0.

Explaining one prediction, :func:`saliency`, :func:`grad_cam` and :func:`overlay`, lives in
:mod:`jaxcnn.explain` and is reachable here as ``visualize.saliency`` etc.; it needs JAX, so it
is imported on first use, and importing this module stays free of JAX.

>>> import numpy as np
>>> filter_grid(np.zeros((3, 3, 1, 8))).shape  # 8 tiles -> 3 x 3 grid of 3 x 3 tiles
(11, 11, 1)
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxcnn.checks import is_int

__all__ = [
    "annotated_grid",
    "confusion_matrix",
    "confusion_matrix_image",
    "feature_map_grid",
    "filter_grid",
    "grid_size",
    "misclassified",
]


_EXPLAIN = ("grad_cam", "overlay", "saliency")  # from jaxcnn.explain, imported on first use


def __getattr__(name: str) -> Any:
    if name in _EXPLAIN:
        return getattr(importlib.import_module("jaxcnn.explain"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPLAIN))


_LINE = 14  # pixel height of one line of text (PIL's default font is 10 px, ~12 px with descent)
_MARGIN = 3  # pixels around text in label margins


def grid_size(n: int, h: int, w: int, *, pad: int = 1) -> tuple[int, int, int, int]:
    """``(rows, cols, H, W)`` of the near-square grid of ``n`` tiles of ``h x w`` pixels.

    >>> grid_size(10, 5, 5, pad=1)  # 4 columns, 3 rows
    (3, 4, 17, 23)
    """
    if n < 1:
        raise ValueError(f"grid_size: n must be >= 1, got {n}")
    cols = math.isqrt(n - 1) + 1  # ceil(sqrt(n)), exact for any int
    rows = -(-n // cols)
    return rows, cols, rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad


def _check_pad(fn: str, pad: int) -> int:
    if not is_int(pad) or pad < 0:
        raise ValueError(f"{fn}: pad must be an int >= 0, got {pad!r}")
    return int(pad)


def _minmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Min-max normalise ``x`` over ``axes`` (one tile per remaining index), in float64."""
    finite = np.isfinite(x)
    lo = np.min(np.where(finite, x, np.inf), axis=axes, keepdims=True)
    hi = np.max(np.where(finite, x, -np.inf), axis=axes, keepdims=True)
    has_values = np.isfinite(lo)  # False for a tile with no finite value
    lo, hi = np.where(has_values, lo, 0.0), np.where(has_values, hi, 0.0)
    span = hi - lo
    varies = span > 0
    safe_x = np.where(finite, x, lo)
    out = np.where(varies, (safe_x - lo) / np.where(varies, span, 1.0), 0.5)
    return np.clip(np.where(finite, out, 0.0), 0.0, 1.0)


def _tile(tiles: np.ndarray, rows: int, cols: int, pad: int, pad_value: float) -> np.ndarray:
    """Place ``tiles`` ``(n, h, w, c)`` row by row into a ``rows x cols`` grid."""
    n, h, w, c = tiles.shape
    out = np.full(
        (rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), pad_value, np.float32
    )
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = tiles[i]
    return out


def filter_grid(w: Any, *, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """One image of a convolution's kernels.

    Args:
      w: kernels ``(kh, kw, c_in, c_out)`` (HWIO).
      pad: pixels between tiles.
      pad_value: colour of the separating pixels, in [0, 1].

    Returns:
      float32 ``(H, W, C)`` in [0, 1], each tile min-max normalised on its own:

      * ``c_in == 3``: one RGB tile ``kh x kw`` per output filter (normalised over its three
        channels together, so colours keep their balance), near-square grid of ``n = c_out``
        tiles; ``C = 3``.
      * ``c_in == 1``: one grey tile per output filter, near-square grid of ``n = c_out``
        tiles; ``C = 1``.
      * otherwise: one grey tile per (output filter, input channel) pair, ``rows = c_out``
        (filter ``o`` is row ``o``), ``cols = c_in`` (input channel ``i`` is column ``i``);
        ``C = 1``.

      ``H = rows * kh + (rows - 1) * pad`` and ``W = cols * kw + (cols - 1) * pad``, where the
      near-square grid has ``cols = ceil(sqrt(n))``, ``rows = ceil(n / cols)``.

    >>> filter_grid(np.zeros((5, 5, 3, 16))).shape  # 16 RGB tiles, 4 x 4
    (23, 23, 3)
    >>> filter_grid(np.zeros((3, 3, 8, 4)), pad=2).shape  # 4 rows of 8 grey tiles
    (18, 38, 1)
    """
    pad = _check_pad("filter_grid", pad)
    k = np.asarray(w, dtype=np.float64)
    if k.ndim != 4 or 0 in k.shape:
        raise ValueError(
            f"filter_grid: w must be HWIO kernels (kh, kw, c_in, c_out), got shape {k.shape}"
        )
    kh, kw, c_in, c_out = k.shape
    if c_in in (1, 3):
        tiles = _minmax(np.transpose(k, (3, 0, 1, 2)), (1, 2, 3))  # (c_out, kh, kw, c_in)
        rows, cols, _, _ = grid_size(c_out, kh, kw, pad=pad)
    else:
        per_pair = np.transpose(k, (3, 2, 0, 1)).reshape(c_out * c_in, kh, kw, 1)
        tiles = _minmax(per_pair, (1, 2, 3))
        rows, cols = c_out, c_in
    return _tile(tiles, rows, cols, pad, pad_value)


def feature_map_grid(
    fmaps: Any, *, pad: int = 1, max_channels: int | None = None, pad_value: float = 1.0
) -> np.ndarray:
    """One grey image per sample, showing its channel maps side by side.

    Args:
      fmaps: activations ``(N, H, W, C)`` of N fixed samples.
      pad: pixels between maps.
      max_channels: show only the first ``max_channels`` channels (all if None).
      pad_value: colour of the separating pixels, in [0, 1].

    Returns:
      float32 ``(N, H', W', 1)`` in [0, 1]: sample ``i``'s ``c = min(C, max_channels)`` maps in a
      near-square grid (channel ``j`` at row ``j // cols``, column ``j % cols``), each map
      min-max normalised on its own, with ``cols = ceil(sqrt(c))``, ``rows = ceil(c / cols)``,
      ``H' = rows * H + (rows - 1) * pad`` and ``W' = cols * W + (cols - 1) * pad``.

    >>> feature_map_grid(np.zeros((2, 8, 8, 6))).shape  # 6 maps -> 2 rows x 3 cols
    (2, 17, 26, 1)
    """
    pad = _check_pad("feature_map_grid", pad)
    x = np.asarray(fmaps, dtype=np.float64)
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(
            f"feature_map_grid: fmaps must be activations (N, H, W, C), got shape {x.shape}"
        )
    if max_channels is not None and (
        not is_int(max_channels) or max_channels < 1
    ):
        raise ValueError(
            f"feature_map_grid: max_channels must be None or an int >= 1, got {max_channels!r}"
        )
    n, h, w, c = x.shape
    c = c if max_channels is None else min(c, int(max_channels))
    maps = _minmax(np.transpose(x[..., :c], (0, 3, 1, 2)), (2, 3))[..., None]  # (N, c, H, W, 1)
    rows, cols, _, _ = grid_size(c, h, w, pad=pad)
    return np.stack([_tile(maps[i], rows, cols, pad, pad_value) for i in range(n)])


def _labels(fn: str, name: str, value: Any, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(
            f"{fn}: {name} must be a 1-D integer array of class indices, got {arr.dtype} array "
            f"of shape {arr.shape}"
        )
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{fn}: {name} has values in [{arr.min()}, {arr.max()}]; every class index must be "
            f"in [0, {num_classes - 1}] for num_classes={num_classes}"
        )
    return arr.astype(np.int64)


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
      labels: true classes ``(N,)``, ints in ``[0, num_classes)``.
      preds: predicted classes ``(N,)``, same range.
      num_classes: ``K``.

    Returns:
      int64 ``(K, K)``: entry ``[t, p]`` counts the samples of true class ``t`` predicted as
      ``p`` (rows true, columns predicted); it sums to N and its trace counts the correct ones.

    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be an int >= 1, got {num_classes!r}")
    num_classes = int(num_classes)
    t = _labels("confusion_matrix", "labels", labels, num_classes)
    p = _labels("confusion_matrix", "preds", preds, num_classes)
    if t.shape != p.shape:
        raise ValueError(
            f"confusion_matrix: labels has shape {t.shape} but preds has shape {p.shape}; they "
            f"need the same length"
        )
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_width(text: str) -> int:
    return math.ceil(_font().getlength(text))


def _fit(text: str, width: int) -> str:
    """``text`` cut to fit in ``width`` pixels."""
    while text and _text_width(text) > width:
        text = text[:-1]
    return text


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


_CM_DARK = np.array([8, 48, 107], np.float64)  # the colour of a row-normalised 1.0 (dark blue)


def confusion_matrix_image(
    cm: Any, *, class_names: Sequence[str] | None = None, cell: int = 32
) -> np.ndarray:
    """A confusion matrix as an RGB heat map with the counts written in.

    Args:
      cm: counts ``(K, K)``, rows true, columns predicted (as :func:`confusion_matrix` returns).
      class_names: K names; drawn left of the rows and, cut to the cell width, above the
        columns.
      cell: side of one cell in pixels.

    Returns:
      float32 ``(H, W, 3)`` in [0, 1]. Each cell's colour is its count divided by its row's sum
      (white 0 to dark blue 1; an empty row stays white), so a class's recall reads along the
      diagonal whatever the class sizes. Each count is drawn in the cell (black on light cells,
      white on dark ones) when it fits in the cell's width. Size: ``H = K * cell`` and
      ``W = K * cell`` without ``class_names``; with them ``H = 14 + K * cell`` (a row of column
      names) and ``W = L + K * cell``, where ``L`` = 6 + the width in pixels of the widest name
      in PIL's default font.

    >>> confusion_matrix_image(np.eye(3, dtype=int)).shape
    (96, 96, 3)
    """
    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(
            f"confusion_matrix_image: cm must be a square (K, K) matrix, got shape {counts.shape}"
        )
    if counts.dtype.kind not in "iuf" or (counts.size and counts.min() < 0):
        raise ValueError(
            f"confusion_matrix_image: cm must hold counts >= 0, got {counts.dtype} with minimum "
            f"{counts.min()}"
        )
    if not is_int(cell) or cell < 1:
        raise ValueError(f"confusion_matrix_image: cell must be an int >= 1, got {cell!r}")
    cell = int(cell)
    k = counts.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(
            f"confusion_matrix_image: class_names has {len(class_names)} names; cm needs {k}"
        )
    row_sums = counts.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(counts, row_sums, out=np.zeros((k, k)), where=row_sums > 0)

    left = 0 if class_names is None else 2 * _MARGIN + max(_text_width(str(s)) for s in class_names)
    top = 0 if class_names is None else _LINE
    rgb = np.rint(255.0 - frac[..., None] * (255.0 - _CM_DARK)).astype(np.uint8)  # (K, K, 3)
    canvas = np.full((top + k * cell, left + k * cell, 3), 255, np.uint8)
    canvas[top:, left:] = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = _font()
    for t in range(k):
        for p in range(k):
            count = counts[t, p]
            text = str(int(count)) if float(count).is_integer() else f"{float(count):.3g}"
            if _text_width(text) > cell - 2:
                continue
            x0, y0 = left + p * cell + cell / 2, top + t * cell + cell / 2
            fill = (255, 255, 255) if frac[t, p] > 0.5 else (0, 0, 0)
            draw.text((x0, y0), text, fill=fill, font=font, anchor="mm")
    if class_names is not None:
        for i, name in enumerate(class_names):
            draw.text(
                (_MARGIN, top + i * cell + cell / 2),
                str(name),
                fill=(0, 0, 0),
                font=font,
                anchor="lm",
            )
            draw.text(
                (left + i * cell + cell / 2, top / 2),
                _fit(str(name), cell - 2),
                fill=(0, 0, 0),
                font=font,
                anchor="mm",
            )
    return _to_float(image)


def misclassified(
    images: Any, true_labels: Any, pred_labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The samples whose prediction is wrong, in their original order.

    Returns ``(images[m], true_labels[m], pred_labels[m])`` with ``m = true != pred``, ready for
    :func:`annotated_grid`; the first axis may be empty.
    """
    x = np.asarray(images)
    t = _labels("misclassified", "true_labels", true_labels)
    p = _labels("misclassified", "pred_labels", pred_labels)
    if not (x.ndim >= 1 and x.shape[0] == t.shape[0] == p.shape[0]):
        raise ValueError(
            f"misclassified: images {x.shape}, true_labels {t.shape} and pred_labels {p.shape} "
            f"need the same first dimension"
        )
    wrong = t != p
    return x[wrong], t[wrong], p[wrong]


def annotated_grid(
    images: Any,
    true_labels: Any,
    pred_labels: Any,
    *,
    class_names: Sequence[str] | None = None,
    max_images: int = 64,
    min_size: int = 64,
    pad: int = 2,
    pad_value: float = 1.0,
) -> np.ndarray:
    """Images in a grid, each with ``"pred/true"`` written under it.

    Pass the output of :func:`misclassified` to show a model's mistakes. The text is green
    when ``pred == true`` and red otherwise, on a black band.

    Args:
      images: ``(N, H, W, C)`` with ``C`` in {1, 3}, or ``(N, H, W)`` grey; uint8 is shown as
        is (divided by 255), a float image is min-max normalised on its own (so standardised
        inputs show fine).
      true_labels: ``(N,)`` true class indices.
      pred_labels: ``(N,)`` predicted class indices.
      class_names: names to write instead of the indices.
      max_images: show only the first ``max_images`` samples.
      min_size: upscale small images (nearest neighbour) until the longer side is at least this.
      pad: width of the separators between tiles, in pixels.
      pad_value: colour of the separating pixels, in [0, 1].

    Returns:
      float32 ``(H', W', 3)`` in [0, 1]. With ``n = min(N, max_images)``, each image is upscaled
      by the integer ``s = max(ceil(min_size / max(H, W)), ceil((T + 2) / W), 1)``, where ``T``
      is the pixel width of the widest label shown (so the text fits under the tile), then gets a
      14-pixel text band: tiles are ``(H * s + 14) x (W * s)`` and go into the near-square grid
      of ``n`` tiles (see :func:`grid_size`). For 28 x 28 inputs and short labels, ``s = 3``.

    Raises:
      ValueError: no images, or shapes that do not match.
    """
    pad = _check_pad("annotated_grid", pad)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise ValueError(
            f"annotated_grid: images must be (N, H, W, C) with C in {{1, 3}} (or (N, H, W)) and "
            f"N >= 1, got shape {np.shape(images)}"
        )
    t = _labels("annotated_grid", "true_labels", true_labels)
    p = _labels("annotated_grid", "pred_labels", pred_labels)
    if not (x.shape[0] == t.shape[0] == p.shape[0]):
        raise ValueError(
            f"annotated_grid: images has {x.shape[0]} samples, true_labels {t.shape[0]} and "
            f"pred_labels {p.shape[0]}; they need the same number"
        )
    for name, v in (("max_images", max_images), ("min_size", min_size)):
        if not is_int(v) or v < 1:
            raise ValueError(f"annotated_grid: {name} must be an int >= 1, got {v!r}")
    max_images, min_size = int(max_images), int(min_size)

    def label(i: int) -> str:
        if class_names is None:
            return str(i)
        if not 0 <= i < len(class_names):
            raise ValueError(
                f"annotated_grid: class index {i} has no name; class_names has "
                f"{len(class_names)} entries"
            )
        return str(class_names[i])

    n = min(x.shape[0], max_images)
    x, t, p = x[:n], t[:n], p[:n]
    texts = [f"{label(int(pi))}/{label(int(ti))}" for pi, ti in zip(p, t, strict=True)]
    _, h, w, _ = x.shape
    s = max(-(-min_size // max(h, w)), -(-(max(map(_text_width, texts)) + 2) // w), 1)

    if x.dtype == np.uint8:
        pixels = x.astype(np.float64) / 255.0
    else:
        pixels = _minmax(x.astype(np.float64), (1, 2, 3))
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    big = np.repeat(np.repeat(pixels, s, axis=1), s, axis=2)  # (n, h*s, w*s, 3)

    font = _font()
    tiles = np.zeros((n, h * s + _LINE, w * s, 3), np.float32)
    for i in range(n):
        band = Image.new("RGB", (w * s, _LINE), (0, 0, 0))
        colour = (80, 255, 80) if p[i] == t[i] else (255, 80, 80)
        ImageDraw.Draw(band).text((1, _LINE / 2), texts[i], fill=colour, font=font, anchor="lm")
        tiles[i, : h * s] = big[i]
        tiles[i, h * s :] = _to_float(band)
    rows, cols, _, _ = grid_size(n, h * s + _LINE, w * s, pad=pad)
    return _tile(tiles, rows, cols, pad, pad_value)
