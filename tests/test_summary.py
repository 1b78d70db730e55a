"""jaxcnn.summary: totals, per-row shapes, neurons, receptive field and jump, multiply-adds.

Each figure is recomputed here: parameter totals from the leaves of ``init``'s params, row shapes
from ``init`` of the model cut after that row, receptive fields and jumps from the recurrence
r_out = r_in + d (k - 1) j_in, j_out = j_in s applied to the configurations the test itself
chose, MACs as H_out W_out C_out kh kw C_in / groups.
"""

from __future__ import annotations

import json
import math
import random

import jax
import pytest

from jaxcnn import layers as L
from jaxcnn import models
from jaxcnn.errors import LayerError
from jaxcnn.summarize import Summary, summary

KEY = jax.random.key(0)


def _abstract_init(layer, in_shape):
    box = {}

    def run(key):
        box["out"], params, state = layer.init(key, in_shape)
        return params, state

    params, state = jax.eval_shape(run, KEY)
    return box["out"], params, state


def _count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _rf_jump(geometry):
    """Receptive field and jump after each layer, one axis, by the recurrence.

    ``geometry``: (kernel, stride, dilation) per layer; (1, 1, 1) for pointwise layers.
    """
    r, j, out = 1, 1, []
    for k, s, d in geometry:
        r, j = r + d * (k - 1) * j, j * s
        out.append((r, j))
    return out


# ---------------------------------------------------------------------------------------------
# LeNet-5, row by row
# ---------------------------------------------------------------------------------------------


def _lenet_layers():
    """LeNet-5 written from its description, layer by layer, for prefix models."""
    return [L.Conv(6, 5, padding="SAME"), L.Relu(), L.MaxPool(2), L.Conv(16, 5), L.Relu(),
            L.MaxPool(2), L.Flatten(), L.Dense(120), L.Relu(), L.Dense(84), L.Relu(), L.Dense(10)]


@pytest.fixture(scope="module")
def lenet_table():
    return summary(models.lenet5(), (None, 28, 28, 1))


def test_lenet5_rows_names_shapes_params_neurons(lenet_table):
    rows = lenet_table.rows
    assert [r.name for r in rows] == [
        "input", "conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2", "flatten1",
        "dense1", "relu3", "dense2", "relu4", "dense3"]
    layers = _lenet_layers()
    assert len(rows) == len(layers) + 1
    for i, row in enumerate(rows[1:], start=1):
        prefix = L.serial(*layers[:i])
        out_shape, params, _ = _abstract_init(prefix, (None, 28, 28, 1))
        assert row.out_shape == out_shape, row.name
        assert row.neurons == math.prod(out_shape[1:]), row.name
        # a row's params are what its layer adds to the prefix
        before = _count(_abstract_init(L.serial(*layers[:i - 1]), (None, 28, 28, 1))[1]) \
            if i > 1 else 0
        assert row.params == _count(params) - before, row.name
    assert [r.params for r in rows] == [0, 156, 0, 0, 2416, 0, 0, 0, 48120, 0, 10164, 0, 850]
    assert rows[0].out_shape == (None, 28, 28, 1) and rows[0].neurons == 784
    assert lenet_table.total_params == 61_706
    assert lenet_table.total_state == 0
    assert lenet_table.out_shape == (None, 10)


def test_lenet5_receptive_field_and_jump(lenet_table):
    # conv5 s1, relu, pool2 s2, conv5 s1, relu, pool2 s2
    spatial = _rf_jump([(5, 1, 1), (1, 1, 1), (2, 2, 1), (5, 1, 1), (1, 1, 1), (2, 2, 1)])
    assert spatial == [(5, 1), (5, 1), (6, 2), (14, 2), (14, 2), (16, 4)]
    rows = lenet_table.rows
    assert rows[0].receptive_field == (1, 1) and rows[0].jump == (1, 1)
    for row, (r, j) in zip(rows[1:7], spatial, strict=True):
        assert row.receptive_field == (r, r), row.name
        assert row.jump == (j, j), row.name
    # Flatten sees all 5x5 positions of maxpool2: 16 + (5 - 1) * 4 = 32; after it there are no
    # spatial axes, so no jump, and the dense layers see the same 32x32 window
    for row in rows[7:]:
        assert row.receptive_field == (32, 32), row.name
        assert row.jump is None, row.name


