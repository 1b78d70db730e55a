"""Metric writers: one narrow interface, swappable backends.

Every backend is a :class:`MetricWriter` with the same seven methods (the shape of CLU's
``metric_writers``), so training code writes to ``writer`` and never learns where the values go:

* :class:`TensorBoardWriter`: event files for TensorBoard, written by tensorboardX's protocol
  buffers on a background thread (the training thread never waits on disk).
* :class:`MemoryWriter`: keeps everything in dicts of lists, for tests.
* :class:`ConsoleWriter`: prints the scalars as one plain line per step.
* :class:`MultiWriter`: fans every call out to several writers.

Arguments are checked, and arrays are copied to host memory (``np.array``, so ``jax.Array``
works and later buffer donation or in-place edits cannot change what is written), in the calling
thread, so a bad argument raises ``ValueError`` at the call that passed it, in every backend that
stores the value (:class:`ConsoleWriter` checks only the scalars it prints).

Values accepted by every backend:

* ``step``: an int >= 0; NumPy integers and 0-d integer arrays (``TrainState.step``) work, a
  bool does not.
* scalars: ``{tag: value}``, each value a Python number or a one-element array. Non-finite values
  are written as given (TensorBoard draws NaN/inf).
* images: ``{tag: image}``, each ``(H, W, C)`` or a batch ``(N, H, W, C)`` with ``C`` in
  ``{1, 3}`` (grey or RGB), either ``uint8`` in [0, 255] or floating point in [0, 1] (written as
  ``round(255 * x)``). A float image with a value outside [0, 1] (or NaN) raises ``ValueError``:
  it is almost always an image that was never normalised (standardised inputs, [0, 255] floats),
  and clipping would hide that.
  :mod:`jaxcnn.visualize` returns images that are already in [0, 1].
* histograms: ``{tag: array}``, any shape, at least one element; non-finite values are left out
  of the histogram (a diverged run must not crash its own logging) and an array with no finite
  value writes no histogram.
* texts: ``{tag: str}`` (TensorBoard renders them as Markdown).
* hparams: ``{name: value}``; nested mappings are flattened with ``.`` (``{"opt": {"lr": 0.1}}``
  becomes ``opt.lr``); bool, int, float and str are kept, NumPy scalars become Python ones, None
  and everything else is written as its ``str``.

>>> import io
>>> w = MultiWriter([MemoryWriter(), ConsoleWriter(io.StringIO())])
>>> with w:
...     w.write_scalars(3, {"train/loss": 0.25})
>>> w.writers[0].scalars["train/loss"]
[(3, 0.25)]
"""

from __future__ import annotations

import abc
import math
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from jaxcnn.errors import RunError

__all__ = ["ConsoleWriter", "MemoryWriter", "MetricWriter", "MultiWriter", "TensorBoardWriter",
           "scalar_steps"]

_HISTOGRAM_BINS = 64


# ----------------------------------------------------------------------------------------------
# Argument checks shared by every backend (run in the caller's thread).


def _is_numeric(dtype: np.dtype) -> bool:
    # bfloat16 (from JAX) is a NumPy extension dtype outside np.number.
    return np.issubdtype(dtype, np.number) or "float" in dtype.name


def _check_step(method: str, step: Any, name: str = "step") -> int:
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


def _scalars(method: str, scalars: Any) -> dict[str, float]:
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


def _images(images: Any) -> dict[str, np.ndarray]:
    images = _check_mapping("write_images", "images", images)
    return {tag: _image(tag, v) for tag, v in images.items()}


def _histograms(arrays: Any) -> dict[str, np.ndarray]:
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


def _texts(texts: Any) -> dict[str, str]:
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


