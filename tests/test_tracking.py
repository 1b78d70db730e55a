"""Tests for jaxcnn.tracking: events are read back with the tensorboard package, not tensorboardX.

``test_tensorboard_server_*`` starts a real TensorBoard on 127.0.0.1 and reads its HTTP API.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import math
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import _tensorboard_server as tb
import numpy as np
import pytest
from _events import accumulator
from PIL import Image
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2 as hparams_api
from tensorboard.plugins.hparams import backend_context as hparams_backend
from tensorboard.plugins.hparams import list_session_groups
from tensorboard.plugins.hparams import metadata as hparams_metadata

import jaxcnn.tracking as tracking
from jaxcnn.errors import RunError
from jaxcnn.tracking import (
    ConsoleWriter,
    MemoryWriter,
    MetricWriter,
    MultiWriter,
    TensorBoardWriter,
)

# ----------------------------------------------------------------------------------------------
# Helpers.


def _scalars(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _pngs(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, int, int, list[Image.Image]]]:
    """``(step, width, height, images)`` per event of an image tag (the images plugin format)."""
    out = []
    for e in acc.Tensors(tag):
        width, height, *blobs = e.tensor_proto.string_val
        out.append((e.step, int(width), int(height), [Image.open(io.BytesIO(b)) for b in blobs]))
    return out


def _as_uint8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else np.rint(x * 255).astype(np.uint8)


def _dirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir()]


def _session_groups(logdir: Path) -> list[hparams_api.SessionGroup]:
    """What TensorBoard's HParams dashboard lists for the runs under ``logdir``: the hparams
    plugin's own ``/session_groups`` handler over its own data provider, in this process."""
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = hparams_backend.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider)
    )
    request = hparams_api.ListSessionGroupsRequest(
        start_index=0,
        slice_size=10,
        allowed_statuses=[
            hparams_api.STATUS_UNKNOWN, hparams_api.STATUS_SUCCESS, hparams_api.STATUS_RUNNING
        ],
    )
    handler = list_session_groups.Handler(tb_context.RequestContext(), backend, "", request)
    return list(handler.run().session_groups)


WRITERS = {
    "memory": lambda tmp: MemoryWriter(),
    "tensorboard": lambda tmp: TensorBoardWriter(tmp / "run"),
    "tensorboard-sync": lambda tmp: TensorBoardWriter(tmp / "run", asynchronous=False),
}


# ----------------------------------------------------------------------------------------------
# TensorBoardWriter, read back with EventAccumulator.


