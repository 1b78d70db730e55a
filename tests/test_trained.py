"""Using a trained model: jaxcnn.load(...).predict against the model applied by hand to the
checkpoint's arrays and the training split's statistics; jaxcnn predict on PNG files."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jaxcnn
from jaxcnn import data, experiment, registry, runs
from jaxcnn.config import Config
from jaxcnn.errors import CheckpointError, DataError, RunError


def _nested(flat: dict[str, np.ndarray], prefix: str) -> dict:
    """The arrays saved under ``prefix/`` as the nested dict they were flattened from."""
    tree: dict = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "/"):
            continue
        node = tree
        *path, leaf = key[len(prefix) + 1:].split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    cfg = Config(experiment="digits_small", dataset="digits", model="vgg_small", epochs=2,
                 batch_size=32, runs_dir=str(tmp_path_factory.mktemp("runs")))
    return experiment.run(cfg, progress=False).run_dir


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return data.load("digits").test.images[:20]


def test_predict_is_the_model_on_the_normalised_images(run_dir, test_images):
    trained = jaxcnn.load(run_dir)
    best = (run_dir / "checkpoints" / "best").read_text().strip()
    assert trained.checkpoint.stem == best
    with np.load(trained.checkpoint) as f:
        flat = {k: f[k] for k in f.files}
    params, state = _nested(flat, "params"), _nested(flat, "state")
    # The run's normalisation: the statistics of its training split after the validation split.
    train, _ = data.train_val_split(data.load("digits").train, 0.1, seed=0)
    mean, std = train.images.mean(axis=(0, 1, 2)), train.images.std(axis=(0, 1, 2))
    np.testing.assert_allclose(trained.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(trained.std, std, rtol=1e-5)
    model = registry.build_model("vgg_small", 10)
    logits, _ = model.apply(params, state, (test_images - mean) / std, train=False)
    want = np.asarray(jax.nn.softmax(logits))
    got = trained.predict(test_images)
    assert got.shape == (20, 10)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert trained.class_names == [str(i) for i in range(10)]
    assert trained.input_shape == (8, 8, 1)
    # batches: the same probabilities whatever the batch size (a padded last batch included)
    np.testing.assert_allclose(trained.predict(test_images, batch_size=7), got, atol=1e-6)


def test_uint8_float_and_single_image_inputs_agree(run_dir, test_images):
    trained = jaxcnn.load(run_dir, checkpoint="last")
    pixels = np.round(test_images * 255).astype(np.uint8)
    as_float = trained.predict(pixels.astype(np.float32) / 255)
    np.testing.assert_allclose(trained.predict(pixels), as_float, atol=1e-6)
    np.testing.assert_allclose(trained.predict(pixels[3]), as_float[3:4], atol=1e-6)
    np.testing.assert_allclose(trained.predict(pixels[3, :, :, 0]), as_float[3:4], atol=1e-6)
    np.testing.assert_allclose(trained.predict(pixels[:, :, :, 0]), as_float, atol=1e-6)


def test_bad_images_and_checkpoints_are_refused_by_name(run_dir, test_images, tmp_path):
    trained = jaxcnn.load(run_dir)
    with pytest.raises(DataError, match=r"images of shape \(20, 9, 9, 1\) do not fit this model, "
                                        r"which takes \(N, 8, 8, 1\)"):
        trained.predict(np.zeros((20, 9, 9, 1), np.uint8))
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\], got values from 0.0 "
                                        r"to 255.0"):
        trained.predict(test_images * 0 + np.linspace(0, 255, 64).reshape(8, 8, 1))
    with pytest.raises(CheckpointError, match="has no complete checkpoint 'ckpt-999999'; pass "
                                              "'best', 'last' or one of: ckpt-000001"):
        jaxcnn.load(run_dir, checkpoint="ckpt-999999")
    with pytest.raises(RunError, match="is not a run folder: it does not exist"):
        jaxcnn.load(tmp_path / "nothing")


def test_best_falls_back_to_the_last_checkpoint_with_a_warning(tmp_path):
    cfg = Config(experiment="noval", dataset="digits", model="simple_cnn", epochs=1,
                 batch_size=64, val_fraction=0.0, runs_dir=str(tmp_path))
    folder = experiment.run(cfg, progress=False).run_dir
    assert not (folder / "checkpoints" / "best").exists()
    with pytest.warns(UserWarning, match="has no best checkpoint .* loading the last one, "
                                         "ckpt-000001"):
        trained = jaxcnn.load(folder)
    assert trained.checkpoint.stem == "ckpt-000001"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxcnn.load(folder, checkpoint="last")


def test_a_run_from_before_run_json_kept_the_normalisation_is_read_too(run_dir, test_images):
    status = runs.read_status(run_dir)
    new = jaxcnn.load(run_dir).predict(test_images)
    try:
        runs.write_status(run_dir, drop=("normalization", "class_names", "input_shape"))
        old = jaxcnn.load(run_dir)
        np.testing.assert_allclose(old.predict(test_images), new, atol=1e-6)
    finally:
        runs.write_status(run_dir, **{k: status[k] for k in
                                      ("normalization", "class_names", "input_shape")})


def test_jaxcnn_predict_json_on_png_files_agrees_with_predict(run_dir, test_images, tmp_path):
    pixels = np.round(test_images[:3, :, :, 0] * 255).astype(np.uint8)
    files = []
    for i, img in enumerate(pixels):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(img).save(files[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    done = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "predict", str(run_dir),
                           *map(str, files[:2]), str(tmp_path / "broken.png"), str(files[2]),
                           "--json", "--top", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "broken.png: cannot read it as an image" in done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    probs = jaxcnn.load(run_dir).predict(pixels)
    for line, p in zip(lines, probs, strict=True):
        assert line["label"] == int(np.argmax(p)) and line["class"] == str(np.argmax(p))
        assert line["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert [t["label"] for t in line["top"]] == list(np.argsort(-p, kind="stable")[:2])


def test_exported_model_in_a_fresh_process_without_jaxcnn_agrees_with_predict(
        run_dir, test_images, tmp_path):
    """``jaxcnn export``: the bytes load and run in a process that imports only jax and numpy
    (no jaxcnn), and give predict's probabilities within 1e-5 at two batch sizes."""
    out = tmp_path / "model.jaxexport"
    done = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "export", str(run_dir), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.save(tmp_path / "x.npy", test_images[:7])
    script = (
        "import sys, numpy as np\n"
        "from jax import export\n"
        f"exp = export.deserialize(bytearray(open({str(out)!r}, 'rb').read()))\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'p1.npy')!r}, np.asarray(exp.call(x[:1])))\n"
        f"np.save({str(tmp_path / 'p7.npy')!r}, np.asarray(exp.call(x)))\n"
        "assert not [m for m in sys.modules if m.startswith('jaxcnn')]\n")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    want = jaxcnn.load(run_dir).predict(test_images[:7])
    np.testing.assert_allclose(np.load(tmp_path / "p7.npy"), want, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "p1.npy"), want[:1], atol=1e-5)
