"""jaxcnn.explain: saliency against central finite differences of the class score, Grad-CAM
against the gradient of a small network written out by hand in NumPy (a loop convolution, the
ReLU mask, global average pooling and the dense weights) and a NumPy bilinear resize, the
overlay against jet's colours at known points, and every error."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import explain, visualize
from jaxcnn import layers as L
from jaxcnn.explain import grad_cam, overlay, saliency

H, W, C, K = 7, 6, 2, 3


def _tiny() -> L.Layer:
    """input (H, W, C) -> conv 2@3x3 VALID -> ReLU -> global average pool -> dense K."""
    return L.serial(L.Conv(2, 3), L.Relu(), L.GlobalAvgPool(), L.Dense(K))


def _setup(seed=0, dtype=np.float32):
    """(model, params, state, image) with random params and image in ``dtype``."""
    model = _tiny()
    _, params, state = model.init(jax.random.key(seed), (None, H, W, C))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.5, p.shape), dtype), params)
    image = rng.random((H, W, C)).astype(dtype)
    return model, params, state, image


def _conv_valid(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, C) x (kh, kw, C, F) -> (H-kh+1, W-kw+1, F), a plain loop cross-correlation."""
    kh, kw, _, f = w.shape
    out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1, f))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.tensordot(x[i:i + kh, j:j + kw], w, axes=([0, 1, 2], [0, 1, 2])) + b
    return out


