"""jaxcnn.layers: shapes, values, gradients, names, state and error messages.

Every layer is held to something independent of its own code: the NumPy sliding-window loops of
``reference.py`` (conv, pooling), ``x @ w + b``, the BatchNorm and activation formulas written
out in NumPy, the binomial statistics of dropout, finite differences (``check_grads`` in
float64), and hand compositions of a combinator's children.
"""

from __future__ import annotations

import contextlib
import math
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from jax.test_util import check_grads

from jaxcnn import filters
from jaxcnn import layers as L
from jaxcnn.errors import LayerError

TOL = {"rtol": 1e-5, "atol": 1e-5}
KEY = jax.random.key(0)


def _rng(*tag):
    return np.random.default_rng(zlib.crc32(repr(tag).encode()))


def _np_init(seed):
    """An initializer drawing from NumPy: no per-shape compile of jax.random (keeps sweeps fast)."""

    def init(key, shape, dtype):
        return jnp.asarray(_rng("init", seed, shape).uniform(-1.0, 1.0, shape), dtype)

    return init


def _fast(*args, **kwargs):
    """L.Conv with a NumPy initializer unless one is given."""
    kwargs.setdefault("w_init", _np_init("conv"))
    return L.Conv(*args, **kwargs)


def _fast_dense(*args, **kwargs):
    """L.Dense with a NumPy initializer unless one is given."""
    kwargs.setdefault("w_init", _np_init("dense"))
    return L.Dense(*args, **kwargs)


def _f32(a):
    return jnp.asarray(np.asarray(a, np.float32))


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _away_from_zero(rng, shape, low=0.2):
    """Uniform magnitudes in [low, 1] with random signs: no kinks of ReLU-like functions."""
    return rng.uniform(low, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def _distinct(rng, shape):
    """Values 0.1 apart in random order: max-pooling has no ties to break."""
    n = math.prod(shape)
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.1


def _spatial_out(in_hw, kernel, stride, padding, dilation=1, ceil_mode=False):
    """(H_out, W_out) by enumerating the windows (reference.window_starts), not a formula."""
    k, s, d = ref.as_pair(kernel), ref.as_pair(stride), ref.as_pair(dilation)
    pads = ref.explicit_padding(padding, in_hw, k, s, d)
    return tuple(ref.output_size(n, k[a], s[a], *pads[a], d[a], ceil_mode)
                 for a, n in enumerate(in_hw))


# ---------------------------------------------------------------------------------------------
# Shapes and values against the NumPy loops; jit against no-jit
# ---------------------------------------------------------------------------------------------
# (x_shape, features, kernel, stride, padding, dilation, groups, use_bias)
CONV_CASES = [
    ((2, 7, 7, 3), 4, 3, 1, "VALID", 1, 1, True),
    ((2, 7, 7, 3), 4, 3, 1, "SAME", 1, 1, True),
    ((2, 8, 8, 3), 4, 3, 2, "SAME", 1, 1, True),
    ((2, 7, 7, 3), 4, 3, 2, "VALID", 1, 1, False),
    ((2, 9, 8, 2), 3, (3, 2), (2, 1), "VALID", 1, 1, True),
    ((2, 7, 6, 2), 4, 3, 1, 1, 1, 1, True),
    ((2, 6, 6, 2), 4, 3, 2, ((1, 0), (2, 1)), 1, 1, True),
    ((2, 9, 9, 2), 2, 3, 1, "VALID", 2, 1, True),
    ((2, 9, 8, 2), 2, 3, 2, "SAME", (2, 1), 1, True),
    ((2, 6, 6, 4), 4, 3, 1, "SAME", 1, 2, True),
    ((2, 6, 6, 4), 8, 3, 1, "VALID", 1, 4, False),
    ((2, 5, 5, 3), 2, 1, 1, "VALID", 1, 1, True),
    ((2, 5, 5, 3), 2, 5, 1, "VALID", 1, 1, True),
    ((1, 8, 8, 1), 3, 4, 3, 2, 1, 1, True),
]


def _ids(value):
    return re.sub(r"\s+", "", repr(value))


@pytest.mark.parametrize("x_shape, features, kernel, stride, padding, dilation, groups, bias",
                         CONV_CASES, ids=_ids)
def test_conv_shape_values_and_jit(x_shape, features, kernel, stride, padding, dilation, groups,
                                   bias):
    layer = L.Conv(features, kernel, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, use_bias=bias, w_init=_np_init(1), b_init=_np_init(2))
    want_shape = (*_spatial_out(x_shape[1:3], kernel, stride, padding, dilation), features)

    open_shape, params, state = layer.init(KEY, (None, *x_shape[1:]))
    fixed_shape, _, _ = layer.init(KEY, x_shape)
    assert open_shape == (None, *want_shape)
    assert fixed_shape == (x_shape[0], *want_shape)
    kh, kw = ref.as_pair(kernel)
    assert params["w"].shape == (kh, kw, x_shape[3] // groups, features)
    assert ("b" in params) is bias
    assert state == {}

    x = _rng("conv-x", x_shape).uniform(-1.0, 1.0, x_shape)
    y, new_state = layer.apply(params, state, _f32(x))
    y_jit, _ = jax.jit(layer.apply)(params, state, _f32(x))
    assert y.shape == fixed_shape
    assert new_state == {}
    want = ref.conv2d(x, np.asarray(params["w"]), np.asarray(params["b"]) if bias else None,
                      stride=stride, padding=padding, dilation=dilation, groups=groups)
    np.testing.assert_allclose(np.asarray(y), want, **TOL)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), **TOL)


# (kind, x_shape, window, stride, padding, ceil_mode, count_include_pad)
POOL_CASES = [
    ("max", (2, 7, 7, 2), 2, None, "VALID", False, True),
    ("max", (2, 8, 8, 2), 3, 2, "VALID", True, True),
    ("max", (2, 7, 6, 2), 3, 1, "SAME", False, True),
    ("max", (2, 7, 7, 1), (2, 3), (1, 2), ((1, 0), (0, 1)), False, True),
    ("max", (1, 9, 9, 1), 3, 2, 1, True, True),
    ("avg", (2, 7, 7, 2), 2, None, "VALID", False, True),
    ("avg", (2, 8, 7, 2), 3, 2, "SAME", False, False),
    ("avg", (2, 8, 8, 1), 3, 2, 1, True, True),
    ("avg", (2, 8, 8, 2), 3, 2, "VALID", True, True),
    ("avg", (1, 6, 6, 1), 2, 1, "SAME", False, True),
]


@pytest.mark.parametrize("kind, x_shape, window, stride, padding, ceil_mode, include_pad",
                         POOL_CASES, ids=_ids)
def test_pool_shape_values_and_jit(kind, x_shape, window, stride, padding, ceil_mode,
                                   include_pad):
    if kind == "max":
        layer = L.MaxPool(window, stride=stride, padding=padding, ceil_mode=ceil_mode)
    else:
        layer = L.AvgPool(window, stride=stride, padding=padding, ceil_mode=ceil_mode,
                          count_include_pad=include_pad)
    want_shape = (*_spatial_out(x_shape[1:3], window, window if stride is None else stride,
                                padding, ceil_mode=ceil_mode), x_shape[3])

    open_shape, params, state = layer.init(KEY, (None, *x_shape[1:]))
    fixed_shape, _, _ = layer.init(KEY, x_shape)
    assert open_shape == (None, *want_shape)
    assert fixed_shape == (x_shape[0], *want_shape)
    assert params == {} and state == {}

    x = _rng("pool-x", x_shape).uniform(-1.0, 1.0, x_shape)
    y, _ = layer.apply(params, state, _f32(x))
    y_jit, _ = jax.jit(layer.apply)(params, state, _f32(x))
    assert y.shape == fixed_shape
    if kind == "max":
        want = ref.max_pool(x, window, stride=stride, padding=padding, ceil_mode=ceil_mode)
    else:
        want = ref.avg_pool(x, window, stride=stride, padding=padding, ceil_mode=ceil_mode,
                            count_include_pad=include_pad)
    np.testing.assert_allclose(np.asarray(y), want, **TOL)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), **TOL)