@pytest.mark.parametrize("asynchronous", [True, False])
def test_tensorboard_writer_round_trip(tmp_path: Path, asynchronous: bool) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, (5, 7, 3))
    grey = rng.integers(0, 256, (6, 4, 1), dtype=np.uint8)
    batch = rng.uniform(0, 1, (3, 8, 9, 3)).astype(np.float32)
    grey_batch = rng.integers(0, 256, (2, 4, 5, 1), dtype=np.uint8)
    hist = np.arange(-5.0, 95.0).reshape(10, 10)

    with TensorBoardWriter(tmp_path, asynchronous=asynchronous) as w:
        for step in range(5):
            w.write_scalars(step, {"train/loss": 2.0 - 0.25 * step, "train/acc": 0.125 * step})
        w.write_scalars(5, {"train/loss": float("nan"), "train/acc": np.float32(np.inf)})
        w.write_images(2, {"rgb": rgb, "grey": grey, "batch": batch, "grey_batch": grey_batch})
        w.write_histograms(3, {"conv1/w": hist})
        w.write_texts(1, {"notes": "hello **world**"})
        w.write_hparams(
            {"lr": 0.1, "opt": {"name": "adam"}, "depth": np.int64(3), "bn": True, "none": None},
            {"hparams/test_accuracy": 0.75},
            step=5,
        )

    assert _dirs(tmp_path) == []  # no sub-run folder, for hparams or anything else
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    acc = accumulator(tmp_path)

    loss = _scalars(acc, "train/loss")
    assert [s for s, _ in loss] == [0, 1, 2, 3, 4, 5]
    assert [v for _, v in loss[:5]] == [2.0, 1.75, 1.5, 1.25, 1.0]
    assert math.isnan(loss[5][1])
    acc_values = _scalars(acc, "train/acc")
    assert acc_values[:5] == [(s, 0.125 * s) for s in range(5)]
    assert acc_values[5] == (5, math.inf)

    for tag, array in [("rgb", rgb), ("grey", grey), ("batch", batch), ("grey_batch", grey_batch)]:
        (step, width, height, images), *more = _pngs(acc, tag)
        assert more == [] and step == 2
        expected = _as_uint8(array if array.ndim == 4 else array[None])
        n, h, w_, c = expected.shape
        assert (width, height, len(images)) == (w_, h, n)
        for got, want in zip(images, expected, strict=True):
            assert got.format == "PNG"
            assert got.size == (w_, h)
            assert got.mode == ("RGB" if c == 3 else "L")
            assert np.array_equal(np.asarray(got).reshape(h, w_, c), want)
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "images"

    (h_event,) = acc.Histograms("conv1/w")
    proto = h_event.histogram_value
    assert h_event.step == 3
    assert (proto.num, proto.min, proto.max) == (100, -5.0, 94.0)
    assert proto.sum == pytest.approx(hist.sum()) and sum(proto.bucket) == 100

    (text,) = acc.Tensors("notes")
    assert text.step == 1
    assert text.tensor_proto.string_val[0].decode() == "hello **world**"
    assert acc.SummaryMetadata("notes").plugin_data.plugin_name == "text"

    content = acc.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content["_hparams_/session_start_info"]
    )
    hp = {k: v.WhichOneof("kind") for k, v in start.hparams.items()}
    assert hp == {
        "lr": "number_value",
        "opt.name": "string_value",
        "depth": "number_value",
        "bn": "bool_value",
        "none": "string_value",
    }
    assert start.hparams["lr"].number_value == 0.1
    assert start.hparams["opt.name"].string_value == "adam"
    assert start.hparams["depth"].number_value == 3.0
    assert start.hparams["bn"].bool_value is True
    assert start.hparams["none"].string_value == "None"
    experiment = hparams_metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.metric_infos] == ["hparams/test_accuracy"]
    assert _scalars(acc, "hparams/test_accuracy") == [(5, 0.75)]



def test_hparams_without_metric_scalars_name_the_curves(tmp_path: Path) -> None:
    """write_metrics=False: the hparams records name the curve tags, no scalar is added to them
    (no duplicate final step) and no single-point chart appears; the dashboard takes each
    metric's value from the last point of its curve."""
    run = tmp_path / "logs" / "run1"
    with TensorBoardWriter(run) as w:
        for step in (1, 2, 3):
            w.write_scalars(step, {"test/accuracy": 0.5 + 0.125 * step, "test/loss": 1.0 / step})
        w.write_hparams(
            {"lr": 0.1, "model": "cnn"},
            # test/loss has a curve; val/accuracy does not (this run has no validation split).
            {"test/accuracy": 0.875, "test/loss": 1 / 3, "val/accuracy": 0.5},
            step=3,
            write_metrics=False,
        )

    acc = accumulator(run)
    assert sorted(acc.Tags()["scalars"]) == ["test/accuracy", "test/loss"]  # no hparams/... tag
    assert _scalars(acc, "test/accuracy") == [(1, 0.625), (2, 0.75), (3, 0.875)]
    content = acc.PluginTagToContent("hparams")
    experiment = hparams_metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.metric_infos] == [
        "test/accuracy", "test/loss", "val/accuracy"
    ]

    (group,) = _session_groups(tmp_path / "logs")
    assert {k: v.WhichOneof("kind") for k, v in group.hparams.items()} == {
        "lr": "number_value", "model": "string_value"
    }
    (session,) = group.sessions
    assert session.name == "run1"
    found = {m.name.tag: (m.training_step, m.value) for m in session.metric_values}
    # val/accuracy has no series, so the dashboard shows no value for it: values come from the
    # curves, never from the hparams records.
    assert found == {"test/accuracy": (3, 0.875), "test/loss": (3, pytest.approx(1 / 3))}


