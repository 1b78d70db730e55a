"""jaxcnn.models and the worked numbers of docs/concepts.md (Convolution; Output size: stride,
padding and rounding; LeNet-5).

Parameter counts are written out as arithmetic from each architecture's description and compared
with the leaves of ``init``'s params; output shapes come from real forward passes. Inits are
traced with ``jax.eval_shape`` (the default initializers compile per shape, which is slow on a
CPU) and forward passes use NumPy-filled params of those shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import layers as L
from jaxcnn import models
from jaxcnn.errors import LayerError
from jaxcnn.summarize import summary

KEY = jax.random.key(0)


def _abstract_init(layer, in_shape):
    """(out_shape, params, state) of ``layer.init``, traced: leaves are ShapeDtypeStructs."""
    box = {}

    def run(key):
        box["out"], params, state = layer.init(key, in_shape)
        return params, state

    params, state = jax.eval_shape(run, KEY)
    return box["out"], params, state


def _count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(tree):
    return jax.tree.map(lambda leaf: tuple(leaf.shape), tree)


def _fill(tree, seed):
    """Real float32 arrays of the tree's shapes: small normal weights, variances of one."""
    rng = np.random.default_rng(seed)

    def leaf(path, sds):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.ones(sds.shape, jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.1, sds.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def _conv(f, c_in, k):
    """Parameters of a conv with bias: (f * f * C_in + 1) * K."""
    return (f * f * c_in + 1) * k


def _dense(d_in, d_out):
    return (d_in + 1) * d_out


# ---------------------------------------------------------------------------------------------
# LeNet-5
# ---------------------------------------------------------------------------------------------
LENET_PARAMS = (
    _conv(5, 1, 6)  # conv1 SAME on 28x28x1: 156
    + _conv(5, 6, 16)  # conv2 VALID on 14x14x6 -> 10x10x16: 2,416
    + _dense(5 * 5 * 16, 120)  # after the second pool: 5x5x16 = 400 inputs: 48,120
    + _dense(120, 84)  # 10,164
    + _dense(84, 10)  # 850
)


def test_lenet5_has_61706_parameters():
    assert LENET_PARAMS == 61_706
    out_shape, params, state = _abstract_init(models.lenet5(), (None, 28, 28, 1))
    assert out_shape == (None, 10)
    assert state == {}
    assert _count(params) == 61_706
    assert _shapes(params) == {
        "conv1": {"w": (5, 5, 1, 6), "b": (6,)},
        "conv2": {"w": (5, 5, 6, 16), "b": (16,)},
        "dense1": {"w": (400, 120), "b": (120,)},
        "dense2": {"w": (120, 84), "b": (84,)},
        "dense3": {"w": (84, 10), "b": (10,)},
    }
    assert summary(models.lenet5(), (None, 28, 28, 1)).total_params == 61_706


def test_lenet5_forward_gives_one_score_per_class():
    model = models.lenet5()
    _, params, state = _abstract_init(model, (None, 28, 28, 1))
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)), jnp.float32)
    y, new_state = jax.jit(model.apply)(_fill(params, 1), state, x)
    assert y.shape == (3, 10)
    assert new_state == {}
    assert np.all(np.isfinite(np.asarray(y)))


def test_lenet5_variants():
    tanh_avg = models.lenet5(activation="tanh", pool="avg")
    assert _count(_abstract_init(tanh_avg, (None, 28, 28, 1))[1]) == 61_706
    kinds = [r.kind for r in summary(tanh_avg, (None, 28, 28, 1)).rows]
    assert kinds.count("Tanh") == 4 and kinds.count("AvgPool") == 2 and "Relu" not in kinds
    five = models.lenet5(num_classes=5)
    out_shape, params, _ = _abstract_init(five, (None, 28, 28, 1))
    assert out_shape == (None, 5)
    assert _count(params) == 61_706 - _dense(84, 10) + _dense(84, 5)


# ---------------------------------------------------------------------------------------------
# simple_cnn, vgg, resnet20
# ---------------------------------------------------------------------------------------------