def _elementwise_cases():
    # (layer, NumPy formula, in_shape); formulas as docs/concepts.md writes them ('Activations';
    # 'Flatten, dense layers and softmax')
    return [
        (L.Relu(), lambda x: np.maximum(0.0, x), (3, 4, 5)),
        (L.Sigmoid(), lambda x: 1.0 / (1.0 + np.exp(-x)), (2, 3, 3, 2)),
        (L.Tanh(), lambda x: (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x)), (2, 6)),
        (L.LeakyRelu(), lambda x: np.maximum(0.01 * x, x), (2, 3, 3, 2)),
        (L.LeakyRelu(0.2), lambda x: np.where(x >= 0, x, 0.2 * x), (4, 5)),
        (L.Elu(), lambda x: np.where(x > 0, x, np.exp(np.minimum(x, 0)) - 1.0), (2, 3, 3, 2)),
        (L.Elu(0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(np.minimum(x, 0)) - 1.0)),
         (3, 4)),
        (L.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True), (3, 10)),
        (L.Softmax(axis=1), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True), (2, 4, 3)),
        (L.LogSoftmax(), lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True)), (3, 5)),
    ]


@pytest.mark.parametrize("case", range(len(_elementwise_cases())))
def test_activation_matches_numpy_formula(case):
    layer, formula, shape = _elementwise_cases()[case]
    out_shape, params, state = layer.init(KEY, (None, *shape[1:]))
    assert out_shape == (None, *shape[1:])
    assert params == {} and state == {}
    x = _rng("act", case).uniform(-3.0, 3.0, shape)
    y, s = layer.apply(params, state, _f32(x))
    y_jit, _ = jax.jit(layer.apply)(params, state, _f32(x))
    assert y.shape == shape and s == {}
    np.testing.assert_allclose(np.asarray(y), formula(x), **TOL)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), **TOL)


def test_softmax_gives_probabilities_with_the_largest_logit_most_likely():
    logits = np.array([[0.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]], np.float32)
    p, _ = L.Softmax().apply({}, {}, jnp.asarray(logits))
    p = np.asarray(p)
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    assert int(p.argmax()) == 3 and p[0, 3] > 0.5


def test_global_pooling_matches_the_concepts_example():
    """The global pooling example of docs/concepts.md ('Pooling'): 9 and 40 / 9."""
    grid = np.array([[2, 4, 3], [1, 5, 6], [8, 2, 9]], np.float32)
    x = np.stack([grid, -grid], axis=-1)[None]  # (1, 3, 3, 2): two channels, each on its own
    for layer, want in ((L.GlobalMaxPool(), [9.0, -1.0]), (L.GlobalAvgPool(), [40 / 9, -40 / 9])):
        out_shape, params, state = layer.init(KEY, (None, 3, 3, 2))
        assert out_shape == (None, 2)
        y, _ = layer.apply(params, state, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(y), [want], rtol=1e-6)
    assert sum([2, 4, 3, 1, 5, 6, 8, 2, 9]) == 40  # 40 / 9 = 4.444...


def test_global_pools_and_flatten_on_open_and_fixed_batches():
    x = _rng("flat").uniform(-1, 1, (3, 4, 5, 2)).astype(np.float32)
    cases = [(L.GlobalMaxPool(), (2,), x.max(axis=(1, 2))),
             (L.GlobalAvgPool(), (2,), x.mean(axis=(1, 2))),
             (L.Flatten(), (40,), x.reshape(3, -1))]  # row-major: H, then W, then C
    for layer, tail, want in cases:
        assert layer.init(KEY, (None, 4, 5, 2))[0] == (None, *tail)
        assert layer.init(KEY, (3, 4, 5, 2))[0] == (3, *tail)
        y, _ = layer.apply({}, {}, jnp.asarray(x))
        y_jit, _ = jax.jit(layer.apply)({}, {}, jnp.asarray(x))
        assert y.shape == (3, *tail)
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert L.Flatten().init(KEY, (None, 7))[0] == (None, 7)
    assert L.Flatten().init(KEY, (None, 2, 3, 4, 5))[0] == (None, 120)


def test_open_batch_params_work_for_any_batch_size():
    layer = L.serial(_fast(3, 3, padding="SAME", w_init=_np_init(3)), L.Relu(), L.MaxPool(2),
                     L.Flatten(), _fast_dense(4, w_init=_np_init(4)))
    out_shape, params, state = layer.init(KEY, (None, 6, 6, 2))
    assert out_shape == (None, 4)
    apply = jax.jit(layer.apply)
    for n in (1, 5):
        y, _ = apply(params, state, jnp.ones((n, 6, 6, 2), jnp.float32))
        assert y.shape == (n, 4)


def test_dense_equals_x_matmul_w_plus_b():
    layer = _fast_dense(5)
    out_shape, params, state = layer.init(KEY, (None, 7))
    assert out_shape == (None, 5)
    assert params["w"].shape == (7, 5) and params["b"].shape == (5,)
    np.testing.assert_array_equal(np.asarray(params["b"]), np.zeros(5))
    rng = _rng("dense")
    x = rng.normal(size=(3, 7))
    w, b = rng.normal(size=(7, 5)), rng.normal(size=(5,))
    params = {"w": _f32(w), "b": _f32(b)}
    y, s = layer.apply(params, state, _f32(x))
    np.testing.assert_allclose(np.asarray(y), x @ w + b, rtol=1e-5, atol=1e-5)
    assert s == {}
    y_jit, _ = jax.jit(layer.apply)(params, state, _f32(x))
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), **TOL)
    no_bias = _fast_dense(5, use_bias=False)
    _, p, _ = no_bias.init(KEY, (None, 7))
    assert set(p) == {"w"}
    y, _ = no_bias.apply({"w": _f32(w)}, {}, _f32(x))
    np.testing.assert_allclose(np.asarray(y), x @ w, **TOL)


def test_default_init_is_lecun_normal_deterministic_and_different_per_layer():
    net = L.serial(L.Conv(64, 3, padding="SAME"), L.Conv(64, 3, padding="SAME"))
    _, p1, _ = net.init(jax.random.key(5), (None, 4, 4, 64))
    _, p2, _ = net.init(jax.random.key(5), (None, 4, 4, 64))
    _, p3, _ = net.init(jax.random.key(6), (None, 4, 4, 64))
    w = np.asarray(p1["conv1"]["w"], np.float64)
    # LeCun normal: mean 0, variance 1 / fan_in with fan_in = kh * kw * C_in
    fan_in, n = 3 * 3 * 64, w.size  # 36,864 draws
    assert abs(w.mean()) < 5 * math.sqrt(1 / fan_in / n)
    # the sample variance of n normal draws has standard error var * sqrt(2 / n)
    assert abs(w.var() - 1 / fan_in) < 5 * (1 / fan_in) * math.sqrt(2 / n)
    np.testing.assert_array_equal(np.asarray(p1["conv1"]["b"]), np.zeros(64))
    np.testing.assert_array_equal(w, np.asarray(p2["conv1"]["w"]))
    assert not np.allclose(w, np.asarray(p3["conv1"]["w"]))
    assert not np.allclose(w, np.asarray(p1["conv2"]["w"]))


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------


def test_batchnorm_train_uses_batch_statistics_and_updates_running_ones():
    momentum, eps = 0.8, 1e-3
    layer = L.BatchNorm(momentum=momentum, epsilon=eps)
    out_shape, params, state = layer.init(KEY, (None, 3, 3, 2))
    assert out_shape == (None, 3, 3, 2)
    np.testing.assert_array_equal(np.asarray(params["scale"]), np.ones(2))
    np.testing.assert_array_equal(np.asarray(params["bias"]), np.zeros(2))
    np.testing.assert_array_equal(np.asarray(state["mean"]), np.zeros(2))
    np.testing.assert_array_equal(np.asarray(state["var"]), np.ones(2))

    rng = _rng("bn-train")
    x = rng.normal(2.0, 3.0, (4, 3, 3, 2))
    scale, bias = np.array([1.5, -0.5]), np.array([0.25, 2.0])
    old_mean, old_var = np.array([0.5, -1.0]), np.array([2.0, 3.0])
    params = {"scale": _f32(scale), "bias": _f32(bias)}
    state = {"mean": _f32(old_mean), "var": _f32(old_var)}

    y, new_state = layer.apply(params, state, _f32(x), train=True)

    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))  # biased: divide by N, not N - 1
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + eps) * scale + bias,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(new_state["mean"]),
                               momentum * old_mean + (1 - momentum) * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new_state["var"]),
                               momentum * old_var + (1 - momentum) * var, rtol=1e-5)
    y_jit, s_jit = jax.jit(lambda p, s, x: layer.apply(p, s, x, train=True))(params, state,
                                                                             _f32(x))
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s_jit["var"]), np.asarray(new_state["var"]), rtol=1e-6)