def test_hparams_with_metric_scalars_by_default(tmp_path: Path) -> None:
    """The default (write_metrics=True) writes each metric as a scalar at ``step``, which the
    dashboard then shows: a tag of its own becomes a one-point series, a curve's tag gets a point
    appended."""
    run = tmp_path / "logs" / "run1"
    with TensorBoardWriter(run) as w:
        w.write_scalars(1, {"train/loss": 2.0})
        w.write_hparams({"lr": 0.1}, {"hparams/accuracy": 0.75, "train/loss": 0.5}, step=4)
    acc = accumulator(run)
    assert _scalars(acc, "hparams/accuracy") == [(4, 0.75)]
    assert _scalars(acc, "train/loss") == [(1, 2.0), (4, 0.5)]
    ((session,),) = [g.sessions for g in _session_groups(tmp_path / "logs")]
    found = {m.name.tag: (m.training_step, m.value) for m in session.metric_values}
    assert found == {"hparams/accuracy": (4, 0.75), "train/loss": (4, 0.5)}


def test_memory_and_multi_writer_pass_write_metrics_on(tmp_path: Path) -> None:
    memory = MemoryWriter()
    with MultiWriter([memory, ConsoleWriter(io.StringIO()), TensorBoardWriter(tmp_path)]) as w:
        w.write_scalars(3, {"test/accuracy": 0.875})
        w.write_hparams({"lr": 0.1}, {"test/accuracy": 0.875}, step=3, write_metrics=False)
    assert memory.hparams == {"lr": 0.1}
    assert memory.hparam_metrics == {"test/accuracy": 0.875}  # kept, for tests to check
    assert memory.scalars == {"test/accuracy": [(3, 0.875)]}  # but not written again
    assert _scalars(accumulator(tmp_path), "test/accuracy") == [(3, 0.875)]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_write_metrics_must_be_a_bool(tmp_path: Path, kind: str) -> None:
    with WRITERS[kind](tmp_path) as w:
        with pytest.raises(ValueError, match="write_metrics must be a bool, got 'no'"):
            w.write_hparams({"lr": 0.1}, {"acc": 1.0}, write_metrics="no")
        w.write_hparams({"lr": 0.1}, {"acc": 1.0}, write_metrics=False)  # the refusal wrote none


def _write_series(logdir: Path, steps: range, offset: float, purge_step: int | None) -> None:
    with TensorBoardWriter(logdir, purge_step=purge_step) as w:
        for step in steps:
            w.write_scalars(step, {"loss": offset + step})
            if purge_step is None:
                w.write_scalars(step, {"only_first": -step})


def test_purge_step_replaces_the_resumed_steps(tmp_path: Path) -> None:
    _write_series(tmp_path, range(10), 0.0, None)
    _write_series(tmp_path, range(5, 10), 100.0, purge_step=5)
    files = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 2  # a second writer in the same second must not overwrite the first
    acc = accumulator(tmp_path)
    assert _scalars(acc, "loss") == [(s, float(s)) for s in range(5)] + [
        (s, 100.0 + s) for s in range(5, 10)
    ]
    # Purging is by step across all tags: the first run's later steps are gone everywhere.
    assert _scalars(acc, "only_first") == [(s, float(-s)) for s in range(5)]


def test_without_purge_step_both_writers_are_kept(tmp_path: Path) -> None:
    # The contrast to the test above: no SessionLog.START is written unless asked for.
    _write_series(tmp_path, range(10), 0.0, None)
    _write_series(tmp_path, range(5, 10), 100.0, None)
    assert [s for s, _ in _scalars(accumulator(tmp_path), "loss")] == [*range(10), *range(5, 10)]


def test_async_write_does_not_wait_and_flush_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = TensorBoardWriter(tmp_path)
    events = w._sink.events
    real_write, gate, written = events.write_event, threading.Event(), []

    def slow_write(event):  # the disk is stuck until the gate opens
        assert gate.wait(10)
        written.append(event.step)
        real_write(event)

    monkeypatch.setattr(events, "write_event", slow_write)
    w.write_scalars(7, {"x": 1.0})
    w.write_scalars(8, {"x": 2.0})
    assert written == []  # both calls returned while the writer thread waits on "disk"
    gate.set()
    w.flush()
    assert written == [7, 8]
    assert _scalars(accumulator(tmp_path), "x") == [(7, 1.0), (8, 2.0)]  # flushed means on disk
    w.close()


