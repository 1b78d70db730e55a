"""jaxcnn.export: the serialized program run by a process that imports only jax and NumPy.

Its probabilities are compared with ``softmax(model.apply(params, state, (x - mean) / std))``
computed here, at two batch sizes (the batch is symbolic), for a CPU-only and a CPU + CUDA
export (lowered here without a GPU, called on the CPU); the CUDA lowering is checked to carry
XLA's own convolutions, not jaxcnn's CPU formulation. The CPU convolution itself is exported at
a symbolic batch, forward and gradient, against ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax

from jaxcnn import cpu, models, ops
from jaxcnn import layers as L
from jaxcnn.export import export_model

TOL = {"rtol": 1e-5, "atol": 1e-5}
BATCHES = (1, 5)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)

# Deserializes each program and calls it on each input: jax and NumPy alone, on the CPU.
CONSUMER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from jax import export
    out = {}
    for name, model_path, input_paths in json.loads(sys.argv[1]):
        exp = export.deserialize(bytearray(open(model_path, "rb").read()))
        out[name] = {"platforms": list(exp.platforms),
                     "probs": [np.asarray(exp.call(np.load(p))).tolist() for p in input_paths]}
    out["modules"] = sorted(m.split(".")[0] for m in sys.modules)
    print(json.dumps(out))
""")


def _small_cnn():
    """8x8x3 in, 5 classes; BatchNorm (state baked in) and Dropout (off at inference)."""
    return L.serial(L.Conv(4, 3, padding="SAME"), L.BatchNorm(), L.Relu(), L.MaxPool(2),
                    L.Flatten(), L.Dropout(0.5), L.Dense(5))


def _trained(model, input_shape):
    """Parameters and a BatchNorm state that one training-mode pass moved off its init."""
    k_init, k_x, k_drop = jax.random.split(jax.random.key(0), 3)
    _, params, state = model.init(k_init, (None, *input_shape))
    x = jax.random.uniform(k_x, (8, *input_shape))
    _, state = jax.jit(lambda p, s, x, k: model.apply(p, s, x, train=True, key=k))(
        params, state, x, k_drop)
    return params, state


def _inputs(input_shape):
    rng = np.random.default_rng(sum(input_shape))
    return [rng.uniform(0, 1, (n, *input_shape)).astype(np.float32) for n in BATCHES]


def _reference(model, params, state, x, mean, std):
    if mean is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.asarray(jax.jit(lambda x: ops.softmax(model.apply(params, state, x)[0]))(x))


# (name, model, input shape, mean, std, platforms)
CASES = [
    ("lenet5-cpu", models.lenet5(10), (28, 28, 1), None, None, ("cpu",)),
    ("small-normalised-cpu", _small_cnn(), (8, 8, 3), MEAN, STD, ("cpu",)),
    ("lenet5-cpu-cuda", models.lenet5(10), (28, 28, 1), None, None, ("cpu", "cuda")),
    ("small-normalised-cpu-cuda", _small_cnn(), (8, 8, 3), MEAN, STD, ("cpu", "cuda")),
]


@pytest.fixture(scope="module")
def consumed(tmp_path_factory):
    """Each case exported here, then run in one fresh process; its results and the expected."""
    tmp = tmp_path_factory.mktemp("export")
    jobs, expected = [], {}
    for name, model, shape, mean, std, platforms in CASES:
        params, state = _trained(model, shape)
        data = export_model(model, params, state, input_shape=shape, mean=mean, std=std,
                            platforms=platforms)
        (tmp / f"{name}.jaxexport").write_bytes(data)
        paths = []
        for x in _inputs(shape):
            paths.append(str(tmp / f"{name}-x{len(x)}.npy"))
            np.save(paths[-1], x)
        jobs.append((name, str(tmp / f"{name}.jaxexport"), paths))
        expected[name] = [_reference(model, params, state, x, mean, std)
                          for x in _inputs(shape)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CONSUMER, json.dumps(jobs)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), expected


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_a_process_with_only_jax_gets_the_models_probabilities(consumed, name):
    got, expected = consumed
    assert len(got[name]["probs"]) == len(BATCHES)
    for probs, want in zip(got[name]["probs"], expected[name], strict=True):
        probs = np.asarray(probs, np.float32)
        assert probs.shape == want.shape  # (batch, K)
        np.testing.assert_allclose(probs, want, **TOL)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_the_consumer_imported_neither_jaxcnn_nor_flax(consumed):
    modules = consumed[0]["modules"]
    assert "jax" in modules and "jaxcnn" not in modules


