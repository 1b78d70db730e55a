"""jaxcnn.filters: the classic fixed kernels on images whose answer is known by hand, and
FixedConv, a frozen per-channel convolution."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from jax.test_util import check_grads

from jaxcnn import filters
from jaxcnn import layers as L
from jaxcnn.errors import LayerError

KEY = jax.random.key(0)


def _apply(kernel, image, padding="VALID"):
    """``image`` (H, W) through FixedConv(kernel) -> (H', W') NumPy."""
    layer = filters.FixedConv(kernel, padding=padding)
    x = jnp.asarray(np.asarray(image, np.float32)[None, :, :, None])
    y, _ = layer.apply({}, {}, x)
    return np.asarray(y)[0, :, :, 0]


def _ramp_x(a, h=6, w=7):
    """f(row, col) = a * col: intensity rising left to right."""
    return np.tile(a * np.arange(w, dtype=np.float64), (h, 1))


def test_kernels_are_hwio_float32_with_the_textbook_values():
    expected = {
        "sobel_x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
        "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
        "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
        "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    }
    for name, values in expected.items():
        k = getattr(filters, name)()
        assert k.shape == (3, 3, 1, 1) and k.dtype == np.float32, name
        np.testing.assert_array_equal(k[:, :, 0, 0], values)
    assert filters.box_blur(5).shape == (5, 5, 1, 1)
    assert filters.gaussian(7, 2.0).shape == (7, 7, 1, 1)


@pytest.mark.parametrize("slope", [1.0, -0.5, 3.0])
def test_sobel_on_a_ramp_gives_8_times_the_slope(slope):
    # columns x-1 and x+1 differ by 2a, weighted 1 + 2 + 1 = 4 over the rows: 8a
    gx = _apply(filters.sobel_x(), _ramp_x(slope))
    assert gx.shape == (4, 5)
    np.testing.assert_allclose(gx, 8 * slope, rtol=1e-6)
    np.testing.assert_allclose(_apply(filters.sobel_y(), _ramp_x(slope)), 0.0, atol=1e-6)
    gy = _apply(filters.sobel_y(), _ramp_x(slope).T)  # intensity rising top to bottom
    np.testing.assert_allclose(gy, 8 * slope, rtol=1e-6)
    np.testing.assert_allclose(_apply(filters.sobel_x(), _ramp_x(slope).T), 0.0, atol=1e-6)


def test_derivative_kernels_are_zero_on_a_constant_image():
    flat = np.full((6, 6), 3.5)
    for kernel in (filters.sobel_x(), filters.sobel_y(), filters.laplacian()):
        np.testing.assert_allclose(_apply(kernel, flat), 0.0, atol=1e-6)
    # with SAME zero padding the border sees an edge, the interior does not
    same = _apply(filters.sobel_x(), flat, padding="SAME")
    assert same.shape == (6, 6)
    np.testing.assert_allclose(same[1:-1, 1:-1], 0.0, atol=1e-6)
    assert same[2, 0] == pytest.approx(4 * 3.5) and same[2, -1] == pytest.approx(-4 * 3.5)


def test_gaussian_is_normalised_symmetric_and_follows_the_formula():
    for size, sigma in [(5, 1.0), (3, 0.5), (4, 2.0), (7, 1.5)]:
        g = filters.gaussian(size, sigma)[:, :, 0, 0].astype(np.float64)
        assert g.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(g, g.T, rtol=1e-6)
        np.testing.assert_allclose(g, g[::-1, :], rtol=1e-6)
        np.testing.assert_allclose(g, g[:, ::-1], rtol=1e-6)
        c = (size - 1) / 2
        want = np.array([[math.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * sigma**2))
                          for j in range(size)] for i in range(size)])
        np.testing.assert_allclose(g, want / want.sum(), rtol=1e-6)
        if size % 2:
            assert g.argmax() == (size * size) // 2  # the peak is the centre pixel
    # a larger sigma spreads the weight: the centre of a 5x5 drops
    assert filters.gaussian(5, 2.0)[2, 2, 0, 0] < filters.gaussian(5, 1.0)[2, 2, 0, 0]


def test_blurs_and_sharpen_keep_a_constant_image():
    flat = np.full((7, 7), -1.25)
    for kernel in (filters.box_blur(3), filters.box_blur(5), filters.gaussian(5, 1.0),
                   filters.sharpen()):
        out = _apply(kernel, flat)
        np.testing.assert_allclose(out, -1.25, rtol=1e-5)
    np.testing.assert_allclose(filters.box_blur(4)[:, :, 0, 0], 1 / 16)


def test_box_blur_is_the_window_mean():
    img = np.random.default_rng(0).uniform(0, 1, (5, 6))
    out = _apply(filters.box_blur(3), img)
    want = np.array([[img[i:i + 3, j:j + 3].mean() for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(out, want, rtol=1e-5)


def test_laplacian_is_zero_on_a_linear_ramp_and_four_on_a_paraboloid():
    rows, cols = np.mgrid[0:6, 0:7].astype(np.float64)
    np.testing.assert_allclose(_apply(filters.laplacian(), 2 * cols - 3 * rows + 1), 0.0,
                               atol=1e-5)
    # f = x^2 + y^2: second differences (x+1)^2 - 2x^2 + (x-1)^2 = 2 per axis
    np.testing.assert_allclose(_apply(filters.laplacian(), cols**2 + rows**2), 4.0, rtol=1e-5)


def test_sharpen_adds_the_negated_laplacian():
    img = np.random.default_rng(1).uniform(0, 1, (6, 6))
    sharp = _apply(filters.sharpen(), img)
    lap = _apply(filters.laplacian(), img)
    np.testing.assert_allclose(sharp, img[1:-1, 1:-1] - lap, rtol=1e-5, atol=1e-6)


def test_sobel_edges_magnitude_and_orientation():
    a = 0.5
    x_ramp = _ramp_x(a, 6, 6)
    images = np.stack([x_ramp, x_ramp.T, x_ramp + x_ramp.T], axis=-1)[None].astype(np.float32)
    magnitude, orientation = filters.sobel_edges(jnp.asarray(images))
    assert magnitude.shape == orientation.shape == (1, 6, 6, 3)
    mag, ori = np.asarray(magnitude)[0, 1:-1, 1:-1], np.asarray(orientation)[0, 1:-1, 1:-1]
    np.testing.assert_allclose(mag[..., 0], 8 * a, rtol=1e-6)
    np.testing.assert_allclose(ori[..., 0], 0.0, atol=1e-6)  # x ramp: gradient along +x
    np.testing.assert_allclose(mag[..., 1], 8 * a, rtol=1e-6)
    np.testing.assert_allclose(ori[..., 1], np.pi / 2, rtol=1e-6)  # y ramp: along +y
    np.testing.assert_allclose(mag[..., 2], 8 * a * math.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(ori[..., 2], np.pi / 4, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# FixedConv
# ---------------------------------------------------------------------------------------------


def test_fixed_conv_has_nothing_to_train_and_keeps_the_channels():
    layer = filters.FixedConv(filters.gaussian(3, 1.0))
    out_shape, params, state = layer.init(KEY, (None, 8, 8, 3))
    assert out_shape == (None, 8, 8, 3)  # SAME by default
    assert params == {} and state == {}
    assert filters.FixedConv(filters.sobel_x(), padding="VALID", stride=2).init(
        KEY, (4, 8, 9, 2))[0] == (4, 3, 4, 2)
    # inside a model it adds no params entry
    net = L.serial(filters.FixedConv(filters.sobel_x()), L.Conv(2, 3))
    _, params, _ = net.init(KEY, (None, 6, 6, 3))
    assert set(params) == {"conv1"}


def test_fixed_conv_acts_on_each_channel_on_its_own():
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0, 1, (2, 6, 7, 3)).astype(np.float32)
    layer = filters.FixedConv(filters.sobel_y(), padding="SAME")
    apply = jax.jit(layer.apply)
    y, _ = apply({}, {}, jnp.asarray(rgb))
    y = np.asarray(y)
    kernel = filters.sobel_y()
    for c in range(3):
        want = ref.conv2d(rgb[..., c:c + 1], kernel, padding="SAME")[..., 0]
        np.testing.assert_allclose(y[..., c], want, rtol=1e-5, atol=1e-5)
    # changing the green channel changes only the green output
    bumped = rgb.copy()
    bumped[:, 2:4, 3, 1] += 1.0
    y2, _ = apply({}, {}, jnp.asarray(bumped))
    y2 = np.asarray(y2)
    np.testing.assert_array_equal(y2[..., 0], y[..., 0])
    np.testing.assert_array_equal(y2[..., 2], y[..., 2])
    assert not np.allclose(y2[..., 1], y[..., 1])


def test_fixed_conv_gradient_has_no_params_but_reaches_the_input():
    layer = filters.FixedConv(filters.laplacian())
    _, params, state = layer.init(KEY, (None, 5, 5, 2))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 5, 5, 2)), jnp.float32)

    def loss(p, x):
        return jnp.sum(layer.apply(p, state, x)[0] ** 2)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    assert g_params == {}
    assert g_x.shape == x.shape and float(jnp.abs(g_x).sum()) > 0
    # an optimiser step on the params leaves the output unchanged
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, g_params)
    np.testing.assert_array_equal(np.asarray(layer.apply(stepped, state, x)[0]),
                                  np.asarray(layer.apply(params, state, x)[0]))


def test_fixed_conv_accepts_a_2d_kernel():
    two_d = filters.FixedConv(np.array([[0.0, 1.0], [2.0, 0.0]]), padding="VALID")
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    y, _ = two_d.apply({}, {}, jnp.asarray(x))
    img = x[0, :, :, 0]
    want = np.array([[img[i, j + 1] + 2 * img[i + 1, j] for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], want)


@pytest.mark.parametrize("make, pattern", [
    (lambda: filters.FixedConv(np.ones((3, 3, 2, 1))),
     r"FixedConv layer: kernel must have shape \(kh, kw\) or \(kh, kw, 1, 1\), got \(3, 3, 2, 1\)"),
    (lambda: filters.FixedConv(filters.sobel_x()).init(KEY, (None, 5, 5)),
     r"FixedConv layer: expects input of rank 4 \(N, H, W, C\), got shape \(N, 5, 5\)"),
    (lambda: filters.FixedConv(filters.gaussian(7), padding="VALID").init(KEY, (None, 5, 5, 1)),
     r"FixedConv layer: .*kernel 7x7 .* larger than the padded input 5x5"),
], ids=["kernel-shape", "rank", "too-large"])
def test_fixed_conv_errors(make, pattern):
    with pytest.raises(LayerError, match=pattern):
        make()


@pytest.mark.parametrize("kwargs, pattern", [
    ({"stride": 0}, r"FixedConv layer: stride must be >= 1, got 0"),
    ({"padding": "FULL"}, r"FixedConv layer: padding must be .*got 'FULL'"),
    ({"padding": -1}, r"FixedConv layer: padding must be >= 0, got -1"),
], ids=["stride-0", "padding-string", "padding-negative"])
def test_fixed_conv_checks_its_configuration_in_the_constructor(kwargs, pattern):
    # like every other layer: a LayerError from the constructor, before any input is seen
    with pytest.raises(LayerError, match=pattern):
        filters.FixedConv(filters.sobel_x(), **kwargs)


@pytest.mark.parametrize("make, pattern", [
    (lambda: filters.gaussian(0), r"gaussian: size must be a positive int, got 0"),
    (lambda: filters.gaussian(3, 0.0), r"gaussian: sigma must be > 0, got 0\.0"),
    (lambda: filters.gaussian(3, -1), r"gaussian: sigma must be > 0, got -1"),
    (lambda: filters.box_blur(2.5), r"box_blur: size must be a positive int, got 2\.5"),
], ids=["gaussian-size", "gaussian-sigma-0", "gaussian-sigma-negative", "box-size"])
def test_kernel_argument_errors(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cin", [1, 3])
@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("float32", 1e-6), ("float64", 1e-12)])
def test_fixed_conv_and_sobel_edges_keep_the_input_dtype(dtype, tol, cin):
    """The kernel is cast to the input's dtype: float16 stays float16 (not upcast by a float32
    kernel), float64 stays float64 and keeps a float64 kernel's precision."""
    rng = np.random.default_rng(cin)
    kernel = rng.uniform(-1.0, 1.0, (3, 3))
    with jax.enable_x64(dtype == "float64"):
        x = jnp.asarray(rng.uniform(-1.0, 1.0, (2, 6, 6, cin)), dtype)
        y, _ = filters.FixedConv(kernel).apply({}, {}, x)
        assert y.dtype == dtype
        w = jnp.tile(jnp.asarray(kernel, dtype)[:, :, None, None], (1, 1, 1, cin))
        want = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=cin)
        np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(want, np.float64),
                                   rtol=tol, atol=tol)
        assert [a.dtype for a in filters.sobel_edges(x)] == [dtype, dtype]


def test_fixed_conv_second_order_gradients_in_float64():
    x = np.random.default_rng(5).normal(size=(2, 5, 5, 3))
    layer = filters.FixedConv(filters.gaussian(3, 1.0))
    with jax.enable_x64(True):
        f = jax.jit(lambda x: layer.apply({}, {}, x)[0])
        x64 = jnp.asarray(x, jnp.float64)
        assert f(x64).dtype == jnp.float64
        check_grads(f, (x64,), order=2, eps=1e-4, atol=1e-6, rtol=1e-6)


def test_fixed_conv_refuses_integer_images():
    with pytest.raises(LayerError, match=r"FixedConv layer: conv2d: input has dtype uint8 but a "
                                         r"floating-point dtype is needed"):
        filters.FixedConv(filters.sobel_x()).apply({}, {}, jnp.zeros((1, 5, 5, 3), jnp.uint8))
