"""The :class:`MetricWriter` interface, and the checks of the values every backend accepts.

Backends (:mod:`jaxcnn.tracking`, :mod:`jaxcnn.tensorboard_writer`) call the ``check_*``
functions in the calling thread, before they store or queue anything, so a bad argument raises
``ValueError`` at the call that passed it. Arrays come back as host copies (``np.array``, so
``jax.Array`` works and later buffer donation or in-place edits cannot change what is written).

Values accepted by every backend:

* ``step``: an int >= 0; NumPy integers and 0-d integer arrays (``TrainState.step``) work, a
  bool does not.
* scalars: ``{tag: value}``, each value a Python number or a one-element array. Non-finite values
  are written as given (TensorBoard draws NaN/inf).
* images: ``{tag: image}``, each ``(H, W, C)`` or a batch ``(N, H, W, C)`` with ``C`` in
  ``{1, 3}`` (grey or RGB), either ``uint8`` in [0, 255] or floating point in [0, 1] (written as
  ``round(255 * x)``). A float image with a value outside [0, 1] (or NaN) raises ``ValueError``:
  it is almost always an image that was never normalised (standardised inputs, [0, 255] floats),
  and clipping would hide that. :mod:`jaxcnn.visualize` returns images that are already in
  [0, 1].
* histograms: ``{tag: array}``, any shape, at least one element; non-finite values are left out
  of the histogram (a diverged run must not crash its own logging) and an array with no finite
  value writes no histogram.
* texts: ``{tag: str}`` (TensorBoard renders them as Markdown).
* hparams: ``{name: value}``; nested mappings are flattened with ``.`` (``{"opt": {"lr": 0.1}}``
  becomes ``opt.lr``); bool, int, float and str are kept, NumPy scalars become Python ones, a
  function becomes its ``__name__``, None and everything else is written as its ``str``.

>>> check_hparams({"opt": {"lr": 0.1}}, {"val/accuracy": 0.9}, step=3)
({'opt.lr': 0.1}, {'val/accuracy': 0.9}, 3)
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MetricWriter", "check_histograms", "check_hparams", "check_images", "check_scalars",
           "check_step", "check_texts"]


# ----------------------------------------------------------------------------------------------
# The interface.


class MetricWriter(abc.ABC):
    """Where training writes its metrics, images, histograms, texts and hyperparameters.

    All ``write_*`` methods take ``step`` first and a mapping from tag to value; see the module
    docstring for the values accepted. A writer is a context manager: leaving the ``with`` block
    closes it. Writers are not thread-safe: call one writer from one thread at a time.
    """

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one number per tag at ``step``."""

    @abc.abstractmethod
    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Writes an image ``(H, W, C)`` or a batch ``(N, H, W, C)`` per tag at ``step``."""

    @abc.abstractmethod
    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        """Writes the histogram of each array's values at ``step``."""

    @abc.abstractmethod
    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Writes one (Markdown) text per tag at ``step``."""

    @abc.abstractmethod
    def write_hparams(
        self,
        hparams: Mapping[str, Any],
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        write_metrics: bool = True,
    ) -> None:
        """Writes the run's hyperparameters once, with the metrics that judge them.

        ``metrics`` maps scalar tags to their final values. TensorBoard's HParams dashboard
        names these tags and shows, for each, the last point of the run's scalar series with
        that tag.

        * ``write_metrics=True``: each metric is also written as a scalar at ``step`` (pass the
          final step when the tag is also a training curve, so that the value extends it).
        * ``write_metrics=False``: no scalar is written; the tags must be series the caller
          already writes (e.g. ``test/accuracy``, written at the final step), so the dashboard
          compares runs without adding a chart of single points per metric. The values are
          still checked, and :class:`~jaxcnn.tracking.MemoryWriter` keeps them.

        Backends that store hyperparameters refuse a second call on the same writer with
        :class:`~jaxcnn.errors.RunError`.
        """

    @abc.abstractmethod
    def flush(self) -> None:
        """Returns once everything written so far has reached its destination."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flushes and releases the writer; calling it again does nothing."""

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Argument checks (run in the caller's thread).


def _is_numeric(dtype: np.dtype) -> bool:
    # bfloat16 (from JAX) is a NumPy extension dtype outside np.number.
    return np.issubdtype(dtype, np.number) or "float" in dtype.name


def check_step(method: str, step: Any, name: str = "step") -> int:
    """``step`` as a Python int, or ``ValueError`` naming ``method`` and ``name``.

    >>> check_step("write_scalars", np.int64(3))
    3
    """
    arr = np.asarray(step)  # a 0-d integer jax.Array (e.g. TrainState.step) works too
    if isinstance(step, bool) or arr.ndim != 0 or arr.dtype.kind not in "iu" or arr < 0:
        raise ValueError(f"{method}: {name} must be an int >= 0, got {step!r}")
    return int(arr)


def _check_mapping(method: str, name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{method}: {name} must be a mapping from tag to value, got {type(value).__name__}"
        )
    for tag in value:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"{method}: every tag in {name} must be a non-empty str, got {tag!r}")
    return value


