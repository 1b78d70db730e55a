"""Research code in the runner: your own model, data and loss (experiments/own_images.py, a
folder of images the tests make), run end to end, killed and resumed; train.fit logging what the
runner logs; a run killed before its first checkpoint resumed to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from _events import accumulator
from PIL import Image

from jaxcnn import checkpoint as ckpt
from jaxcnn import data, experiment, runs, scripts, tracking, train
from jaxcnn import layers as L
from jaxcnn.config import Config
from jaxcnn.errors import RunError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "experiments" / "own_images.py"
CLASSES = ("circle", "cross", "square")
TIMING_KEYS = ("epoch_time_s", "images_per_second")


def make_shapes(root: Path, per_class: int = 40, size: int = 12, seed: int = 0) -> Path:
    """A folder ``root/<class>/*.png`` of noisy grey circles, crosses and squares."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            r, c = rng.integers(1, size - 8, 2)
            img = np.zeros((size, size), np.uint8)
            if name == "square":
                img[r:r + 7, c:c + 7] = 220
            elif name == "cross":
                img[r + 3, c:c + 7] = 220
                img[r:r + 7, c + 3] = 220
            else:
                img[(yy - r - 3) ** 2 + (xx - c - 3) ** 2 <= 9] = 220
            img = np.clip(img + rng.integers(0, 35, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "images")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "JAXCNN_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def _example(args, env, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(EXAMPLE), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _jaxcnn(args, env, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxcnn.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def _only_run(runs_dir: Path) -> Path:
    (run_dir,) = (runs_dir / "own_images").iterdir()
    return run_dir


def _assert_same_result(a: Path, b: Path) -> None:
    """Runs ``a`` and ``b`` ended with the same final state, bit for bit, the same records
    (timings aside) and the same scalar curves, each step written once."""
    la, lb = ckpt.latest(a / "checkpoints"), ckpt.latest(b / "checkpoints")
    assert la.name == lb.name
    with np.load(la) as fa, np.load(lb) as fb:
        assert sorted(fa.files) == sorted(fb.files)
        for k in fa.files:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)

    def records(path):
        return [{k: v for k, v in h.items() if k not in TIMING_KEYS}
                for h in ckpt.read_metadata(path)["history"]]

    assert records(la) == records(lb)
    acc_a, acc_b = accumulator(a), accumulator(b)
    tags = acc_b.Tags()["scalars"]
    assert set(acc_a.Tags()["scalars"]) == set(tags)
    for tag in tags:
        steps = [e.step for e in acc_a.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
        assert steps == [e.step for e in acc_b.Scalars(tag)], tag
        if not tag.startswith("perf/"):
            assert [e.value for e in acc_a.Scalars(tag)] == \
                [e.value for e in acc_b.Scalars(tag)], tag


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()}"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(shapes, env, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("elsewhere")  # not the repo: the script runs from anywhere
    proc = _example(["--dataset", shapes, "--epochs", 4, "--runs-dir", cwd / "runs"], env, cwd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return _only_run(cwd / "runs")


@pytest.mark.slow
def test_own_model_data_and_loss_get_every_runner_item(uninterrupted):
    run_dir = uninterrupted
    copy = run_dir / "script" / "own_images.py"
    assert copy.read_bytes() == EXAMPLE.read_bytes()
    status = runs.read_status(run_dir)
    assert status["status"] == "completed" and status["epochs_done"] == 4
    assert status["script"]["sha256"] == scripts.sha256_file(EXAMPLE)
    assert status["class_names"] == list(CLASSES)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"] == "own_images.py:get_model"
    assert saved["dataset"] == "own_images.py:get_data"
    assert saved["loss"] == "own_images.py:get_loss"
    assert saved["_replaced"]["dataset"].endswith("images")  # what get_data read
    assert (run_dir / "summary.txt").read_text().startswith("own_images.py:get_model on")

    acc = accumulator(run_dir)
    tags = acc.Tags()
    for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/epoch_loss",
                "val/loss", "val/accuracy", "test/loss", "test/accuracy",
                "perf/images_per_second"):
        assert tag in tags["scalars"], tag
    assert not [t for t in tags["scalars"] if t.startswith("hparams/")]
    assert {"params/conv1/w", "grads/conv2/w", "params/dense1/b"} <= set(tags["histograms"])
    assert {"filters/conv1", "filters/conv2", "features/input", "features/conv1",
            "features/conv2", "explain/saliency", "explain/grad_cam",
            "test/confusion_matrix"} <= set(acc.PluginTagToContent("images"))
    # the explanations: one RGB overlay per fixed image (4), each epoch
    explained = acc.Tensors("explain/grad_cam")
    assert [e.step for e in explained] == [e.step for e in acc.Scalars("test/accuracy")]
    shape = explained[-1].tensor_proto.string_val[:2]  # width, height as the image summary has
    assert [int(v) for v in shape] == [16, 16]
    assert len(explained[-1].tensor_proto.string_val) == 2 + 4
    epoch_steps = [e.step for e in acc.Scalars("test/accuracy")]
    assert len(epoch_steps) == 4
    assert [e.step for e in acc.Tensors("filters/conv1")] == epoch_steps
    assert {"config", "model_summary"} <= set(acc.PluginTagToContent("text"))
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert start["model"].string_value == "own_images.py:get_model"  # the default not shown
    assert start["dataset"].string_value.startswith("own_images.py:get_data (/")
    assert start["lr"].number_value == pytest.approx(3e-3)
    assert "runs_dir" not in start and "log_every" not in start  # housekeeping left out


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_jaxcnn_resume_equals_the_uninterrupted_run(
        uninterrupted, shapes, env, tmp_path):
    proc = _example(["--dataset", shapes, "--epochs", 4, "--runs-dir", tmp_path / "runs"],
                    env, tmp_path)
    ckpts = tmp_path / "runs" / "own_images"

    def first_checkpoint():
        return any(ckpts.glob("*/checkpoints/ckpt-000001.json"))

    _kill_when(proc, first_checkpoint)
    run_dir = _only_run(tmp_path / "runs")
    assert runs.read_status(run_dir)["status"] != "completed", "killed too late to test"
    done = _jaxcnn(["resume", run_dir], env, tmp_path / "runs")  # from another folder
    assert done.returncode == 0, done.stderr
    _assert_same_result(run_dir, uninterrupted)


