"""jaxcnn.cpu_conv against ``lax.conv_general_dilated`` and JAX's own derivatives of it.

Every formulation (forward: lax, taps; input gradient: conv, gemm; weight gradient: conv,
gemm) over a sweep of kernel sizes, strides, paddings (SAME, VALID, asymmetric explicit),
dilations, groups (1, 2, depthwise) and channel counts: values, ``jax.grad`` with respect to
x and w, in float32 to 1e-5; second order and forward mode with ``check_grads`` in float64;
``vmap`` of the gradient; the same numbers inside ``lax.scan``; that every convolution of the
backward pass is in canonical NHWC x HWIO order (what makes it fast); and the dispatch switch.
"""

from __future__ import annotations

import re
import zlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jaxcnn import cpu_conv as cc
from jaxcnn import ops

TOL = {"rtol": 1e-5, "atol": 1e-5}
CANONICAL = ("NHWC", "HWIO", "NHWC")
# together these cover each formulation of each piece at least once
PLANS = [cc.Plan("lax", "conv", "gemm"), cc.Plan("taps", "gemm", "conv", infer="taps"),
         cc.Plan("lax", "gemm", "conv"), cc.Plan("taps", "conv", "gemm", infer="taps"),
         # the differentiated forward differs from plain evaluation's (simple_cnn's conv1)
         cc.Plan("taps", "gemm", "gemm", infer="lax")]

