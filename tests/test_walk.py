"""jaxcnn.walk: the structural walk against the params' own keys, and the value walk against
the same layers applied one at a time by hand.

The hand references call each leaf layer the test built itself, on its part of the params
and state, and wire them as the model's description says (body plus shortcut, branches
concatenated); they never go through the walker or the combinators' ``apply``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import layers as L
from jaxcnn import models, walk
from jaxcnn.errors import LayerError
from jaxcnn.layers.combinators import merge_branches

KEY = jax.random.key(0)

MODELS = [
    ("lenet5", models.lenet5, (None, 28, 28, 1)),
    ("simple_cnn", models.simple_cnn, (None, 28, 28, 1)),
    ("vgg", models.vgg, (None, 32, 32, 3)),
    ("resnet20", models.resnet20, (None, 32, 32, 3)),
    ("resnet20-B", lambda: models.resnet20(shortcut="B"), (None, 32, 32, 3)),
]


def _abstract_init(layer, in_shape):
    """(params, state) of ``layer.init``, traced: leaves are ShapeDtypeStructs."""
    return jax.eval_shape(lambda k: layer.init(k, in_shape)[1:], KEY)


def _leaf_paths(tree) -> set[str]:
    """``{"stage1/conv1"}``: the path of every dict that holds arrays directly."""
    paths = set()
    for keys, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        paths.add("/".join(k.key for k in keys[:-1]))
    return paths


def _init(layer, in_shape, seed=0):
    """(params, state) of ``init``'s shapes filled from NumPy: small normal weights, variances
    of one (the initializers compile once per shape, which is slow on a CPU)."""
    rng = np.random.default_rng(seed)

    def leaf(path, sds):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.ones(sds.shape, jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.3, sds.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, _abstract_init(layer, in_shape))


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------------------------- structure


def test_nodes_visit_every_layer_a_combinator_before_its_children():
    net = L.serial(L.Conv(2, 1), L.residual(L.Relu(), L.Tanh()),
                   L.parallel(L.Relu(), L.Sigmoid(), combine="sum"))
    assert [n.path for n in walk.nodes(net)] == [
        "", "conv1", "residual1", "residual1/relu1", "residual1/tanh1", "parallel1",
        "parallel1/relu1", "parallel1/sigmoid1"]
    root = next(walk.nodes(net))
    assert root.label == "serial" and root.layer is net
    assert [c.label for c in walk.children(root)] == ["conv1", "residual1", "parallel1"]
    assert walk.children(walk.children(root)[0]) == ()


@pytest.mark.parametrize("name,make,in_shape", MODELS, ids=[m[0] for m in MODELS])
def test_node_paths_are_the_params_and_state_keys(name, make, in_shape):
    model = make()
    params, state = _abstract_init(model, in_shape)
    nodes = list(walk.nodes(model))
    assert len({n.path for n in nodes}) == len(nodes)
    # every layer that stores arrays finds them at its path, and every array belongs to one
    with_params = {n.path for n in nodes if not n.info.children and walk.subtree(params, n)}
    with_state = {n.path for n in nodes if not n.info.children and walk.subtree(state, n)}
    assert with_params == _leaf_paths(params)
    assert with_state == _leaf_paths(state)
    for n in nodes:
        if n.path in with_params:
            assert walk.subtree(params, n.path) is walk.subtree(params, n)


@pytest.mark.parametrize("name,make,in_shape", MODELS, ids=[m[0] for m in MODELS])
def test_every_combinator_wires_each_child_once(name, make, in_shape):
    for node in walk.nodes(make()):
        wired = [nm for branch in node.info.branches for nm in branch]
        assert sorted(wired) == sorted(c.names[-1] for c in walk.children(node))


def test_subtree_of_a_layer_that_stores_nothing_is_empty():
    params = {"residual1": {"conv1": {"w": 1}}}
    assert walk.subtree(params, "residual1/conv1") == {"w": 1}
    assert walk.subtree(params, "residual1/relu1") == {}
    assert walk.subtree(params, "") is params


# ---------------------------------------------------------------------------------- values


def test_propagate_follows_each_combinators_wiring():
    net = L.serial(L.Conv(2, 1), L.residual(L.Relu(), L.Tanh()),
                   L.parallel(L.Relu(), L.Sigmoid(), combine="sum"))

    def merge(node, x, outs):
        return outs[0] if node.info.combine is None else f"{node.info.combine}[{', '.join(outs)}]"

    got = walk.propagate(net, "x", leaf=lambda node, x: f"{node.path}({x})", merge=merge)
    res = "sum[residual1/tanh1(residual1/relu1(conv1(x))), conv1(x)]"  # body, identity
    assert got == f"sum[parallel1/relu1({res}), parallel1/sigmoid1({res})]"


def test_intermediates_of_a_serial_model_match_its_layers_applied_by_hand():
    conv1, relu, pool = L.Conv(4, 3), L.Relu(), L.MaxPool(2)
    conv2, flat, dense = L.Conv(6, 3, padding="SAME", stride=2), L.Flatten(), L.Dense(3)
    net = L.serial(conv1, relu, pool, conv2, flat, dense)
    params, state = _init(net, (None, 10, 10, 2))
    x = _x((2, 10, 10, 2))

    h1, _ = conv1.apply(params["conv1"], {}, x)
    h, _ = relu.apply({}, {}, h1)
    h, _ = pool.apply({}, {}, h)
    h2, _ = conv2.apply(params["conv2"], {}, h)
    h, _ = flat.apply({}, {}, h2)
    y, _ = dense.apply(params["dense1"], {}, h)

    feats = walk.intermediates(net, params, state, x)
    assert list(feats) == ["conv1", "conv2"]
    np.testing.assert_allclose(feats["conv1"], h1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(feats["conv2"], h2, rtol=1e-6, atol=1e-6)
    out = walk.intermediates(net, params, state, x, kinds=("Dense", "MaxPool"))
    assert list(out) == ["maxpool1", "dense1"]
    np.testing.assert_allclose(out["dense1"], y, rtol=1e-6, atol=1e-6)


def _residual_net():
    """A residual block with a projection shortcut and a BatchNorm in its body, then two
    parallel branches concatenated; the leaves kept for the hand reference."""
    leaf = {
        "stem": L.Conv(4, 3, padding="SAME"), "a": L.Conv(8, 3, stride=2, padding="SAME"),
        "bn": L.BatchNorm(), "relu": L.Relu(), "b": L.Conv(8, 3, padding="SAME"),
        "short": L.Conv(8, 1, stride=2), "p1": L.Conv(2, 1), "p2": L.Conv(3, 1),
        "pool": L.GlobalAvgPool(), "dense": L.Dense(5),
    }
    net = L.serial(leaf["stem"],
                   L.residual(leaf["a"], leaf["bn"], leaf["relu"], leaf["b"],
                              shortcut=leaf["short"]),
                   L.Relu(), L.parallel(leaf["p1"], leaf["p2"]), leaf["pool"], leaf["dense"])
    return net, leaf


def test_intermediates_of_a_residual_model_match_its_layers_applied_by_hand():
    net, leaf = _residual_net()
    params, state = _init(net, (None, 8, 8, 3))
    # running statistics far from a batch's, so inference mode shows in the BatchNorm output
    state = {"residual1": {"batchnorm1": {"mean": jnp.linspace(-1.0, 1.0, 8),
                                          "var": jnp.linspace(0.5, 4.0, 8)}}}
    x = _x((3, 8, 8, 3), seed=1)
    pr, sr = params["residual1"], state["residual1"]

    stem, _ = leaf["stem"].apply(params["conv1"], {}, x)
    a, _ = leaf["a"].apply(pr["conv1"], {}, stem)
    bn, _ = leaf["bn"].apply(pr["batchnorm1"], sr["batchnorm1"], a, train=False)
    body, _ = leaf["b"].apply(pr["conv2"], {}, leaf["relu"].apply({}, {}, bn)[0])
    skip, _ = leaf["short"].apply(pr["shortcut"], {}, stem)
    block = body + skip
    h = jnp.maximum(block, 0.0)
    p1, _ = leaf["p1"].apply(params["parallel1"]["conv1"], {}, h)
    p2, _ = leaf["p2"].apply(params["parallel1"]["conv2"], {}, h)
    both = jnp.concatenate([p1, p2], axis=-1)
    y, _ = leaf["dense"].apply(params["dense1"], {}, leaf["pool"].apply({}, {}, both)[0])

    feats = walk.intermediates(net, params, state, x)
    want = {"conv1": stem, "residual1/conv1": a, "residual1/conv2": body,
            "residual1/shortcut": skip, "parallel1/conv1": p1, "parallel1/conv2": p2}
    assert list(feats) == list(want)  # in the order apply computes them
    for path, ref in want.items():
        np.testing.assert_allclose(feats[path], ref, rtol=1e-5, atol=1e-5, err_msg=path)

    out = walk.intermediates(net, params, state, x,
                             kinds=("BatchNorm", "Residual", "Parallel", "Dense"))
    assert list(out) == ["residual1/batchnorm1", "residual1", "parallel1", "dense1"]
    for got, ref in zip(out.values(), (bn, block, both, y), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.apply(params, state, x)[0], y, rtol=1e-5, atol=1e-5)


def test_record_outputs_returns_the_models_output_under_jit():
    net, _ = _residual_net()
    params, state = _init(net, (None, 8, 8, 3))
    x = _x((2, 8, 8, 3), seed=2)
    want, _ = jax.jit(net.apply)(params, state, x)

    @jax.jit
    def run(p, s, x):
        return walk.record_outputs(net, p, s, x, where=lambda node: node.path == "residual1")

    y, out = run(params, state, x)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert list(out) == ["residual1"] and out["residual1"].shape == (2, 4, 4, 8)


@pytest.mark.parametrize("name,make,in_shape", MODELS, ids=[m[0] for m in MODELS])
def test_intermediates_of_the_builtin_models_are_every_conv_by_its_params_path(
        name, make, in_shape):
    model = make()
    params, state = _abstract_init(model, in_shape)
    x = jax.ShapeDtypeStruct((2, *in_shape[1:]), jnp.float32)
    feats = jax.eval_shape(lambda p, s, x: walk.intermediates(model, p, s, x), params, state, x)
    convs = {path for path in _leaf_paths(params)
             if walk.subtree(params, path).get("w") is not None
             and walk.subtree(params, path)["w"].ndim == 4}
    assert set(feats) == convs
    for path, feat in feats.items():
        assert feat.shape[0] == 2 and feat.shape[-1] == walk.subtree(params, path)["w"].shape[-1]
    if name == "resnet20":
        assert feats["stage3_block3/residual/conv2"].shape == (2, 8, 8, 64)
        assert feats["stage2_block1/residual/conv1"].shape == (2, 16, 16, 32)


def test_a_wrong_param_is_named_by_its_path_as_apply_names_it():
    net = L.serial(L.Conv(4, 3), L.residual(L.Conv(4, 3, padding="SAME")))
    params, state = _init(net, (None, 6, 6, 1))
    params = {**params, "residual1": {}}
    x = _x((1, 6, 6, 1))
    with pytest.raises(LayerError, match="Conv layer 'residual1/conv1': params must hold") as e:
        walk.intermediates(net, params, state, x)
    with pytest.raises(LayerError) as by_apply:
        net.apply(params, state, x)
    assert str(e.value) == str(by_apply.value)


def test_intermediates_refuses_a_single_kind_given_as_a_string():
    net = L.serial(L.Conv(2, 1))
    params, state = _init(net, (None, 4, 4, 1))
    with pytest.raises(ValueError, match=r"kinds must be a sequence of layer kinds, e\.g\. "
                                         r"\('Conv',\), got the string 'Conv'"):
        walk.intermediates(net, params, state, _x((1, 4, 4, 1)), kinds="Conv")


def test_merge_branches_refuses_an_unknown_combine():
    with pytest.raises(ValueError, match="combine must be 'concat', 'sum', or None for a "
                                         "single branch, got 'max' for 2 branch outputs"):
        merge_branches("max", [jnp.zeros(2), jnp.ones(2)])
    with pytest.raises(ValueError, match="got None for 2 branch outputs"):
        merge_branches(None, [jnp.zeros(2), jnp.ones(2)])


# ---------------------------------------------------------------------------------- per-example


def _own_layer():
    return L.Layer(lambda k, s: (s, {}, {}), lambda p, s, x, **kw: (x, s))


@pytest.mark.parametrize("make,want", [
    (lambda: L.serial(L.Conv(2, 1), L.serial(L.Conv(2, 1), L.BatchNorm(name="bn"),
                                             name="block1")),
     "layer 'block1/bn' (BatchNorm)"),
    (lambda: L.serial(L.Relu(), L.residual(L.Relu(), shortcut=L.Lambda(lambda x: x - x.mean(0)))),
     "layer 'residual1/shortcut' (Lambda)"),
    (lambda: L.serial(L.Relu(), L.parallel(L.Relu(), L.Softmax(axis=0))),
     "layer 'parallel1/softmax1' (Softmax)"),
    (lambda: L.serial(L.Relu(), _own_layer()), "layer 'layer1' (Layer)"),
    (models.resnet20, "layer 'batchnorm1' (BatchNorm)"),
    (lambda: L.BatchNorm(), "layer 'batchnorm' (BatchNorm)"),
    (lambda: L.BatchNorm(name="bn"), "layer 'bn' (BatchNorm)"),
    (lambda: L.serial(L.Relu(), L.Dropout(0.5)), None),  # slices draw the whole batch's mask
    (models.lenet5, None),
    (lambda: L.serial(L.Conv(2, 1), L.residual(L.Relu()), L.Dropout(0.0)), None),
])
def test_first_not_per_example_names_the_innermost_culprit(make, want):
    assert walk.first_not_per_example(make()) == want