def _bilinear(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsample (h, w) to ``shape`` with half-pixel centres, edges clamped: output pixel i
    samples input position (i + 0.5) * h / H - 0.5."""
    def weights(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = pos - lo
        r = np.zeros((n_out, n_in))
        r[np.arange(n_out), lo] += 1 - frac
        r[np.arange(n_out), hi] += frac
        return r
    return weights(m.shape[0], shape[0]) @ m @ weights(m.shape[1], shape[1]).T


def _hand_cam(params, image, c, *, after_relu=False) -> np.ndarray:
    """Grad-CAM of the tiny net for class ``c`` at feature resolution, by hand:
    y_c = sum_k Wd[k, c] * mean_ij ReLU(A_k[i, j]) + bd[c], so dy_c/dA_k[i, j] =
    Wd[k, c] * 1[A_k[i, j] > 0] / (h w) at the conv output, Wd[k, c] / (h w) after the ReLU."""
    p = jax.tree.map(np.asarray, params)
    a = _conv_valid(np.asarray(image, np.float64), p["conv1"]["w"], p["conv1"]["b"])
    h, w, _ = a.shape
    wd = p["dense1"]["w"][:, c]
    if after_relu:
        a = np.maximum(a, 0)
        grad = np.broadcast_to(wd / (h * w), a.shape)
    else:
        grad = wd * (a > 0) / (h * w)
    alpha = grad.mean(axis=(0, 1))
    return np.maximum((a * alpha).sum(-1), 0)


def _unit(m: np.ndarray) -> np.ndarray:
    return m / m.max() if m.max() > 0 else np.zeros_like(m)


def _predicted(model, params, state, image) -> int:
    return int(np.argmax(model.apply(params, state, jnp.asarray(image)[None])[0][0]))


# --- saliency -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_saliency_matches_central_differences(seed):
    with jax.enable_x64(True):
        model, params, state, image = _setup(seed, np.float64)
        c = seed % K
        eps = 1e-6
        # every pixel and channel nudged up and down, one batch: (2 H W C, H, W, C)
        basis = np.eye(H * W * C).reshape(-1, H, W, C) * eps
        batch = np.concatenate([image + basis, image - basis])
        y = np.asarray(model.apply(params, state, jnp.asarray(batch))[0][:, c])
        grad = ((y[:H * W * C] - y[H * W * C:]) / (2 * eps)).reshape(H, W, C)
        want = _unit(np.abs(grad).max(axis=-1))
        got = saliency(model, params, state, image, target=c)
    assert got.shape == (H, W) and got.dtype == np.float32
    assert want.max() == 1 and want.min() < 0.9  # a map that varies, so the test can fail
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_saliency_takes_a_batch_of_one_and_defaults_to_the_predicted_class():
    # flatten, not average: each class weighs each position differently, so the maps differ
    model = L.serial(L.Conv(2, 3), L.Relu(), L.Flatten(), L.Dense(K))
    _, params, state = model.init(jax.random.key(6), (None, H, W, C))
    image = np.random.default_rng(6).random((H, W, C)).astype(np.float32)
    pred = _predicted(model, params, state, image)
    got = saliency(model, params, state, image)
    np.testing.assert_array_equal(got, saliency(model, params, state, image[None]))
    np.testing.assert_array_equal(got, saliency(model, params, state, image, target=pred))
    others = [saliency(model, params, state, image, target=c) for c in range(K) if c != pred]
    assert all(not np.allclose(got, o) for o in others)
    assert got.min() >= 0 and got.max() == 1


def test_a_zero_gradient_gives_zeros():
    model, params, state, image = _setup()
    params = {**params, "dense1": {**params["dense1"], "w": jnp.zeros_like(params["dense1"]["w"])}}
    for fn in (saliency, grad_cam):
        m = fn(model, params, state, image)
        assert m.dtype == np.float32 and not m.any()


# --- Grad-CAM -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_cam_matches_the_hand_gradient(seed):
    model, params, state, image = _setup(seed)
    for c in range(K):
        want = _hand_cam(params, image, c)
        got = grad_cam(model, params, state, image, target=c, upsample=False)
        assert got.shape == (H - 2, W - 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, _unit(want), atol=1e-5)
        full = grad_cam(model, params, state, image, target=c)
        assert full.shape == (H, W)
        np.testing.assert_allclose(full, _unit(_bilinear(want, (H, W))), atol=1e-5)


def test_grad_cam_at_a_named_layer_matches_the_hand_gradient():
    model, params, state, image = _setup(3)
    for c in range(K):
        got = grad_cam(model, params, state, image, target=c, layer="relu1", upsample=False)
        np.testing.assert_allclose(got, _unit(_hand_cam(params, image, c, after_relu=True)),
                                   atol=1e-5)


def test_a_nonzero_grad_cam_map_spans_zero_to_one():
    model, params, state, image = _setup()
    nonzero = [grad_cam(model, params, state, image, target=c) for c in range(K)]
    nonzero = [m for m in nonzero if m.any()]
    assert nonzero  # at least one class has positive evidence
    for m in nonzero:
        assert m.min() >= 0 and m.max() == pytest.approx(1)


def test_grad_cam_defaults_to_the_predicted_class_and_the_last_conv_layer():
    model = L.serial(L.Conv(3, 3, padding="SAME"), L.Relu(), L.Conv(2, 3), L.Relu(),
                     L.GlobalAvgPool(), L.Dense(K))
    _, params, state = model.init(jax.random.key(4), (None, H, W, C))
    image = np.random.default_rng(4).random((H, W, C)).astype(np.float32)
    pred = _predicted(model, params, state, image)
    got = grad_cam(model, params, state, image)
    np.testing.assert_array_equal(got, grad_cam(model, params, state, image, target=pred,
                                                layer="conv2"))
    np.testing.assert_array_equal(got, grad_cam(model, params, state, image[None]))
    assert grad_cam(model, params, state, image, layer="conv1", upsample=False).shape == (H, W)


def test_grad_cam_reaches_layers_inside_combinators():
    """The same net nested in serial and residual blocks (a zero-weight body, so the block is
    the identity) gives the flat net's map at the nested path."""
    flat, params, state, image = _setup(5)
    body = L.serial(L.Conv(2, 3, name="conv1"), name="features")
    zero_res = L.residual(L.Conv(C, 1, name="zero"), name="res")
    nested = L.serial(zero_res, body, L.Relu(), L.GlobalAvgPool(), L.Dense(K))
    _, nparams, nstate = nested.init(jax.random.key(5), (None, H, W, C))
    nparams = {
        "res": {"zero": jax.tree.map(jnp.zeros_like, nparams["res"]["zero"])},
        "features": {"conv1": params["conv1"]},
        "dense1": params["dense1"],
    }
    for c in range(K):
        want = grad_cam(flat, params, state, image, target=c)
        got = grad_cam(nested, nparams, nstate, image, target=c)  # last conv: features/conv1
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(
            grad_cam(nested, nparams, nstate, image, target=c, layer="features"), want, atol=1e-6)


# --- a batch, compiled -----------------------------------------------------------------------


def test_the_batch_functions_compiled_give_each_images_own_map():
    """saliency_maps and grad_cam_maps under jax.jit give, image by image, what saliency and
    grad_cam give one image, for the predicted class and for given targets; an image's map does
    not depend on the others in its batch."""
    model = L.serial(L.Conv(3, 3, padding="SAME"), L.Relu(), L.Conv(2, 3), L.Relu(),
                     L.GlobalAvgPool(), L.Dense(K))
    _, params, state = model.init(jax.random.key(6), (None, H, W, C))
    images = np.random.default_rng(6).random((4, H, W, C)).astype(np.float32)
    targets = np.array([2, 0, 1, 2])
    sal = jax.jit(lambda p, s, x, t: explain.saliency_maps(model, p, s, x, t))
    cam = jax.jit(lambda p, s, x, t: explain.grad_cam_maps(model, p, s, x, t, layer="conv1"))
    for t in (None, targets):
        got_sal = np.asarray(sal(params, state, images, t))
        got_cam = np.asarray(cam(params, state, images, t))
        assert got_sal.shape == got_cam.shape == (4, H, W)
        for i, image in enumerate(images):
            target = None if t is None else int(t[i])
            np.testing.assert_allclose(got_sal[i], saliency(model, params, state, image, target),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                got_cam[i], grad_cam(model, params, state, image, target, layer="conv1"),
                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sal(params, state, images[2:], None)),
                               np.asarray(sal(params, state, images, None))[2:],
                               rtol=1e-5, atol=1e-6)
    small = explain.grad_cam_maps(model, params, state, images, upsample=False)
    assert small.shape == (4, H - 2, W - 2)


