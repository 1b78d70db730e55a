"""jaxcnn.cpu.conv against ``lax.conv_general_dilated`` and JAX's own derivatives of it.

Every formulation (forward: lax, taps; input gradient: conv, gemm; weight gradient: conv,
gemm) over a sweep of kernel sizes, strides, paddings (SAME, VALID, asymmetric explicit),
dilations, groups (1, 2, depthwise) and channel counts: values, ``jax.grad`` with respect to
x and w, in float32 to 1e-5; second order and forward mode with ``check_grads`` in float64;
``vmap`` of the gradient; the same numbers inside ``lax.scan``; that every convolution of the
backward pass is in canonical NHWC x HWIO order (what makes it fast); that the plan
``plan_for`` picks for each convolution of the built-in models, and for odd shapes, computes
the same value and gradients; and the dispatch switch.
"""

from __future__ import annotations

import re
import zlib
from functools import partial

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jaxcnn import cpu, models, ops, registry
from jaxcnn.cpu import conv as cc

# The plans, the dispatch switch (auto means the CPU backend) and the compile counts are the
# CPU backend's.
pytestmark = pytest.mark.requires_cpu_backend(
    reason="the CPU execution plan (jaxcnn.cpu.conv's plans) is only used on the CPU backend")

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


# The inputs each built-in model is trained on (config.DATASETS: digits 8x8x1, MNIST and
# Fashion-MNIST 28x28x1, CIFAR-10 32x32x3), as registry.build_model makes them, and resnet20's
# projection shortcut (option B, 1x1 stride-2 convolutions).
MODEL_INPUTS = [("simple_cnn", (28, 28, 1)), ("simple_cnn", (8, 8, 1)), ("lenet5", (28, 28, 1)),
                ("vgg", (32, 32, 3)), ("vgg_small", (8, 8, 1)), ("resnet20", (32, 32, 3)),
                ("resnet20-B", (32, 32, 3))]