def test_simple_cnn_structure_and_parameter_count():
    expected = (
        3 * 3 * 1 * 32 + 32  # conv 32@3x3 SAME on 28x28x1 -> 28x28x32, avg-pool -> 14x14x32
        + 3 * 3 * 32 * 64 + 64  # conv 64@3x3 SAME -> 14x14x64, avg-pool -> 7x7x64
        + 7 * 7 * 64 * 256 + 256  # dense 256 on 3,136 features
        + 256 * 10 + 10  # dense 10
    )
    assert expected == 824_458
    model = models.simple_cnn()
    out_shape, params, state = _abstract_init(model, (None, 28, 28, 1))
    assert out_shape == (None, 10) and state == {}
    assert _count(params) == expected
    # the same architecture written from its description has the same params
    by_hand = L.serial(
        L.Conv(32, 3, padding="SAME"), L.Relu(), L.AvgPool(2),
        L.Conv(64, 3, padding="SAME"), L.Relu(), L.AvgPool(2),
        L.Flatten(), L.Dense(256), L.Relu(), L.Dense(10),
    )
    assert _shapes(params) == _shapes(_abstract_init(by_hand, (None, 28, 28, 1))[1])
    kinds = [r.kind for r in summary(model, (None, 28, 28, 1)).rows[1:]]
    assert kinds == ["Conv", "Relu", "AvgPool", "Conv", "Relu", "AvgPool", "Flatten", "Dense",
                     "Relu", "Dense"]


RESNET20_PARAMS = (
    3 * 3 * 3 * 16 + 2 * 16  # stem conv (no bias) + BatchNorm scale and bias
    + 3 * 2 * (3 * 3 * 16 * 16 + 2 * 16)  # stage 1: three blocks of two 16->16 convs
    + (3 * 3 * 16 * 32 + 2 * 32) + (3 * 3 * 32 * 32 + 2 * 32)  # stage 2, block 1 (stride 2)
    + 2 * 2 * (3 * 3 * 32 * 32 + 2 * 32)  # stage 2, blocks 2 and 3
    + (3 * 3 * 32 * 64 + 2 * 64) + (3 * 3 * 64 * 64 + 2 * 64)  # stage 3, block 1
    + 2 * 2 * (3 * 3 * 64 * 64 + 2 * 64)  # stage 3, blocks 2 and 3
    + 64 * 10 + 10  # dense classifier after global average pooling
)  # option-A shortcuts (subsample and zero-pad) have no parameters


def test_resnet20_has_269722_parameters():
    assert RESNET20_PARAMS == 269_722
    out_shape, params, state = _abstract_init(models.resnet20(), (None, 32, 32, 3))
    assert out_shape == (None, 10)
    assert _count(params) == 269_722
    assert set(params) == {"conv1", "batchnorm1", "dense1"} | {
        f"stage{s}_block{b}" for s in (1, 2, 3) for b in (1, 2, 3)}
    # BatchNorm keeps a running mean and variance per channel: 16 (stem) + 6 x 16 + 6 x 32 + 6 x 64
    assert _count(state) == 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    # option B adds a 1x1 projection and its BatchNorm where the shape changes
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    _, params_b, _ = _abstract_init(models.resnet20(shortcut="B"), (None, 32, 32, 3))
    assert _count(params_b) == 269_722 + projections == 272_474
    assert set(params_b["stage2_block1"]["residual"]["shortcut"]) == {"conv1", "batchnorm1"}


def test_resnet20_forward_on_32x32x3_in_training_updates_batchnorm():
    model = models.resnet20()
    _, params, state = _abstract_init(model, (None, 32, 32, 3))
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)  # running mean 0, var 0
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    y, new_state = jax.jit(lambda p, s, x: model.apply(p, s, x, train=True))(
        _fill(params, 2), state, x)
    assert y.shape == (2, 10)
    assert np.all(np.isfinite(np.asarray(y)))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # every running variance moved off its starting 0 towards a positive batch variance
    for path, leaf in jax.tree_util.tree_leaves_with_path(new_state):
        if jax.tree_util.keystr(path).endswith("['var']"):
            assert np.all(np.asarray(leaf) > 0), jax.tree_util.keystr(path)


