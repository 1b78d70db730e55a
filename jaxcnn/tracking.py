"""Metric writers: one narrow interface, swappable backends.

Every backend is a :class:`MetricWriter` with the same seven methods (the shape of CLU's
``metric_writers``), so training code writes to ``writer`` and never learns where the values go:

* :class:`TensorBoardWriter`: event files for TensorBoard, written by tensorboardX's protocol
  buffers on a background thread (the training thread never waits on disk); it lives in
  :mod:`jaxcnn.tensorboard_writer` and is re-exported here.
* :class:`MemoryWriter`: keeps everything in dicts of lists, for tests.
* :class:`ConsoleWriter`: prints the scalars as one plain line per step.
* :class:`MultiWriter`: fans every call out to several writers.

The interface and the values every backend accepts are in :mod:`jaxcnn.metric_writer`. Arguments
are checked, and arrays copied to host memory, in the calling thread, so a bad argument raises
``ValueError`` at the call that passed it, in every backend that stores the value
(:class:`ConsoleWriter` checks only the scalars it prints).

>>> import io
>>> w = MultiWriter([MemoryWriter(), ConsoleWriter(io.StringIO())])
>>> with w:
...     w.write_scalars(3, {"train/loss": 0.25})
>>> w.writers[0].scalars["train/loss"]
[(3, 0.25)]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from jaxcnn.errors import RunError
from jaxcnn.metric_writer import (
    MetricWriter,
    check_histograms,
    check_hparams,
    check_images,
    check_scalars,
    check_step,
    check_texts,
)
from jaxcnn.tensorboard_writer import TensorBoardWriter

__all__ = ["ConsoleWriter", "MemoryWriter", "MetricWriter", "MultiWriter", "TensorBoardWriter"]


class MemoryWriter(MetricWriter):
    """Keeps everything written, for tests.

    Attributes (each list in call order):
      scalars: ``{tag: [(step, float), ...]}``.
      images: ``{tag: [(step, array), ...]}``, each array a copy with the shape and dtype given.
      histograms: ``{tag: [(step, values), ...]}``, values flattened to float64 (non-finite kept).
      texts: ``{tag: [(step, str), ...]}``.
      hparams: the flattened hyperparameters, or None before :meth:`write_hparams`.
      hparam_metrics: the metrics given to :meth:`write_hparams` (also added to ``scalars``
        unless ``write_metrics=False``).
      closed: whether :meth:`close` was called; data stays readable after it.

    It checks its arguments exactly like :class:`TensorBoardWriter`, refuses a second
    ``write_hparams`` and any write after ``close``.
    """

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.images: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.histograms: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.texts: dict[str, list[tuple[int, str]]] = {}
        self.hparams: dict[str, Any] | None = None
        self.hparam_metrics: dict[str, float] = {}
        self.closed = False

    def _check_open(self, method: str) -> None:
        if self.closed:
            raise RunError(f"MemoryWriter.{method}: the writer is closed")

    @staticmethod
    def _append(store: dict[str, list[Any]], step: int, items: Mapping[str, Any]) -> None:
        for tag, value in items.items():
            store.setdefault(tag, []).append((step, value))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._check_open("write_scalars")
        step = check_step("write_scalars", step)
        self._append(self.scalars, step, check_scalars("write_scalars", scalars))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._check_open("write_images")
        step = check_step("write_images", step)
        self._append(self.images, step, check_images(images))

    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        self._check_open("write_histograms")
        step = check_step("write_histograms", step)
        self._append(self.histograms, step, check_histograms(arrays))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._check_open("write_texts")
        step = check_step("write_texts", step)
        self._append(self.texts, step, check_texts(texts))

    def write_hparams(
        self,
        hparams: Mapping[str, Any],
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        write_metrics: bool = True,
    ) -> None:
        self._check_open("write_hparams")
        flat, values, step = check_hparams(hparams, metrics, step, write_metrics)
        if self.hparams is not None:
            raise RunError("MemoryWriter.write_hparams: hparams were already written")
        self.hparams, self.hparam_metrics = flat, values
        if write_metrics:
            self._append(self.scalars, step, values)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.3e}"


class ConsoleWriter(MetricWriter):
    """Prints each ``write_scalars`` call as one line: ``step 120: train/loss=0.3412 ...``.

    Values print with 4 decimals, or as ``1.234e-05`` outside [1e-3, 1e6). ``tags``, if given,
    keeps only those tags (a call with none of them prints nothing). Images, histograms, texts
    and hparams are ignored; so are their arguments, unchecked. ``close`` flushes the stream but
    never closes it.
    """

    def __init__(self, stream: TextIO | None = None, *, tags: Iterable[str] | None = None) -> None:
        # Looked up at call time, not bound as a default, so pytest's capsys sees the output.
        self._stream = stream
        self._tags = None if tags is None else frozenset(tags)

    @property
    def stream(self) -> TextIO:
        return sys.stdout if self._stream is None else self._stream

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        step = check_step("write_scalars", step)
        values = check_scalars("write_scalars", scalars)
        parts = [
            f"{tag}={_format_value(v)}"
            for tag, v in values.items()
            if self._tags is None or tag in self._tags
        ]
        if parts:
            print(f"step {step}: " + " ".join(parts), file=self.stream)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        pass

    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        pass

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        pass

    def write_hparams(
        self,
        hparams: Mapping[str, Any],
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        write_metrics: bool = True,
    ) -> None:
        pass

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class MultiWriter(MetricWriter):
    """Sends every call to each of ``writers``, in order.

    A ``write_*`` call stops at the first writer that raises (they all check arguments alike, so
    a bad argument fails at the first). ``flush`` and ``close`` reach every writer even if one
    raises, then re-raise the first error.
    """

    def __init__(self, writers: Sequence[MetricWriter]) -> None:
        self.writers = tuple(writers)
        for w in self.writers:
            if not isinstance(w, MetricWriter):
                raise ValueError(
                    f"MultiWriter: every writer must be a MetricWriter, got {type(w).__name__}"
                )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_histograms(step, arrays)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for w in self.writers:
            w.write_texts(step, texts)

    def write_hparams(
        self,
        hparams: Mapping[str, Any],
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        write_metrics: bool = True,
    ) -> None:
        for w in self.writers:
            w.write_hparams(hparams, metrics, step=step, write_metrics=write_metrics)

    def _each(self, method: str) -> None:
        first: BaseException | None = None
        for w in self.writers:
            try:
                getattr(w, method)()
            except Exception as exc:  # re-raised below, after the others ran
                first = first or exc
        if first is not None:
            raise first

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        self._each("close")