# A batch that training splits (plan_for's split from batch 64 on) and one that runs whole.
MODEL_BATCHES = (64, 8)
# Shapes no built-in model has: (id, x shape, kernel (kh, kw), C_out, stride, explicit pads,
# dilation, groups); batches of 66 and 70 are not a multiple of 4 (nor 70 of 3), 5 is below
# two rows a slice.
ODD_CASES = [
    ("depthwise-32", (66, 14, 14, 32), (3, 3), 32, (1, 1), ((1, 1), (1, 1)), (1, 1), 32),
    ("groups2-strided", (70, 9, 8, 6), (2, 3), 4, (2, 1), ((0, 1), (1, 0)), (1, 2), 2),
    ("1ch-stride2-asym", (70, 13, 12, 1), (5, 3), 6, (2, 2), ((2, 1), (0, 2)), (1, 1), 1),
    ("1ch-dilated-wide", (66, 11, 10, 1), (3, 3), 40, (1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    ("3ch-stride-dilated", (70, 12, 11, 3), (3, 2), 8, (2, 3), ((1, 1), (0, 2)), (2, 1), 1),
    ("5ch-1x1-stride2", (5, 8, 8, 5), (1, 1), 33, (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    ("1ch-batch5", (5, 9, 9, 1), (3, 3), 4, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
]
PLAN_TOL = {"rtol": 1e-4, "atol": 1e-5}  # atol scaled by the largest magnitude, see below


def _model_cases(model: str, hwc: tuple[int, int, int], batch: int) -> list[tuple]:
    """Every distinct convolution of ``model`` applied to (batch, *hwc), as a case tuple: read
    from the program JAX traces with plain ``lax.conv_general_dilated`` (jaxcnn.cpu.off)."""
    net = models.resnet20(shortcut="B") if model == "resnet20-B" else \
        registry.build_model(model, 10)
    params, state = jax.eval_shape(lambda k: net.init(k, (batch, *hwc))[1:], jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch, *hwc), jnp.float32)
    with cpu.off():
        jaxpr = jax.make_jaxpr(lambda p, s, x: net.apply(p, s, x)[0])(params, state, x).jaxpr

    def convs(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                p, (lhs, rhs) = eqn.params, (v.aval.shape for v in eqn.invars)
                assert p["dimension_numbers"] == lax.conv_dimension_numbers(lhs, rhs, CANONICAL)
                yield (f"{model}-{'x'.join(map(str, lhs))}-k{'x'.join(map(str, rhs))}",
                       tuple(lhs), tuple(rhs[:2]), rhs[3], tuple(p["window_strides"]),
                       tuple(map(tuple, p["padding"])), tuple(p["rhs_dilation"]),
                       p["feature_group_count"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from convs(sub)

    return list(dict.fromkeys(convs(jaxpr)))


def _assert_plan_serves(case):
    """The convolution run with the plan ``plan_for`` picks for this shape equals
    ``lax.conv_general_dilated``: plain evaluation, the forward of the differentiated pass,
    and the gradients with respect to the input and the kernel (both at once, and the kernel's
    alone, as for a first layer whose images are not differentiated), to float32 rounding:
    rtol 1e-4 and atol 1e-5 of the largest magnitude (a weight gradient sums thousands of
    products, which cancel to near zero in places)."""
    name, x_shape, (kh, kw), cout, stride, pads, dil, groups = case
    plan = cc.plan_for(x_shape, (kh, kw, x_shape[3] // groups, cout), groups)
    assert plan.fwd in ("lax", "taps") and plan.infer in ("lax", "taps"), plan
    assert plan.dx in ("conv", "gemm") and plan.dw in ("conv", "gemm"), plan
    assert isinstance(plan.split, int) and plan.split >= 1, plan
    x, w, g = _data(case)

    def mine(x, w):
        return _mine(x, w, case, plan)

    def ref(x, w):
        return _lax(x, w, case)

    def results(conv, x, w, g):  # jitted with the data as arguments (not folded constants)
        y, vjp = jax.vjp(conv, x, w)
        dw_alone = jax.grad(lambda w: jnp.sum(conv(x, w) * g))(w)
        return conv(x, w), y, *vjp(g), dw_alone

    got = jax.jit(partial(results, mine))(x, w, g)
    want = jax.jit(partial(results, ref))(x, w, g)
    for a, b, what in zip(got, want, ("y", "y in vjp", "dx", "dw", "dw alone"), strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=PLAN_TOL["rtol"],
                                   atol=PLAN_TOL["atol"] * max(1.0, float(np.abs(b).max())),
                                   err_msg=f"{what} of {name} with {plan}")


@pytest.mark.parametrize("batch", MODEL_BATCHES)
@pytest.mark.parametrize("model, hwc", MODEL_INPUTS, ids=[f"{m}-{h}" for m, (h, *_) in
                                                          MODEL_INPUTS])
def test_the_plan_for_each_model_layer_computes_the_convolution(model, hwc, batch):
    cases = _model_cases(model, hwc, batch)
    assert cases  # every built-in model has convolutions
    for case in cases:
        _assert_plan_serves(case)


@pytest.mark.parametrize("case", ODD_CASES, ids=lambda c: c[0])
def test_the_plan_for_odd_shapes_computes_the_convolution(case):
    _assert_plan_serves(case)


@pytest.mark.parametrize("avx512", [True, False])
def test_the_input_gradient_of_few_channels_is_a_gemm_with_avx512(avx512):
    """conv2 of LeNet-5 (6 input channels): dX as one GEMM with AVX-512 (1.32x-1.38x a
    training step on the Intel kind, benchmarks/README.md), the rotated-kernel convolution
    without; a 1-channel input always as a GEMM; 8 channels on, and groups, as a convolution.
    Both forms compute the same gradient (the PLANS sweep above)."""
    features = {"AVX512F": avx512}
    for cin, groups, want in ((1, 1, "gemm"), (2, 1, "gemm" if avx512 else "conv"),
                              (6, 1, "gemm" if avx512 else "conv"),
                              (7, 1, "gemm" if avx512 else "conv"), (8, 1, "conv"),
                              (32, 1, "conv"), (3, 2, "conv")):
        plan = cc.plan_for((128, 14, 14, cin * groups), (5, 5, cin, 16), groups,
                           features=features)
        assert plan.dx == want, (cin, groups, avx512, plan)
    # without a table, the host's: the plan lenet5's conv2 gets on this machine
    host = cc.plan_for((128, 14, 14, 6), (5, 5, 6, 16)).dx
    assert host == ("gemm" if cpu.has_avx512() else "conv")


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


@pytest.mark.parametrize("impl, expected", [("on", True), ("off", False), ("auto", True),
                                            ("", True), (" ON ", True)])
def test_the_switch_picks_the_path(monkeypatch, impl, expected):
    monkeypatch.setenv(cpu.ENV_VAR, impl)
    x, w, _ = _data(CASES[0])
    assert cpu.enabled() is expected  # auto: on, as this module runs on the CPU backend
    assert _uses_custom_path(lambda x, w: ops.conv2d(x, w, padding="SAME"), x, w) is expected
    y = ops.conv2d(x, w, padding=1)
    np.testing.assert_allclose(np.asarray(y), np.asarray(_lax(x, w, CASES[0])), **TOL)


def test_an_unknown_switch_value_is_refused(monkeypatch):
    monkeypatch.setenv(cpu.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=re.escape("JAXCNN_CPU must be 'auto', 'on' or "
                                                   "'off', got 'gpu'")):
        cpu.enabled()


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