@pytest.mark.slow
def test_killed_before_its_first_checkpoint_resume_starts_over_to_the_same_result(
        uninterrupted, shapes, env, tmp_path):
    proc = _example(["--dataset", shapes, "--epochs", 4, "--runs-dir", tmp_path / "runs"],
                    env, tmp_path)
    _kill_when(proc, lambda: any((tmp_path / "runs").glob("own_images/*/config.json")))
    run_dir = _only_run(tmp_path / "runs")
    assert ckpt.latest(run_dir / "checkpoints") is None
    done = _jaxcnn(["resume", run_dir], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "starting the run over in the same folder" in done.stderr
    _assert_same_result(run_dir, uninterrupted)


@pytest.mark.slow
def test_jaxcnn_run_takes_a_script_path(shapes, env, tmp_path):
    done = _jaxcnn(["run", EXAMPLE, "--dataset", shapes, "--epochs", 1, "--runs-dir",
                    tmp_path / "runs"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = _only_run(tmp_path / "runs")
    assert json.loads((run_dir / "config.json").read_text())["model"] == \
        "own_images.py:get_model"


def test_a_changed_script_copy_is_refused_naming_both_hashes(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = tmp_path / "s.py"
    script.write_text("X = 1\n")
    entry = scripts.copy_script(script, run_dir)
    assert scripts.import_script(run_dir, entry).X == 1
    (run_dir / entry["file"]).write_text("X = 2\n")
    new = scripts.sha256_file(run_dir / entry["file"])
    with pytest.raises(RunError, match=f"has sha256 {new}, but the run recorded "
                                       f"{entry['sha256']}"):
        scripts.import_script(run_dir, entry)


def _tiny_model(classes: int = 3) -> L.Layer:
    return L.serial(L.Conv(4, 3, padding="SAME"), L.Relu(), L.MaxPool(2), L.Flatten(),
                    L.Dense(classes))


def test_fit_with_a_writer_logs_the_runners_tags(shapes, tmp_path):
    """``train.fit(..., writer=...)`` on a model of its own writes the scalar, histogram and
    image tags the runner writes, read back from the event files."""
    splits = data.load(shapes)
    tr, val = data.train_val_split(splits.train, 0.25, seed=0)
    logdir = tmp_path / "fit"
    with tracking.TensorBoardWriter(logdir) as writer:
        ts, history = train.fit(_tiny_model(), optax.adam(1e-2), tr, epochs=2, batch_size=16,
                                val=val, test=splits.test, writer=writer, log_every=2,
                                class_names=splits.class_names)
    steps_per_epoch = len(tr.labels) // 16
    assert [h["step"] for h in history] == [steps_per_epoch, 2 * steps_per_epoch]
    acc = accumulator(logdir)
    tags = acc.Tags()
    for tag in ("train/loss", "train/accuracy", "train/epoch_loss", "train/epoch_accuracy",
                "val/loss", "val/accuracy", "test/loss", "test/accuracy"):
        assert tag in tags["scalars"], tag
    assert [e.value for e in acc.Scalars("val/accuracy")] == pytest.approx(
        [h["val_accuracy"] for h in history])
    assert [e.step for e in acc.Scalars("test/accuracy")] == [h["step"] for h in history]
    assert {"params/conv1/w", "params/dense1/w", "grads/conv1/w"} <= set(tags["histograms"])
    assert {"filters/conv1", "features/input", "features/conv1", "test/confusion_matrix"} <= \
        set(acc.PluginTagToContent("images"))


def test_experiment_run_takes_objects_and_resume_needs_them_again(shapes, tmp_path):
    """From Python (a notebook): a Layer object, Splits and a loss function; the run records
    them as Python objects, and resuming without them is refused, with them it continues."""
    splits = data.load(shapes)
    cfg = Config(experiment="nb", epochs=2, batch_size=16, runs_dir=str(tmp_path),
                 val_fraction=0.2)
    model = _tiny_model()

    def loss(logits, labels, mask=None):
        per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return per.mean() if mask is None else (per * mask).sum() / mask.sum()

    result = experiment.run(cfg, model=model, data=splits, loss_fn=loss, stop_after_epochs=1,
                            progress=False)
    assert not result.completed
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["model"].startswith("python:") and saved["dataset"].startswith("python:")
    with pytest.raises(RunError, match="given as a Python object"):
        experiment.resume(result.run_dir)
    done = experiment.resume(result.run_dir, model=model, data=splits, loss_fn=loss,
                             progress=False)
    assert done.completed and [h["epoch"] for h in done.history] == [1, 2]


def test_fit_with_checkpoints_stops_on_sigint_and_its_loop_continues_to_the_same_result(
        tmp_path):
    """``fit(checkpoint_dir=...)`` hears SIGINT through the loop: it checkpoints where it
    stopped and raises; a Loop restored from that checkpoint ends bit for bit where an
    uninterrupted fit ends."""
    import threading

    from jaxcnn import checkpoint as ckpt_lib

    split = data.load("digits").train
    kw = dict(epochs=6, batch_size=32, seed=3)
    ts_ref, hist_ref = train.fit(_tiny_model(10), optax.sgd(0.05), split, **kw)
    folder = tmp_path / "ckpts"

    def interrupt():
        deadline = time.monotonic() + 120
        while not (folder / "ckpt-000001.json").exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt, match="fit: stopped by a signal at step"):
        train.fit(_tiny_model(10), optax.sgd(0.05), split, checkpoint_dir=folder, **kw)
    latest = ckpt_lib.latest(folder)
    stopped_at = ckpt_lib.read_metadata(latest)["step"]
    assert 0 < stopped_at < hist_ref[-1]["step"]
    loop = train.Loop(_tiny_model(10), optax.sgd(0.05), split, checkpoint_dir=folder,
                      restore_from=latest, steps_per_call=20, **kw)
    assert loop.run() == "completed"
    for a, b in zip(jax.tree.leaves(loop.ts.params), jax.tree.leaves(ts_ref.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["train_loss"] for h in loop.history] == [h["train_loss"] for h in hist_ref]


AUGMENT = ["--augment", "crop:2,flip,mixup:0.2"]


@pytest.fixture(scope="module")
def augmented(shapes, env, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("augmented")
    proc = _example(["--dataset", shapes, "--epochs", 4, "--runs-dir", cwd / "runs", *AUGMENT],
                    env, cwd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return _only_run(cwd / "runs")


@pytest.mark.slow
def test_an_augmented_run_killed_and_resumed_is_bit_identical(augmented, uninterrupted,
                                                              shapes, env, tmp_path):
    """Augmentation runs inside the compiled step with keys from the TrainState's: a SIGKILL
    after the first checkpoint and ``jaxcnn resume`` end bit for bit where the uninterrupted
    augmented run ends (and not where the plain run ends)."""
    proc = _example(["--dataset", shapes, "--epochs", 4, "--runs-dir", tmp_path / "runs",
                     *AUGMENT], env, tmp_path)
    ckpts = tmp_path / "runs" / "own_images"
    _kill_when(proc, lambda: any(ckpts.glob("*/checkpoints/ckpt-000001.json")))
    run_dir = _only_run(tmp_path / "runs")
    assert runs.read_status(run_dir)["status"] != "completed", "killed too late to test"
    done = _jaxcnn(["resume", run_dir], env, tmp_path)
    assert done.returncode == 0, done.stderr
    _assert_same_result(run_dir, augmented)
    with pytest.raises(AssertionError):
        _assert_same_result(run_dir, uninterrupted)
    assert "augment/examples" in accumulator(run_dir).PluginTagToContent("images")


def test_the_step_augments_with_a_key_derived_from_the_train_state():
    """One step with ``augment`` equals a plain step on the batch the augmentation makes with
    ``fold_in(fold_in(ts.key, ts.step), 1)``; evaluation is untouched."""
    from jaxcnn import augment, losses

    aug = augment.parse("crop:2,flip,mixup:0.4", num_classes=10)
    split = data.load("digits").train
    batch = (split.images[:32], split.labels[:32])
    model, opt = _tiny_model(10), optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(5), (None, 8, 8, 1))
    ts = ts._replace(step=ts.step + 7)
    with_aug = train.make_train_step(model, losses.softmax_cross_entropy, opt, augment=aug,
                                     batch_slices=1)
    plain = train.make_train_step(model, losses.softmax_cross_entropy, opt, batch_slices=1)
    key = jax.random.fold_in(jax.random.fold_in(ts.key, ts.step), 1)
    images, targets = aug(key, *map(jax.numpy.asarray, batch))
    assert targets.shape == (32, 10)  # mixup made soft targets
    got, metrics = with_aug(ts, batch)
    want, _ = plain(ts, (images, targets))
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    unaugmented, _ = plain(ts, batch)
    assert not np.allclose(np.asarray(got.params["dense1"]["w"]),
                           np.asarray(unaugmented.params["dense1"]["w"]))
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path):
    """A checkpoint that does not fit the (forced) model is refused before any event file or
    config is written."""
    from jaxcnn.errors import CheckpointError

    cfg = Config(experiment="refused", epochs=1, batch_size=64, runs_dir=str(tmp_path),
                 model="simple_cnn")
    run_dir = experiment.run(cfg, progress=False).run_dir
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        experiment.resume(run_dir, overrides={"model": "vgg_small", "epochs": 2}, force=True,
                          progress=False)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before