def _fail_writes(w: TensorBoardWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(event):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w._sink.events, "write_event", disk_full)


def test_background_error_surfaces_on_flush_then_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = TensorBoardWriter(tmp_path)
    _fail_writes(w, monkeypatch)
    w.write_scalars(0, {"x": 1.0})  # queued: the failure happens on the other thread
    with pytest.raises(RunError, match=re.escape(str(tmp_path)) + ".*No space left") as info:
        w.flush()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(RunError, match="No space left"):
        w.write_scalars(1, {"x": 2.0})
    w.close()  # already reported: close cleans up quietly
    w.close()


def test_background_error_surfaces_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = TensorBoardWriter(tmp_path)
    _fail_writes(w, monkeypatch)
    w.write_images(0, {"img": np.zeros((2, 2, 1))})
    with pytest.raises(RunError, match="No space left"):
        w.close()
    w.close()  # idempotent


def test_synchronous_error_raises_at_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = TensorBoardWriter(tmp_path, asynchronous=False)
    _fail_writes(w, monkeypatch)
    with pytest.raises(RunError, match="No space left"):
        w.write_scalars(0, {"x": 1.0})
    w.close()


def test_unwritable_logdir_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for logdir in (blocker, blocker / "run"):
        with pytest.raises(RunError, match=re.escape(repr(str(logdir)))):
            TensorBoardWriter(logdir)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_unwritable_logdir_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunError, match=re.escape(str(ro / "run")) + ".*ermission"):
            TensorBoardWriter(ro / "run")
    finally:
        ro.chmod(0o700)


def test_tensorboard_writer_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_queue must be an int >= 1, got 0"):
        TensorBoardWriter(tmp_path, max_queue=0)
    with pytest.raises(ValueError, match="TensorBoardWriter: purge_step must be an int >= 0"):
        TensorBoardWriter(tmp_path, purge_step=-1)


def test_jax_arrays_go_through_np_asarray(tmp_path: Path) -> None:
    import jax.numpy as jnp

    with TensorBoardWriter(tmp_path) as w:
        w.write_scalars(jnp.int32(3), {"loss": jnp.float32(0.5), "bf16": jnp.bfloat16(0.25)})
        w.write_images(jnp.array(3), {"img": jnp.ones((2, 3, 1), jnp.bfloat16)})
        w.write_histograms(3, {"w": jnp.arange(4.0)})
    acc = accumulator(tmp_path)
    assert _scalars(acc, "loss") == [(3, 0.5)] and _scalars(acc, "bf16") == [(3, 0.25)]
    ((step, width, height, (img,)),) = _pngs(acc, "img")
    assert (step, width, height) == (3, 3, 2) and np.all(np.asarray(img) == 255)
    assert acc.Histograms("w")[0].histogram_value.num == 4


def test_arrays_are_copied_at_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, weights = np.zeros((2, 2, 1)), np.zeros(4)
    w = TensorBoardWriter(tmp_path)
    real_write, gate = w._sink.events.write_event, threading.Event()

    def stuck_write(event):  # the writer thread waits here until the buffers were overwritten
        assert gate.wait(10)
        real_write(event)

    monkeypatch.setattr(w._sink.events, "write_event", stuck_write)
    w.write_scalars(0, {"x": 1.0})  # occupies the writer thread
    w.write_images(0, {"img": image})  # queued behind it: encoded only after the gate opens
    w.write_histograms(0, {"w": weights})
    image[:] = 1.0  # e.g. a reused buffer; what was passed must be what is written
    weights[:] = 7.0
    gate.set()
    w.close()
    acc = accumulator(tmp_path)
    ((_, _, _, (img,)),) = _pngs(acc, "img")
    assert np.all(np.asarray(img) == 0)
    histogram = acc.Histograms("w")[0].histogram_value
    assert (histogram.min, histogram.max) == (0.0, 0.0)


def test_histogram_leaves_out_non_finite_values(tmp_path: Path) -> None:
    with TensorBoardWriter(tmp_path) as w:
        w.write_histograms(0, {"w": np.array([1.0, np.nan, 3.0, np.inf]), "dead": [np.nan]})
    acc = accumulator(tmp_path)
    proto = acc.Histograms("w")[0].histogram_value
    assert (proto.num, proto.min, proto.max) == (2, 1.0, 3.0)
    assert "dead" not in acc.Tags()["histograms"]


