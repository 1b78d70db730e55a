"""jaxcnn.epoch_images: the explanation images an epoch logs are the overlays of
:mod:`jaxcnn.explain`'s maps for each fixed image, computed by programs compiled once for every
epoch's params; the filters are the model's kernels."""

from __future__ import annotations

import jax
import numpy as np

from jaxcnn import data, explain, models, visualize
from jaxcnn import layers as L
from jaxcnn.epoch_images import EpochImages


def test_an_epochs_images_are_the_explanations_of_each_fixed_image():
    model = models.lenet5()
    _, params, state = model.init(jax.random.key(0), (None, 28, 28, 1))
    rng = np.random.default_rng(0)
    split = data.Split(rng.random((6, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 6))
    images = EpochImages(model, "test", split, 10, num_feature_samples=3)
    predictions = rng.integers(0, 10, 6)
    got = images(params, state, predictions)
    for name, method in (("saliency", explain.saliency), ("grad_cam", explain.grad_cam)):
        assert got[f"explain/{name}"].shape == (3, 28, 28, 3)
        for i in range(3):
            want = explain.overlay(split.images[i], method(model, params, state, split.images[i]))
            np.testing.assert_allclose(got[f"explain/{name}"][i], want, atol=1e-5)
    np.testing.assert_array_equal(got["filters/conv1"], visualize.filter_grid(params["conv1"]["w"]))
    assert got["test/confusion_matrix"].ndim == 3


def test_each_epoch_reuses_the_compiled_maps_and_a_model_without_conv_gets_saliency_only():
    model = L.serial(L.Flatten(), L.Dense(16), L.Relu(), L.Dense(4))
    rng = np.random.default_rng(1)
    split = data.Split(rng.random((5, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, 5))
    images = EpochImages(model, "val", split, 4, num_feature_samples=2)
    for seed in range(3):  # three epochs' params
        _, params, state = model.init(jax.random.key(seed), (None, 6, 6, 1))
        got = images(params, state, None)
        assert "explain/grad_cam" not in got
        want = [explain.overlay(x, explain.saliency(model, params, state, x))
                for x in split.images[:2]]
        np.testing.assert_allclose(got["explain/saliency"], np.stack(want), atol=1e-5)
    assert list(images.explain_fns) == ["saliency"]
    assert images.explain_fns["saliency"]._cache_size() == 1