def test_lenet5_multiply_adds(lenet_table):
    macs = {r.name: r.macs for r in lenet_table.rows}
    assert macs["conv1"] == 28 * 28 * 6 * 5 * 5 * 1 == 117_600
    assert macs["conv2"] == 10 * 10 * 16 * 5 * 5 * 6 == 240_000
    assert macs["dense1"] == 400 * 120 and macs["dense2"] == 120 * 84
    assert macs["dense3"] == 84 * 10
    assert macs["relu1"] == macs["maxpool1"] == macs["flatten1"] == 0
    assert lenet_table.total_macs == 117_600 + 240_000 + 48_000 + 10_080 + 840 == 416_520


def test_lenet5_table_text(lenet_table):
    text = str(lenet_table)
    for row in lenet_table.rows:
        assert row.name in text
    assert "61,706" in text
    assert "416,520" in text
    assert "(N, 28, 28, 6)" in text and "(N, 10)" in text
    last = text.splitlines()[-1].split()
    assert last[0] == "total" and "61,706" in last
    assert "non-trainable" not in text  # LeNet-5 has no state


# ---------------------------------------------------------------------------------------------
# Hand examples
# ---------------------------------------------------------------------------------------------


def test_receptive_field_hand_example_with_pool_and_dilation():
    net = L.serial(L.Conv(4, 3), L.Conv(4, 3), L.MaxPool(2), L.Conv(4, 3),
                   L.Conv(4, 3, dilation=2))
    table = summary(net, (None, 32, 32, 3))
    got = [(r.receptive_field, r.jump) for r in table.rows[1:]]
    assert got == [((3, 3), (1, 1)), ((5, 5), (1, 1)), ((6, 6), (2, 2)), ((10, 10), (2, 2)),
                   ((18, 18), (2, 2))]  # the dilated conv adds d (k - 1) j = 2 * 2 * 2
    assert [r for r, _ in _rf_jump([(3, 1, 1), (3, 1, 1), (2, 2, 1), (3, 1, 1), (3, 1, 2)])] == [
        3, 5, 6, 10, 18]


def test_rectangular_geometry_is_tracked_per_axis():
    net = L.serial(L.Conv(2, (3, 1), stride=(1, 2)), L.AvgPool((2, 3), stride=(2, 1)))
    rows = summary(net, (None, 16, 16, 1)).rows
    assert rows[1].receptive_field == (3, 1) and rows[1].jump == (1, 2)
    assert rows[2].receptive_field == (3 + 1 * 1, 1 + 2 * 2) and rows[2].jump == (2, 2)