def _hparams(hparams: Any, metrics: Any, step: Any) -> tuple[dict[str, Any], dict[str, float], int]:
    hparams = _check_mapping("write_hparams", "hparams", hparams)
    return (
        _flatten_hparams(hparams),
        _scalars("write_hparams", metrics),
        _check_step("write_hparams", step),
    )


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
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float], *, step: int = 0
    ) -> None:
        """Writes the run's hyperparameters once, with the metrics that judge them.

        ``metrics`` are also written as scalars at ``step`` (pass the final step when a metric
        tag is also a training curve, so that the value extends the curve). Backends that store
        hyperparameters refuse a second call on the same writer with :class:`RunError`.
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
# TensorBoard.


def _import_tensorboardx() -> None:
    """Import tensorboardX without PyTorch. Its ``writer`` module imports torch when installed,
    for nothing but type annotations of ``SummaryWriter`` (unused here), which costs ~2 s at
    every start-up; so torch is hidden (``sys.modules["torch"] = None`` makes its import fail,
    which tensorboardX expects) for the duration of this import only. A torch already imported
    is left alone, and one imported later works as usual."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tensorboardX  # noqa: F401
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of one ``(H, W, C)`` image, uint8 or float in [0, 1]."""
    import io

    from PIL import Image

    if image.dtype != np.uint8:
        image = np.rint(image.astype(np.float64) * 255.0).astype(np.uint8)
    pil = Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)  # fast; these files are read back rarely
    return buf.getvalue()


def _plugin_metadata(plugin: str, content: bytes = b"") -> Any:
    from tensorboardX.proto.summary_pb2 import SummaryMetadata

    return SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=plugin, content=content)
    )


def _image_summary_value(tag: str, batch: np.ndarray) -> Any:
    """The images plugin's own format: a string tensor ``[width, height, png_0, ..., png_N-1]``.

    This is what ``tf.summary.image`` writes; TensorBoard shows the N images of one step under one
    tag, with a slider over the samples.
    """
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.proto.tensor_pb2 import TensorProto
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

    if batch.ndim == 3:
        batch = batch[None]
    _, height, width, _ = batch.shape
    strings = [str(width).encode(), str(height).encode()] + [_png(im) for im in batch]
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=strings,
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(strings))]),
    )
    # ImagePluginData(version=0) serialises to b"" (proto3 omits defaults).
    return Summary.Value(tag=tag, tensor=tensor, metadata=_plugin_metadata("images"))


def _text_summary_value(tag: str, text: str) -> Any:
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.proto.tensor_pb2 import TensorProto
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

    tensor = TensorProto(
        dtype="DT_STRING", string_val=[text.encode("utf-8")], tensor_shape=TensorShapeProto()
    )
    return Summary.Value(tag=tag, tensor=tensor, metadata=_plugin_metadata("text"))


class _EventSink:
    """Owns the event file and, when asynchronous, the one thread that writes it.

    Kept apart from :class:`TensorBoardWriter` so the thread and the ``weakref.finalize`` hook
    hold no reference to the writer (a forgotten writer is still flushed at exit).
    """

    _STOP = object()

    def __init__(self, events: Any, asynchronous: bool, max_queue: int, name: str) -> None:
        self.events = events
        self.error: BaseException | None = None
        self.closed = False
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if asynchronous:
            self._queue = queue.Queue(max_queue)
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def _run(self, job: Callable[[], Iterable[Any]]) -> None:
        if self.error is not None:
            return  # the file's state is unknown after a failure: write nothing more
        try:
            for event in job():
                self.events.write_event(event)
        except Exception as exc:  # re-raised in the caller's thread
            self.error = exc

    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is self._STOP:
                    return
                self._run(job)
            except BaseException as exc:  # nothing may end this thread while jobs can arrive
                self.error = exc
            finally:
                self._queue.task_done()

    @property
    def asynchronous(self) -> bool:
        return self._queue is not None

    def submit(self, job: Callable[[], Iterable[Any]]) -> None:
        if self._queue is None:
            self._run(job)
        else:
            self._queue.put(job)  # blocks only while max_queue jobs are pending

    def flush(self) -> None:
        if self._queue is not None:
            self._queue.join()
        if self.error is None:
            try:
                self.events.flush()
            except BaseException as exc:
                self.error = exc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._queue is not None and self._thread is not None:
            self._queue.put(self._STOP)
            self._thread.join()
        try:
            self.events.close()  # flushes (and fsyncs) first
        except BaseException as exc:
            if self.error is None:
                self.error = exc


class TensorBoardWriter(MetricWriter):
    """Writes TensorBoard event files into ``logdir`` itself (no sub-run folders).

    Args:
      logdir: the run folder; created if missing. Every writer opens a new event file in it, named
        so that files sort in creation order (TensorBoard reads them in that order).
      purge_step: for a resumed run, the first step the new writer will write. TensorBoard then
        hides the events that earlier files of this folder wrote at steps >= ``purge_step``, so
        the curves continue without duplicated steps. (TensorBoard's Python loader,
        ``--load_fast=false``, and its ``plugin_event_accumulator`` purge every tag; the older
        ``event_accumulator.EventAccumulator`` purges scalars and histograms but never tensor
        summaries, so images and texts keep their old points there; the default Rust loader
        drops, per tag, the old points at or after each new point's step, so a tag the resumed
        run never writes again keeps its old points there.)
      asynchronous: if True (the default), protobuf and PNG encoding and file writes run on one
        background thread; the ``write_*`` calls only check their arguments, copy arrays to host
        memory and queue the job. An exception on that thread is re-raised (as :class:`RunError`,
        chained to the original) by the next ``write_*``, ``flush`` or ``close`` call; the events
        queued after it are dropped. If False, everything happens in the calling thread.
      max_queue: how many ``write_*`` calls may wait for the background thread; the next call
        blocks until one is written (nothing is ever dropped for lack of room).

    Raises:
      RunError: ``logdir`` cannot be created or written (the message names it and the OS error).
      ValueError: ``purge_step`` or ``max_queue`` is not a valid int.

    ``flush()`` returns once every queued event is written and fsynced; ``close()`` flushes,
    stops the thread and closes the file, and a second ``close()`` does nothing. A writer that is
    never closed is closed when it is garbage-collected or at interpreter exit.

    Events on disk: scalars as ``simple_value`` (float32); images in the images plugin's tensor
    format (one tag holds the N images of a batch); histograms as ``HistogramProto`` with
    64 equal-width bins over the finite values; texts as string tensors of the text plugin;
    hparams as the hparams plugin's ``_hparams_/experiment``, ``_hparams_/session_start_info``
    and ``_hparams_/session_end_info`` summaries at step 0 (the format tensorboardX's
    ``add_hparams`` writes, but into this folder), with the metric values as scalars.

    >>> import tempfile
    >>> with TensorBoardWriter(tempfile.mkdtemp()) as w:
    ...     w.write_scalars(0, {"train/loss": 2.3})
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        purge_step: int | None = None,
        asynchronous: bool = True,
        max_queue: int = 128,
    ) -> None:
        self.logdir = os.fspath(logdir)
        if purge_step is not None:
            purge_step = _check_step("TensorBoardWriter", purge_step, "purge_step")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"TensorBoardWriter: max_queue must be an int >= 1, got {max_queue!r}")
        self.purge_step = purge_step
        self._hparams_written = False

        _import_tensorboardx()
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        try:
            os.makedirs(self.logdir, exist_ok=True)
            # tensorboardX names files events.out.tfevents.<seconds>.<host>; two writers started
            # in the same second would get the same name and the second would truncate the first.
            # The nanosecond suffix keeps names unique and in creation order.
            events = EventsWriter(os.path.join(self.logdir, "events"), f".{time.time_ns()}")
            if purge_step is not None:
                # TensorBoard purges on SessionLog.START. Its own loader treats the first START of
                # a run as the initial one and purges only on later ones, while the older
                # EventAccumulator purges on every START: two STARTs make both purge, whether or
                # not the earlier files wrote one.
                for _ in range(2):
                    events.write_event(
                        Event(
                            wall_time=time.time(),
                            step=purge_step,
                            session_log=SessionLog(status=SessionLog.START),
                        )
                    )
            events.flush()
        except OSError as exc:
            raise RunError(
                f"TensorBoardWriter cannot write into the log folder {self.logdir!r} "
                f"({exc.strerror or exc}); pass a folder you can create and write"
            ) from exc
        self._sink = _EventSink(events, asynchronous, max_queue, f"TensorBoardWriter:{self.logdir}")
        self._finalizer = weakref.finalize(self, self._sink.close)
        self._error_reported = False

    # -- plumbing ------------------------------------------------------------------------------

    def _check(self, method: str) -> None:
        if self._sink.error is not None:
            self._error_reported = True
            raise RunError(
                f"TensorBoardWriter for {self.logdir!r}: writing events failed with "
                f"{self._sink.error!r}; the events queued after it were dropped"
            ) from self._sink.error
        if self._sink.closed:
            raise RunError(
                f"TensorBoardWriter.{method}: the writer for {self.logdir!r} is closed; "
                f"create a new one (with purge_step to resume)"
            )

    def _submit(self, step: int, make_values: Callable[[], list[Any]]) -> None:
        def job() -> list[Any]:
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.proto.summary_pb2 import Summary

            values = make_values()
            if not values:
                return []
            return [Event(wall_time=time.time(), step=step, summary=Summary(value=values))]

        self._sink.submit(job)
        if not self._sink.asynchronous:
            self._check("write")  # report a failure at once

    # -- the interface -------------------------------------------------------------------------

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._check("write_scalars")
        step = _check_step("write_scalars", step)
        values = _scalars("write_scalars", scalars)

        def make() -> list[Any]:
            from tensorboardX.proto.summary_pb2 import Summary

            return [Summary.Value(tag=t, simple_value=v) for t, v in values.items()]

        self._submit(step, make)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._check("write_images")
        step = _check_step("write_images", step)
        arrays = _images(images)
        self._submit(step, lambda: [_image_summary_value(t, a) for t, a in arrays.items()])

    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        self._check("write_histograms")
        step = _check_step("write_histograms", step)
        flat = _histograms(arrays)

        def make() -> list[Any]:
            from tensorboardX.proto.summary_pb2 import Summary
            from tensorboardX.summary import make_histogram

            values = []
            for tag, arr in flat.items():
                finite = arr[np.isfinite(arr)]
                if finite.size:
                    histo = make_histogram(finite, _HISTOGRAM_BINS)
                    values.append(Summary.Value(tag=tag, histo=histo))
            return values

        self._submit(step, make)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._check("write_texts")
        step = _check_step("write_texts", step)
        checked = _texts(texts)
        self._submit(step, lambda: [_text_summary_value(t, s) for t, s in checked.items()])

    def write_hparams(
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float], *, step: int = 0
    ) -> None:
        self._check("write_hparams")
        flat, values, step = _hparams(hparams, metrics, step)
        if self._hparams_written:
            raise RunError(
                f"TensorBoardWriter.write_hparams: hparams were already written to "
                f"{self.logdir!r}; write them once per run"
            )
        self._hparams_written = True
        self._submit(0, lambda: _hparams_values(flat, values))
        if values:
            self.write_scalars(step, values)

    def flush(self) -> None:
        if self._sink.closed:
            return
        self._sink.flush()
        self._check("flush")

    def close(self) -> None:
        if self._sink.closed:
            return
        self._finalizer.detach()
        self._sink.close()
        if self._sink.error is not None and not self._error_reported:
            self._check("close")