def test_batchnorm_eval_uses_running_statistics_and_keeps_state():
    eps = 1e-5
    layer = L.BatchNorm(epsilon=eps)
    assert layer.init(KEY, (None, 5, 3))[0] == (None, 5, 3)
    rng = _rng("bn-eval")
    x = rng.normal(size=(4, 5, 3))
    scale, bias = np.array([1.0, 2.0, -1.0]), np.array([0.0, 0.5, -0.5])
    mean, var = np.array([0.3, -2.0, 1.0]), np.array([0.5, 4.0, 9.0])
    params = {"scale": _f32(scale), "bias": _f32(bias)}
    state = {"mean": _f32(mean), "var": _f32(var)}
    for apply in (layer.apply, jax.jit(layer.apply)):
        y, new_state = apply(params, state, _f32(x))
        np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + eps) * scale + bias,
                                   rtol=1e-5, atol=1e-5)
        for k in ("mean", "var"):
            np.testing.assert_array_equal(np.asarray(new_state[k]), np.asarray(state[k]))


def test_batchnorm_on_dense_features_and_without_scale_or_bias():
    layer = L.BatchNorm(use_scale=False, use_bias=False)
    out_shape, params, state = layer.init(KEY, (None, 4))
    assert out_shape == (None, 4) and params == {}
    assert state["mean"].shape == (4,)
    x = _rng("bn-dense").normal(1.0, 2.0, (16, 4))
    y, _ = layer.apply(params, state, _f32(x), train=True)
    np.testing.assert_allclose(np.asarray(y), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def test_dropout_drops_the_stated_fraction_and_rescales():
    rate, n = 0.3, 100_000
    layer = L.Dropout(rate)
    assert layer.init(KEY, (None, n))[0] == (None, n)
    x = _rng("drop").uniform(0.5, 1.5, (1, n)).astype(np.float32)  # never 0
    y, state = layer.apply({}, {}, jnp.asarray(x), key=jax.random.key(3), train=True)
    y = np.asarray(y)
    assert state == {}
    dropped = y == 0
    se = math.sqrt(rate * (1 - rate) / n)  # binomial standard error of the dropped fraction
    assert abs(dropped.mean() - rate) < 4 * se
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - rate), rtol=1e-6)
    # on ones, each output is 1 / (1 - rate) with probability 1 - rate: mean 1,
    # variance rate / (1 - rate)
    ones, _ = layer.apply({}, {}, jnp.ones((1, n)), key=jax.random.key(4), train=True)
    assert abs(float(np.asarray(ones).mean()) - 1.0) < 4 * math.sqrt(rate / (1 - rate) / n)


def test_dropout_is_identity_at_inference_and_needs_a_key_in_training():
    layer = L.Dropout(0.5)
    x = jnp.asarray(_rng("drop-eval").normal(size=(2, 3, 3, 2)), jnp.float32)
    y, _ = layer.apply({}, {}, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    y, _ = layer.apply({}, {}, x, key=jax.random.key(0), train=False)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    with pytest.raises(ValueError, match=r"Dropout layer: train=True needs a PRNG key"):
        layer.apply({}, {}, x, train=True)
    net = L.serial(L.Flatten(), L.Dropout(0.5))
    with pytest.raises(ValueError, match=r"Dropout layer 'dropout1': train=True needs a PRNG key"):
        net.apply({}, {}, x, train=True)
    y0, _ = L.Dropout(0.0).apply({}, {}, x, train=True)  # nothing to drop, no key needed
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(x))


def test_dropout_masks_differ_between_keys_and_between_layers():
    layer = L.Dropout(0.5)
    x = jnp.ones((1, 1000))
    a, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    b, _ = layer.apply({}, {}, x, key=jax.random.key(2), train=True)
    a2, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    a_jit, _ = jax.jit(lambda x, k: layer.apply({}, {}, x, key=k, train=True))(
        x, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a_jit), np.asarray(a))
    # inside a combinator each Dropout gets its own key
    net = L.parallel(L.Dropout(0.5), L.Dropout(0.5))
    y, _ = net.apply({}, {}, x, key=jax.random.key(1), train=True)
    assert not np.array_equal(np.asarray(y[:, :1000]), np.asarray(y[:, 1000:]))


# ---------------------------------------------------------------------------------------------
# Gradients against finite differences, in float64
# ---------------------------------------------------------------------------------------------


def _grad_cases():
    # (id, layer, x_shape, input kind, apply kwargs, order); few distinct shapes, so the
    # compiled helpers of check_grads are shared between cases
    img, vec = (2, 4, 4, 2), (2, 6)
    return [
        ("conv", _fast(3, 3, stride=2, padding="SAME"), img, "any", {}, 1),
        ("conv-dilated-grouped", _fast(4, (2, 3), dilation=2, groups=2,
                                       padding=((1, 0), (0, 2))), img, "any", {}, 1),
        ("dense", _fast_dense(3), vec, "any", {}, 2),
        ("maxpool", L.MaxPool(2, stride=1, padding="SAME"), img, "distinct", {}, 1),
        ("maxpool-ceil", L.MaxPool(3, stride=2, ceil_mode=True), img, "distinct", {}, 1),
        ("avgpool", L.AvgPool(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
         img, "any", {}, 1),
        ("globalmaxpool", L.GlobalMaxPool(), img, "distinct", {}, 1),
        ("globalavgpool", L.GlobalAvgPool(), img, "any", {}, 1),
        ("flatten", L.Flatten(), img, "any", {}, 1),
        ("batchnorm-train", L.BatchNorm(), img, "any", {"train": True}, 2),
        ("batchnorm-eval", L.BatchNorm(), img, "any", {}, 1),
        ("dropout", L.Dropout(0.4), vec, "any", {"train": True, "key": jax.random.key(9)}, 1),
        ("relu", L.Relu(), vec, "nonzero", {}, 1),
        ("sigmoid", L.Sigmoid(), vec, "any", {}, 2),
        ("tanh", L.Tanh(), vec, "any", {}, 1),
        ("leakyrelu", L.LeakyRelu(0.1), vec, "nonzero", {}, 1),
        ("elu", L.Elu(0.7), vec, "nonzero", {}, 1),
        ("softmax", L.Softmax(), vec, "any", {}, 1),
        ("serial", L.serial(_fast(2, 3), L.Tanh(), L.Flatten(), _fast_dense(3)), img, "any", {},
         1),
        ("parallel", L.parallel(_fast(2, 1), _fast(3, 3, padding="SAME")), img, "any", {}, 1),
        ("residual", L.residual(_fast(2, 3, padding="SAME"), L.Sigmoid(), shortcut=_fast(2, 1)),
         img, "any", {}, 1),
    ]


@pytest.mark.parametrize("case", _grad_cases(), ids=lambda c: c[0])
def test_gradients_match_finite_differences(case):
    _, layer, x_shape, kind, kwargs, order = case
    _, params, state = layer.init(jax.random.key(2), (None, *x_shape[1:]))
    rng = _rng("grad", case[0])
    x = {"any": lambda: rng.normal(size=x_shape),
         "nonzero": lambda: _away_from_zero(rng, x_shape),
         "distinct": lambda: _distinct(rng, x_shape)}[kind]()
    with jax.enable_x64(True):
        params64, state64, x64 = _f64(params), _f64(state), np.asarray(x, np.float64)

        @jax.jit
        def f(p, x):
            return layer.apply(p, state64, x, **kwargs)[0]

        assert f(params64, x64).dtype == jnp.float64
        check_grads(f, (params64, x64), order=order, modes=("rev",), eps=1e-4, atol=1e-5,
                    rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Combinators: hand compositions, names, state threading
# ---------------------------------------------------------------------------------------------


def test_serial_equals_the_composition_of_its_children():
    c, d = _fast(3, 3, w_init=_np_init(5), b_init=_np_init(6)), _fast_dense(2, w_init=_np_init(7))
    net = L.serial(c, L.Relu(), L.Flatten(), d)
    out_shape, params, state = net.init(KEY, (None, 5, 5, 2))
    assert out_shape == (None, 2)
    assert set(params) == {"conv1", "dense1"} and state == {}
    x = _f32(_rng("serial").normal(size=(2, 5, 5, 2)))
    h, _ = c.apply(params["conv1"], {}, x)
    want, _ = d.apply(params["dense1"], {}, jnp.maximum(h, 0).reshape(2, -1))
    y, _ = net.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), **TOL)


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_parallel_equals_its_branches_merged(combine):
    a = _fast(3, 3, padding="SAME", w_init=_np_init(8))
    b = _fast(2 if combine == "concat" else 3, 1, w_init=_np_init(9))
    net = L.parallel(a, b, L.Relu(), combine=combine)
    in_shape = (None, 4, 4, 3)
    out_shape, params, state = net.init(KEY, in_shape)
    assert set(params) == {"conv1", "conv2"} and state == {}
    x = _f32(_rng("par", combine).normal(size=(2, 4, 4, 3)))
    ya, _ = a.apply(params["conv1"], {}, x)
    yb, _ = b.apply(params["conv2"], {}, x)
    yr = np.maximum(np.asarray(x), 0)
    if combine == "concat":
        want = np.concatenate([np.asarray(ya), np.asarray(yb), yr], axis=-1)
        assert out_shape == (None, 4, 4, 3 + 2 + 3)
    else:
        want = np.asarray(ya) + np.asarray(yb) + yr
        assert out_shape == (None, 4, 4, 3)
    y, _ = net.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), want, **TOL)