# ----------------------------------------------------------------------------------------------
# Behaviour shared by every backend.


@pytest.mark.parametrize("kind", list(WRITERS))
@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("write_scalars", (-1, {"x": 1.0}), "step must be an int >= 0, got -1"),
        ("write_scalars", (True, {"x": 1.0}), "step must be an int >= 0, got True"),
        ("write_scalars", (1.5, {"x": 1.0}), "step must be an int >= 0, got 1.5"),
        ("write_scalars", (0, [1.0]), "scalars must be a mapping from tag to value, got list"),
        ("write_scalars", (0, {"": 1.0}), "every tag in scalars must be a non-empty str"),
        ("write_scalars", (0, {"x": np.ones(3)}), r"scalar 'x' must be one number.*\(3,\)"),
        ("write_scalars", (0, {"x": "high"}), "scalar 'x' must be one number"),
        ("write_images", (0, {"im": np.zeros((4, 4))}), r"shape \(4, 4\); expected \(H, W, C\)"),
        ("write_images", (0, {"im": np.zeros((4, 4, 2))}), r"\(4, 4, 2\).*C in \{1, 3\}"),
        ("write_images", (0, {"im": np.zeros((0, 4, 4, 1))}), r"\(0, 4, 4, 1\)"),
        ("write_images", (0, {"im": np.zeros((1, 1, 4, 4, 1))}), r"\(1, 1, 4, 4, 1\)"),
        ("write_images", (0, {"im": np.full((2, 2, 1), 255.0)}), r"\[255.0, 255.0\]; expected"),
        ("write_images", (0, {"im": np.full((2, 2, 3), -0.5)}), r"\[-0.5, -0.5\]; expected"),
        ("write_images", (0, {"im": np.full((2, 2, 1), np.nan)}), r"\[nan, nan\]; expected"),
        ("write_images", (0, {"im": np.zeros((2, 2, 1), np.int32)}), "dtype int32; expected"),
        ("write_histograms", (0, {"h": np.zeros(0)}), r"'h' must be a non-empty numeric.*\(0,\)"),
        ("write_texts", (0, {"t": 3}), "text 't' must be a str, got int"),
        ("write_hparams", ([("lr", 1)], {}), "hparams must be a mapping"),
        ("write_hparams", ({"lr": 1}, {"acc": [1, 2]}), "scalar 'acc' must be one number"),
    ],
)
def test_bad_arguments_raise_value_error(
    tmp_path: Path, kind: str, method: str, args: tuple, message: str
) -> None:
    with WRITERS[kind](tmp_path) as w:
        with pytest.raises(ValueError, match=message):
            getattr(w, method)(*args)


@pytest.mark.parametrize("kind", list(WRITERS))
def test_hparams_once_and_no_writes_after_close(tmp_path: Path, kind: str) -> None:
    w = WRITERS[kind](tmp_path)
    w.write_hparams({"lr": 0.1}, {})
    with pytest.raises(RunError, match="hparams were already written"):
        w.write_hparams({"lr": 0.2}, {})
    w.close()
    w.close()  # idempotent
    with pytest.raises(RunError, match="closed"):
        w.write_scalars(0, {"x": 1.0})


def test_memory_writer_keeps_everything() -> None:
    w = MemoryWriter()
    image = np.zeros((2, 3, 1), np.uint8)
    with w:
        w.write_scalars(1, {"a": 1, "b": np.float32(0.5)})
        w.write_scalars(2, {"a": 3.0})
        w.write_images(1, {"im": image})
        w.write_histograms(2, {"h": np.ones((2, 2))})
        w.write_texts(3, {"t": "hi"})
        w.write_hparams({"opt": {"lr": np.float64(0.1)}, "act": np.tanh}, {"final": 0.9}, step=2)
    assert w.scalars == {"a": [(1, 1.0), (2, 3.0)], "b": [(1, 0.5)], "final": [(2, 0.9)]}
    image[:] = 9  # the caller reuses its buffer: what was written must not change
    ((step, stored),) = w.images["im"]
    assert step == 1 and stored.shape == (2, 3, 1) and stored.dtype == np.uint8
    assert np.all(stored == 0)
    ((step, values),) = w.histograms["h"]
    assert step == 2 and values.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert w.texts == {"t": [(3, "hi")]}
    assert w.hparams == {"opt.lr": 0.1, "act": "tanh"}
    assert type(w.hparams["opt.lr"]) is float
    assert w.hparam_metrics == {"final": 0.9}
    assert w.closed