def test_conv_macs_with_groups_stride_and_padding():
    net = L.serial(L.Conv(8, 3, groups=4, padding="SAME"), L.Conv(6, (3, 2), stride=2),
                   L.Flatten(), L.Dense(5, use_bias=False))
    rows = summary(net, (None, 9, 9, 8)).rows
    assert rows[1].out_shape == (None, 9, 9, 8)
    assert rows[1].macs == 9 * 9 * 8 * 3 * 3 * 8 // 4
    assert rows[1].params == 3 * 3 * (8 // 4) * 8 + 8
    assert rows[2].out_shape == (None, 4, 4, 6)  # (9 - 3) // 2 + 1, (9 - 2) // 2 + 1
    assert rows[2].macs == 4 * 4 * 6 * 3 * 2 * 8
    assert rows[4].macs == 96 * 5 and rows[4].params == 96 * 5


def test_state_is_counted_and_printed():
    table = summary(L.serial(L.Conv(4, 3), L.BatchNorm(), L.Relu()), (None, 8, 8, 2))
    bn = table.rows[2]
    assert (bn.kind, bn.params, bn.state) == ("BatchNorm", 2 * 4, 2 * 4)
    assert table.total_state == 8
    assert str(table).splitlines()[-1] == "non-trainable state: 8"


def test_to_dicts_is_json_ready():
    table = summary(L.serial(L.Conv(2, 3), L.Flatten(), L.Dense(3)), (None, 5, 5, 1))
    rows = json.loads(json.dumps(table.to_dicts()))
    assert [r["name"] for r in rows] == ["input", "conv1", "flatten1", "dense1"]
    assert rows[1]["params"] == 3 * 3 * 1 * 2 + 2 and rows[1]["out_shape"] == [None, 3, 3, 2]
    assert rows[1]["receptive_field"] == [3, 3] and rows[3]["jump"] is None


def test_summary_works_on_a_fixed_batch_and_a_single_layer():
    table = summary(L.Conv(2, 3), (4, 5, 5, 1))
    assert [r.out_shape for r in table.rows] == [(4, 5, 5, 1), (4, 3, 3, 2)]
    assert table.rows[1].neurons == 3 * 3 * 2 and table.total_params == 20


def test_summary_reports_bad_shapes_as_layer_errors():
    with pytest.raises(LayerError, match=r"Conv layer 'conv2': kernel_size \(5, 5\) spans 5x5 "
                                         r"pixels, larger than the padded input 4x4"):
        summary(models.lenet5(), (None, 8, 8, 1))


# ---------------------------------------------------------------------------------------------
# Every model and random stacks: totals equal the real parameter counts
# ---------------------------------------------------------------------------------------------
MODELS = [
    ("lenet5", models.lenet5, (None, 28, 28, 1)),
    ("lenet5-tanh-avg", lambda: models.lenet5(activation="tanh", pool="avg"), (None, 28, 28, 1)),
    ("simple_cnn", models.simple_cnn, (None, 28, 28, 1)),
    ("vgg", models.vgg, (None, 32, 32, 3)),
    ("vgg-dropout", lambda: models.vgg(stages=((8, 8), (16,)), batch_norm=False, dropout=0.5),
     (None, 16, 16, 1)),
    ("resnet20", models.resnet20, (None, 32, 32, 3)),
    ("resnet20-B", lambda: models.resnet20(shortcut="B"), (None, 32, 32, 3)),
]


@pytest.mark.parametrize("make, in_shape", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_model_totals_equal_the_leaves_of_init(make, in_shape):
    model = make()
    table = summary(model, in_shape)
    out_shape, params, state = _abstract_init(model, in_shape)
    assert table.total_params == _count(params)
    assert table.total_state == _count(state)
    assert table.out_shape == out_shape
    for row in table.rows:
        assert row.neurons == math.prod(row.out_shape[1:]), row.name
        assert row.receptive_field is None or min(row.receptive_field) >= 1
    # every row naming a leaf with params is a path into the params tree
    for row in table.rows:
        if row.params:
            node = params
            for part in row.name.split("/"):
                node = node[part]
            assert _count(node) == row.params, row.name


def _pads(n, k_eff, s, padding):
    """(lo, hi) for one axis: SAME by its definition (ceil(n / s) outputs, extra pixel at hi)."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        total = max((-(-n // s) - 1) * s + k_eff - n, 0)
        return total // 2, total - total // 2
    return padding, padding


def _windows(n, k_eff, s, padding, ceil_mode=False):
    """How many windows of ``k_eff`` pixels, stride ``s``, slide over one padded axis (0 when
    none fits); ceil mode adds a last partial window unless it would start past the input and
    its left padding."""
    lo, hi = _pads(n, k_eff, s, padding)
    padded = n + lo + hi
    if padded < k_eff:
        return 0
    out = (padded - k_eff) // s + 1
    if ceil_mode and (out - 1) * s + k_eff < padded and out * s < n + lo:
        out += 1
    return out


def _random_stack(seed):
    """A random stack of conv/pool/norm/activation layers that fits its input by construction.

    The generator tracks (H, W, C) with its own window arithmetic and draws each layer's
    configuration only among those valid for the current shape (groups dividing the channels,
    a (dilated) window no larger than the padded input, pooling padding at most half the
    window), so building the model must never raise. Returns the input shape, the layers and,
    per drawn layer, (kind, k, s, d, groups, expected output shape)."""
    rng = random.Random(seed)
    h, w, c = rng.randint(12, 20), rng.randint(12, 20), rng.choice([1, 2, 4])
    in_shape = (None, h, w, c)
    layers, geometry = [], []
    for _ in range(8):
        kind = rng.choice(["conv", "conv", "max", "avg", "bn", "relu", "dropout"])
        s, d, groups = rng.choice([1, 1, 2]), 1, 1
        if kind == "conv":
            groups = rng.choice([g for g in (1, 2) if c % g == 0])
            options = [(k, d, p) for k in (1, 2, 3) for d in (1, 1, 2) for p in ("VALID", "SAME", 1)
                       if min(_windows(n, d * (k - 1) + 1, s, p) for n in (h, w)) >= 1]
            k, d, padding = rng.choice(options)  # k = 1 always fits
            c = groups * rng.randint(1, 3)
            layer = L.Conv(c, k, stride=s, dilation=d, groups=groups, padding=padding)
            h, w = (_windows(n, d * (k - 1) + 1, s, padding) for n in (h, w))
        elif kind in ("max", "avg"):
            ceil_mode = rng.random() < 0.5
            options = [(k, p) for k in (2, 3) for p in ("VALID", "SAME")
                       if min(_windows(n, k, s, p) for n in (h, w)) >= 1
                       and max(max(_pads(n, k, s, p)) for n in (h, w)) <= k // 2]
            k, padding = rng.choice(options)  # SAME always fits
            pool = L.MaxPool if kind == "max" else L.AvgPool
            layer = pool(k, stride=s, padding=padding, ceil_mode=ceil_mode)
            h, w = (_windows(n, k, s, padding, ceil_mode) for n in (h, w))
        else:
            layer = {"bn": L.BatchNorm, "relu": L.Relu, "dropout": lambda: L.Dropout(0.5)}[kind]()
            k = s = 1
        layers.append(layer)
        geometry.append((kind, k, s, d, groups, (None, h, w, c)))
    layers += [L.Flatten(), L.Dense(rng.randint(2, 5))]
    return in_shape, layers, geometry


@pytest.mark.parametrize("seed", range(12))
def test_random_stacks_rows_match_prefix_models(seed):
    """Any LayerError here is a failure: every drawn stack fits its input by construction."""
    in_shape, layers, geometry = _random_stack(seed)
    table = summary(L.serial(*layers), in_shape)
    assert len(table.rows) == len(layers) + 1
    _, params, state = _abstract_init(L.serial(*layers), in_shape)
    assert table.total_params == _count(params)
    assert table.total_state == _count(state)
    prev_shape = in_shape
    rf_jump = _rf_jump([(k, s, d) for _, k, s, d, _, _ in geometry])
    for i, row in enumerate(table.rows[1:], start=1):
        out_shape = _abstract_init(L.serial(*layers[:i]), in_shape)[0]
        assert row.out_shape == out_shape, (i, row.name)
        assert row.neurons == math.prod(out_shape[1:])
        if i <= len(geometry):
            kind, k, s, d, groups, expected_shape = geometry[i - 1]
            assert out_shape == expected_shape, (i, row.name)
            r, j = rf_jump[i - 1]
            assert row.receptive_field == (r, r) and row.jump == (j, j), (i, row.name)
            if kind == "conv":
                c_in, c_out = prev_shape[3], out_shape[3]
                assert row.params == k * k * (c_in // groups) * c_out + c_out
                assert row.macs == out_shape[1] * out_shape[2] * c_out * k * k * c_in // groups
            else:
                assert row.macs == 0
        prev_shape = out_shape


# ---------------------------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------------------------


def test_windows_after_a_global_layer_keep_the_whole_input_as_receptive_field():
    """Spatial again after global pooling (a squeeze-excite style 1x1 conv): every output
    already sees the whole input, so the field stays and the jump is unknown."""
    net = L.serial(L.Conv(4, 3), L.GlobalAvgPool(),
                   L.Lambda(lambda x: x[:, None, None, :], per_example=True),
                   L.Conv(2, 1), L.MaxPool(1), L.Flatten())
    rows = summary(net, (None, 10, 12, 1)).rows
    assert [(r.kind, r.out_shape, r.receptive_field, r.jump) for r in rows[2:]] == [
        ("GlobalAvgPool", (None, 4), (3 + 7, 3 + 9), None),
        ("Lambda", (None, 1, 1, 4), (10, 12), None),
        ("Conv", (None, 1, 1, 2), (10, 12), None),
        ("MaxPool", (None, 1, 1, 2), (10, 12), None),
        ("Flatten", (None, 2), (10, 12), None)]
    assert "Conv" in str(summary(net, (None, 10, 12, 1)))


def test_parallel_rows_and_receptive_field_is_the_largest_branch():
    net = L.serial(L.parallel(L.Conv(2, 1), L.Conv(3, 5, padding="SAME"),
                              L.serial(L.Conv(2, 3, padding="SAME"), L.MaxPool(3, stride=1,
                                                                              padding="SAME")),
                              name="inception"),
                   L.GlobalAvgPool(), L.Dense(2))
    table = summary(net, (None, 8, 8, 3))
    by_name = {r.name: r for r in table.rows}
    assert by_name["inception/conv1"].receptive_field == (1, 1)
    assert by_name["inception/conv2"].receptive_field == (5, 5)
    assert by_name["inception/serial1/maxpool1"].receptive_field == (5, 5)  # 3 + 2
    merged = by_name["inception"]
    assert merged.kind == "Parallel(concat)"
    assert merged.out_shape == (None, 8, 8, 2 + 3 + 2) and merged.params == 0
    assert merged.receptive_field == (5, 5)
    assert table.total_params == (3 * 2 + 2) + (5 * 5 * 3 * 3 + 3) + (3 * 3 * 3 * 2 + 2) + \
        (7 * 2 + 2)
    assert by_name["globalavgpool1"].receptive_field == (5 + 7, 5 + 7)


def test_resnet20_summary_paths_and_residual_rows():
    table = summary(models.resnet20(), (None, 32, 32, 3))
    names = [r.name for r in table.rows]
    assert "stage1_block1/residual/conv1" in names
    assert "stage3_block3/residual/batchnorm2" in names
    residuals = [r for r in table.rows if r.kind == "Residual(sum)"]
    assert [r.name for r in residuals] == [f"stage{s}_block{b}/residual" for s in (1, 2, 3)
                                           for b in (1, 2, 3)]
    assert residuals[3].out_shape == (None, 16, 16, 32)
    assert table.total_params == 269_722
    assert table.total_state == 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    text = str(table)
    assert "269,722" in text and "non-trainable state: 1,376" in text
    # the 3x3 convs: stem 3, then +2 per conv at jump 1 (6 convs), the stride-2 conv of
    # stage 2 adds 2 at jump 1 and its second conv 2 * 2 at jump 2, ...
    by_name = {r.name: r for r in table.rows}
    assert by_name["stage1_block3/residual"].receptive_field == (3 + 6 * 2,) * 2
    assert by_name["stage2_block1/residual/conv1"].receptive_field == (17, 17)
    assert by_name["stage2_block1/residual/conv1"].jump == (2, 2)
    assert by_name["stage2_block1/residual/conv2"].receptive_field == (21, 21)
    assert by_name["stage2_block1/residual"].jump == (2, 2)


def test_option_a_shortcut_row_has_the_stride_of_its_subsampling():
    """The option-A shortcut takes every other pixel: neighbouring outputs are 2 input pixels
    apart, and each sees one pixel of the block's input (receptive field unchanged)."""
    table = summary(models.resnet20(), (None, 32, 32, 3))
    by_name = {r.name: r for r in table.rows}
    block_in = by_name["stage1_block3/relu1"]
    shortcut = by_name["stage2_block1/residual/shortcut"]
    assert shortcut.out_shape == (None, 16, 16, 32)
    assert shortcut.receptive_field == block_in.receptive_field
    assert shortcut.jump == (2 * block_in.jump[0], 2 * block_in.jump[1])


def test_summary_object_type():
    table = summary(L.Relu(), (None, 3))
    assert isinstance(table, Summary)
    assert [r.name for r in table.rows] == ["input", "relu"]
    assert table.rows[1].receptive_field is None and table.rows[1].jump is None
    assert table.total_params == table.total_macs == 0


def test_summary_is_exposed_at_package_level():
    import jaxcnn
    from jaxcnn import summarize

    assert jaxcnn.summary is summarize.summary