def test_residual_identity_and_projection_equal_the_hand_sum():
    x = _f32(_rng("res").normal(size=(2, 6, 6, 3)))
    c1, c2 = _fast(3, 3, padding="SAME"), _fast(3, 3, padding="SAME")
    ident = L.residual(c1, L.Relu(), c2)
    shape, params, state = ident.init(KEY, (None, 6, 6, 3))
    assert shape == (None, 6, 6, 3) and set(params) == {"conv1", "conv2"}
    h, _ = c1.apply(params["conv1"], {}, x)
    body, _ = c2.apply(params["conv2"], {}, jnp.maximum(h, 0))
    y, _ = ident.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(body + x), **TOL)

    down, proj = _fast(5, 3, stride=2, padding="SAME"), _fast(5, 1, stride=2)
    block = L.residual(down, shortcut=proj)
    shape, params, state = block.init(KEY, (None, 6, 6, 3))
    assert shape == (None, 3, 3, 5) and set(params) == {"conv1", "shortcut"}
    body, _ = down.apply(params["conv1"], {}, x)
    skip, _ = proj.apply(params["shortcut"], {}, x)
    y, _ = block.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(body + skip), **TOL)
    y_jit, _ = jax.jit(block.apply)(params, state, x)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), **TOL)


def test_param_names_are_readable_stable_and_nested():
    net = L.serial(_fast(2, 3), L.Relu(), _fast(2, 3), L.Flatten(), _fast_dense(3))
    _, params, state = net.init(KEY, (None, 6, 6, 1))
    assert set(params) == {"conv1", "conv2", "dense1"} and state == {}
    assert set(params["conv1"]) == {"w", "b"}

    named = L.serial(_fast(2, 3, name="edges"), _fast(2, 3), L.Flatten(),
                     _fast_dense(3, name="out"))
    _, params, _ = named.init(KEY, (None, 6, 6, 1))
    assert set(params) == {"edges", "conv1", "out"}

    # a user name that looks like a generated one is skipped by the counter
    clash = L.serial(_fast(2, 3), _fast(2, 1, name="conv1"))
    _, params, _ = clash.init(KEY, (None, 6, 6, 1))
    assert set(params) == {"conv1", "conv2"}
    assert params["conv1"]["w"].shape == (1, 1, 2, 2)  # the named one keeps its name

    nested = L.serial(_fast(2, 3), L.serial(_fast(2, 3), L.BatchNorm(), name="block"),
                      L.serial(L.Flatten(), _fast_dense(3)), _fast_dense(2))
    _, params, state = nested.init(KEY, (None, 7, 7, 1))
    assert set(params) == {"conv1", "block", "serial1", "dense1"}
    assert set(params["block"]) == {"conv1", "batchnorm1"}
    assert set(params["serial1"]) == {"dense1"}
    assert set(state) == {"block"} and set(state["block"]) == {"batchnorm1"}
    assert set(state["block"]["batchnorm1"]) == {"mean", "var"}