def test_platforms_are_those_asked_for(consumed):
    got, _ = consumed
    for name, *_, platforms in CASES:
        assert tuple(got[name]["platforms"]) == platforms


def test_the_batch_dimension_is_symbolic():
    model = models.lenet5(10)
    params, state = _trained(model, (28, 28, 1))
    exp = export.deserialize(bytearray(export_model(model, params, state,
                                                    input_shape=(28, 28, 1))))
    (x_aval,), (y_aval,) = exp.in_avals, exp.out_avals
    assert not isinstance(x_aval.shape[0], int) and str(x_aval.shape[0]) == "b"
    assert x_aval.shape[1:] == (28, 28, 1) and x_aval.dtype == jnp.float32
    assert str(y_aval.shape[0]) == "b" and y_aval.shape[1] == 10


def _convolutions(data: bytes) -> set[tuple[str, str]]:
    """The operand and result types of the convolutions in a serialized program (a program for
    several platforms repeats some operations once per platform, in the branches of a case)."""
    text = export.deserialize(bytearray(data)).mlir_module()
    return set(re.findall(r"stablehlo\.convolution.*?: \((.*?)\) -> (\S+)", text))


def test_a_program_for_cuda_carries_xlas_own_convolution(monkeypatch):
    """Even where jaxcnn's CPU convolution is on, a program also lowered for CUDA holds the
    convolutions XLA's own path gives (lenet5: two, on 1 and 6 input channels); a CPU-only one
    holds the CPU formulation (the 1-channel one as taps, the 6 channels padded to 8)."""
    model = models.lenet5(10)
    params, state = _trained(model, (28, 28, 1))

    def convs(impl, platforms):
        monkeypatch.setenv(cpu.ENV_VAR, impl)
        return _convolutions(export_model(model, params, state, input_shape=(28, 28, 1),
                                          platforms=platforms))

    plain = convs("off", ("cpu",))
    assert len(plain) == 2
    assert convs("on", ("cpu", "cuda")) == plain
    assert convs("on", ("cuda",)) == plain
    assert convs("on", ("cpu",)) != plain


def _lax(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.requires_cpu_backend(
    reason="exported for the default backend, it tests the CPU execution plan's slices")
@pytest.mark.parametrize("cin, cout", [(1, 4), (3, 8), (16, 32)],
                         ids=["1ch-taps", "3ch-pad8", "16ch"])
def test_the_cpu_convolution_exports_at_a_symbolic_batch(monkeypatch, cin, cout):
    """Forward and gradient, traced with the CPU path at a symbolic batch, then called at a
    batch below and one above the size where a concrete batch is split into slices."""
    monkeypatch.setenv(cpu.ENV_VAR, "on")
    rng = np.random.default_rng(cin)
    w = jnp.asarray(rng.uniform(-1, 1, (3, 3, cin, cout)), jnp.float32)

    def fwd(x, w):
        return ops.conv2d(x, w, padding="SAME")

    def grads(x, w):
        return jax.grad(lambda x, w: jnp.sum(jnp.tanh(fwd(x, w))), (0, 1))(x, w)

    spec = jax.ShapeDtypeStruct(export.symbolic_shape(f"b, 9, 7, {cin}"), jnp.float32)
    assert "custom_jvp_call" in str(jax.make_jaxpr(fwd)(spec, w))  # the CPU path is taken
    exp_fwd = export.export(jax.jit(fwd))(spec, w)
    exp_grads = export.export(jax.jit(grads))(spec, w)
    for n in (2, 70):
        x = jnp.asarray(rng.uniform(-1, 1, (n, 9, 7, cin)), jnp.float32)
        np.testing.assert_allclose(exp_fwd.call(x, w), _lax(x, w), **TOL)
        want = jax.grad(lambda x, w: jnp.sum(jnp.tanh(_lax(x, w))), (0, 1))(x, w)
        for got, ref in zip(exp_grads.call(x, w), want, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_plan_for_accepts_a_batch_that_is_not_an_int():
    """A contract: plan_for takes an open batch (None, as in_shape writes it) and jax.export's
    symbolic one, and the convolution and its gradient run with the plan picked for a symbolic
    batch trace to the right shapes (slicing that batch would need its value). Their numbers
    at a symbolic batch: test_the_cpu_convolution_exports_at_a_symbolic_batch."""
    b = export.symbolic_shape("b")[0]
    x = jax.ShapeDtypeStruct((b, 14, 14, 32), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.float32)
    for batch in (b, None):
        assert isinstance(cpu.plan_for((batch, 14, 14, 32), w.shape), cpu.Plan)
    plan = cpu.plan_for(x.shape, w.shape)

    def conv(x, w):
        return cpu.conv2d(x, w, strides=(1, 1), pads=((1, 1), (1, 1)), dilation=(1, 1),
                               plan=plan)

    assert jax.eval_shape(conv, x, w).shape == (b, 14, 14, 64)
    dx, dw = jax.eval_shape(jax.grad(lambda x, w: jnp.sum(conv(x, w)), (0, 1)), x, w)
    assert (dx.shape, dw.shape) == (x.shape, w.shape)


def test_cpu_off_overrides_the_variable_inside_the_block_only(monkeypatch):
    monkeypatch.setenv(cpu.ENV_VAR, "on")
    x, w = jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2))

    def custom(fn):
        return "custom_jvp_call" in str(jax.make_jaxpr(fn)(x, w))

    with cpu.off():
        assert not cpu.enabled()
        assert not custom(lambda x, w: ops.conv2d(x, w))
    assert cpu.enabled() and custom(lambda x, w: ops.conv2d(x, w))