@pytest.mark.parametrize("seed", range(4))
def test_a_map_peaks_at_exactly_one(seed):
    """Divided by its maximum, each nonzero map's largest value is 1.0 itself, compiled or not
    (a division turned into a multiplication by the reciprocal misses it by a rounding)."""
    model = L.serial(L.Conv(4, 3, padding="SAME"), L.Relu(), L.Conv(3, 3), L.Relu(),
                     L.Flatten(), L.Dense(5))
    _, params, state = model.init(jax.random.key(seed), (None, 12, 10, 1))
    images = np.random.default_rng(seed).normal(size=(16, 12, 10, 1)).astype(np.float32)
    for fn in (explain.saliency_maps, explain.grad_cam_maps):
        for maps in (fn(model, params, state, images),
                     jax.jit(lambda p, s, x, fn=fn: fn(model, p, s, x))(params, state, images)):
            peaks = np.asarray(maps).max(axis=(1, 2))
            assert np.all(peaks[peaks > 0] == 1.0), peaks


# --- overlay --------------------------------------------------------------------------------


def test_overlay_colours_and_blends():
    heat = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]])
    jet = overlay(np.zeros((1, 5)), heat, alpha=1.0)[0]
    np.testing.assert_allclose(jet, [[0, 0, 0.5], [0, 0.5, 1], [0.5, 1, 0.5], [1, 0.5, 0],
                                     [0.5, 0, 0]])
    rgb = np.random.default_rng(0).random((1, 5, 3))
    np.testing.assert_allclose(overlay(rgb, heat, alpha=0.0), rgb, rtol=1e-6)
    np.testing.assert_allclose(overlay(rgb, heat, alpha=0.3), 0.7 * rgb + 0.3 * jet[None],
                               rtol=1e-6)
    grey = rgb[..., :1]
    out = overlay(grey, heat)
    assert out.dtype == np.float32 and out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out, overlay(grey[..., 0], heat))
    np.testing.assert_array_equal(out, overlay(grey[None], heat))
    np.testing.assert_allclose(out, 0.5 * np.repeat(grey, 3, -1) + 0.5 * jet[None], rtol=1e-6)


