"""The runner: event files read back with TensorBoard's own reader, exact resume, refusals."""

import io
import json
import math
import shutil

import jax
import numpy as np
import pytest
from _events import accumulator
from PIL import Image, ImageFont
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata

from jaxcnn import checkpoint as ckpt
from jaxcnn import config as C
from jaxcnn import experiment, models, registry, runs, train, visualize, walk
from jaxcnn.errors import CheckpointError, ConfigError, LayerError, NonFiniteLossError, RunError
from jaxcnn.tracking import MemoryWriter

EPOCHS = 3


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    # Compiles are cached across the session's runs, in a folder the tests own (the same one
    # test_cli's subprocesses use through $JAXCNN_CACHE).
    experiment.setup_compilation_cache(tmp_path_factory.getbasetemp() / "jaxcnn_cache" / "jax")


def _tiny(runs_dir, **kw) -> C.Config:
    values = dict(experiment="tiny", dataset="digits", model="simple_cnn", epochs=EPOCHS,
                  batch_size=64, lr=0.05, log_every=5, num_feature_samples=2,
                  keep_checkpoints=2, runs_dir=str(runs_dir), schedule="step",
                  decay_epochs=(2,))
    # A schedule that does not depend on ``epochs``, so runs of different lengths share
    # their compiled code through the persistent cache.
    return C.Config(**{**values, **kw})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 3-epoch run, with a MemoryWriter beside the TensorBoard files."""
    memory = MemoryWriter()
    result = experiment.run(_tiny(tmp_path_factory.mktemp("runs")), extra_writers=[memory],
                            progress=False)
    return result, memory


@pytest.mark.parametrize("switch", ["auto", "off"])
def test_the_runner_keeps_freed_memory_where_the_cpu_mechanisms_are_on(tmp_path, monkeypatch,
                                                                      switch):
    calls = []
    monkeypatch.setattr(experiment.cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("JAXCNN_CPU", switch)
    experiment.run(_tiny(tmp_path, epochs=1), progress=False)
    assert calls == ([1] if jax.default_backend() == "cpu" and switch == "auto" else [])


def test_a_progress_bar_per_epoch_shows_loss_and_accuracy(tmp_path, capsys):
    cfg = _tiny(tmp_path, epochs=2, steps_per_call=6)  # 20 steps an epoch: 3 calls of 6, 1 of 2
    result = experiment.run(cfg, progress=True)
    err = capsys.readouterr().err
    bars = [line for line in err.replace("\r", "\n").splitlines() if "epoch" in line]
    for e in (1, 2):
        final = [b for b in bars if f"tiny epoch {e}/2: 100%" in b and "test_acc=" in b]
        assert final, f"no final bar for epoch {e} in {bars}"
        h = result.history[e - 1]
        assert "20/20" in final[-1] and f"loss={h['train_loss']:.4f}" in final[-1]
        assert f"acc={h['train_accuracy']:.4f}" in final[-1]
        assert f"test_acc={h['test_accuracy']:.4f}" in final[-1]
    assert result.history[0]["step"] == 20
    assert "step 20:" not in capsys.readouterr().out  # no plain line beside the bar


def test_without_a_terminal_one_plain_line_per_epoch(tmp_path, capsys):
    result = experiment.run(_tiny(tmp_path, epochs=2), progress=False)
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "epoch 2/2 step 40:" in lines[1]
    assert f"test_accuracy={result.final['test_accuracy']:.4f}" in lines[1]
    assert "%|" not in out.err


def _raw_scalar_steps(run_dir) -> dict[str, list[int]]:
    """Every scalar (tag, step) in every event file of ``run_dir``, without purging."""
    steps: dict[str, list[int]] = {}
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    steps.setdefault(v.tag, []).append(event.step)
    assert "train/loss" in steps and "test/accuracy" in steps
    return steps


def _pngs(acc, tag):
    """The decoded images of each step of image tag ``tag``: [(step, [PIL images])]."""
    out = []
    for ev in acc.Tensors(tag):
        strings = ev.tensor_proto.string_val
        out.append((ev.step, [Image.open(io.BytesIO(s)) for s in strings[2:]]))
        for img in out[-1][1]:
            assert img.format == "PNG"
    return out


def test_run_result_and_folder(full_run):
    result, _ = full_run
    assert result.completed and len(result.history) == EPOCHS
    assert result.final["test_accuracy"] == result.history[-1]["test_accuracy"] > 0.8
    assert result.test_accuracy == result.final["test_accuracy"]
    # The best epoch is chosen by validation accuracy (the first of equals), never by test.
    vals = [h["val_accuracy"] for h in result.history]
    best = result.history[vals.index(max(vals))]
    assert result.best == best and result.best_val_test_accuracy == best["test_accuracy"]
    d = result.run_dir
    assert d.parent.name == "tiny" and d.parent.parent == __import__("pathlib").Path(
        result.config.runs_dir)
    assert C.from_json((d / "config.json").read_text()) == result.config
    assert "total" in (d / "summary.txt").read_text()
    status = json.loads((d / "run.json").read_text())
    assert status["status"] == "completed" and status["epochs_done"] == EPOCHS
    assert status["final"]["test_accuracy"] == result.final["test_accuracy"]
    assert status["best"] == best and "best_test_accuracy" not in status
    kept = [p.stem for p in ckpt.checkpoints(d / "checkpoints")]
    best_ckpt = (d / "checkpoints" / "best").read_text().strip()
    assert best_ckpt == f"ckpt-{best['epoch']:06d}"  # the best-validation epoch's checkpoint
    assert kept[-2:] == ["ckpt-000002", "ckpt-000003"] and best_ckpt in kept
    assert len(kept) == len({"ckpt-000002", "ckpt-000003", best_ckpt})
    meta = ckpt.read_metadata(d / "checkpoints" / f"{best_ckpt}.npz")
    assert meta["history"][-1]["val_accuracy"] == best["val_accuracy"]


def test_scalars_every_n_steps_and_each_epoch(full_run):
    result, _ = full_run
    acc = accumulator(result.run_dir)
    steps_per_epoch = result.history[0]["step"]
    total = EPOCHS * steps_per_epoch
    every = result.config.log_every
    epoch_steps = [h["step"] for h in result.history]
    assert epoch_steps == [steps_per_epoch * (i + 1) for i in range(EPOCHS)]
    for tag in ("train/loss", "train/accuracy", "train/learning_rate"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(every, total + 1, every)), tag
    for tag in ("val/loss", "val/accuracy", "test/loss", "test/accuracy", "train/epoch_loss",
                "train/epoch_accuracy", "perf/images_per_second", "perf/epoch_time_s"):
        assert [e.step for e in acc.Scalars(tag)] == epoch_steps, tag
    test_acc = [e.value for e in acc.Scalars("test/accuracy")]
    np.testing.assert_allclose(test_acc, [h["test_accuracy"] for h in result.history],
                               rtol=1e-6)
    lrs = {e.step: e.value for e in acc.Scalars("train/learning_rate")}
    # The step schedule, read from opt_state: the lr of step g is logged at g + 1.
    assert lrs[2 * steps_per_epoch] == pytest.approx(0.05)
    assert lrs[2 * steps_per_epoch + every] == pytest.approx(0.005)
    assert all(v > 0 for v in (e.value for e in acc.Scalars("perf/images_per_second")))


def test_histograms_for_every_param_and_grad(full_run):
    result, _ = full_run
    acc = accumulator(result.run_dir)
    epoch_steps = [h["step"] for h in result.history]
    names = ["conv1/b", "conv1/w", "conv2/b", "conv2/w", "dense1/b", "dense1/w", "dense2/b",
             "dense2/w"]
    tags = set(acc.Tags()["histograms"])
    assert tags == {f"{k}/{n}" for k in ("params", "grads") for n in names}
    for tag in tags:
        events = acc.Histograms(tag)
        assert [e.step for e in events] == epoch_steps, tag
        assert all(e.histogram_value.num > 0 for e in events)
    assert acc.Histograms("params/conv1/w")[0].histogram_value.num == 3 * 3 * 1 * 32


def test_images_decode_with_documented_sizes(full_run):
    result, memory = full_run
    acc = accumulator(result.run_dir)
    epoch_steps = [h["step"] for h in result.history]
    n_feat = result.config.num_feature_samples
    # (tag, number of images, width, height) from visualize's grid formulas:
    # conv1 (3, 3, 1, 32): 32 grey tiles in a 6 x 6 grid of 3 px + 1 px pad -> 23 x 23;
    # conv2 (3, 3, 32, 64): 64 rows x 32 columns of 3 px tiles -> 127 wide, 255 high;
    # features after conv1 (8, 8, 32): 6 x 6 maps of 8 px -> 53; after conv2 (4, 4, 64): 8 x 8
    # maps of 4 px -> 39; the input (8, 8, 1): one map of 8 px.
    _, _, h1, w1 = visualize.grid_size(32, 3, 3)
    _, _, f1h, f1w = visualize.grid_size(32, 8, 8)
    _, _, f2h, f2w = visualize.grid_size(64, 4, 4)
    expected = {"filters/conv1": (1, w1, h1), "filters/conv2": (1, 32 * 3 + 31, 64 * 3 + 63),
                "features/input": (n_feat, 8, 8), "features/conv1": (n_feat, f1w, f1h),
                "features/conv2": (n_feat, f2w, f2h)}
    font = ImageFont.load_default()
    names_width = max(math.ceil(font.getlength(str(i))) for i in range(10))
    expected["test/confusion_matrix"] = (1, 6 + names_width + 10 * 32, 14 + 10 * 32)
    for tag, (count, width, height) in expected.items():
        steps = _pngs(acc, tag)
        assert [s for s, _ in steps] == epoch_steps, tag
        for _, images in steps:
            assert len(images) == count, tag
            assert all(img.size == (width, height) for img in images), (tag, images[0].size)
    # Misclassified: the wrong test images, each upscaled by s = max(ceil(64 / 8), ceil((T + 2)
    # / 8)) with T the widest "pred/true" label (at most 8 here, so s = 8), with a 14 px band.
    wrong = round((1 - result.history[-1]["test_accuracy"]) * 360)
    assert wrong > 0
    widest = max(math.ceil(font.getlength(f"{p}/{t}")) for p in range(10) for t in range(10))
    assert -(-(widest + 2) // 8) <= 8
    _, _, height, width = visualize.grid_size(min(wrong, 36), 8 * 8 + 14, 8 * 8, pad=2)
    (last,) = _pngs(acc, "test/misclassified")[-1][1]
    assert last.size == (width, height) and last.mode == "RGB"
    assert memory.images["test/misclassified"][-1][1].shape == (height, width, 3)


def test_texts_and_hparams_in_the_run_folder(full_run):
    result, memory = full_run
    acc = accumulator(result.run_dir)
    tensors = set(acc.Tags()["tensors"])
    assert {"config", "model_summary"} <= tensors
    text = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert '"model": "simple_cnn"' in text and acc.Tensors("config")[0].step == 0
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info",
                            "_hparams_/session_end_info"}
    assert not [p for p in result.run_dir.iterdir() if p.is_dir() and p.name != "checkpoints"]
    # The hparams are the keys that define the run, without the housekeeping ones ...
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content["_hparams_/session_start_info"])
    want = {k for k in C.to_dict(result.config) if k != "_class"} - C.HOUSEKEEPING_KEYS
    assert set(start.hparams) == want and set(memory.hparams) == want
    assert start.hparams["model"].string_value == "simple_cnn"
    assert start.hparams["lr"].number_value == pytest.approx(0.05)
    assert "runs_dir" not in memory.hparams and "log_every" not in memory.hparams
    # ... and the metrics are the curves already logged, with no hparams/* scalar beside them.
    tags = ["train/epoch_loss", "train/epoch_accuracy", "val/loss", "val/accuracy", "test/loss",
            "test/accuracy"]
    experiment_info = hparams_metadata.parse_experiment_plugin_data(
        content["_hparams_/experiment"])
    assert sorted(m.name.tag for m in experiment_info.metric_infos) == sorted(tags)
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("hparams/")]
    assert not [t for t in memory.scalars if t.startswith("hparams/")]
    final_step = result.history[-1]["step"]
    last = acc.Scalars("test/accuracy")[-1]  # the dashboard's value: the curve's last point
    assert last.step == final_step and last.value == pytest.approx(result.final["test_accuracy"])
    assert memory.hparam_metrics["test/accuracy"] == result.final["test_accuracy"]
    assert memory.hparam_metrics["val/loss"] == result.final["val_loss"]
    assert json.loads((result.run_dir / "run.json").read_text())["hparams_step"] == final_step


def test_interrupted_then_resumed_equals_uninterrupted(full_run, tmp_path):
    full, _ = full_run
    first = experiment.run(_tiny(tmp_path), stop_after_epochs=1, progress=False)
    assert not first.completed and len(first.history) == 1
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "stopped"
    second = experiment.resume(first.run_dir, progress=False)
    assert second.completed and second.run_dir == first.run_dir
    assert second.history == [{**h, "epoch_time_s": g["epoch_time_s"],
                               "images_per_second": g["images_per_second"]}
                              for h, g in zip(full.history, second.history, strict=True)]
    a = np.load(ckpt.latest(full.run_dir / "checkpoints"))
    b = np.load(ckpt.latest(second.run_dir / "checkpoints"))
    assert a.files == b.files
    for k in a.files:  # exactly equal: same compiled epoch, same data order, same keys
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    raw_full, raw_resumed = _raw_scalar_steps(full.run_dir), _raw_scalar_steps(second.run_dir)
    assert raw_resumed == raw_full  # every scalar step exactly once across the event files
    assert len(list(second.run_dir.glob("events.out.tfevents.*"))) == 2
    acc = accumulator(second.run_dir)
    assert [e.step for e in acc.Scalars("train/loss")] == sorted(set(raw_full["train/loss"]))


def test_resume_purges_steps_written_after_the_last_checkpoint(tmp_path):
    first = experiment.run(_tiny(tmp_path, epochs=2), stop_after_epochs=1, progress=False)
    step1 = first.history[0]["step"]
    # A killed segment wrote events past its last checkpoint: keep that checkpoint the latest.
    shutil.copytree(first.run_dir / "checkpoints", tmp_path / "saved")
    experiment.resume(first.run_dir, progress=False, stop_after_epochs=1)
    shutil.rmtree(first.run_dir / "checkpoints")
    shutil.copytree(tmp_path / "saved", first.run_dir / "checkpoints")
    experiment.resume(first.run_dir, progress=False)
    raw = _raw_scalar_steps(first.run_dir)
    assert raw["test/accuracy"].count(2 * step1) == 2  # written by both later segments ...
    acc = accumulator(first.run_dir)
    assert [e.step for e in acc.Scalars("test/accuracy")] == [step1, 2 * step1]  # ... read once


def test_resume_refusals(full_run, tmp_path):
    full, _ = full_run
    with pytest.raises(RunError, match=r"is not a run folder: it has no config.json"):
        experiment.resume(tmp_path)
    with pytest.raises(RunError, match=r"is not a run folder: it does not exist"):
        experiment.resume(tmp_path / "missing")
    run_dir = tmp_path / "copy"
    shutil.copytree(full.run_dir, run_dir)
    before = (run_dir / "config.json").read_text()
    with pytest.raises(RunError, match=r"changed model, lr, seed \(model: 'simple_cnn' -> "
                                       r"'lenet5', lr: 0.05 -> 0.1, seed: 0 -> 1\).*--force"):
        experiment.resume(run_dir, overrides={"model": "lenet5", "lr": 0.1, "seed": 1})
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        experiment.resume(run_dir, overrides={"epoch": 4})
    # Forced onto another model: the checkpoint names the first parameter that differs.
    with pytest.raises(CheckpointError, match=r"params/dense1/b: checkpoint \(256,\), model "
                                              r"\(128,\)"):
        experiment.resume(run_dir, overrides={"model": "vgg_small"}, force=True)
    assert (run_dir / "config.json").read_text() == before  # a refused resume changes nothing
    # No checkpoint, and no summary.txt: not a folder the runner made, so nothing starts.
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "summary.txt").unlink()
    with pytest.raises(CheckpointError, match="has no complete checkpoint to resume from and no "
                                              "summary.txt"):
        experiment.resume(run_dir)
    assert not (run_dir / "checkpoints").exists()


def test_resume_before_the_first_checkpoint_starts_over_in_the_same_folder(full_run, tmp_path,
                                                                          capsys):
    full, _ = full_run
    run_dir = tmp_path / "copy"
    shutil.copytree(full.run_dir, run_dir)
    # As a run killed in its first epoch leaves its folder: no complete checkpoint, an event
    # file, a half-written temp file, run.json saying it was running.
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / ".tmp-ckpt-000001.npz.dead").write_bytes(b"x")
    runs.write_status(run_dir, status="running", epochs_done=0)
    result = experiment.resume(run_dir, progress=False)
    assert "starting the run over in the same folder" in capsys.readouterr().err
    assert result.run_dir == run_dir and result.completed
    # The same run from scratch: the same records as the uninterrupted one, bit for bit.
    times = ("epoch_time_s", "images_per_second")
    assert [{k: v for k, v in h.items() if k not in times} for h in result.history] == [
        {k: v for k, v in h.items() if k not in times} for h in full.history]
    a = np.load(ckpt.latest(full.run_dir / "checkpoints"))
    b = np.load(ckpt.latest(run_dir / "checkpoints"))
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The old events were cleared: every scalar step once, in one new event file.
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert _raw_scalar_steps(run_dir) == _raw_scalar_steps(full.run_dir)
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["epochs_done"] == EPOCHS


def test_forced_resume_and_allowed_changes(full_run, tmp_path):
    full, _ = full_run
    run_dir = tmp_path / "copy"
    shutil.copytree(full.run_dir, run_dir)
    # A leftover temp file and a truncated newest checkpoint: resume falls back to epoch 2.
    newest = ckpt.latest(run_dir / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:1000])
    (run_dir / "checkpoints" / ".tmp-ckpt-000004.npz.dead").write_bytes(b"x")
    result = experiment.resume(run_dir, overrides={"seed": 5, "log_every": 10}, force=True,
                               progress=False)
    assert result.completed and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[:2] == full.history[:2]
    assert result.config.seed == 5 and result.config.log_every == 10
    assert C.from_json((run_dir / "config.json").read_text()) == result.config
    acc = accumulator(run_dir)
    texts = acc.Tensors("resume")
    assert "seed=5" in texts[0].tensor_proto.string_val[0].decode() and "(forced)" in \
        texts[0].tensor_proto.string_val[0].decode()
    # Extending a finished run is allowed without force.
    longer = experiment.resume(run_dir, overrides={"epochs": 4}, progress=True)
    assert len(longer.history) == 4


def test_two_runs_in_the_same_second_get_different_folders(tmp_path, monkeypatch):
    ids = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(ids))
    a = runs.make_run_dir(tmp_path, "exp")
    b = runs.make_run_dir(tmp_path, "exp")  # collides once, then retries
    assert a != b and a.name.endswith("-aaaaaa") and b.name.endswith("-bbbbbb")
    assert a.name[:15] == b.name[:15] or a.name[:15] < b.name[:15]


def test_nonfinite_loss_stops_and_names_the_step(tmp_path):
    cfg = _tiny(tmp_path, lr=1e9, epochs=1)
    with pytest.raises(NonFiniteLossError, match=r"^fit: the loss became (nan|-?inf) at step "
                                                 r"(\d+) \(epoch 1\).*\(run (.+): no checkpoint "
                                                 r"was written yet\)$") as info:
        experiment.run(cfg, progress=False)
    (run_dir,) = (tmp_path / "tiny").iterdir()
    assert f"(run {run_dir}: " in str(info.value)
    step = int(str(info.value).split(" at step ")[1].split()[0])
    assert 1 <= step <= 1293 // 64  # a step of epoch 1
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith(
        f"NonFiniteLossError: fit: the loss became {str(info.value).split()[4]} at step {step} ")
    memory = MemoryWriter()
    result = experiment.run(C.override(cfg, {"on_nonfinite": "skip"}), extra_writers=[memory],
                            progress=False)
    skipped = memory.scalars["train/skipped_steps"]
    assert [s for s, _ in skipped] == [h["step"] for h in result.history]
    assert skipped[-1][1] > 0


def test_filter_and_feature_map_images_name_the_same_conv_layers():
    # The runner logs filters/<path> from the params and features/<path> from the walk over
    # the model: in a ResNet both must name each of its 19 conv layers, nested paths included.
    model = models.resnet20()
    params, state = jax.eval_shape(lambda k: model.init(k, (None, 32, 32, 3))[1:],
                                   jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32)
    feats = jax.eval_shape(lambda p, s, x: walk.intermediates(model, p, s, x),
                           params, state, x)
    kernels = train.conv_kernels(params)
    assert len(feats) == 19 == len(kernels) and set(feats) == set(kernels)
    for path, feat in feats.items():  # each map has as many channels as its kernel outputs
        assert feat.shape[-1] == kernels[path].shape[-1], path


def test_optimizers_and_schedules_put_lr_in_opt_state():
    for optimizer in C.OPTIMIZERS:
        for schedule in C.SCHEDULES:
            cfg = C.Config(optimizer=optimizer, schedule=schedule, lr=0.1, epochs=4,
                           warmup_epochs=1.0 if schedule == "warmup_cosine" else 0.0,
                           weight_decay=1e-4)
            opt = registry.build_optimizer(cfg, 10)
            state = opt.init({"w": np.ones(2, np.float32)})
            assert train.learning_rate(state) is not None, (optimizer, schedule)
    sched = registry.build_schedule(C.Config(schedule="step", lr=1.0, epochs=4), 10)
    assert [float(sched(i)) for i in (0, 19, 20, 30)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    warm = registry.build_schedule(C.Config(schedule="warmup_cosine", lr=1.0, epochs=4,
                                              warmup_epochs=1.0), 10)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1.0)


def test_filters_demo_writes_inputs_beside_outputs(tmp_path):
    result = experiment.run(C.FiltersConfig(runs_dir=str(tmp_path), max_size=64,
                                            images=("flower.jpg",)))
    acc = accumulator(result.run_dir)
    tags = set(acc.Tags()["tensors"])
    for name in ("sobel_x", "sobel_y", "sobel_magnitude", "gaussian", "sharpen"):
        (_, [img]), = _pngs(acc, f"filters/flower/{name}")
        assert img.size == (64 + 4 + 64, 43) and img.mode == "RGB"
        assert f"kernels/{name}" in tags or name == "sobel_magnitude"
    with pytest.raises(RunError, match="nothing to resume"):
        experiment.resume(result.run_dir)


def test_bad_input_is_refused_before_a_run_folder_is_made(tmp_path):
    with pytest.raises(LayerError, match="Conv layer 'conv2'"):  # 8x8 digits for LeNet-5
        experiment.run(_tiny(tmp_path, model="lenet5"), progress=False)
    with pytest.raises(ConfigError, match="cannot split"):
        experiment.run(_tiny(tmp_path, val_fraction=0.001), progress=False)
    with pytest.raises(ConfigError, match="not one of scikit-learn's sample images"):
        experiment.run(C.FiltersConfig(runs_dir=str(tmp_path), images=("nope.jpg",)))
    assert not list(tmp_path.iterdir())


def test_a_crash_marks_the_run_failed_with_its_error_until_a_resume(tmp_path, monkeypatch):
    real = train.Loop._log_epoch

    def broken(self, *args):  # epoch 1 logs; epoch 2 crashes as it logs
        if self.epoch >= 1:
            raise RuntimeError("disk on fire")
        return real(self, *args)

    monkeypatch.setattr(train.Loop, "_log_epoch", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        experiment.run(_tiny(tmp_path, epochs=2), progress=False)
    (run_dir,) = (tmp_path / "tiny").iterdir()
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["error"] == "RuntimeError: disk on fire"
    assert status["epochs_done"] == 1
    monkeypatch.setattr(train.Loop, "_log_epoch", real)
    result = experiment.resume(run_dir, progress=False)
    status = json.loads((run_dir / "run.json").read_text())
    assert result.completed and status["status"] == "completed" and "error" not in status


def test_loss_tolerance_ends_the_run_early_as_completed(tmp_path):
    result = experiment.run(_tiny(tmp_path, loss_tolerance=50.0), progress=False)
    assert result.completed and len(result.history) == 1
    status = json.loads((result.run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["epochs_done"] == 1
    assert "_hparams_/experiment" in accumulator(result.run_dir).PluginTagToContent("hparams")


def test_tensorboard_server_shows_a_run_folder(full_run, tmp_path):
    """A real TensorBoard over the runs folder serves the run's loss curve and its conv1
    filters as the PNG the runner wrote."""
    import _tensorboard_server as tb

    result, memory = full_run
    logdir = result.run_dir.parent.parent
    run_name = f"{result.run_dir.parent.name}/{result.run_dir.name}"
    with tb.serve(logdir, tmp_path) as server:
        last = result.history[-1]["step"]
        server.poll("the final test accuracy",
                    lambda: server.scalars(run_name, "test/accuracy"),
                    lambda points: bool(points) and points[-1][1] == last)
        served = [(step, value) for _, step, value in server.scalars(run_name, "train/loss")]
        written = [(step, value) for step, value in memory.scalars["train/loss"]]
        assert [s for s, _ in served] == [s for s, _ in written]
        np.testing.assert_allclose([v for _, v in served], [v for _, v in written], rtol=1e-6)
        entries = server.json("plugin/images/images", run=run_name, tag="filters/conv1",
                              sample=0)
        assert [e["step"] for e in entries] == [h["step"] for h in result.history]
        png = tb.get(f"{server.base}/plugin/images/individualImage?{entries[-1]['query']}")
        got = Image.open(io.BytesIO(png))
        assert got.format == "PNG"
        (step, want), = memory.images["filters/conv1"][-1:]
        assert step == last
        np.testing.assert_array_equal(np.asarray(got.convert("L")),
                                      np.round(np.asarray(want)[..., 0] * 255).astype(np.uint8))