def test_console_writer_prints_one_line_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    w = ConsoleWriter()
    w.write_scalars(120, {"train/loss": 0.34123, "train/accuracy": 0.90119})
    w.write_scalars(121, {"lr": 1e-5, "big": 2.5e7, "zero": 0, "bad": float("nan")})
    w.write_images(121, {"ignored": np.zeros((1, 1, 1))})
    w.write_histograms(121, {"ignored": np.zeros(3)})
    w.write_texts(121, {"ignored": "x"})
    w.write_hparams({"lr": 0.1}, {"acc": 1.0})
    w.close()
    assert capsys.readouterr().out == (
        "step 120: train/loss=0.3412 train/accuracy=0.9012\n"
        "step 121: lr=1.000e-05 big=2.500e+07 zero=0.0000 bad=nan\n"
    )


def test_console_writer_tag_filter_and_stream() -> None:
    stream = io.StringIO()
    w = ConsoleWriter(stream, tags=["val/acc"])
    w.write_scalars(1, {"train/loss": 1.0, "val/acc": 0.5})
    w.write_scalars(2, {"train/loss": 1.0})  # nothing to print
    assert stream.getvalue() == "step 1: val/acc=0.5000\n"


def test_multi_writer_fans_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    memory = MemoryWriter()
    with MultiWriter([memory, ConsoleWriter(), TensorBoardWriter(tmp_path)]) as w:
        w.write_scalars(4, {"loss": 0.5})
        w.write_images(4, {"im": np.ones((2, 2, 3))})
        w.write_histograms(4, {"h": np.arange(3.0)})
        w.write_texts(4, {"t": "x"})
        w.write_hparams({"lr": 0.1}, {"acc": 0.25}, step=4)
        w.flush()
    assert memory.closed and memory.scalars == {"loss": [(4, 0.5)], "acc": [(4, 0.25)]}
    assert set(memory.images) == {"im"} and set(memory.histograms) == {"h"}
    assert memory.texts == {"t": [(4, "x")]} and memory.hparams == {"lr": 0.1}
    assert capsys.readouterr().out == "step 4: loss=0.5000\n"
    acc = accumulator(tmp_path)
    assert _scalars(acc, "loss") == [(4, 0.5)] and _scalars(acc, "acc") == [(4, 0.25)]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_multi_writer_closes_every_writer_then_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, memory = TensorBoardWriter(tmp_path), MemoryWriter()
    _fail_writes(broken, monkeypatch)
    w = MultiWriter([broken, memory])
    w.write_scalars(0, {"x": 1.0})
    with pytest.raises(RunError, match="No space left"):
        w.close()
    assert memory.closed
    with pytest.raises(ValueError, match="every writer must be a MetricWriter, got StringIO"):
        MultiWriter([io.StringIO()])


@pytest.mark.parametrize("cls", [TensorBoardWriter, MemoryWriter, ConsoleWriter, MultiWriter])
def test_every_backend_takes_the_interface_arguments(cls: type) -> None:
    """Each backend's methods accept exactly the interface's arguments, names, kinds and
    defaults (a backend that lacks a keyword breaks every MultiWriter that holds it)."""
    assert issubclass(cls, MetricWriter)
    for name, method in inspect.getmembers(MetricWriter, inspect.isfunction):
        if name.startswith("_"):
            continue
        want = [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]
        got = [(p.name, p.kind, p.default)
               for p in inspect.signature(getattr(cls, name)).parameters.values()]
        assert got == want, (cls.__name__, name)