def scalar_steps(logdir: str | os.PathLike[str], tag: str) -> list[int]:
    """Every step at which an event file in ``logdir`` holds scalar ``tag``, file by file in
    creation order, as written (nothing purged). A torn last record, as a killed writer leaves,
    ends its file. Lets a resumed run learn what an earlier, killed one already wrote."""
    from tensorboardX.proto.event_pb2 import Event

    steps = []
    for name in sorted(n for n in os.listdir(logdir) if n.startswith("events.out.")):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):  # a record: u64 length, u32 crc, payload, u32 crc
            end = pos + 12 + int.from_bytes(data[pos:pos + 8], "little")
            if end + 4 > len(data):
                break
            try:
                event = Event.FromString(data[pos + 12:end])
            except Exception:  # a torn or foreign record: nothing after it is trusted
                break
            steps += [event.step for v in event.summary.value
                      if v.tag == tag and v.HasField("simple_value")]
            pos = end + 4
    return steps


def _hparams_values(hparams: dict[str, Any], metrics: dict[str, float]) -> list[Any]:
    from tensorboardX.summary import hparams as hparams_summaries

    experiment, start, end = hparams_summaries(hparams, metrics)
    return [*experiment.value, *start.value, *end.value]


# ----------------------------------------------------------------------------------------------
# Memory, console, fan-out.