# (id, x shape, kernel (kh, kw), C_out, stride, explicit pads, dilation, groups)
CASES = [
    ("1ch-3x3-same", (2, 7, 6, 1), (3, 3), 4, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ("3ch-valid", (2, 6, 7, 3), (3, 2), 5, (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ("stride2-asym", (2, 9, 8, 3), (3, 3), 4, (2, 2), ((1, 0), (2, 1)), (1, 1), 1),
    ("stride-hw", (1, 9, 10, 2), (2, 3), 3, (1, 2), ((0, 1), (1, 1)), (1, 1), 1),
    ("dilated", (2, 9, 9, 2), (3, 2), 3, (1, 1), ((2, 2), (1, 0)), (2, 3), 1),
    ("stride-dilated", (1, 11, 10, 4), (2, 3), 2, (2, 3), ((1, 1), (0, 2)), (2, 1), 1),
    ("5x5-lenet-like", (2, 8, 8, 6), (5, 5), 8, (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ("groups2", (2, 7, 7, 4), (3, 3), 6, (1, 1), ((1, 1), (1, 1)), (1, 1), 2),
    ("groups2-strided", (2, 8, 9, 6), (2, 3), 4, (2, 1), ((0, 1), (1, 0)), (1, 2), 2),
    ("depthwise", (2, 7, 6, 5), (3, 3), 10, (1, 1), ((1, 1), (1, 1)), (1, 1), 5),
]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _data(case, dtype=jnp.float32):
    name, x_shape, (kh, kw), cout, stride, pads, dil, groups = case
    rng = _rng(name)
    x = rng.uniform(-1, 1, x_shape)
    w = rng.uniform(-1, 1, (kh, kw, x_shape[3] // groups, cout))
    y = _lax(jnp.asarray(x), jnp.asarray(w), case)
    g = rng.uniform(-1, 1, y.shape)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype), jnp.asarray(g, dtype)


def _lax(x, w, case):
    *_, stride, pads, dil, groups = case
    return lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dil,
                                    dimension_numbers=CANONICAL, feature_group_count=groups)


def _mine(x, w, case, plan=None):
    *_, stride, pads, dil, groups = case
    return cc.conv2d(x, w, strides=stride, pads=pads, dilation=dil, groups=groups, plan=plan)


def _plans(case):
    return PLANS if case[-1] == 1 else [cc.plan_for(case[1], (1, 1, 1, 1), case[-1])]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_values_and_gradients_match_lax(case):
    x, w, g = _data(case)

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w) * g)

    want_y = _lax(x, w, case)
    want_dx, want_dw = jax.grad(loss(lambda x, w: _lax(x, w, case)), (0, 1))(x, w)
    for plan in _plans(case):
        y = jax.jit(lambda x, w, plan=plan: _mine(x, w, case, plan))(x, w)
        # the forward of the differentiated pass (plan.fwd) may differ from plain evaluation's
        y_train = jax.jit(lambda x, w, plan=plan: jax.vjp(
            lambda x, w: _mine(x, w, case, plan), x, w)[0])(x, w)
        dx, dw = jax.jit(jax.grad(loss(lambda x, w, plan=plan: _mine(x, w, case, plan)),
                                  (0, 1)))(x, w)
        for got, want, what in ((y, want_y, "y"), (y_train, want_y, "y in vjp"),
                                (dx, want_dx, "dx"), (dw, want_dw, "dw")):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL,
                                       err_msg=f"{what} with {plan}")


@pytest.mark.parametrize("case, plan", [(CASES[0], PLANS[1]), (CASES[8], PLANS[0])],
                         ids=lambda c: c[0])
def test_second_order_and_forward_mode(case, plan):
    with jax.enable_x64(True):
        x, w, _ = _data(case, jnp.float64)
        f = jax.jit(lambda x, w: jnp.tanh(_mine(x, w, case, plan)))
        check_grads(f, (x, w), order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


def test_vmap_of_the_gradient_gives_per_example_gradients():
    case = CASES[2]
    x, w, g = _data(case)

    def per_example(conv):
        def grad_one(xi, gi):
            return jax.grad(lambda w: jnp.sum(conv(xi[None], w) * gi[None]))(w)
        return jax.jit(jax.vmap(grad_one))(x, g)

    got = per_example(lambda x, w: _mine(x, w, case))
    want = per_example(lambda x, w: _lax(x, w, case))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def test_gradients_inside_scan_equal_those_outside():
    case = CASES[6]
    x, w, g = _data(case)
    grad = jax.grad(lambda w, x: jnp.sum(_mine(x, w, case) * g))

    @jax.jit
    def scanned(w, xs):
        return lax.scan(lambda w, x: (w - 0.01 * grad(w, x), None), w, xs)[0]

    w1 = w - 0.01 * jax.jit(grad)(w, x)
    want = w1 - 0.01 * jax.jit(grad)(w1, 2 * x)
    got = scanned(w, jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def _conv_specs(jaxpr) -> list[tuple]:
    """The (lhs, rhs, out) specs of every conv_general_dilated in a jaxpr, nested ones too."""
    specs = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            dn = eqn.params["dimension_numbers"]
            specs.append((dn.lhs_spec, dn.rhs_spec, dn.out_spec))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            specs += _conv_specs(sub)
    return specs


@pytest.mark.parametrize("plan", [cc.Plan("lax", "conv", "conv"), cc.Plan("lax", "conv", "gemm")],
                         ids=lambda p: f"dw={p.dw}")
def test_backward_convolutions_are_canonical(plan):
    """What makes the backward fast on CPU: every convolution reverse mode evaluates is
    NHWC x HWIO -> NHWC, which XLA hands to its fast kernels, also inside lax.scan."""
    case = CASES[1]
    x, w, g = _data(case)
    grads = jax.grad(lambda x, w: jnp.sum(_mine(x, w, case, plan) * g), (0, 1))
    canonical = lax.conv_dimension_numbers(x.shape, w.shape, CANONICAL)
    specs = _conv_specs(jax.make_jaxpr(grads)(x, w).jaxpr)
    assert specs and all(s == (canonical.lhs_spec, canonical.rhs_spec, canonical.out_spec)
                         for s in specs), specs
    plain = _conv_specs(jax.make_jaxpr(jax.grad(
        lambda x, w: jnp.sum(_lax(x, w, case) * g), (0, 1)))(x, w).jaxpr)
    assert any(s != specs[0] for s in plain)  # JAX's own rule is not canonical


def test_an_undifferentiated_input_costs_no_input_gradient():
    case = CASES[1]
    x, w, g = _data(case)
    plan = cc.Plan("lax", "conv", "gemm")
    only_w = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(_mine(x, w, case, plan) * g)))(w)
    both = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(_mine(x, w, case, plan) * g),
                                   (0, 1)))(x, w)
    assert len(_conv_specs(only_w.jaxpr)) == 1  # the forward alone
    assert len(_conv_specs(both.jaxpr)) == 2  # the forward and the input gradient