def test_overlay_clips_to_the_unit_range():
    out = overlay(np.array([[-1.0, 2.0, np.nan]]), np.array([[5.0, -3.0, np.inf]]))
    assert out.min() >= 0 and out.max() <= 1 and np.isfinite(out).all()


# --- reached through jaxcnn.visualize ---------------------------------------------------------


def test_visualize_exposes_the_explanations():
    assert visualize.saliency is explain.saliency
    assert visualize.grad_cam is explain.grad_cam
    assert visualize.overlay is explain.overlay
    assert {"saliency", "grad_cam", "overlay"} <= set(dir(visualize))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        visualize.nope  # noqa: B018
    model, params, state, image = _setup()
    assert visualize.grad_cam(model, params, state, image).shape == (H, W)


# --- errors ---------------------------------------------------------------------------------


def test_grad_cam_errors_name_the_layers():
    model, params, state, image = _setup()
    dense = L.serial(L.Flatten(), L.Dense(K))
    _, dparams, dstate = dense.init(jax.random.key(0), (None, H, W, C))
    with pytest.raises(ValueError, match=r"grad_cam: the model 'serial' \(layers \['flatten1', "
                                         r"'dense1'\]\) has no Conv layer"):
        grad_cam(dense, dparams, dstate, image)
    with pytest.raises(ValueError, match=r"layer 'conv9' is not a layer of the model; its Conv "
                                         r"layers are \['conv1'\]"):
        grad_cam(model, params, state, image, layer="conv9")
    with pytest.raises(ValueError, match=r"layer 'dense1' gives shape \(1, 3\), not feature maps "
                                         r"\(N, h, w, K\).*\['conv1'\]"):
        grad_cam(model, params, state, image, layer="dense1")
    with pytest.raises(ValueError, match=r"layer must be a layer's path such as 'conv2', got 1"):
        grad_cam(model, params, state, image, layer=1)


@pytest.mark.parametrize("fn", [saliency, grad_cam], ids=lambda f: f.__name__)
def test_image_and_target_errors(fn):
    model, params, state, image = _setup()
    name = fn.__name__
    for bad in (image[..., 0], np.stack([image, image]), image[None, None]):
        with pytest.raises(ValueError, match=rf"{name}: image must be one image \(H, W, C\) or a "
                                             rf"batch of one \(1, H, W, C\), got shape "
                                             rf"{re.escape(str(bad.shape))}"):
            fn(model, params, state, bad)
    with pytest.raises(ValueError, match=rf"{name}: image has dtype uint8 but a floating-point "
                                         rf"dtype is needed"):
        fn(model, params, state, (image * 255).astype(np.uint8))
    for target in (K, -1, 1.0, True):
        with pytest.raises(ValueError, match=rf"{name}: target must be a class index in "
                                             rf"\[0, {K}\), got {target!r}"):
            fn(model, params, state, image, target=target)
    maps = L.serial(L.Conv(2, 3))
    _, mparams, mstate = maps.init(jax.random.key(0), (None, H, W, C))
    with pytest.raises(ValueError, match=rf"{name}: the model's output must be class scores "
                                         rf"\(N, K\), got shape \(1, 5, 4, 2\)"):
        fn(maps, mparams, mstate, image)


def test_overlay_errors():
    heat = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"overlay: alpha must be a number in \[0, 1\], got 1.5"):
        overlay(np.zeros((4, 5)), heat, alpha=1.5)
    with pytest.raises(ValueError, match=r"overlay: image must be \(H, W\), \(H, W, 1\), "
                                         r"\(H, W, 3\) or a batch of one \(1, H, W, C\), got "
                                         r"shape \(4, 5, 2\)"):
        overlay(np.zeros((4, 5, 2)), heat)
    with pytest.raises(ValueError, match=r"overlay: heat must be \(H, W\) = \(4, 5\) like the "
                                         r"image, got shape \(5, 4\)"):
        overlay(np.zeros((4, 5)), heat.T)