def test_vgg_output_shape_and_parameter_count():
    convs = (_conv(3, 3, 32) + _conv(3, 32, 32) + _conv(3, 32, 64) + _conv(3, 64, 64)
             + _conv(3, 64, 128) + _conv(3, 128, 128))
    batchnorms = 2 * (32 + 32 + 64 + 64 + 128 + 128)
    head = _dense(4 * 4 * 128, 256) + _dense(256, 10)  # 32 -> 16 -> 8 -> 4 after three pools
    model = models.vgg()
    out_shape, params, state = _abstract_init(model, (None, 32, 32, 3))
    assert out_shape == (None, 10)
    assert _count(params) == convs + batchnorms + head == 815_018
    assert set(params) == {"stage1", "stage2", "stage3", "dense1", "dense2"}
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
    y, _ = jax.jit(model.apply)(_fill(params, 3), _fill(state, 4), x)
    assert y.shape == (2, 10)

    plain = models.vgg(num_classes=7, stages=((8,), (16,)), dense=(32, 32), batch_norm=False)
    out_shape, params, state = _abstract_init(plain, (None, 16, 16, 1))
    assert out_shape == (None, 7) and state == {}
    assert _count(params) == (_conv(3, 1, 8) + _conv(3, 8, 16) + _dense(4 * 4 * 16, 32)
                              + _dense(32, 32) + _dense(32, 7))