class MemoryWriter(MetricWriter):
    """Keeps everything written, for tests.

    Attributes (each list in call order):
      scalars: ``{tag: [(step, float), ...]}``.
      images: ``{tag: [(step, array), ...]}``, each array a copy with the shape and dtype given.
      histograms: ``{tag: [(step, values), ...]}``, values flattened to float64 (non-finite kept).
      texts: ``{tag: [(step, str), ...]}``.
      hparams: the flattened hyperparameters, or None before :meth:`write_hparams`.
      hparam_metrics: the metrics given to :meth:`write_hparams` (also added to ``scalars``).
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
        step = _check_step("write_scalars", step)
        self._append(self.scalars, step, _scalars("write_scalars", scalars))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._check_open("write_images")
        step = _check_step("write_images", step)
        self._append(self.images, step, _images(images))

    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        self._check_open("write_histograms")
        step = _check_step("write_histograms", step)
        self._append(self.histograms, step, _histograms(arrays))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._check_open("write_texts")
        step = _check_step("write_texts", step)
        self._append(self.texts, step, _texts(texts))

    def write_hparams(
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float], *, step: int = 0
    ) -> None:
        self._check_open("write_hparams")
        flat, values, step = _hparams(hparams, metrics, step)
        if self.hparams is not None:
            raise RunError("MemoryWriter.write_hparams: hparams were already written")
        self.hparams, self.hparam_metrics = flat, values
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
        step = _check_step("write_scalars", step)
        values = _scalars("write_scalars", scalars)
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
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float], *, step: int = 0
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
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float], *, step: int = 0
    ) -> None:
        for w in self.writers:
            w.write_hparams(hparams, metrics, step=step)

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