def test_state_threads_through_serial_and_residual():
    conv = _fast(2, 3, padding="SAME", w_init=_np_init(10))
    net = L.serial(conv, L.residual(_fast(2, 3, padding="SAME"), L.BatchNorm(momentum=0.5)),
                   L.Relu())
    _, params, state = net.init(KEY, (None, 5, 5, 2))
    assert set(state) == {"residual1"}
    x = _f32(_rng("thread").normal(size=(3, 5, 5, 2)))
    y, new_state = net.apply(params, state, x, train=True)
    # the batch statistics of the inner conv's output, by hand
    h, _ = conv.apply(params["conv1"], {}, x)
    inner = _fast(2, 3, padding="SAME")
    g, _ = inner.apply(params["residual1"]["conv1"], {}, h)
    g = np.asarray(g, np.float64)
    bn = new_state["residual1"]["batchnorm1"]
    np.testing.assert_allclose(np.asarray(bn["mean"]), 0.5 * 0 + 0.5 * g.mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn["var"]), 0.5 * 1 + 0.5 * g.var((0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    # inference does not touch the state
    _, eval_state = net.apply(params, new_state, x)
    np.testing.assert_array_equal(np.asarray(eval_state["residual1"]["batchnorm1"]["mean"]),
                                  np.asarray(bn["mean"]))
    # a shortcut's state lives under "shortcut"
    block = L.residual(_fast(2, 1), shortcut=L.serial(_fast(2, 1), L.BatchNorm()))
    _, p, s = block.init(KEY, (None, 3, 3, 2))
    assert set(p) == {"conv1", "shortcut"} and set(s) == {"shortcut"}
    _, s2 = block.apply(p, s, x[:, :3, :3], train=True)
    assert set(s2) == {"shortcut"}
    assert not np.allclose(np.asarray(s2["shortcut"]["batchnorm1"]["mean"]), 0.0)


def test_a_users_own_layer_works_in_combinators():
    def init(key, in_shape):
        return in_shape, {"a": jnp.full((1,), 2.0)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x * params["a"], state

    net = L.serial(L.Layer(init, apply), (init, apply), L.Relu())
    _, params, _ = net.init(KEY, (None, 3))
    assert set(params) == {"init1", "init2"}
    y, _ = net.apply(params, {}, jnp.array([[1.0, -1.0, 0.5]]))
    np.testing.assert_allclose(np.asarray(y), [[4.0, 0.0, 2.0]])


# ---------------------------------------------------------------------------------------------
# Errors: ValueError (LayerError) naming the layer, the argument, the value and the need
# ---------------------------------------------------------------------------------------------
R = re.escape
ERROR_CASES = [
    ("kernel-too-large", lambda: _fast(4, 7).init(KEY, (None, 5, 5, 3)),
     R("Conv layer: kernel_size (7, 7) spans 7x7 pixels, larger than the padded input 5x5 "
       "(input shape (N, 5, 5, 3), padding 'VALID')")),
    ("dilated-kernel-too-large", lambda: _fast(2, 3, dilation=3).init(KEY, (None, 6, 6, 3)),
     R("kernel_size (3, 3) with dilation (3, 3) spans 7x7 pixels, larger than the padded input "
       "6x6")),
    ("window-too-large", lambda: L.MaxPool(6).init(KEY, (None, 5, 5, 3)),
     R("MaxPool layer: window (6, 6) spans 6x6 pixels, larger than the padded input 5x5")),
    ("groups-input", lambda: _fast(4, 3, groups=2).init(KEY, (None, 5, 5, 3)),
     R("Conv layer: input channels (3, input shape (N, 5, 5, 3)) must be divisible by groups "
       "(2)")),
    ("groups-features", lambda: _fast(3, 3, groups=2),
     R("Conv layer: features (3) must be divisible by groups (2)")),
    ("conv-stride-0", lambda: _fast(3, 3, stride=0), R("Conv layer: stride must be >= 1, got 0")),
    ("conv-stride-pair", lambda: _fast(3, 3, stride=(1, 0)),
     R("Conv layer: stride must be >= 1, got (1, 0)")),
    ("conv-kernel-0", lambda: _fast(3, 0), R("Conv layer: kernel_size must be >= 1, got 0")),
    ("conv-dilation-0", lambda: _fast(3, 3, dilation=0),
     R("Conv layer: dilation must be >= 1, got 0")),
    ("conv-features-0", lambda: _fast(0, 3),
     R("Conv layer: features must be a positive int, got 0")),
    ("conv-groups-0", lambda: _fast(3, 3, groups=0),
     R("Conv layer: groups must be a positive int, got 0")),
    ("dense-features-float", lambda: _fast_dense(2.5),
     R("Dense layer: features must be a positive int, got 2.5")),
    ("maxpool-window-0", lambda: L.MaxPool(0), R("MaxPool layer: window must be >= 1, got 0")),
    ("avgpool-stride-0", lambda: L.AvgPool(2, stride=0),
     R("AvgPool layer: stride must be >= 1, got 0")),
    ("conv-rank-3", lambda: _fast(3, 3).init(KEY, (None, 5, 5)),
     R("Conv layer: expects input of rank 4 (N, H, W, C), got shape (N, 5, 5) of rank 3")),
    ("maxpool-rank-2", lambda: L.MaxPool(2).init(KEY, (None, 5)),
     R("MaxPool layer: expects input of rank 4 (N, H, W, C), got shape (N, 5) of rank 2")),
    ("avgpool-rank-2", lambda: L.AvgPool(2).init(KEY, (None, 5)),
     R("AvgPool layer: expects input of rank 4")),
    ("globalavgpool-rank-2", lambda: L.GlobalAvgPool().init(KEY, (None, 5)),
     R("GlobalAvgPool layer: expects input of rank 4 (N, H, W, C), got shape (N, 5)")),
    ("dropout-negative", lambda: L.Dropout(-0.1),
     R("Dropout layer: rate (the fraction dropped) must be in [0, 1), got -0.1")),
    ("dropout-one", lambda: L.Dropout(1.0),
     R("Dropout layer: rate (the fraction dropped) must be in [0, 1), got 1.0")),
    ("dropout-above-one", lambda: L.Dropout(1.5), R("must be in [0, 1), got 1.5")),
    ("dense-on-4d", lambda: _fast_dense(3).init(KEY, (None, 5, 5, 3)),
     R("Dense layer: expects input of rank 2 (N, features), got shape (N, 5, 5, 3) of rank 4; "
       "put Flatten() before it")),
    ("serial-child-path", lambda: L.serial(_fast(3, 3), _fast(3, 9)).init(KEY, (None, 8, 8, 1)),
     R("Conv layer 'conv2': kernel_size (9, 9) spans 9x9 pixels")),
    ("nested-child-path",
     lambda: L.serial(_fast(3, 3), L.serial(_fast(3, 1), _fast_dense(2), name="block")).init(
         KEY, (None, 8, 8, 1)),
     R("Dense layer 'block/dense1': expects input of rank 2") + ".*" + R("put Flatten()")),
    ("residual-mismatch", lambda: L.residual(_fast(4, 3, padding="SAME")).init(
        KEY, (None, 8, 8, 3)),
     R("Residual layer: the body's output (N, 8, 8, 4) and the shortcut's (N, 8, 8, 3) differ")
     + ".*shortcut=Conv"),
    ("named-residual-path", lambda: L.serial(L.residual(_fast(4, 3, padding="SAME"),
                                                        name="block")).init(KEY, (None, 8, 8, 3)),
     R("Residual layer 'block': the body's output (N, 8, 8, 4)")),
    ("named-leaf-path", lambda: L.serial(L.Relu(), _fast(4, 7, name="big")).init(
        KEY, (None, 5, 5, 3)),
     R("Conv layer 'big': kernel_size (7, 7)")),
    ("named-nested-leaf-path", lambda: L.serial(L.serial(_fast_dense(3, name="head"),
                                                         name="block")).init(KEY, (None, 5, 5, 3)),
     R("Dense layer 'block/head': expects input of rank 2")),
    ("residual-bad-shortcut", lambda: L.residual(_fast(4, 3, padding="SAME"),
                                                 shortcut=_fast(4, 1, stride=2)).init(
        KEY, (None, 8, 8, 3)),
     R("the body's output (N, 8, 8, 4) and the shortcut's (N, 4, 4, 4) differ") + ".*"
     + R("make the shortcut's output shape match")),
    ("parallel-concat-mismatch", lambda: L.parallel(_fast(4, 3), _fast(4, 3, padding="SAME"))
     .init(KEY, (None, 8, 8, 3)),
     R("Parallel layer: branch outputs must agree on all but the last axis to concat, got "
       "conv1: (N, 6, 6, 4), conv2: (N, 8, 8, 4)")),
    ("parallel-sum-mismatch", lambda: L.parallel(_fast(4, 1), _fast(5, 1), combine="sum")
     .init(KEY, (None, 8, 8, 3)),
     R("Parallel layer: branch outputs must agree on every axis to sum")),
    ("parallel-combine", lambda: L.parallel(L.Relu(), combine="mean"),
     R("Parallel layer: combine must be 'concat' or 'sum', got 'mean'")),
    ("negative-padding", lambda: _fast(4, 3, padding=-1),
     R("Conv layer: padding must be >= 0, got -1")),
    ("negative-explicit-padding", lambda: L.MaxPool(2, padding=((1, -1), (0, 0))),
     R("MaxPool layer: padding must be") + ".*" + R("got ((1, -1), (0, 0))")),
    ("bad-padding-string", lambda: _fast(4, 3, padding="FULL"),
     R("Conv layer: padding must be 'VALID', 'SAME', an int or ((top, bottom), (left, right)), "
       "got 'FULL'")),
    ("bn-momentum-1", lambda: L.BatchNorm(momentum=1.0),
     R("BatchNorm layer: momentum must be in [0, 1), got 1.0")),
    ("bn-momentum-negative", lambda: L.BatchNorm(momentum=-0.1),
     R("BatchNorm layer: momentum must be in [0, 1), got -0.1")),
    ("bn-epsilon-0", lambda: L.BatchNorm(epsilon=0.0),
     R("BatchNorm layer: epsilon must be > 0, got 0.0")),
    ("bn-epsilon-negative", lambda: L.BatchNorm(epsilon=-1e-5),
     R("epsilon must be > 0, got -1e-05")),
    ("uncalled-constructor", lambda: L.serial(_fast(2, 3), L.Relu),
     R("Serial layer: argument 1 must be a Layer (init, apply), got function; did you forget "
       "to call it, e.g. Relu()?")),
    ("uncalled-in-parallel", lambda: L.parallel(L.Relu), R("Parallel layer: argument 0")),
    ("empty-serial", lambda: L.serial(), R("Serial layer: needs at least one layer, got none")),
    ("duplicate-names", lambda: L.serial(L.Relu(name="a"), L.Tanh(name="a")),
     R("child names must be unique, got ['a'] twice")),
    ("reserved-shortcut", lambda: L.residual(L.Relu(name="shortcut")),
     R("Residual layer: the name 'shortcut' is reserved")),
    ("zero-size-input", lambda: _fast(3, 3).init(KEY, (None, 0, 5, 3)),
     R("Conv layer: in_shape must be a tuple of ints with the batch first (None allowed for the "
       "batch), got (None, 0, 5, 3)")),
    ("leaky-nan", lambda: L.LeakyRelu(float("nan")),
     R("LeakyRelu layer: negative_slope must be a finite number, got nan")),
    ("elu-str", lambda: L.Elu("1"), R("Elu layer: alpha must be a finite number, got '1'")),
    ("batchnorm-rank-1", lambda: L.BatchNorm().init(KEY, (None,)),
     R("BatchNorm layer: expects input of rank >= 2")),
    ("dense-apply-wrong-width", lambda: _fast_dense(3).apply(
        {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}, {}, jnp.ones((2, 5))),
     R("Dense layer: expects input (N, 4), got shape (2, 5)")),
    ("conv-apply-wrong-rank", lambda: L.serial(_fast(3, 3)).apply(
        {"conv1": {"w": jnp.ones((3, 3, 1, 3)), "b": jnp.ones(3)}}, {}, jnp.ones((2, 5, 5))),
     R("Conv layer 'conv1': conv2d: input must have rank 4")),
]


@pytest.mark.parametrize("make, pattern", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_bad_configuration_raises_layer_error(make, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        make()
    assert isinstance(info.value, LayerError)


PER_EXAMPLE = [
    ("conv", lambda: L.Conv(3, 3, padding="SAME", groups=1)),
    ("dense-after-flatten", lambda: L.serial(L.Flatten(), L.Dense(4))),
    ("pools", lambda: L.serial(L.MaxPool(2), L.AvgPool(3, stride=1, padding="SAME"))),
    ("global-pools", lambda: L.parallel(L.GlobalMaxPool(), L.GlobalAvgPool())),
    ("activations", lambda: L.serial(L.Relu(), L.Sigmoid(), L.Tanh(), L.LeakyRelu(), L.Elu(),
                                     L.Softmax(), L.LogSoftmax())),
    ("residual", lambda: L.residual(L.Conv(2, 1), L.Relu(), shortcut=L.Conv(2, 1))),
    ("dropout-0", lambda: L.Dropout(0.0)),
    ("dropout", lambda: L.serial(L.Relu(), L.Dropout(0.5))),
    ("marked-lambda", lambda: L.Lambda(lambda x: x[:, ::2, ::2] * 2.0, per_example=True)),
    ("softmax-channels", lambda: L.parallel(L.Softmax(axis=3), L.LogSoftmax(axis=-1))),
    ("fixed-conv", lambda: filters.FixedConv(filters.gaussian(3, 1.0))),
]
NOT_PER_EXAMPLE = [
    ("batchnorm", lambda: L.serial(L.Conv(2, 1), L.BatchNorm())),
    ("lambda", lambda: L.Lambda(lambda x: x - x.mean(axis=0))),
    ("softmax-over-batch", lambda: L.Softmax(axis=0)),
    ("logsoftmax-maybe-batch", lambda: L.LogSoftmax(axis=-4)),
    ("own-layer", lambda: L.serial(L.Relu(), L.Layer(lambda k, s: (s, {}, {}),
                                                     lambda p, s, x, **kw: (x, s)))),
]


@pytest.mark.parametrize("make", [c[1] for c in PER_EXAMPLE], ids=[c[0] for c in PER_EXAMPLE])
def test_layers_marked_per_example_compute_each_example_alone(make):
    # What the mark promises (training mode included): the batch computed in slices of one row
    # each gives what the whole batch gives (for most layers: row i of f(batch) is f(row i)).
    from jaxcnn import cpu

    layer = make()
    assert L.layer_info(layer).per_example
    x = jax.random.normal(jax.random.key(3), (5, 6, 6, 2))
    _, params, state = layer.init(KEY, (None, 6, 6, 2))
    whole, _ = layer.apply(params, state, x, key=KEY, train=True)
    rows = cpu.concat_slices(lambda row: layer.apply(params, state, row, key=KEY, train=True)[0],
                             x, 5)
    np.testing.assert_allclose(rows, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [c[1] for c in NOT_PER_EXAMPLE],
                         ids=[c[0] for c in NOT_PER_EXAMPLE])
def test_layers_that_may_mix_examples_are_not_marked(make):
    assert not L.layer_info(make()).per_example


def test_every_layer_constructor_is_checked_for_the_per_example_mark():
    def kinds(layer):
        info = L.layer_info(layer)
        return {info.kind}.union(*(kinds(c) for _, c in info.children))

    covered = set().union(*(kinds(make()) for _, make in PER_EXAMPLE + NOT_PER_EXAMPLE))
    constructors = {n for n in L.__all__ if n[0].isupper() and n not in ("Layer", "LayerInfo")}
    assert constructors | {"Serial", "Parallel", "Residual", "FixedConv"} <= covered | {"Layer"}


# ---------------------------------------------------------------------------------------------
# BatchNorm without its params or state
# ---------------------------------------------------------------------------------------------


def _bn_model():
    model = L.serial(_fast(4, 3), L.BatchNorm(), L.Flatten(), _fast_dense(2))
    _, params, state = model.init(KEY, (None, 6, 6, 1))
    return model, params, state


def _without(tree, key, leaf=None):
    """``tree`` minus its ``key`` child, or minus that child's ``leaf``."""
    if leaf is None:
        return {k: v for k, v in tree.items() if k != key}
    return {**tree, key: {k: v for k, v in tree[key].items() if k != leaf}}


BN_MISSING = R("BatchNorm layer 'batchnorm1': ")
BN_CASES = [
    ("state-empty", lambda p, s: (p, {}),
     BN_MISSING + R("state must hold this layer's 'mean' and 'var', got []; pass the state "
                    "that init returned for this model")),
    ("state-none", lambda p, s: (p, None), BN_MISSING + R("state must hold this layer's 'mean' "
                                                          "and 'var', got NoneType; pass the")),
    ("state-no-var", lambda p, s: (p, _without(s, "batchnorm1", "var")),
     BN_MISSING + R("state must hold this layer's 'mean' and 'var', got ['mean']")),
    ("params-missing", lambda p, s: (_without(p, "batchnorm1"), s),
     BN_MISSING + R("params must hold this layer's 'scale' and 'bias', got []; pass the params "
                    "that init returned for this model")),
    ("params-no-bias", lambda p, s: (_without(p, "batchnorm1", "bias"), s),
     BN_MISSING + R("params must hold this layer's 'scale' and 'bias', got ['scale']")),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("drop, pattern", [c[1:] for c in BN_CASES], ids=[c[0] for c in BN_CASES])
def test_batchnorm_without_its_params_or_state_names_the_layer(drop, pattern, train):
    model, params, state = _bn_model()
    x = jnp.ones((2, 6, 6, 1))
    with pytest.raises(LayerError, match=pattern):
        model.apply(*drop(params, state), x, train=train)


def test_batchnorm_without_scale_and_bias_needs_no_params():
    bn = L.BatchNorm(use_scale=False, use_bias=False)
    _, params, state = bn.init(KEY, (None, 3))
    assert params == {}
    x = _rng("bn-no-params").normal(size=(4, 3))
    y, _ = bn.apply({}, state, jnp.asarray(x, jnp.float32), train=True)
    want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# NumPy scalars as hyperparameters: accepted as Python ones; bools refused
# ---------------------------------------------------------------------------------------------


def _np_scalar_cases():
    # (id, build(i, f) -> layer, x shape, apply kwargs); i and f make the ints and floats
    img, vec = (2, 6, 6, 4), (2, 6)
    drop_kw = {"train": True, "key": jax.random.key(1)}
    return [
        ("conv", lambda i, f: _fast(i(4), i(3), stride=i(2), padding=i(1), dilation=i(1),
                                    groups=i(2)), img, {}),
        ("conv-padding-pairs", lambda i, f: _fast(4, (i(3), i(2)),
                                                  padding=((i(1), i(0)), (i(0), i(2)))), img, {}),
        ("dense", lambda i, f: _fast_dense(i(3)), vec, {}),
        ("maxpool", lambda i, f: L.MaxPool(i(3), stride=i(1), padding=i(1)), img, {}),
        ("avgpool", lambda i, f: L.AvgPool((i(2), i(3)), stride=(i(2), i(1))), img, {}),
        ("dropout", lambda i, f: L.Dropout(f(0.5)), vec, drop_kw),
        ("leakyrelu", lambda i, f: L.LeakyRelu(f(0.25)), vec, {}),
        ("elu", lambda i, f: L.Elu(f(0.5)), vec, {}),
        ("softmax", lambda i, f: L.Softmax(axis=i(-1)), vec, {}),
        ("logsoftmax", lambda i, f: L.LogSoftmax(axis=i(3)), img, {}),
        ("batchnorm", lambda i, f: L.BatchNorm(momentum=f(0.5), epsilon=f(2.0**-10)), img,
         {"train": True}),
        ("fixedconv-gaussian", lambda i, f: filters.FixedConv(
            filters.gaussian(i(3), f(0.5)), stride=i(2), padding=i(1)), img, {}),
        ("fixedconv-box", lambda i, f: filters.FixedConv(filters.box_blur(i(3)), padding=i(0)),
         img, {}),
    ]


@pytest.mark.parametrize("case", _np_scalar_cases(), ids=lambda c: c[0])
def test_numpy_scalars_configure_a_layer_as_python_ones_do(case):
    _, build, x_shape, kwargs = case
    x = jnp.asarray(_rng("np-scalars", case[0]).normal(size=x_shape), jnp.float32)
    results = []
    for i, f in ((int, float), (np.int64, np.float32)):
        layer = build(i, f)
        out_shape, params, state = layer.init(KEY, (None, *map(i, x_shape[1:])))
        y, new_state = layer.apply(params, state, x, **kwargs)
        info = L.layer_info(layer)
        results.append((out_shape, info.window, info.stride, info.dilation, params, y, new_state))
    (shape, *geometry, params, y, new_state), numpy = results
    assert numpy[:4] == (shape, *geometry)
    assert all(type(d) is int for d in shape[1:]) and "np." not in repr((shape, geometry))
    for a, b in zip(jax.tree.leaves((params, y, new_state)), jax.tree.leaves(numpy[4:]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda: L.Conv(True, 3),
    lambda: L.Conv(4, 3, padding=True),
    lambda: L.Conv(4, 3, groups=np.bool_(True)),
    lambda: L.Dense(np.bool_(True)),
    lambda: L.Dropout(False),
    lambda: L.LeakyRelu(True),
    lambda: L.Elu(np.bool_(True)),
    lambda: L.Softmax(axis=True),
    lambda: L.BatchNorm(momentum=False),
    lambda: L.Conv(4, 3).init(KEY, (None, 6, np.bool_(True), 1)),
    lambda: filters.gaussian(True),
    lambda: filters.gaussian(3, True),
    lambda: filters.box_blur(np.bool_(True)),
], ids=["conv-features", "conv-padding", "conv-groups", "dense", "dropout", "leakyrelu", "elu",
        "softmax", "batchnorm", "in-shape", "gaussian-size", "gaussian-sigma", "box-blur"])
def test_bools_are_refused_as_hyperparameters(make):
    with pytest.raises(ValueError, match=r"got .*(True|False)"):
        make()


# ----------------------------------------------------------------------------------------------
# A serial's own batch slices (training mode, on the CPU path)


def _spied(seen: list[int]) -> L.Layer:
    return L.Lambda(lambda x: (seen.append(x.shape[0]), x)[1], per_example=True)


def test_a_hand_written_step_gets_the_serials_batch_slices(monkeypatch):
    """A plain ``jax.value_and_grad`` of the model's loss (no make_train_step) runs a
    per-example serial in :func:`jaxcnn.cpu.batch_slices` slices in training mode, with
    the whole batch's value and gradients up to float rounding; inference runs whole."""
    from jaxcnn import cpu

    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    seen: list[int] = []
    model = L.serial(_spied(seen), L.Conv(4, 3, padding="SAME"), L.Relu(), L.Flatten(),
                     L.Dense(3))
    _, params, state = model.init(jax.random.key(0), (None, 6, 6, 2))
    x = jax.random.normal(jax.random.key(1), (128, 6, 6, 2))
    y = jnp.arange(128) % 3

    def loss(p, train):
        logits, _ = model.apply(p, state, x, train=train)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    seen.clear()
    sliced = jax.value_and_grad(loss)(params, True)
    assert seen == [16] * 8
    seen.clear()
    with cpu.whole_batch():
        whole = jax.value_and_grad(loss)(params, True)
    assert seen == [128]
    for a, b in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    seen.clear()
    model.apply(params, state, x, train=False)
    assert seen == [128]


def test_a_nested_serial_does_not_slice_its_slices_again(monkeypatch):
    from jaxcnn import cpu

    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    seen: list[int] = []
    model = L.serial(L.serial(_spied(seen), L.Flatten()), L.Dense(2))
    _, params, state = model.init(jax.random.key(0), (None, 3))
    seen.clear()
    model.apply(params, state, jnp.ones((1024, 3)), train=True)
    assert seen == [64] * 16


def test_runs_without_a_conv_or_dense_and_serials_with_the_switch_off_run_whole(monkeypatch):
    """A Lambda that mixes examples, or BatchNorm, after a per-example layer with no Conv or
    Dense: that layer sees the whole batch; so does every layer with the CPU switch off."""
    from jaxcnn import cpu

    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    seen: list[int] = []
    x = jnp.ones((128, 3))
    for model, impl in ((L.serial(_spied(seen), L.Lambda(lambda x: x - x.mean(0))), "on"),
                        (L.serial(_spied(seen), L.BatchNorm()), "on"),
                        (L.serial(_spied(seen), L.Relu()), "off")):
        monkeypatch.setenv(cpu.ENV_VAR, impl)
        _, params, state = model.init(jax.random.key(0), (None, 3))
        seen.clear()
        model.apply(params, state, x, key=jax.random.key(1), train=True)
        assert seen == [128], (impl, seen)


def test_a_serial_that_mixes_examples_slices_its_runs_of_per_example_layers(monkeypatch):
    """In a serial with BatchNorm, each run of per-example layers holding a convolution or a
    dense layer is computed in (at most 4) slices from that layer on, BatchNorm and the rest on
    the whole batch, a nested serial that mixes examples cuts its own runs and a residual block
    that does runs whole; with the whole batch's values, state and gradients up to float
    rounding."""
    from jaxcnn import cpu

    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": [], "d": [], "e": [], "f": []}
    model = L.serial(
        L.serial(_spied(seen["a"]), L.Flatten()), L.BatchNorm(),  # no conv or dense: whole
        L.Dense(6), _spied(seen["b"]), L.BatchNorm(),             # sliced, then the batch
        L.residual(L.serial(L.Dense(6), _spied(seen["f"])), L.BatchNorm()),  # whole
        L.serial(L.Dense(4), _spied(seen["c"]), L.BatchNorm()),   # nested: its run sliced
        L.Relu(), _spied(seen["e"]), L.Dense(2), _spied(seen["d"]))  # whole up to the Dense
    x = jax.random.normal(KEY, (128, 3, 1))
    _, params, state = model.init(jax.random.key(0), (None, 3, 1))

    def loss(params, whole):
        with cpu.whole_batch() if whole else contextlib.nullcontext():
            y, new = model.apply(params, state, x, key=KEY, train=True)
        return (y ** 2).mean(), new

    for lst in seen.values():
        lst.clear()
    (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params, False)
    # the rows each spy was traced (or, on a concrete batch, run) on: a run takes at most
    # MAX_RUN_SLICES (4) of the batch's 8 slices
    assert cpu.batch_slices(128) == 8 and cpu.MAX_RUN_SLICES == 4
    assert {k: set(v) for k, v in seen.items()} == {"a": {128}, "b": {32}, "c": {32}, "d": {32},
                                                     "e": {128}, "f": {128}}
    (want, want_new), want_grads = jax.value_and_grad(loss, has_aux=True)(params, True)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((new, grads)), jax.tree.leaves((want_new, want_grads)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [96, 128])
def test_a_jitted_conv_batchnorm_pool_model_gets_the_whole_batch_gradients(monkeypatch, n):
    """Conv -> BatchNorm -> Relu -> MaxPool -> Conv under jit: the run after BatchNorm starts
    at its Conv, so the pool's gradient (a max taken by equality) sees its input computed once,
    and the gradients are the whole batch's (a run starting at the pool lost up to 63%)."""
    from jaxcnn import cpu

    monkeypatch.setenv(cpu.ENV_VAR, "on")
    model = L.serial(L.Conv(8, 3, padding="SAME"), L.BatchNorm(), L.Relu(), L.MaxPool(2),
                     L.Conv(8, 3, padding="SAME"), L.BatchNorm(), L.Relu(), L.MaxPool(2),
                     L.Flatten(), L.Dense(10))
    x = jax.random.normal(KEY, (n, 16, 16, 1))
    _, params, state = model.init(jax.random.key(0), (None, 16, 16, 1))

    def loss(params, whole):
        with cpu.whole_batch() if whole else contextlib.nullcontext():
            y, _ = model.apply(params, state, x, key=KEY, train=True)
        return (y ** 2).mean()

    got = jax.jit(jax.grad(loss), static_argnums=1)(params, False)
    want = jax.jit(jax.grad(loss), static_argnums=1)(params, True)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_a_sliced_serial_returns_what_a_whole_one_returns(monkeypatch):
    """The same state structure at any batch size, a scalar input in training mode, and an
    error that names the batch it was given, not a slice of it."""
    from jaxcnn import cpu

    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    model = L.serial(L.Flatten(), L.Dense(2))
    _, params, state = model.init(jax.random.key(0), (None, 9, 9, 1))
    for given in (state, None):  # None: no state at all, as a stateless model may be called
        whole = model.apply(params, given, jnp.ones((8, 9, 9, 1)), train=True)[1]
        y, sliced = model.apply(params, given, jnp.ones((128, 9, 9, 1)), train=True)
        assert y.shape == (128, 2) and sliced == whole == {}
    with pytest.raises(LayerError, match=r"\(128, 162\)"):
        model.apply(params, state, jnp.ones((128, 9, 9, 2)), train=True)
    sine = L.serial(L.Lambda(jnp.sin, per_example=True))
    _, p, s = sine.init(jax.random.key(0), (None,))
    np.testing.assert_allclose(sine.apply(p, s, jnp.float32(0.5), train=True)[0], np.sin(0.5),
                               rtol=1e-6)


def test_dropout_in_a_sliced_serial_drops_what_the_whole_batch_drops(monkeypatch):
    """A serial with Dropout is computed in slices in training mode; each slice draws the whole
    batch's mask and keeps its rows, so loss and gradients equal the whole batch's, and nested
    slices (a convolution's own split) keep the rows of the outermost batch."""
    from jaxcnn import cpu

    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    seen: list[int] = []
    model = L.serial(_spied(seen), L.Conv(4, 3, padding="SAME"), L.Relu(), L.Dropout(0.5),
                     L.Flatten(), L.Dense(8), L.Dropout(0.3), L.Dense(3))
    _, params, state = model.init(jax.random.key(0), (None, 6, 6, 2))
    x = jax.random.normal(jax.random.key(1), (128, 6, 6, 2))
    y = jnp.arange(128) % 3

    def loss(p):
        logits, _ = model.apply(p, state, x, key=jax.random.key(7), train=True)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    seen.clear()
    sliced = jax.value_and_grad(loss)(params)
    assert seen == [16] * 8
    with cpu.whole_batch():
        whole = jax.value_and_grad(loss)(params)
    for a, b in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The mask itself: rows 40:56 of the whole batch's, wherever the slices are cut.
    drop, ones = L.Dropout(0.5), jnp.ones((64, 5))
    want, _ = drop.apply({}, {}, ones, key=jax.random.key(2), train=True)
    got = cpu.concat_slices(
        lambda part: cpu.concat_slices(
            lambda row: drop.apply({}, {}, row, key=jax.random.key(2), train=True)[0], part, 4),
        ones, 4)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("pool", [
    dict(window=2), dict(window=3, stride=2, padding="SAME"), dict(window=3, stride=2,
                                                                  ceil_mode=True),
    dict(window=2, stride=1)])
def test_a_serial_pools_before_its_relu_with_the_same_values_and_gradients(pool):
    """serial runs Relu -> MaxPool as MaxPool -> Relu (cheaper); the reference composes the ops
    in the written order, on inputs with ties, zeros and all-negative windows."""
    from jaxcnn import ops
    from jaxcnn.layers.combinators import pool_before_relu

    model = L.serial(L.Relu(), L.MaxPool(**pool), L.Relu(), L.AvgPool(2, padding="SAME"),
                     L.Flatten())
    info = L.layer_info(model)
    assert pool_before_relu(info.branches[0], dict(info.children)) == (
        "maxpool1", "relu1", "relu2", "avgpool1", "flatten1")
    x = jnp.asarray(np.random.default_rng(0).integers(-3, 3, (2, 7, 7, 2)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 7, 2)), jnp.float32)

    def want(x):
        h = ops.max_pool(jax.nn.relu(x), pool["window"], stride=pool.get("stride"),
                         padding=pool.get("padding", "VALID"),
                         ceil_mode=pool.get("ceil_mode", False))
        return ops.avg_pool(jax.nn.relu(h), 2, padding="SAME").reshape(2, -1)

    _, params, state = model.init(KEY, x.shape)
    got = lambda x: model.apply(params, state, x)[0]  # noqa: E731
    np.testing.assert_array_equal(got(x), want(x))
    c = jnp.asarray(np.random.default_rng(2).normal(size=got(x).shape), jnp.float32)
    for loss in (lambda out: jnp.sum(out * c), lambda out: jnp.sum(out ** 2), jnp.sum):
        np.testing.assert_allclose(jax.grad(lambda x, loss=loss: loss(got(x)))(x * w),
                                   jax.grad(lambda x, loss=loss: loss(want(x)))(x * w), rtol=1e-6)
        np.testing.assert_array_equal(jax.grad(lambda x, loss=loss: loss(got(x)))(x),
                                      jax.grad(lambda x, loss=loss: loss(want(x)))(x))  # with ties


def test_relu_before_an_average_pool_is_not_reordered():
    from jaxcnn.layers.combinators import pool_before_relu

    model = L.serial(L.Relu(), L.AvgPool(2), L.Tanh(), L.MaxPool(2))
    info = L.layer_info(model)
    assert pool_before_relu(info.branches[0], dict(info.children)) == info.branches[0]
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, :2, :2, 0] = [[-4.0, 2.0], [0.0, -2.0]]  # relu then mean: 0.5; mean then relu: 0
    x[0, 2:, 2:, 0] = -1.0
    got = model.apply(*model.init(KEY, x.shape)[1:], jnp.asarray(x))[0]
    np.testing.assert_allclose(got.ravel(), [np.tanh(0.5)], rtol=1e-6)


def test_a_sliced_serial_returns_the_state_a_per_example_layer_computes(monkeypatch):
    """A per-example layer with state, in a serial that slices its batch under jit: the state
    comes back from the slices' shared trace (no leaked tracer), as the whole batch gives it."""
    from jaxcnn import cpu
    from jaxcnn.layers.core import make_layer

    monkeypatch.setenv("JAXCNN_CPU", "on")

    def init(key, in_shape):
        return in_shape, {}, {"calls": jnp.zeros((), jnp.int32)}

    def apply(params, state, x, *, key=None, train=False):
        return x * 2.0, {"calls": state["calls"] + 1}

    counter = make_layer(init, apply, L.LayerInfo("Counter", "counter", None, per_example=True))
    model = L.serial(counter, L.Flatten(), L.Dense(2))
    _, params, state = model.init(KEY, (None, 3))
    x = jax.random.normal(KEY, (64, 3))
    run = jax.jit(lambda p, s, x: model.apply(p, s, x, key=KEY, train=True))
    y, new_state = run(params, state, x)
    with cpu.whole_batch():
        want, want_state = model.apply(params, state, x, key=KEY, train=True)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert int(jax.tree.leaves(new_state)[0]) == int(jax.tree.leaves(want_state)[0]) == 1