def test_vgg_dropout_needs_a_key_in_training():
    model = models.vgg(stages=((4,),), dense=(8,), batch_norm=False, dropout=0.5)
    _, params, state = _abstract_init(model, (None, 8, 8, 1))
    params = _fill(params, 5)
    x = jnp.ones((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"Dropout layer 'dropout1': train=True needs a PRNG key"):
        model.apply(params, state, x, train=True)
    y1, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    y2, _ = model.apply(params, state, x)
    assert y1.shape == y2.shape == (2, 10)


@pytest.mark.parametrize("make, pattern", [
    (lambda: models.lenet5(activation="gelu"),
     r"lenet5 layer: activation must be one of \['elu', 'leaky_relu', 'relu', 'sigmoid', "
     r"'tanh'\], got 'gelu'"),
    (lambda: models.lenet5(pool="median"), r"lenet5 layer: pool must be one of .*got 'median'"),
    (lambda: models.lenet5(num_classes=0), r"lenet5 layer: num_classes must be a positive int, "
                                           r"got 0"),
    (lambda: models.simple_cnn(num_classes=2.0), r"simple_cnn layer: num_classes .* got 2\.0"),
    (lambda: models.resnet20(shortcut="C"), r"resnet20 layer: shortcut must be 'A' or 'B', "
                                            r"got 'C'"),
    (lambda: models.vgg(stages=()), r"vgg layer: stages must be a non-empty list"),
    (lambda: models.vgg(stages=((32,), ())), r"vgg layer: stages .* got \(\(32,\), \(\)\)"),
    (lambda: models.vgg(dropout=1.0), r"Dropout layer: rate .* got 1\.0"),
], ids=["activation", "pool", "classes", "classes-float", "shortcut", "stages", "empty-stage",
        "dropout"])
def test_bad_model_arguments_raise(make, pattern):
    with pytest.raises(LayerError, match=pattern):
        make()


def test_a_model_too_deep_for_its_input_names_the_failing_layer():
    with pytest.raises(ValueError, match=r"MaxPool layer 'maxpool2': window \(2, 2\) spans 2x2 "
                                         r"pixels, larger than the padded input 1x1"):
        _abstract_init(models.lenet5(), (None, 10, 10, 1))


# ---------------------------------------------------------------------------------------------
# docs/concepts.md, 'Convolution' and 'Output size: stride, padding and rounding': layer
# arithmetic through the Conv and pooling layers
# ---------------------------------------------------------------------------------------------


def _np_init(key, shape, dtype):
    return jnp.asarray(np.random.default_rng(0).normal(size=shape), dtype)


@pytest.mark.parametrize("kernels", [1, 6, 3])
def test_5x5x3_kernels_on_32x32x3_give_28x28xK(kernels):
    conv = L.Conv(kernels, 5, w_init=_np_init)  # stride 1, VALID by default
    out_shape, params, _ = conv.init(KEY, (None, 32, 32, 3))
    assert out_shape == (None, 28, 28, kernels)  # 32 - 5 + 1 = 28 positions per axis
    assert params["w"].shape == (5, 5, 3, kernels)  # each kernel spans all three channels
    assert _count(params) == (5 * 5 * 3 + 1) * kernels
    y, _ = conv.apply(params, {}, jnp.ones((1, 32, 32, 3)))
    assert y.shape == (1, 28, 28, kernels)


def test_the_128x128_stride_examples_floor_and_ceil_mode_rounds_up():
    # (kernel, stride, kernels): the articles print 60, 21, 32; (128 - f) / s is not an integer
    examples = [(11, 2, 1), (11, 6, 1), (6, 4, 28)]
    floors = [(128 - 11) // 2 + 1, (128 - 11) // 6 + 1, (128 - 6) // 4 + 1]
    ceils = [math.ceil((128 - 11) / 2) + 1, math.ceil((128 - 11) / 6) + 1,
             math.ceil((128 - 6) / 4) + 1]
    assert floors == [59, 20, 31] and ceils == [60, 21, 32]
    for (f, s, k), lo, hi in zip(examples, floors, ceils, strict=True):
        conv = L.Conv(k, f, stride=s, w_init=_np_init)
        out_shape, params, _ = conv.init(KEY, (None, 128, 128, 1))
        assert out_shape == (None, lo, lo, k)
        y, _ = conv.apply(params, {}, jnp.ones((1, 128, 128, 1)))
        assert y.shape == (1, lo, lo, k)
        assert L.MaxPool(f, stride=s).init(KEY, (None, 128, 128, k))[0] == (None, lo, lo, k)
        pool = L.MaxPool(f, stride=s, ceil_mode=True)
        assert pool.init(KEY, (None, 128, 128, k))[0] == (None, hi, hi, k)
        y, _ = pool.apply({}, {}, jnp.ones((1, 128, 128, k)))
        assert y.shape == (1, hi, hi, k)
        # the extra window at the edge sees real pixels only: max of ones is 1, not padding
        np.testing.assert_array_equal(np.asarray(y), 1.0)


def test_same_padding_keeps_the_size_at_stride_1_and_divides_it_otherwise():
    for n, f, s in [(28, 5, 1), (28, 3, 1), (27, 4, 1), (28, 5, 2), (27, 3, 2), (32, 3, 4)]:
        out_shape, _, _ = _abstract_init(L.Conv(2, f, stride=s, padding="SAME"), (None, n, n, 1))
        assert out_shape == (None, math.ceil(n / s), math.ceil(n / s), 2), (n, f, s)
    # the printed SAME formula with a stray "+1", (n + 2p - f + 1) / s + 1, would give 29 here
    assert _abstract_init(L.Conv(2, 5, padding="SAME"), (None, 28, 28, 1))[0][1] != 29


def test_parameter_sharing_makes_conv_far_smaller_than_dense():
    conv = L.Conv(6, 5)
    _, conv_params, _ = _abstract_init(conv, (None, 32, 32, 3))
    assert _count(conv_params) == (5 * 5 * 3 + 1) * 6 == 456
    # a dense layer from the same 32x32x3 input to the same 28x28x6 output
    dense = L.Dense(28 * 28 * 6)
    _, dense_params, _ = _abstract_init(dense, (None, 32 * 32 * 3))
    assert _count(dense_params) == (32 * 32 * 3 + 1) * 28 * 28 * 6 == 14_455_392
    assert _count(dense_params) > 30_000 * _count(conv_params)


def test_the_input_layer_has_no_parameters_and_w_h_c_neurons():
    table = summary(models.lenet5(), (None, 28, 28, 1))
    first = table.rows[0]
    assert (first.kind, first.params, first.neurons) == ("Input", 0, 28 * 28 * 1)
    table = summary(models.resnet20(), (None, 32, 32, 3))
    assert table.rows[0].neurons == 32 * 32 * 3 and table.rows[0].params == 0