# ----------------------------------------------------------------------------- errors

def _lenet():
    model = models.lenet5(10)
    _, params, state = model.init(jax.random.key(0), (None, 28, 28, 1))
    return model, params, state


@pytest.mark.parametrize("kwargs, message", [
    ({"platforms": ()}, "export_model: platforms must be a non-empty sequence of 'cpu', 'cuda', "
                        "'rocm', 'tpu', got (); pass e.g. ('cpu',) or ('cpu', 'cuda')"),
    ({"platforms": ("cpu", "gpu")}, "export_model: platforms must be a non-empty sequence of "
                                    "'cpu', 'cuda', 'rocm', 'tpu', got ('cpu', 'gpu'); pass e.g. "
                                    "('cpu',) or ('cpu', 'cuda')"),
    ({"input_shape": (28, 28)}, "export_model: input_shape must be 3 ints >= 1, (H, W, C), got "
                                "(28, 28); pass the shape of one image without the batch, e.g. "
                                "(28, 28, 1)"),
    ({"input_shape": (28, 28.0, 1)}, "export_model: input_shape must be 3 ints >= 1, (H, W, C), "
                                     "got (28, 28.0, 1)"),
    ({"mean": (0.5, 0.5)}, "export_model: mean must hold one finite number per channel, 1 for "
                           "input_shape (28, 28, 1), got (0.5, 0.5)"),
    ({"std": [0.2, 0.2, 0.2]}, "export_model: std must hold one finite number per channel, 1 "
                               "for input_shape (28, 28, 1), got [0.2, 0.2, 0.2]"),
    ({"mean": [0.5], "std": [0.0]}, "export_model: std must be > 0 for every channel, got [0.0]; "
                                    "pass 1 for a channel to leave it unscaled"),
])
def test_bad_arguments_are_refused(kwargs, message):
    model, params, state = _lenet()
    kwargs = {"input_shape": (28, 28, 1), **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        export_model(model, params, state, **kwargs)


def test_a_model_without_class_scores_is_refused():
    model = L.serial(L.Conv(2, 3))
    _, params, state = model.init(jax.random.key(0), (None, 8, 8, 1))
    with pytest.raises(ValueError, match=re.escape(
            "export_model: the model maps input_shape (8, 8, 1) to output shape (1, 6, 6, 2), "
            "but class scores (N, K) are needed; end the model with Flatten() and "
            "Dense(num_classes)")):
        export_model(model, params, state, input_shape=(8, 8, 1))
