"""The TensorBoard backend: :class:`TensorBoardWriter` writes event files into a run folder.

Protocol buffers and PNGs are made with tensorboardX and Pillow on one background thread, so the
training thread never waits on disk; arguments are checked before anything is queued (see
:mod:`jaxcnn.metric_writer` for the values accepted). The class is re-exported by
:mod:`jaxcnn.tracking`, where the other backends live.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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

__all__ = ["TensorBoardWriter"]

_HISTOGRAM_BINS = 64


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
    ``add_hparams`` writes, but into this folder), which name the metric tags; the metric values
    are written as scalars at ``step`` only with ``write_metrics=True``.

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
            purge_step = check_step("TensorBoardWriter", purge_step, "purge_step")
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
        step = check_step("write_scalars", step)
        values = check_scalars("write_scalars", scalars)

        def make() -> list[Any]:
            from tensorboardX.proto.summary_pb2 import Summary

            return [Summary.Value(tag=t, simple_value=v) for t, v in values.items()]

        self._submit(step, make)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._check("write_images")
        step = check_step("write_images", step)
        arrays = check_images(images)
        self._submit(step, lambda: [_image_summary_value(t, a) for t, a in arrays.items()])

    def write_histograms(self, step: int, arrays: Mapping[str, Any]) -> None:
        self._check("write_histograms")
        step = check_step("write_histograms", step)
        flat = check_histograms(arrays)

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
        step = check_step("write_texts", step)
        checked = check_texts(texts)
        self._submit(step, lambda: [_text_summary_value(t, s) for t, s in checked.items()])

    def write_hparams(
        self,
        hparams: Mapping[str, Any],
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        write_metrics: bool = True,
    ) -> None:
        self._check("write_hparams")
        flat, values, step = check_hparams(hparams, metrics, step, write_metrics)
        if self._hparams_written:
            raise RunError(
                f"TensorBoardWriter.write_hparams: hparams were already written to "
                f"{self.logdir!r}; write them once per run"
            )
        self._hparams_written = True
        self._submit(0, lambda: _hparams_values(flat, list(values)))
        if write_metrics and values:
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


def _hparams_values(hparams: dict[str, Any], metric_tags: list[str]) -> list[Any]:
    """The hparams plugin's experiment, session-start and session-end summaries. They name the
    metric tags only: the dashboard reads each metric's value from that tag's scalar series."""
    from tensorboardX.summary import hparams as hparams_summaries

    experiment, start, end = hparams_summaries(hparams, dict.fromkeys(metric_tags, 0.0))
    return [*experiment.value, *start.value, *end.value]
