"""``jax.grad`` through ``ops.conv2d`` against hand-derived backpropagation in NumPy.

For Y = B + X * K (valid cross-correlation, stride 1) and the upstream gradient G = dE/dY:

- dE/dK[i, j, c, o] = sum_{n, y, x} X[n, y + i, x + j, c] G[n, y, x, o]  (X correlated with G);
- dE/dB[o] = sum_{n, y, x} G[n, y, x, o];
- dE/dX = the FULL convolution of G with K: pad G by k - 1 on every side and correlate it with
  K rotated by 180 degrees, input and output channels swapped.

With stride s, padding and dilation d the same formula holds on the padded input once G has
s - 1 zeros put between its entries and K has d - 1 zeros put between its taps; the result is
then cropped back to the unpadded input. Groups are independent convolutions of channel slices.

The loss is E = sum(Y * G), so that dE/dY = G. Finite differences in float64 check the
references themselves.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from jaxcnn import ops

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _uniform(rng, shape):
    return rng.uniform(-1.0, 1.0, size=shape)


# ---------------------------------------------------------------------------------------------
# hand-derived backpropagation
# ---------------------------------------------------------------------------------------------


def conv2d_grads_valid(x, w, g):
    """(dE/dX, dE/dK, dE/dB) for stride 1, no padding, no dilation, groups 1, by the formulas.

    x: (N, H, W, C); w: (kh, kw, C, O); g: (N, H - kh + 1, W - kw + 1, O).
    """
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    _, oh, ow, _ = g.shape

    # dE/dK[i, j, c, o] = sum_{n, y, x} X[n, y + i, x + j, c] * G[n, y, x, o]
    dk = np.zeros(w.shape)
    for i in range(kh):
        for j in range(kw):
            for ci in range(c):
                for oi in range(o):
                    dk[i, j, ci, oi] = np.sum(x[:, i:i + oh, j:j + ow, ci] * g[..., oi])

    # dE/dB[o] = sum_{n, y, x} G[n, y, x, o]
    db = g.sum(axis=(0, 1, 2))

    # dE/dX[n, p, q, c] = sum_{i, j, o} Gpad[n, p + i, q + j, o] * K[kh - 1 - i, kw - 1 - j, c, o]
    gpad = np.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    rotated = w[::-1, ::-1]  # K rotated by 180 degrees
    dx = np.zeros(x.shape)
    for p in range(h):
        for q in range(wd):
            for ci in range(c):
                dx[:, p, q, ci] = np.sum(gpad[:, p:p + kh, q:q + kw, :] * rotated[:, :, ci, :],
                                         axis=(1, 2, 3))
    return dx, dk, db


def _grads_one_group(x, w, g, stride, padding, dilation):
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    _, oh, ow, _ = g.shape
    (sh, sw), (dh, dw) = ref.as_pair(stride), ref.as_pair(dilation)
    (top, bottom), (left, right) = ref.explicit_padding(padding, (h, wd), (kh, kw), (sh, sw),
                                                        (dh, dw))
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))

    # dE/dK[i, j, c, o] = sum_{n, y, x} Xp[n, y * sh + i * dh, x * sw + j * dw, c] G[n, y, x, o]
    dk = np.zeros(w.shape)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            cols = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
            patch = xp[:, rows, cols, :]  # (N, oh, ow, C): the inputs tap (i, j) saw
            for ci in range(c):
                for oi in range(o):
                    dk[i, j, ci, oi] = np.sum(patch[..., ci] * g[..., oi])

    # dE/dX: s - 1 zeros between the entries of G, d - 1 zeros between the taps of K, then the
    # full convolution with the rotated kernel, on the padded input; crop the padding off.
    gd = np.zeros((n, (oh - 1) * sh + 1, (ow - 1) * sw + 1, o))
    gd[:, ::sh, ::sw, :] = g
    kd = np.zeros((dh * (kh - 1) + 1, dw * (kw - 1) + 1, c, o))
    kd[::dh, ::dw] = w
    ekh, ekw = kd.shape[:2]
    gfull = np.pad(gd, ((0, 0), (ekh - 1, ekh - 1), (ekw - 1, ekw - 1), (0, 0)))
    rotated = kd[::-1, ::-1].transpose(0, 1, 3, 2)  # rotate 180 degrees, swap C and O
    covered = ref.conv2d(gfull, rotated)  # (N, (oh - 1) * sh + ekh, (ow - 1) * sw + ekw, C)
    dxp = np.zeros(xp.shape)  # rows/cols after the last window get no gradient
    dxp[:, :covered.shape[1], :covered.shape[2], :] = covered
    dx = dxp[:, top:top + h, left:left + wd, :]
    return dx, dk


def conv2d_grads(x, w, g, *, stride=1, padding="VALID", dilation=1, groups=1):
    """(dE/dX, dE/dK, dE/dB) of E = sum(ops.conv2d(x, w, b, ...) * g) for any configuration.

    x: (N, H, W, C_in); w: (kh, kw, C_in // groups, C_out); g: the shape of the output.
    """
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    cin_g, cout_g = w.shape[2], w.shape[3] // groups
    parts = [
        _grads_one_group(x[..., k * cin_g:(k + 1) * cin_g], w[..., k * cout_g:(k + 1) * cout_g],
                         g[..., k * cout_g:(k + 1) * cout_g], stride, padding, dilation)
        for k in range(groups)
    ]
    dx = np.concatenate([p[0] for p in parts], axis=-1)
    dk = np.concatenate([p[1] for p in parts], axis=-1)
    return dx, dk, g.sum(axis=(0, 1, 2))


def _jax_grads(x, w, b, g, dtype=jnp.float32, **conv):
    """jax.grad of E = sum(conv2d(x, w, b) * g) with respect to x, w and b."""

    def loss(x, w, b):
        return jnp.sum(ops.conv2d(x, w, b, **conv) * g)

    g = jnp.asarray(g, dtype)
    # jitted: one XLA compilation instead of one per primitive of the backward pass
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(jnp.asarray(a, dtype) for a in (x, w, b)))
    return tuple(np.asarray(v) for v in grads)


def _data(key, x_shape, kernel, c_out, groups=1, **conv):
    rng = _rng(key, x_shape, kernel, c_out, groups, conv)
    kh, kw = ref.as_pair(kernel)
    x = _uniform(rng, x_shape)
    w = _uniform(rng, (kh, kw, x_shape[3] // groups, c_out))
    b = _uniform(rng, (c_out,))
    out_shape = ref.conv2d(x, w, stride=conv.get("stride", 1), padding=conv.get("padding", "VALID"),
                           dilation=conv.get("dilation", 1), groups=groups).shape
    g = _uniform(rng, out_shape)
    return x, w, b, g


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

VALID_CASES = [((1, 5, 5, 1), (2, 2), 1), ((2, 6, 5, 2), (3, 3), 3), ((2, 6, 7, 3), (2, 3), 2),
               ((1, 4, 4, 4), (4, 4), 1), ((2, 5, 5, 2), (1, 1), 2)]


@pytest.mark.parametrize("x_shape, kernel, c_out", VALID_CASES)
def test_grads_equal_rotation_formula_stride1_valid(x_shape, kernel, c_out):
    x, w, b, g = _data("valid", x_shape, kernel, c_out)
    dx, dk, db = _jax_grads(x, w, b, g)
    want_dx, want_dk, want_db = conv2d_grads_valid(x, w, g)
    np.testing.assert_allclose(dk, want_dk, err_msg="dE/dK", **TOL)
    np.testing.assert_allclose(db, want_db, err_msg="dE/dB", **TOL)
    np.testing.assert_allclose(dx, want_dx, err_msg="dE/dX", **TOL)


GENERAL_CASES = [
    # (x_shape, kernel, c_out, stride, padding, dilation, groups)
    ((2, 6, 6, 2), (3, 3), 2, 2, "VALID", 1, 1),
    ((2, 7, 6, 2), (3, 2), 3, 2, "VALID", 1, 1),  # rows/cols after the last window
    ((1, 6, 6, 2), (3, 3), 2, 1, 1, 1, 1),
    ((2, 6, 7, 1), (3, 3), 2, 1, "SAME", 1, 1),
    ((2, 6, 7, 2), (2, 2), 2, 2, "SAME", 1, 1),
    ((1, 6, 6, 2), (3, 2), 2, 2, ((1, 0), (2, 1)), 1, 1),
    ((2, 7, 7, 2), (3, 3), 2, 1, "VALID", 2, 1),
    ((1, 8, 7, 2), (2, 3), 3, (2, 1), ((0, 2), (1, 1)), (1, 2), 1),
    ((2, 7, 7, 2), (3, 3), 1, 3, "SAME", 2, 1),
    ((2, 6, 6, 4), (3, 3), 4, 1, "VALID", 1, 2),
    ((2, 6, 6, 4), (3, 3), 2, 2, 1, 1, 2),
    ((1, 6, 6, 3), (3, 3), 3, 1, "SAME", 1, 3),  # depthwise
    ((2, 7, 6, 2), (2, 2), 4, 2, ((1, 1), (0, 1)), (2, 1), 2),  # depthwise, multiplier 2
]


@pytest.mark.parametrize(
    "x_shape, kernel, c_out, stride, padding, dilation, groups", GENERAL_CASES,
    ids=lambda v: repr(v).replace(" ", ""),
)
def test_grads_equal_rotation_formula_general(x_shape, kernel, c_out, stride, padding, dilation,
                                              groups):
    conv = {"stride": stride, "padding": padding, "dilation": dilation}
    x, w, b, g = _data("general", x_shape, kernel, c_out, groups, **conv)
    dx, dk, db = _jax_grads(x, w, b, g, groups=groups, **conv)
    want_dx, want_dk, want_db = conv2d_grads(x, w, g, groups=groups, **conv)
    np.testing.assert_allclose(dk, want_dk, err_msg="dE/dK", **TOL)
    np.testing.assert_allclose(db, want_db, err_msg="dE/dB", **TOL)
    np.testing.assert_allclose(dx, want_dx, err_msg="dE/dX", **TOL)


def test_general_formula_reduces_to_the_stride1_valid_one():
    x, w, _, g = _data("reduce", (2, 6, 5, 3), (3, 2), 2)
    for got, want in zip(conv2d_grads(x, w, g), conv2d_grads_valid(x, w, g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_bias_gradient_is_the_output_gradient_summed():
    x, w, b, g = _data("bias", (2, 5, 5, 2), (3, 3), 3)
    _, _, db = _jax_grads(x, w, b, g)
    np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), **TOL)
    # one output position, one image: dE/dB is G itself
    g1 = np.zeros_like(g)
    g1[0, 1, 2] = [0.5, -1.0, 2.0]
    np.testing.assert_allclose(_jax_grads(x, w, b, g1)[2], [0.5, -1.0, 2.0], **TOL)


def test_the_comparison_can_fail():
    """Without the 180-degree rotation, or without G's stride zeros, dE/dX comes out wrong."""
    x, w, b, g = _data("teeth", (1, 6, 6, 2), (3, 3), 2)
    dx = _jax_grads(x, w, b, g)[0]
    unrotated = conv2d_grads_valid(x, w[::-1, ::-1], g)[0]  # the formula then rotates it back
    assert not np.allclose(dx, unrotated, **TOL)
    np.testing.assert_allclose(dx, conv2d_grads_valid(x, w, g)[0], **TOL)

    x, w, b, g = _data("teeth-s2", (1, 7, 7, 2), (3, 3), 2, stride=2)
    dx = _jax_grads(x, w, b, g, stride=2)[0]
    kh = w.shape[0]
    gpad = np.pad(g, ((0, 0), (kh - 1, kh - 1), (kh - 1, kh - 1), (0, 0)))  # no stride zeros
    wrong = ref.conv2d(gpad, w[::-1, ::-1].transpose(0, 1, 3, 2))
    assert wrong.shape != dx.shape or not np.allclose(dx, wrong, **TOL)
    np.testing.assert_allclose(dx, conv2d_grads(x, w, g, stride=2)[0], **TOL)


FD_CASES = [
    ((1, 4, 4, 2), (2, 2), 2, {}),
    ((1, 5, 5, 2), (3, 2), 2, {"stride": 2, "padding": ((1, 0), (0, 1))}),
    ((1, 5, 5, 2), (2, 2), 2, {"padding": "SAME", "dilation": 2, "groups": 2}),
]


@pytest.mark.parametrize("x_shape, kernel, c_out, conv", FD_CASES)
def test_grads_equal_central_finite_differences_float64(x_shape, kernel, c_out, conv):
    """In float64, jax.grad, the NumPy formulas and central differences agree to 1e-8.

    E is linear in each of X, K and B, so central differences are exact up to rounding.
    """
    x, w, b, g = _data("fd", x_shape, kernel, c_out, **conv)
    x64_before = jax.config.jax_enable_x64
    with jax.enable_x64(True):
        gj = jnp.asarray(g, jnp.float64)

        @jax.jit
        def loss(x, w, b):
            return jnp.sum(ops.conv2d(x, w, b, **conv) * gj)

        args = [jnp.asarray(a, jnp.float64) for a in (x, w, b)]
        assert loss(*args).dtype == jnp.float64
        auto = [np.asarray(v) for v in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)]
        eps = 1e-3
        numeric = []
        for k, a in enumerate((x, w, b)):
            d = np.zeros(a.shape)
            for idx in np.ndindex(a.shape):
                step = np.zeros(a.shape)
                step[idx] = eps
                plus, minus = list(args), list(args)
                plus[k] = jnp.asarray(a + step)
                minus[k] = jnp.asarray(a - step)
                d[idx] = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
            numeric.append(d)
    assert jax.config.jax_enable_x64 == x64_before  # the context manager restored it
    formula = conv2d_grads(x, w, g, **conv)
    for name, a, nu, fo in zip(("dE/dX", "dE/dK", "dE/dB"), auto, numeric, formula, strict=True):
        np.testing.assert_allclose(a, nu, rtol=1e-8, atol=1e-10, err_msg=f"{name} jax vs FD")
        np.testing.assert_allclose(fo, nu, rtol=1e-8, atol=1e-10, err_msg=f"{name} NumPy vs FD")