def test_plan_for_the_model_layers():
    def plan(x_shape, w_shape, groups=1):
        return tuple(cc.plan_for(x_shape, w_shape, groups))

    assert plan((128, 28, 28, 1), (3, 3, 1, 32)) == ("taps", "gemm", "gemm", 4, "lax")
    assert plan((128, 14, 14, 32), (3, 3, 32, 64)) == ("lax", "conv", "gemm", 4, "lax")
    assert plan((8, 14, 14, 32), (3, 3, 32, 64)) == ("lax", "conv", "gemm", 1, "lax")
    assert plan((128, 28, 28, 1), (5, 5, 1, 6)) == ("taps", "gemm", "conv", 4, "taps")
    assert plan((128, 14, 14, 6), (5, 5, 6, 16)) == ("lax", "conv", "conv", 4, "lax")
    assert plan((128, 14, 14, 32), (3, 3, 1, 32), 32) == ("lax", "conv", "gemm", 4, "lax")


def test_batch_split_gives_the_same_numbers():
    case = CASES[2]
    x, w, g = _data(case)
    x, g = jnp.concatenate([x] * 4), jnp.concatenate([g] * 4)  # batch 8, split in 4 and 3
    for split in (3, 4):
        plan = cc.Plan("lax", "conv", "conv", split)
        y, vjp = jax.vjp(lambda x, w, plan=plan: _mine(x, w, case, plan), x, w)
        want_y, want_vjp = jax.vjp(lambda x, w: _lax(x, w, case), x, w)
        for got, want in zip((y, *vjp(g)), (want_y, *want_vjp(g)), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def _uses_custom_path(fn, *args) -> bool:
    return "custom_jvp_call" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("impl, expected", [("cpu", True), ("xla", False), ("auto", True),
                                            ("", True), (" CPU ", True)])
def test_jaxcnn_conv_impl_picks_the_path(monkeypatch, impl, expected):
    monkeypatch.setenv(cc.ENV_VAR, impl)
    x, w, _ = _data(CASES[0])
    assert cc.enabled() is expected  # the tests run on the CPU backend
    assert _uses_custom_path(lambda x, w: ops.conv2d(x, w, padding="SAME"), x, w) is expected
    y = ops.conv2d(x, w, padding=1)
    np.testing.assert_allclose(np.asarray(y), np.asarray(_lax(x, w, CASES[0])), **TOL)


def test_unknown_impl_is_refused(monkeypatch):
    monkeypatch.setenv(cc.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=re.escape("JAXCNN_CONV_IMPL must be 'auto', 'cpu' or "
                                                   "'xla', got 'gpu'")):
        cc.enabled()


def test_groups_accept_only_the_grouped_plan():
    x, w, _ = _data(CASES[7])
    with pytest.raises(ValueError, match="groups > 1 supports only"):
        _mine(x, w, CASES[7], cc.Plan("taps", "conv", "gemm"))
    _mine(x, w, CASES[7], cc.Plan("lax", "conv", "gemm", 3))  # any split



def test_applied_outside_jit_the_convolution_is_one_compiled_call(caplog):
    """Outside ``jax.jit`` (a notebook, ``jax.grad`` of a plain function) the taps of a 1-channel
    11x11 kernel ran as separately compiled operations (145 compilations here, 11 s the first
    time at 128x128); now the forward compiles once and its gradient a few times (12 in all,
    with the loss around it). An outer ``jit`` still sees the operations themselves (the body
    is inlined), not a nested call."""
    case = ("eager", (1, 23, 21, 1), (11, 11), 2, (2, 1), ((5, 5), (5, 5)), (1, 1), 1)
    x, w = (jnp.asarray(_rng("eager", k).uniform(-1, 1, s), jnp.float32)
            for k, s in (("x", case[1]), ("w", (11, 11, 1, 2))))
    with jax.log_compiles(), caplog.at_level("WARNING", logger="jax"):
        y = _mine(x, w, case)
        g = jax.grad(lambda w: jnp.sum(_mine(x, w, case) ** 2))(w)
    compiles = [r.getMessage()[:90] for r in caplog.records if "Compiling" in r.getMessage()]
    assert len(compiles) <= 16 and any("jit(_conv)" in c for c in compiles), compiles
    np.testing.assert_allclose(y, _lax(x, w, case), **TOL)
    want = jax.grad(lambda w: jnp.sum(_lax(x, w, case) ** 2))(w)
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(_mine(x, w, case))))(w))
    assert "name=_conv" not in jaxpr and "conv_general_dilated" in jaxpr