def _to_float(method: str, tag: str, value: Any) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or not (_is_numeric(arr.dtype) or arr.dtype == np.bool_):
        raise ValueError(
            f"{method}: scalar {tag!r} must be one number, got {arr.dtype} array of shape "
            f"{arr.shape}"
        )
    return float(arr.reshape(()))


def check_scalars(method: str, scalars: Any) -> dict[str, float]:
    """``{tag: float}`` from ``{tag: number or one-element array}``."""
    scalars = _check_mapping(method, "scalars", scalars)
    return {tag: _to_float(method, tag, v) for tag, v in scalars.items()}


def _image(tag: str, value: Any) -> np.ndarray:
    """A validated host copy of one image or batch, shape and dtype kept."""
    arr = np.array(value)  # a copy: the caller may donate or overwrite its buffer
    if arr.dtype != np.uint8 and arr.dtype.kind != "f":
        if "float" not in arr.dtype.name:  # bfloat16 is a NumPy extension dtype, not kind 'f'
            raise ValueError(
                f"write_images: image {tag!r} has dtype {arr.dtype}; expected uint8 in [0, 255] "
                f"or a float dtype in [0, 1]"
            )
        arr = arr.astype(np.float32)
    if arr.ndim not in (3, 4) or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
        raise ValueError(
            f"write_images: image {tag!r} has shape {arr.shape}; expected (H, W, C) or "
            f"(N, H, W, C) with C in {{1, 3}} and no empty axis (add a channel axis to a 2-D "
            f"greyscale image)"
        )
    if arr.dtype != np.uint8:
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"write_images: float image {tag!r} has values in [{lo}, {hi}]; expected [0, 1] "
                f"(normalise it, e.g. with jaxcnn.visualize, or pass uint8 in [0, 255])"
            )
    return arr


def check_images(images: Any) -> dict[str, np.ndarray]:
    """``{tag: host copy}`` of each image or batch, shape kept; uint8 or a float dtype (bfloat16
    becomes float32)."""
    images = _check_mapping("write_images", "images", images)
    return {tag: _image(tag, v) for tag, v in images.items()}


def check_histograms(arrays: Any) -> dict[str, np.ndarray]:
    """``{tag: (size,) float64}``: each array flattened, non-finite values kept."""
    arrays = _check_mapping("write_histograms", "arrays", arrays)
    out = {}
    for tag, value in arrays.items():
        arr = np.array(value)
        if arr.size == 0 or not _is_numeric(arr.dtype):
            raise ValueError(
                f"write_histograms: array {tag!r} must be a non-empty numeric array, got "
                f"{arr.dtype} of shape {arr.shape}"
            )
        out[tag] = arr.astype(np.float64).reshape(-1)
    return out


def check_texts(texts: Any) -> dict[str, str]:
    """A copy of ``{tag: str}``."""
    texts = _check_mapping("write_texts", "texts", texts)
    for tag, value in texts.items():
        if not isinstance(value, str):
            raise ValueError(f"write_texts: text {tag!r} must be a str, got {type(value).__name__}")
    return dict(texts)


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str):
        return value
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return str(value)


def _flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_hparams(value, f"{name}."))
        else:
            out[name] = _hparam_value(value)
    return out


def check_hparams(
    hparams: Any, metrics: Any, step: Any, write_metrics: Any = True
) -> tuple[dict[str, Any], dict[str, float], int]:
    """``(flat hparams, {tag: float} metrics, step)`` for ``write_hparams``; also refuses a
    ``write_metrics`` that is not a bool (a string such as ``"no"`` would be true)."""
    hparams = _check_mapping("write_hparams", "hparams", hparams)
    if not isinstance(write_metrics, bool | np.bool_):
        raise ValueError(
            f"write_hparams: write_metrics must be a bool, got {write_metrics!r}"
        )
    return (
        _flatten_hparams(hparams),
        check_scalars("write_hparams", metrics),
        check_step("write_hparams", step),
    )
