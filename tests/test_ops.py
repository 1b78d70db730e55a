"""jaxcnn.ops against the NumPy sliding-window references in ``reference.py``.

Sweeps kernel sizes, strides, paddings (VALID, SAME, int, asymmetric explicit), dilations,
groups (1, 2, depthwise) and channel counts; float32 results are held to float64 references
at 1e-5. Every configuration also checks ``conv_output_size`` against the returned shape.
Then the worked numbers of docs/concepts.md and the ValueError messages.
"""

from __future__ import annotations

import itertools
import re
import zlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from jaxcnn import ops

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _rng(*key):
    """A generator seeded from a test's configuration, so every case has its own data."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _uniform(rng, shape):
    return rng.uniform(-1.0, 1.0, size=shape)


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def _size_padding(padding, axis):
    """The ``padding`` argument of conv_output_size for one axis of a conv/pool padding spec."""
    if isinstance(padding, str | int):
        return padding
    return tuple(padding[axis])


def _expected_shape(x_shape, kernel, c_out, *, stride, padding, dilation=1, ceil_mode=False):
    """(N, H_out, W_out, C_out) as conv_output_size predicts it."""
    k, s, d = ref.as_pair(kernel), ref.as_pair(stride), ref.as_pair(dilation)
    hw = tuple(
        ops.conv_output_size(x_shape[1 + a], k[a], stride=s[a], padding=_size_padding(padding, a),
                             dilation=d[a], ceil_mode=ceil_mode)
        for a in range(2)
    )
    return (x_shape[0], *hw, c_out)


def _case_id(value):
    return re.sub(r"\s+", "", repr(value))


# ---------------------------------------------------------------------------------------------
# conv2d sweep
# ---------------------------------------------------------------------------------------------
# (x_shape, kernel, c_out, stride, padding, dilation, groups, bias)

_GEOMETRY = [
    ((2, 7, 8, 2), kernel, 3, stride, padding, dilation, 1, True)
    for kernel, stride, padding, dilation in itertools.product(
        [(1, 1), (3, 3), (2, 3)],
        [1, 2, (2, 1)],
        ["VALID", "SAME", 1, ((1, 0), (2, 1))],
        [1, 2, (1, 2)],
    )
    if kernel != (1, 1) or dilation == 1  # dilating a 1x1 kernel changes nothing
]

# (c_in, c_out, groups): plain, 1 -> many, many -> 1, grouped (2 in, 2 out per group; 2 in, 1
# out), depthwise, depthwise with channel multiplier 2
_CHANNELS = [(1, 1, 1), (1, 4, 1), (4, 1, 1), (3, 2, 1), (4, 4, 2), (4, 2, 2),
             (2, 2, 2), (3, 3, 3), (4, 4, 4), (2, 4, 2)]
_CHANNEL_GEOMETRY = [
    ((3, 3), 1, "VALID", 1),
    ((3, 2), 2, "SAME", 1),
    ((3, 3), (1, 2), ((0, 2), (1, 0)), (2, 1)),
]
_GROUPED = [
    ((2, 6, 7, cin), kernel, cout, stride, padding, dilation, groups, i % 2 == 0)
    for i, ((cin, cout, groups), (kernel, stride, padding, dilation)) in enumerate(
        itertools.product(_CHANNELS, _CHANNEL_GEOMETRY)
    )
]


def _random_conv_cases(count, seed=0):
    """Mixed configurations drawn at random, so cross terms of the options get exercised."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        n, h, w = int(rng.integers(1, 3)), int(rng.integers(3, 10)), int(rng.integers(3, 10))
        groups = int(rng.choice([1, 2, 3, 4]))
        cin = groups * int(rng.integers(1, 4 // groups + 1))
        cout = groups * int(rng.integers(1, 4 // groups + 1))
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = [
            "VALID", "SAME", int(rng.integers(0, 3)),
            tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2)),
        ][int(rng.integers(0, 4))]
        pads = ref.explicit_padding(padding, (h, w), kernel, stride, dilation)
        if any(n_ + lo + hi < d * (k - 1) + 1
               for n_, k, d, (lo, hi) in zip((h, w), kernel, dilation, pads, strict=True)):
            continue
        cases.append(((n, h, w, cin), kernel, cout, stride, padding, dilation, groups,
                      bool(rng.integers(0, 2))))
    return cases


CONV_CASES = _GEOMETRY + _GROUPED + _random_conv_cases(20)


@pytest.mark.parametrize(
    "x_shape, kernel, c_out, stride, padding, dilation, groups, bias", CONV_CASES, ids=_case_id
)
def test_conv2d_matches_sliding_window_loop(x_shape, kernel, c_out, stride, padding, dilation,
                                            groups, bias):
    rng = _rng("conv", x_shape, kernel, c_out, stride, padding, dilation, groups)
    kh, kw = ref.as_pair(kernel)
    x = _uniform(rng, x_shape)
    w = _uniform(rng, (kh, kw, x_shape[3] // groups, c_out))
    b = _uniform(rng, (c_out,)) if bias else None

    got = ops.conv2d(_f32(x), _f32(w), None if b is None else _f32(b), stride=stride,
                     padding=padding, dilation=dilation, groups=groups)
    want = ref.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    assert got.dtype == jnp.float32
    assert got.shape == want.shape
    assert got.shape == _expected_shape(x_shape, kernel, c_out, stride=stride, padding=padding,
                                        dilation=dilation)
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


def test_conv2d_reference_can_tell_a_flipped_kernel():
    """The comparison has teeth: true convolution (flipped kernel) differs from correlation."""
    rng = _rng("flip")
    x, w = _uniform(rng, (1, 6, 6, 2)), _uniform(rng, (3, 3, 2, 2))
    got = np.asarray(ops.conv2d(_f32(x), _f32(w)))
    flipped = ref.conv2d(x, w[::-1, ::-1])
    assert not np.allclose(got, flipped, **TOL)
    np.testing.assert_allclose(got, ref.conv2d(x, w), **TOL)


def test_conv2d_same_puts_the_odd_pixel_bottom_right():
    """An even kernel under SAME pads 0 on top/left and 1 at the bottom/right, not the reverse."""
    rng = _rng("same-odd")
    x, w = _uniform(rng, (1, 5, 5, 1)), _uniform(rng, (2, 2, 1, 1))
    got = np.asarray(ops.conv2d(_f32(x), _f32(w), padding="SAME"))
    np.testing.assert_allclose(got, ref.conv2d(x, w, padding=((0, 1), (0, 1))), **TOL)
    assert not np.allclose(got, ref.conv2d(x, w, padding=((1, 0), (1, 0))), **TOL)


def test_conv2d_groups_are_independent_channel_slices():
    """groups=2 equals two separate convs on the channel halves, concatenated."""
    rng = _rng("groups")
    x, w = _uniform(rng, (2, 6, 6, 4)), _uniform(rng, (3, 3, 2, 4))
    got = np.asarray(ops.conv2d(_f32(x), _f32(w), groups=2))
    halves = [ops.conv2d(_f32(x[..., 2 * g:2 * g + 2]), _f32(w[..., 2 * g:2 * g + 2]))
              for g in range(2)]
    np.testing.assert_allclose(got, np.concatenate([np.asarray(h) for h in halves], -1), **TOL)
    # not the same as treating it as one dense conv with a tiled kernel
    dense = ref.conv2d(x, np.concatenate([w, w], axis=2))
    assert not np.allclose(got, dense, **TOL)


def test_conv2d_under_jit_matches_eager():
    rng = _rng("jit")
    x, w, b = _uniform(rng, (2, 7, 7, 2)), _uniform(rng, (3, 3, 2, 3)), _uniform(rng, (3,))
    f = partial(ops.conv2d, stride=2, padding="SAME", dilation=(1, 2))
    np.testing.assert_allclose(np.asarray(jax.jit(f)(_f32(x), _f32(w), _f32(b))),
                               np.asarray(f(_f32(x), _f32(w), _f32(b))), **TOL)


# ---------------------------------------------------------------------------------------------
# pooling sweep
# ---------------------------------------------------------------------------------------------
# (window, stride, padding, ceil_mode); padding on each side stays smaller than the window, so
# every window holds a real pixel (PyTorch's own restriction).


def _ceil_matters(spatial, window, strides, pads):
    """Whether rounding up adds a window, or would add one that PyTorch's rule then drops."""
    for n, k, s, (lo, hi) in zip(spatial, window, strides, pads, strict=True):
        if (n + lo + hi - k) % s:
            return True
    return False


def _pool_cases():
    cases = [(1, stride, padding, False) for stride in (None, 2) for padding in ("VALID", "SAME")]
    for window, stride, padding, ceil_mode in itertools.product(
        [2, 3, (2, 3)], [None, 1, 2, (1, 2)], ["VALID", "SAME", 1, ((1, 0), (0, 1))],
        [False, True],
    ):
        win = ref.as_pair(window)
        strides = win if stride is None else ref.as_pair(stride)
        if stride is not None and strides == win:
            continue  # the same as the default stride
        pads = ref.explicit_padding(padding, POOL_X_SHAPE[1:3], win, strides)
        if any(max(p) >= k for p, k in zip(pads, win, strict=True)):
            continue
        if ceil_mode and not _ceil_matters(POOL_X_SHAPE[1:3], win, strides, pads):
            continue  # the same windows as ceil_mode=False: compiling it again buys nothing
        cases.append((window, stride, padding, ceil_mode))
    return cases


POOL_X_SHAPE = (2, 7, 8, 3)
POOL_CASES = _pool_cases()


@pytest.mark.parametrize("window, stride, padding, ceil_mode", POOL_CASES, ids=_case_id)
def test_pools_match_sliding_window_loop(window, stride, padding, ceil_mode):
    """max_pool, avg_pool(count_include_pad=True) and avg_pool(False) on one configuration.

    The three run in one jitted call: XLA compilation dominates the runtime of this sweep.
    """
    x = _uniform(_rng("pool", window, stride, padding, ceil_mode), POOL_X_SHAPE)
    kw = {"stride": stride, "padding": padding, "ceil_mode": ceil_mode}

    def pools(x):
        return {
            "max": ops.max_pool(x, window, **kw),
            "avg_include_pad": ops.avg_pool(x, window, **kw, count_include_pad=True),
            "avg_exclude_pad": ops.avg_pool(x, window, **kw, count_include_pad=False),
        }

    got = jax.jit(pools)(_f32(x))
    want = {
        "max": ref.max_pool(x, window, **kw),
        "avg_include_pad": ref.avg_pool(x, window, **kw, count_include_pad=True),
        "avg_exclude_pad": ref.avg_pool(x, window, **kw, count_include_pad=False),
    }
    shape = _expected_shape(x.shape, window, x.shape[3],
                            stride=window if stride is None else stride, padding=padding,
                            ceil_mode=ceil_mode)
    for name, value in want.items():
        assert got[name].shape == value.shape == shape, name
        np.testing.assert_allclose(np.asarray(got[name]), value, err_msg=name, **TOL)


def test_pool_sweep_covers_partial_and_dropped_ceil_windows():
    """ceil_mode in the sweep both adds partial windows and hits PyTorch's drop rule."""
    grew = dropped = 0
    for window, stride, padding, ceil_mode in POOL_CASES:
        if not ceil_mode:
            continue
        win = ref.as_pair(window)
        strides = win if stride is None else ref.as_pair(stride)
        pads = ref.explicit_padding(padding, POOL_X_SHAPE[1:3], win, strides)
        for n, k, s, (lo, hi) in zip(POOL_X_SHAPE[1:3], win, strides, pads, strict=True):
            floor = (n + lo + hi - k) // s + 1
            rounded_up = -(-(n + lo + hi - k) // s) + 1
            kept = ref.output_size(n, k, s, lo, hi, ceil_mode=True)
            grew += kept > floor
            dropped += kept < rounded_up
    assert grew >= 5 and dropped >= 2, (grew, dropped)


def test_max_pool_padding_never_wins():
    """All-negative input with padding: a zero-padded max would return 0 at the border."""
    x = -1.0 - _uniform(_rng("neg"), (1, 5, 5, 2)) ** 2
    got = np.asarray(ops.max_pool(_f32(x), 3, stride=1, padding=1))
    np.testing.assert_allclose(got, ref.max_pool(x, 3, stride=1, padding=1), **TOL)
    assert got.max() < 0


def test_max_pool_gradient_at_ties():
    """Tiling windows (the reshape path) share a tied window's gradient equally; overlapping
    ones (reduce_window) give it to the first maximum in row-major order. Without ties both
    paths give the gradient of the loop reference: 1 at each window's maximum."""
    x = np.zeros((1, 4, 4, 1))
    x[0, 0, 0, 0] = x[0, 1, 1, 0] = 2.0  # window (0, 0): two maxima; the other three: four

    def grad(**kw):
        return np.asarray(jax.grad(lambda x: jnp.sum(ops.max_pool(x, 2, **kw)))(_f32(x)))[
            0, :, :, 0]

    tiled = grad()
    np.testing.assert_allclose(tiled[:2, :2], [[0.5, 0.0], [0.0, 0.5]], **TOL)
    np.testing.assert_allclose(tiled[2:, 2:], np.full((2, 2), 0.25), **TOL)
    overlapping = grad(stride=1)  # 9 overlapping windows: each to its first maximum
    assert overlapping.sum() == 9.0 and overlapping[0, 0] == 1.0 and overlapping[1, 1] == 3.0
    y = _uniform(_rng("pool-grad"), (2, 7, 7, 3))  # no ties: both are the argmax indicator
    for kw in ({}, {"ceil_mode": True}):  # tiles (the last row and column dropped), overhang
        got = jax.grad(lambda x, kw=kw: jnp.sum(ops.max_pool(x, 2, **kw)))(_f32(y))
        out = ref.max_pool(y, 2, **kw)
        want = np.zeros_like(y)
        for n, i, j, c in np.ndindex(out.shape):
            block = y[n, 2 * i: 2 * i + 2, 2 * j: 2 * j + 2, c]
            a, b = np.unravel_index(np.argmax(block), block.shape)
            want[n, 2 * i + a, 2 * j + b, c] = 1.0
        np.testing.assert_allclose(np.asarray(got), want, **TOL)


def test_avg_pool_divisors_differ_at_the_border():
    """Ones in, SAME padding: counting padding gives < 1 at the border, not counting gives 1."""
    x = np.ones((1, 4, 4, 1))
    incl = np.asarray(ops.avg_pool(_f32(x), 3, stride=1, padding="SAME"))[0, :, :, 0]
    excl = np.asarray(ops.avg_pool(_f32(x), 3, stride=1, padding="SAME",
                                   count_include_pad=False))[0, :, :, 0]
    np.testing.assert_allclose(excl, np.ones((4, 4)), **TOL)
    np.testing.assert_allclose(incl[0, 0], 4 / 9, **TOL)
    np.testing.assert_allclose(incl[0, 1], 6 / 9, **TOL)
    np.testing.assert_allclose(incl[1, 1], 1.0, **TOL)


def test_avg_pool_ceil_positions_never_count():
    """5 wide, window 2, stride 2, ceil: the last window holds one pixel and divides by 1."""
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    for include in (True, False):
        got = np.asarray(ops.avg_pool(_f32(x), (1, 2), ceil_mode=True,
                                      count_include_pad=include))
        np.testing.assert_allclose(got.ravel(), [0.5, 2.5, 4.0], **TOL)


def test_pools_under_jit_match_eager():
    x = _f32(_uniform(_rng("pool-jit"), (2, 7, 7, 2)))
    for f in (partial(ops.max_pool, window=3, stride=2, padding=1, ceil_mode=True),
              partial(ops.avg_pool, window=3, stride=2, padding="SAME", count_include_pad=False)):
        np.testing.assert_allclose(np.asarray(jax.jit(f)(x)), np.asarray(f(x)), **TOL)


@pytest.mark.parametrize("shape", [(1, 3, 3, 1), (2, 4, 5, 3), (2, 1, 1, 4)])
def test_global_pools_match_numpy(shape):
    x = _uniform(_rng("global", shape), shape)
    got_max, got_avg = ops.global_max_pool(_f32(x)), ops.global_avg_pool(_f32(x))
    assert got_max.shape == got_avg.shape == (shape[0], shape[3])
    np.testing.assert_allclose(np.asarray(got_max), ref.global_max_pool(x), **TOL)
    np.testing.assert_allclose(np.asarray(got_avg), ref.global_avg_pool(x), **TOL)


# ---------------------------------------------------------------------------------------------
# conv_output_size
# ---------------------------------------------------------------------------------------------


def test_conv_output_size_matches_window_enumeration():
    """Every small (n, kernel, stride, padding, dilation, ceil_mode) against counting windows."""
    checked = 0
    for n, k, s, (lo, hi), d, ceil_mode in itertools.product(
        range(1, 11), range(1, 5), range(1, 4), [(0, 0), (1, 1), (0, 2), (2, 1), (1, 0)],
        [1, 2], [False, True],
    ):
        span = d * (k - 1) + 1
        if span > n + lo + hi or (ceil_mode and max(lo, hi) >= span):
            continue
        want = ref.output_size(n, k, s, lo, hi, d, ceil_mode)
        got = ops.conv_output_size(n, k, stride=s, padding=(lo, hi), dilation=d,
                                   ceil_mode=ceil_mode)
        assert got == want, (n, k, s, (lo, hi), d, ceil_mode)
        if lo == hi:
            assert ops.conv_output_size(n, k, stride=s, padding=lo, dilation=d,
                                        ceil_mode=ceil_mode) == want
        checked += 1
    assert checked > 1000


def test_conv_output_size_floor_formula_and_same():
    for n, k, s, d in itertools.product(range(1, 12), range(1, 5), range(1, 4), [1, 2]):
        span = d * (k - 1) + 1
        assert ops.conv_output_size(n, k, stride=s, padding="SAME", dilation=d) == -(-n // s)
        if span <= n:
            want = (n - span) // s + 1
            assert ops.conv_output_size(n, k, stride=s, padding="VALID", dilation=d) == want
            assert ops.conv_output_size(n, k, stride=s, dilation=d) == want


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------

_X_ACT = np.concatenate([np.linspace(-6.0, 6.0, 49), [0.0, -1e-3, 1e-3, -0.5, 0.5]])


@pytest.mark.parametrize(
    "op, reference",
    [
        (ops.relu, ref.relu),
        (ops.sigmoid, ref.sigmoid),
        (ops.tanh, ref.tanh),
        (ops.leaky_relu, ref.leaky_relu),
        (partial(ops.leaky_relu, negative_slope=0.2), partial(ref.leaky_relu, negative_slope=0.2)),
        (ops.elu, ref.elu),
        (partial(ops.elu, alpha=0.5), partial(ref.elu, alpha=0.5)),
    ],
    ids=["relu", "sigmoid", "tanh", "leaky_relu", "leaky_relu_0.2", "elu", "elu_0.5"],
)
def test_activations_match_formulas(op, reference):
    got = op(_f32(_X_ACT.reshape(2, 3, 3, 3)))
    assert got.shape == (2, 3, 3, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got).ravel(), reference(_X_ACT), **TOL)


def test_activation_formulas_of_concepts():
    """docs/concepts.md, 'Activations': ReLU max(0, x); sigmoid 1/(1+e^-x); leaky max(0.01x, x);
    ELU x or alpha (e^x - 1)."""
    x = _X_ACT
    xj = _f32(x)
    np.testing.assert_allclose(np.asarray(ops.relu(xj)), np.maximum(0, x), **TOL)
    np.testing.assert_allclose(np.asarray(ops.sigmoid(xj)), 1 / (1 + np.exp(-x)), **TOL)
    np.testing.assert_allclose(np.asarray(ops.tanh(xj)), np.tanh(x), **TOL)
    np.testing.assert_allclose(np.asarray(ops.leaky_relu(xj)), np.maximum(0.01 * x, x), **TOL)
    np.testing.assert_allclose(np.asarray(ops.elu(xj, 2.0)),
                               np.where(x > 0, x, 2.0 * np.expm1(np.minimum(x, 0))), **TOL)
    np.testing.assert_allclose(np.asarray(ops.sigmoid(_f32([0.0]))), [0.5], **TOL)


@pytest.mark.parametrize("shape, axis", [((2, 10), -1), ((2, 10), 0), ((2, 3, 4), 1),
                                         ((2, 3, 4), -1)])
def test_softmax_and_log_softmax_match_numpy(shape, axis):
    x = 3.0 * _uniform(_rng("softmax", shape, axis), shape)
    got = np.asarray(ops.softmax(_f32(x), axis=axis))
    np.testing.assert_allclose(got, ref.softmax(x, axis), **TOL)
    np.testing.assert_allclose(got.sum(axis=axis), 1.0, **TOL)
    np.testing.assert_allclose(np.asarray(ops.log_softmax(_f32(x), axis=axis)),
                               ref.log_softmax(x, axis), **TOL)


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    got = np.asarray(ops.softmax(_f32(x)))
    log_got = np.asarray(ops.log_softmax(_f32(x)))
    assert np.isfinite(got).all() and np.isfinite(log_got).all()
    np.testing.assert_allclose(got, ref.softmax(x), **TOL)
    np.testing.assert_allclose(log_got, ref.log_softmax(x), **TOL)


def test_softmax_example_of_concepts():
    """Logits whose softmax is the article's [0, .1, .1, .75, 0, ...] (docs/concepts.md, 'Flatten,
    dense layers and softmax'): rows sum to 1, class 3."""
    p = np.array([0, 0.1, 0.1, 0.75, 0, 0, 0, 0, 0, 0.05])
    with np.errstate(divide="ignore"):
        logits = np.log(p)
    rows = np.stack([logits, np.zeros(10), np.arange(10.0)])
    got = np.asarray(ops.softmax(_f32(rows)))
    np.testing.assert_allclose(got.sum(axis=-1), [1.0, 1.0, 1.0], **TOL)
    np.testing.assert_allclose(got[0], p, **TOL)
    np.testing.assert_allclose(got[1], np.full(10, 0.1), **TOL)
    assert int(got[0].argmax()) == 3


# ---------------------------------------------------------------------------------------------
# docs/concepts.md worked figures ('Convolution'; 'Output size: stride, padding and rounding';
# 'Pooling')
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", [1, 3, 6])
def test_concepts_32x32x3_with_5x5x3_kernels(kernels):
    """32x32x3, 5x5x3 kernels, stride 1, no padding: 28x28xK (28 x 28 positions)."""
    x = jnp.ones((1, 32, 32, 3), jnp.float32)
    w = jnp.ones((5, 5, 3, kernels), jnp.float32)
    y = ops.conv2d(x, w)
    assert y.shape == (1, 28, 28, kernels)
    assert ops.conv_output_size(32, 5) == 28
    np.testing.assert_allclose(np.asarray(y), 75.0)  # every window sums 5 * 5 * 3 ones


@pytest.mark.parametrize("n, f", [(32, 5), (9, 3), (7, 7), (10, 4)])
def test_concepts_valid_is_n_minus_f_plus_1(n, f):
    y = ops.conv2d(jnp.zeros((1, n, n, 1)), jnp.zeros((f, f, 1, 1)), padding="VALID")
    assert y.shape[1:3] == (n - f + 1, n - f + 1)
    assert ops.conv_output_size(n, f, padding="VALID") == n - f + 1


@pytest.mark.parametrize("n, f", [(32, 5), (9, 3), (7, 1), (8, 7)])
def test_concepts_same_keeps_n_for_odd_kernels(n, f):
    """SAME (and p = (f - 1) / 2) keeps n; the printed formula with a stray +1 would say n + 1."""
    x, w = jnp.zeros((1, n, n, 1)), jnp.zeros((f, f, 1, 1))
    p = (f - 1) // 2
    assert ops.conv2d(x, w, padding="SAME").shape[1:3] == (n, n)
    assert ops.conv2d(x, w, padding=p).shape[1:3] == (n, n)
    assert ops.conv_output_size(n, f, padding="SAME") == n
    assert ops.conv_output_size(n, f, padding=p) == (n + 2 * p - f) // 1 + 1 == n
    stray_plus_one = (n + 2 * p - f + 1) // 1 + 1
    assert stray_plus_one == n + 1 != ops.conv2d(x, w, padding="SAME").shape[1]


@pytest.mark.parametrize(
    "kernel, stride, c_out, real, ceil",
    [(11, 2, 1, 59, 60), (11, 6, 1, 20, 21), (6, 4, 28, 31, 32)],
)
def test_concepts_128x128_stride_examples(kernel, stride, c_out, real, ceil):
    """The article rounds (128 - f) / s + 1 up; a real VALID conv floors; ceil_mode rounds up."""
    assert (128 - kernel) % stride != 0  # the quotient is not an integer in each example
    assert ops.conv_output_size(128, kernel, stride=stride) == real
    assert ops.conv_output_size(128, kernel, stride=stride, ceil_mode=True) == ceil
    x = jnp.zeros((1, 128, 128, 3), jnp.float32)
    y = ops.conv2d(x, jnp.zeros((kernel, kernel, 3, c_out)), stride=stride)
    assert y.shape == (1, real, real, c_out)
    assert ops.max_pool(x, kernel, stride=stride).shape == (1, real, real, 3)
    assert ops.max_pool(x, kernel, stride=stride, ceil_mode=True).shape == (1, ceil, ceil, 3)
    assert ops.avg_pool(x, kernel, stride=stride, ceil_mode=True).shape == (1, ceil, ceil, 3)


def test_concepts_pool_output_size():
    """f x f windows at stride s: ((n_h - f) / s + 1) x ((n_w - f) / s + 1) x n_c."""
    x = jnp.zeros((1, 6, 8, 5))
    assert ops.max_pool(x, 2, stride=2).shape == (1, 3, 4, 5)
    assert ops.avg_pool(x, 2, stride=2).shape == (1, 3, 4, 5)
    assert ops.max_pool(x, 3, stride=1).shape == (1, 4, 6, 5)


def test_concepts_global_pools():
    x = _f32(np.array([[2, 4, 3], [1, 5, 6], [8, 2, 9]]).reshape(1, 3, 3, 1))
    assert ops.global_max_pool(x).shape == (1, 1)
    np.testing.assert_allclose(np.asarray(ops.global_max_pool(x)), [[9.0]])
    np.testing.assert_allclose(np.asarray(ops.global_avg_pool(x)), [[40 / 9]], **TOL)
    np.testing.assert_allclose(40 / 9, 4.4444444, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

_X = jnp.zeros((1, 5, 5, 4))
_W = jnp.zeros((3, 3, 4, 2))
_P = pytest.param

ERROR_CASES = [
    _P(lambda: ops.conv2d(jnp.zeros((5, 5, 4)), _W),
       r"conv2d: input must have rank 4 \(N, H, W, C\), got shape \(5, 5, 4\) \(rank 3\)",
       id="conv2d-rank3-input"),
    _P(lambda: ops.conv2d(_X, jnp.zeros((3, 3, 4))),
       r"conv2d: kernel must have rank 4 .*got shape \(3, 3, 4\)", id="conv2d-rank3-kernel"),
    _P(lambda: ops.conv2d(_X, jnp.zeros((7, 3, 4, 2))),
       r"conv2d: kernel 7x3 .* larger than the padded input 5x5", id="conv2d-kernel-too-large"),
    _P(lambda: ops.conv2d(_X, _W, padding=1, dilation=4),
       r"conv2d: kernel 3x3 with dilation \(4, 4\) is larger than the padded input 7x7",
       id="conv2d-dilated-kernel-too-large"),
    _P(lambda: ops.conv2d(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 1, 4)), groups=2),
       r"conv2d: input channels \(3\) .* divisible by groups \(2\)", id="conv2d-cin-groups"),
    _P(lambda: ops.conv2d(_X, jnp.zeros((3, 3, 2, 3)), groups=2),
       r"conv2d: .*output channels \(3\) .* divisible by groups \(2\)",
       id="conv2d-cout-groups"),
    _P(lambda: ops.conv2d(_X, _W, groups=2),
       r"conv2d: kernel expects 8 input channels .* input has 4", id="conv2d-kernel-cin"),
    _P(lambda: ops.conv2d(_X, _W, groups=0), r"conv2d: groups must be an int >= 1, got 0",
       id="conv2d-groups-0"),
    _P(lambda: ops.conv2d(_X, _W, stride=0), r"conv2d: stride must be >= 1, got 0",
       id="conv2d-stride-0"),
    _P(lambda: ops.conv2d(_X, _W, stride=(1, 0)), r"conv2d: stride must be >= 1, got \(1, 0\)",
       id="conv2d-stride-pair-0"),
    _P(lambda: ops.conv2d(_X, _W, stride=(1, 2, 3)),
       r"conv2d: stride must be an int or a pair of ints, got \(1, 2, 3\)",
       id="conv2d-stride-triple"),
    _P(lambda: ops.conv2d(_X, _W, dilation=0), r"conv2d: dilation must be >= 1, got 0",
       id="conv2d-dilation-0"),
    _P(lambda: ops.conv2d(_X, _W, padding="FULL"), r"conv2d: padding must be .*got 'FULL'",
       id="conv2d-padding-string"),
    _P(lambda: ops.conv2d(_X, _W, padding=-1), r"conv2d: padding must be >= 0, got -1",
       id="conv2d-padding-negative"),
    _P(lambda: ops.conv2d(_X, _W, padding=((1, -1), (0, 0))),
       r"conv2d: padding must be .*>= 0.*got \(\(1, -1\), \(0, 0\)\)",
       id="conv2d-padding-explicit-negative"),
    _P(lambda: ops.conv2d(_X, _W, padding=(1, 1)), r"conv2d: padding must be .*got \(1, 1\)",
       id="conv2d-padding-flat-pair"),
    _P(lambda: ops.conv2d(_X, _W, jnp.zeros((3,))),
       r"conv2d: bias must have shape \(2,\), got \(3,\)", id="conv2d-bias-shape"),
    _P(lambda: ops.max_pool(jnp.zeros((5, 5, 4)), 2), r"max_pool: input must have rank 4",
       id="max_pool-rank3"),
    _P(lambda: ops.avg_pool(jnp.zeros((5, 5, 4)), 2), r"avg_pool: input must have rank 4",
       id="avg_pool-rank3"),
    _P(lambda: ops.max_pool(_X, 0), r"max_pool: window must be >= 1, got 0",
       id="max_pool-window-0"),
    _P(lambda: ops.avg_pool(_X, (2, 0)), r"avg_pool: window must be >= 1, got \(2, 0\)",
       id="avg_pool-window-pair-0"),
    _P(lambda: ops.max_pool(_X, 2, stride=0), r"max_pool: stride must be >= 1, got 0",
       id="max_pool-stride-0"),
    _P(lambda: ops.max_pool(_X, 6), r"max_pool: window 6x6 is larger than the padded input 5x5",
       id="max_pool-window-too-large"),
    _P(lambda: ops.avg_pool(_X, 2, padding="full"), r"avg_pool: padding must be .*got 'full'",
       id="avg_pool-padding-string"),
    _P(lambda: ops.avg_pool(_X, 2, padding=-2), r"avg_pool: padding must be >= 0, got -2",
       id="avg_pool-padding-negative"),
    _P(lambda: ops.global_max_pool(jnp.zeros((5, 4))),
       r"global_max_pool: input must have rank 4 .*got shape \(5, 4\) \(rank 2\)",
       id="global_max_pool-rank2"),
    _P(lambda: ops.global_avg_pool(jnp.zeros((5, 4))), r"global_avg_pool: input must have rank 4",
       id="global_avg_pool-rank2"),
    _P(lambda: ops.conv_output_size(0, 3), r"conv_output_size: n must be an int >= 1, got 0",
       id="size-n-0"),
    _P(lambda: ops.conv_output_size(5, 0), r"conv_output_size: kernel must be an int >= 1, got 0",
       id="size-kernel-0"),
    _P(lambda: ops.conv_output_size(5, 3, stride=0),
       r"conv_output_size: stride must be an int >= 1, got 0", id="size-stride-0"),
    _P(lambda: ops.conv_output_size(5, 3, dilation=0),
       r"conv_output_size: dilation must be an int >= 1, got 0", id="size-dilation-0"),
    _P(lambda: ops.conv_output_size(5, 3, padding=-1),
       r"conv_output_size: padding must be >= 0, got -1", id="size-padding-negative"),
    _P(lambda: ops.conv_output_size(5, 3, padding=(0, -1)),
       r"conv_output_size: padding must be >= 0, got \(0, -1\)", id="size-padding-pair-negative"),
    _P(lambda: ops.conv_output_size(5, 3, padding="FULL"),
       r"conv_output_size: padding must be 'VALID', 'SAME', an int or \(lo, hi\), got 'FULL'",
       id="size-padding-string"),
    _P(lambda: ops.conv_output_size(3, 3, dilation=2),
       r"conv_output_size: kernel spans 5 positions \(kernel 3, dilation 2\), more than the 3",
       id="size-kernel-too-large"),
]


@pytest.mark.parametrize("call, pattern", ERROR_CASES)
def test_bad_input_raises_value_error_naming_the_value(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("padding", [(1, 2, 3), 1.5, ((1, 1), (1, 1)), True],
                         ids=["triple", "float", "nested-pairs", "bool"])
def test_conv_output_size_rejects_malformed_padding_with_value_error(padding):
    """Malformed padding gets the same one-sentence ValueError as the other arguments.

    Fails today: ops.conv_output_size unpacks ``lo, hi = padding`` unchecked, so these raise
    TypeError or a bare "too many values to unpack".
    """
    with pytest.raises(ValueError, match=r"conv_output_size: padding must be .*got "
                                         + re.escape(repr(padding))):
        ops.conv_output_size(5, 3, padding=padding)


# ---------------------------------------------------------------------------------------------
# mixed dtypes and NumPy scalars
# ---------------------------------------------------------------------------------------------


def _lax_conv(x, w, pads, groups=1):
    return jax.lax.conv_general_dilated(x, w, (1, 1), pads, feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("impl", ["on", "off"])
@pytest.mark.parametrize("cin", [1, 3])
def test_conv2d_promotes_mixed_dtypes_on_every_path(cin, impl, monkeypatch):
    """float16 images with a float32 kernel: both promoted to float32, the taps (1 channel) and
    lax (3 channels, or the CPU mechanisms off) paths alike, the gradients in their operand's
    dtype."""
    monkeypatch.setenv("JAXCNN_CPU", impl)
    rng = _rng("mixed-dtypes", cin)
    x = jnp.asarray(_uniform(rng, (2, 6, 6, cin)), jnp.float16)
    w, b = _f32(_uniform(rng, (3, 3, cin, 2))), _f32(_uniform(rng, (2,)))
    y = ops.conv2d(x, w, b, padding="SAME")
    assert y.dtype == jnp.float32
    want = _lax_conv(x.astype(jnp.float32), w, ((1, 1), (1, 1))) + b
    np.testing.assert_allclose(y, want, **TOL)
    gx, gw = jax.grad(lambda x, w: ops.conv2d(x, w).sum(), argnums=(0, 1))(x, w)
    assert (gx.dtype, gw.dtype) == (jnp.float16, jnp.float32)


@pytest.mark.parametrize("cin", [1, 3])
def test_conv2d_promotes_to_float64_under_x64(cin):
    rng = _rng("mixed-x64", cin)
    x, w = _uniform(rng, (2, 5, 5, cin)), _uniform(rng, (3, 3, cin, 2)).astype(np.float32)
    with jax.enable_x64(True):
        x64, w32 = jnp.asarray(x, jnp.float64), jnp.asarray(w)
        for a, b in ((x64, w32), (x64.astype(jnp.float32), w32.astype(jnp.float64))):
            y = ops.conv2d(a, b, padding=1)
            assert y.dtype == jnp.float64
            want = _lax_conv(a.astype(jnp.float64), b.astype(jnp.float64), ((1, 1), (1, 1)))
            np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


I64 = np.int64


@pytest.mark.parametrize("call", [
    lambda i: ops.conv_output_size(i(28), i(5), stride=i(2), padding=i(1), dilation=i(1)),
    lambda i: ops.conv_output_size(i(28), i(5), padding=(i(1), i(2)), ceil_mode=True),
    lambda i: ops.normalize_padding(i(2), (8, 8), (3, 3), (1, 1)),
    lambda i: ops.normalize_padding(((i(1), i(0)), (i(0), i(2))), (8, 8), (3, 3), (1, 1)),
    lambda i: ops.pair(i(3), "kernel", "test"),
    lambda i: np.asarray(ops.conv2d(jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 2, 4)), groups=i(2),
                                    padding=i(1), stride=i(2))).tolist(),
], ids=["size", "size-pair-padding", "padding-int", "padding-pairs", "pair", "conv2d"])
def test_numpy_integers_give_the_same_plain_int_result(call):
    plain, numpy = call(int), call(I64)
    assert numpy == plain
    assert "np." not in repr(numpy)


@pytest.mark.parametrize("call", [
    lambda: ops.conv_output_size(True, 1),
    lambda: ops.conv_output_size(5, 3, padding=np.bool_(True)),
    lambda: ops.normalize_padding(np.bool_(True), (8, 8), (3, 3), (1, 1)),
    lambda: ops.normalize_padding(((True, 0), (0, 0)), (8, 8), (3, 3), (1, 1)),
    lambda: ops.conv2d(jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 4, 4)), groups=True),
], ids=["size-n", "size-padding", "padding-int", "padding-pairs", "conv2d-groups"])
def test_bools_are_still_refused(call):
    with pytest.raises(ValueError, match=r"got .*(True|False)"):
        call()