def test_modules_do_not_import_jax() -> None:
    """The writers import no JAX (and no jaxcnn module that does), so logging costs no JAX
    start-up; within jaxcnn they import only each other, ``errors`` and ``checks``."""
    writers = {"tracking", "metric_writer", "tensorboard_writer"}
    allowed = {"numpy", "PIL", "tensorboardX", "jaxcnn"} | set(sys.stdlib_module_names)
    for module in (*sorted(writers), "visualize"):
        source = Path(tracking.__file__).with_name(f"{module}.py").read_text()
        names, ours = set(), set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
                ours.update(a.name for a in node.names if a.name.startswith("jaxcnn"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
                if node.module == "jaxcnn":
                    ours.update(f"jaxcnn.{a.name}" for a in node.names)
                elif node.module.startswith("jaxcnn."):
                    ours.add(node.module)
        assert names <= allowed, (module, names - allowed)
        assert ours <= {f"jaxcnn.{m}" for m in writers | {"errors", "checks"}}, (module, ours)


def test_tracking_exports_every_writer() -> None:
    """Code written against jaxcnn.tracking keeps working whichever module a writer lives in."""
    import jaxcnn.metric_writer
    import jaxcnn.tensorboard_writer

    assert sorted(tracking.__all__) == [
        "ConsoleWriter", "MemoryWriter", "MetricWriter", "MultiWriter", "TensorBoardWriter"
    ]
    assert tracking.MetricWriter is jaxcnn.metric_writer.MetricWriter
    assert tracking.TensorBoardWriter is jaxcnn.tensorboard_writer.TensorBoardWriter


# ----------------------------------------------------------------------------------------------
# A real TensorBoard server.


@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_tensorboard_server_shows_scalars_images_and_hparams(
    tmp_path: Path, load_fast: str
) -> None:
    if load_fast == "true":
        pytest.importorskip("tensorboard_data_server")  # the Rust loader users get by default
    logdir = tmp_path / "logs"
    run = logdir / "run1"
    image = np.linspace(0, 1, 6 * 10 * 3).reshape(6, 10, 3)
    with TensorBoardWriter(run) as w:
        for step in range(10):
            w.write_scalars(step, {"train/loss": float(step)})
    with TensorBoardWriter(run, purge_step=5) as w:  # a resumed run
        for step in range(5, 10):
            w.write_scalars(step, {"train/loss": 100.0 + step})
        w.write_images(9, {"samples": np.stack([image, 1 - image])})
        # As the runner does: the metric is a curve's tag, its value the curve's last point.
        w.write_hparams({"lr": 0.5, "model": "cnn"}, {"train/loss": 109.0}, step=9,
                        write_metrics=False)

    with tb.serve(logdir, tmp_path, load_fast=load_fast) as server:
        base = server.base

        def session_groups() -> list[dict]:
            return tb.post_json(f"{base}/plugin/hparams/session_groups", {
                "startIndex": 0, "sliceSize": 10,
                "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING"]
            })["sessionGroups"]

        # The hparams are written last: once they show, the files before them are loaded (in
        # order).
        groups = server.poll("the hparams", session_groups, bool)
        assert server.json("runs") == ["run1"]
        assert [(step, value) for _, step, value in server.scalars("run1", "train/loss")] == [
            *((s, float(s)) for s in range(5)),
            *((s, 100.0 + s) for s in range(5, 10)),
        ]
        tags = json.loads(tb.get(f"{base}/plugin/images/tags"))
        assert tags["run1"]["samples"]["samples"] == 2  # one tag holds the whole batch
        for sample, want in enumerate([image, 1 - image]):
            q = urllib.parse.urlencode({"run": "run1", "tag": "samples", "sample": sample})
            (entry,) = json.loads(tb.get(f"{base}/plugin/images/images?{q}"))
            assert entry["step"] == 9
            png = tb.get(f"{base}/plugin/images/individualImage?{entry['query']}")
            got = Image.open(io.BytesIO(png))
            assert (got.format, got.size, got.mode) == ("PNG", (10, 6), "RGB")
            assert np.array_equal(np.asarray(got), _as_uint8(want))

        (group,) = groups
        assert group["hparams"] == {"lr": 0.5, "model": "cnn"}
        (session,) = group["sessions"]
        assert session["name"] == "run1"
        (metric,) = session["metricValues"]  # the resumed curve's last point, not the purged one
        assert metric["name"]["tag"] == "train/loss"
        assert (metric["value"], metric["trainingStep"]) == (109.0, 9)
        assert set(json.loads(tb.get(f"{base}/plugin/scalars/tags"))["run1"]) == {"train/loss"}
