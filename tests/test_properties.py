"""Property tests (hypothesis): random layer stacks, output-size arithmetic, bad configurations.

- Random valid stacks (conv/pool/activation/BatchNorm/Dropout blocks, residual, parallel and
  nested serial blocks, a Flatten or global-pooling head and a Dense) are drawn to fit their
  input: the strategy tracks (H, W, C) with its own window arithmetic and draws only layers
  that fit. For each stack, the shape ``init`` predicts (batch open) is the shape ``apply``
  returns, block by block (traced) and for the whole model on a real batch (finite values),
  in inference or in training; ``summary`` agrees with the real parameters (totals, per-row
  counts) and each row's neurons are the product of its output shape.
- :func:`jaxcnn.ops.conv_output_size` agrees with the shapes of ``conv2d``, ``max_pool`` and
  ``avg_pool`` (via ``jax.eval_shape``) and with an enumeration of the windows; it raises
  exactly when the op does.
- Bad configurations (constructor arguments, padding, rates, BatchNorm hyper-parameters,
  softmax axes, ``in_shape``, inputs of the wrong rank or size, kernels wider than the padded
  input, channels not divisible by groups) raise :class:`LayerError` naming the layer kind,
  never an exception from inside JAX.

Every test is derandomized (the same examples on every run) and writes no example database.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jaxcnn import layers as L
from jaxcnn import ops
from jaxcnn.errors import LayerError
from jaxcnn.summarize import summary

KEY = jax.random.key(0)


def _settings(n: int) -> settings:
    """Reproducible in CI: the same ``n`` examples every run, no database, no deadline."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    print_blob=False)


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _subtree(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


# ---------------------------------------------------------------------------------------------
# Window arithmetic of the strategies: enumerate window starts, no formula
# ---------------------------------------------------------------------------------------------


def _explicit(padding, n: int, k_eff: int, s: int) -> tuple[int, int]:
    """(lo, hi) for one axis; SAME by its definition: ceil(n / s) outputs, extra pixel at hi."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        out = -(-n // s)
        total = max((out - 1) * s + k_eff - n, 0)
        return total // 2, total - total // 2
    if isinstance(padding, int):
        return padding, padding
    return padding


def _n_windows(n: int, k_eff: int, s: int, lo: int, hi: int, ceil_mode: bool = False) -> int:
    """How many windows of k_eff pixels, stride s, slide over the padded axis (0 if none fits).

    Floor mode keeps the windows that lie inside the padded input. Ceil mode adds one partial
    window when those leave pixels at the end uncovered, unless it would start past the input
    and its left padding (PyTorch's rule); it never has fewer windows than floor mode."""
    padded = n + lo + hi
    if padded < k_eff:
        return 0
    starts = [0]
    while starts[-1] + s + k_eff <= padded:
        starts.append(starts[-1] + s)
    if ceil_mode and starts[-1] + k_eff < padded and starts[-1] + s < n + lo:
        starts.append(starts[-1] + s)
    return len(starts)


# ---------------------------------------------------------------------------------------------
# Strategies for valid stacks. A spec is plain data (printable, pinnable with @example):
# ("Conv", kwargs) for a leaf, ("residual", body_specs, shortcut_spec), ("parallel", combine,
# branch_specs), ("serial", specs).
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"negative_slope": 0.1}),
               ("Elu", {"alpha": 0.5}), ("Softmax", {}), ("LogSoftmax", {})]


def _np_init(shape_seed: int):
    """A NumPy initializer: no per-shape compile of jax.random, so stacks stay fast."""

    def init(key, shape, dtype):
        rng = np.random.default_rng([shape_seed, *shape])
        return jax.device_put(rng.uniform(-0.5, 0.5, shape).astype(dtype))

    return init


def build(spec) -> L.Layer:
    """The Layer a spec describes."""
    kind = spec[0]
    if kind == "serial":
        return L.serial(*map(build, spec[1]))
    if kind == "residual":
        shortcut = None if spec[2] is None else build(spec[2])
        return L.residual(*map(build, spec[1]), shortcut=shortcut)
    if kind == "parallel":
        return L.parallel(*map(build, spec[2]), combine=spec[1])
    kwargs = dict(spec[1])
    if kind in ("Conv", "Dense"):
        kwargs.update(w_init=_np_init(1), b_init=_np_init(2))
    return getattr(L, kind)(**kwargs)


def _pair_arg(draw, a: int, b: int):
    """An int when both axes agree (sometimes), else a tuple or a list."""
    if a == b and draw(st.booleans()):
        return a
    return draw(st.sampled_from([(a, b), [a, b]]))


def _padding_arg(draw, mode: str, pads):
    if mode in ("VALID", "SAME"):
        return draw(st.sampled_from([mode, mode.lower()]))
    if mode == "int":
        return pads[0][0]
    return pads


def _draw_pads(draw, mode: str, max_pads: tuple[int, int]):
    """Explicit ((top, bottom), (left, right)) for int/explicit modes, each <= max_pads[axis]."""
    if mode == "int":
        p = draw(st.integers(0, min(max_pads)))
        return (p, p), (p, p)
    if mode == "explicit":
        return tuple((draw(st.integers(0, m)), draw(st.integers(0, m))) for m in max_pads)
    return (0, 0), (0, 0)


@st.composite
def conv_block(draw, hwc):
    """A Conv that fits ``hwc``: (spec, out_hwc)."""
    h, w, c = hwc
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if c % g == 0]))
    features = groups * draw(st.integers(1, max(1, 4 // groups)))
    stride = [draw(st.integers(1, 3)) for _ in range(2)]
    dil = [draw(st.integers(1, 2)) for _ in range(2)]
    mode = draw(st.sampled_from(["VALID", "SAME", "int", "explicit"]))
    pads = _draw_pads(draw, mode, tuple(2 if n <= 10 else 0 for n in (h, w)))
    kernel, out = [], []
    for n, s, d, (lo, hi) in zip((h, w), stride, dil, pads, strict=True):
        # the largest kernel whose dilated span fits the padded axis (SAME always fits)
        k_max = 3 if mode == "SAME" else min(3, (n + lo + hi - 1) // d + 1)
        k = draw(st.integers(1, k_max))
        lo, hi = _explicit(mode if mode in ("VALID", "SAME") else (lo, hi), n, d * (k - 1) + 1, s)
        kernel.append(k)
        out.append(_n_windows(n, d * (k - 1) + 1, s, lo, hi))
    kwargs = {"features": features, "kernel_size": _pair_arg(draw, *kernel)}
    if stride != [1, 1] or draw(st.booleans()):
        kwargs["stride"] = _pair_arg(draw, *stride)
    if dil != [1, 1] or draw(st.booleans()):
        kwargs["dilation"] = _pair_arg(draw, *dil)
    kwargs["padding"] = _padding_arg(draw, mode, pads)
    if groups > 1 or draw(st.booleans()):
        kwargs["groups"] = groups
    if draw(st.booleans()):
        kwargs["use_bias"] = draw(st.booleans())
    return ("Conv", kwargs), (*out, features)


@st.composite
def pool_block(draw, hwc):
    """A MaxPool or AvgPool that fits ``hwc``: padding at most half the window per side (as
    PyTorch requires), so every window sees a real pixel."""
    h, w, c = hwc
    kind = draw(st.sampled_from(["MaxPool", "AvgPool"]))
    window = [draw(st.integers(1, min(3, n))) for n in (h, w)]
    stride = [draw(st.integers(1, 3)) for _ in range(2)] if draw(st.booleans()) else None
    strides = stride or window
    mode = draw(st.sampled_from(["VALID", "SAME", "int", "explicit"]))
    pads = _draw_pads(draw, mode, tuple(k // 2 for k in window))
    ceil_mode = draw(st.booleans())
    out = []
    for n, k, s, p in zip((h, w), window, strides, pads, strict=True):
        lo, hi = _explicit(mode if mode in ("VALID", "SAME") else p, n, k, s)
        out.append(_n_windows(n, k, s, lo, hi, ceil_mode))
    kwargs: dict[str, Any] = {"window": _pair_arg(draw, *window)}
    if stride is not None:
        kwargs["stride"] = _pair_arg(draw, *stride)
    kwargs["padding"] = _padding_arg(draw, mode, pads)
    if ceil_mode or draw(st.booleans()):
        kwargs["ceil_mode"] = ceil_mode
    if kind == "AvgPool" and draw(st.booleans()):
        kwargs["count_include_pad"] = draw(st.booleans())
    return (kind, kwargs), (*out, c)


def _elementwise(draw):
    """An activation, BatchNorm or Dropout: shape-preserving, any rank >= 2."""
    choice = draw(st.sampled_from(["act", "BatchNorm", "Dropout"]))
    if choice == "act":
        return draw(st.sampled_from(ACTIVATIONS))
    if choice == "Dropout":
        return "Dropout", {"rate": draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))}
    kwargs = {}
    for flag in ("use_scale", "use_bias"):
        if draw(st.booleans()):
            kwargs[flag] = draw(st.booleans())
    if draw(st.booleans()):
        kwargs["momentum"] = draw(st.sampled_from([0.0, 0.5, 0.99]))
    return "BatchNorm", kwargs


@st.composite
def residual_block(draw, hwc):
    """body = Conv(F, k, stride s, SAME) [+ norm/act] [+ Conv(F, k2, SAME)]; the shortcut is a
    strided 1x1 Conv when the body changes the shape (optional otherwise)."""
    h, w, c = hwc
    f = draw(st.integers(1, 4))
    s = draw(st.integers(1, 2))
    body = [("Conv", {"features": f, "kernel_size": draw(st.integers(1, 3)), "stride": s,
                      "padding": "SAME"})]
    body += [_elementwise(draw) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        body.append(("Conv", {"features": f, "kernel_size": draw(st.integers(1, 3)),
                              "padding": "SAME"}))
    shortcut = None
    if f != c or s != 1 or draw(st.booleans()):
        shortcut = ("Conv", {"features": f, "kernel_size": 1, "stride": s})
    return ("residual", body, shortcut), (-(-h // s), -(-w // s), f)


@st.composite
def parallel_block(draw, hwc):
    """2-3 branches with SAME padding and one shared stride, so their H, W agree; for "sum"
    they also agree on the channels."""
    h, w, c = hwc
    combine = draw(st.sampled_from(["concat", "sum"]))
    s = draw(st.integers(1, 2))
    f = draw(st.integers(1, 4))
    branches, channels = [], []
    for _ in range(draw(st.integers(2, 3))):
        kinds = ["Conv", "serial"] + (["MaxPool", "AvgPool"] if combine == "concat" or f == c
                                      else [])
        kind = draw(st.sampled_from(kinds))
        k = draw(st.integers(1, 3))
        if kind in ("MaxPool", "AvgPool"):
            branches.append((kind, {"window": k, "stride": s, "padding": "SAME"}))
            channels.append(c)
            continue
        fb = f if combine == "sum" else draw(st.integers(1, 4))
        conv = ("Conv", {"features": fb, "kernel_size": k, "stride": s, "padding": "SAME",
                         "dilation": draw(st.integers(1, 2))})
        branches.append(conv if kind == "Conv" else ("serial", [conv, _elementwise(draw)]))
        channels.append(fb)
    out_c = sum(channels) if combine == "concat" else f
    return ("parallel", combine, branches), (-(-h // s), -(-w // s), out_c)


@st.composite
def body_block(draw, hwc, depth=0):
    choices = ["conv", "conv", "pool", "elementwise"]
    if depth == 0:
        choices += ["residual", "parallel", "serial"]
    choice = draw(st.sampled_from(choices))
    if choice == "conv":
        return draw(conv_block(hwc))
    if choice == "pool":
        return draw(pool_block(hwc))
    if choice == "elementwise":
        return _elementwise(draw), hwc
    if choice == "residual":
        return draw(residual_block(hwc))
    if choice == "parallel":
        return draw(parallel_block(hwc))
    specs = []
    for _ in range(draw(st.integers(1, 2))):
        spec, hwc = draw(body_block(hwc, depth=1))
        specs.append(spec)
    return ("serial", specs), hwc


class Stack(NamedTuple):
    batch: int
    in_hwc: tuple[int, int, int]
    specs: list
    shapes: list  # the strategy's own out shape after each block, batch open
    train: bool
    seed: int


@st.composite
def stacks(draw):
    """A serial of 1-4 body blocks, a Flatten or global-pooling head, maybe an elementwise
    layer, a Dense, maybe a (log-)softmax."""
    hwc = (draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 4)))
    specs, shapes = [], []
    cur = hwc
    for _ in range(draw(st.integers(1, 4))):
        spec, cur = draw(body_block(cur))
        specs.append(spec)
        shapes.append((None, *cur))
    head = draw(st.sampled_from(["Flatten", "GlobalMaxPool", "GlobalAvgPool"]))
    specs.append((head, {}))
    feats = math.prod(cur) if head == "Flatten" else cur[2]
    shapes.append((None, feats))
    if draw(st.booleans()):
        specs.append(_elementwise(draw))
        shapes.append((None, feats))
    units = draw(st.integers(1, 5))
    specs.append(("Dense", {"features": units} if draw(st.booleans()) else
                  {"features": units, "use_bias": draw(st.booleans())}))
    shapes.append((None, units))
    if draw(st.booleans()):
        specs.append(draw(st.sampled_from([("Softmax", {}), ("LogSoftmax", {})])))
        shapes.append((None, units))
    return Stack(draw(st.integers(1, 2)), hwc, specs, shapes, draw(st.booleans()),
                 draw(st.integers(0, 2**16)))


@_settings(40)
@given(stack=stacks())
@example(stack=Stack(2, (5, 4, 2), [
    ("Conv", {"features": 2, "kernel_size": (3, 2), "stride": 2, "padding": "SAME",
              "dilation": (1, 2), "groups": 2}),
    ("residual", [("Conv", {"features": 3, "kernel_size": 3, "stride": 2, "padding": "SAME"}),
                  ("BatchNorm", {}), ("Relu", {})],
     ("Conv", {"features": 3, "kernel_size": 1, "stride": 2})),
    ("parallel", "concat", [("Conv", {"features": 2, "kernel_size": 1, "padding": "SAME"}),
                            ("MaxPool", {"window": 3, "stride": 1, "padding": "SAME"})]),
    ("GlobalAvgPool", {}), ("Dropout", {"rate": 0.5}), ("Dense", {"features": 3})],
    [(None, 3, 2, 2), (None, 2, 1, 3), (None, 2, 1, 5), (None, 5), (None, 5), (None, 3)],
    True, 0))
def test_random_stack_init_shapes_equal_apply_shapes_and_summary_counts(stack):
    blocks = [build(spec) for spec in stack.specs]
    names = L.child_names(blocks, "serial")
    model = L.serial(*blocks)
    in_shape = (None, *stack.in_hwc)
    out_shape, params, state = model.init(KEY, in_shape)
    assert out_shape == stack.shapes[-1]
    table = summary(model, in_shape)
    rows = {r.name: r for r in table.rows}

    # block by block, traced: the shape init predicts for each block (the summary's row, batch
    # open) is the strategy's and the shape its apply returns for a batch
    y = jax.ShapeDtypeStruct((stack.batch, *stack.in_hwc), jnp.float32)
    for nm, block, spec, want in zip(names, blocks, stack.specs, stack.shapes, strict=True):
        if spec[0] != "serial":  # a nested serial has rows for its children, none for itself
            assert rows[nm].out_shape == want, (nm, spec)
        p, s = params.get(nm, {}), state.get(nm, {})
        y, new_s = jax.eval_shape(
            lambda p, s, y, k, block=block: block.apply(p, s, y, key=k, train=stack.train),
            p, s, y, KEY)
        assert y.shape == (stack.batch, *want[1:]), (nm, spec)
        assert y.dtype == jnp.float32
        _assert_same_structure(new_s, s)

    # the whole model on a real batch (one compile): the shape init predicted, finite values
    # (pools pad at most half a window, so every window sees a real pixel), the same state tree
    x = np.random.default_rng(stack.seed).standard_normal((stack.batch, *stack.in_hwc))
    y, new_state = _run_compiled(
        lambda p, s, x, k: model.apply(p, s, x, key=k, train=stack.train),
        params, state, jax.device_put(x.astype(np.float32)), KEY)
    assert y.shape == (stack.batch, *out_shape[1:])
    assert np.isfinite(np.asarray(y)).all()
    _assert_same_structure(new_state, state)

    # summary: totals are the real leaves; each leaf row's params and state are its subtree's
    assert table.out_shape == out_shape
    assert table.total_params == _count(params)
    assert table.total_state == _count(state)
    assert table.rows[0].out_shape == in_shape
    assert len(rows) == len(table.rows), "row names must be unique"
    for row in table.rows:
        assert row.neurons == math.prod(row.out_shape[1:]), row
        assert row.out_shape[0] is None, row
        if row.name != "input" and not row.kind.startswith(("Parallel", "Residual")):
            assert row.params == _count(_subtree(params, row.name)), row
            assert row.state == _count(_subtree(state, row.name)), row


def _run_compiled(fn, *args):
    """``fn(*args)`` compiled once, at XLA's lowest optimisation level: every random model is a
    new compile, and shapes and finiteness do not need fast code (this halves the test's time;
    eager dispatch would compile each op separately, ~10 compiles per model)."""
    compiled = jax.jit(fn).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return compiled(*args)


def _assert_same_structure(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert [leaf.shape for leaf in jax.tree.leaves(a)] == [leaf.shape for leaf in
                                                          jax.tree.leaves(b)]


# ---------------------------------------------------------------------------------------------
# conv_output_size against the real ops
# ---------------------------------------------------------------------------------------------


class Geometry(NamedTuple):
    hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: Any  # what the op takes: "VALID", "SAME", an int, ((t, b), (l, r))
    ceil_mode: bool


@st.composite
def geometries(draw, *, pool: bool):
    """Any geometry, fitting or not (a kernel may be wider than the padded input). For pools,
    mostly padding of at most half the window, the only padding they accept."""
    hw = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    kernel = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (1, 1) if pool else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    most = tuple(k // 2 for k in kernel) if pool and draw(st.integers(0, 3)) else (4, 4)
    per_axis = [st.tuples(st.integers(0, m), st.integers(0, m)) for m in most]
    padding = draw(st.one_of(
        st.sampled_from(["VALID", "SAME"]), st.integers(0, min(3, *most)),
        st.tuples(*per_axis)))
    return Geometry(hw, kernel, stride, dilation, padding, pool and draw(st.booleans()))


def _axis_padding(padding, axis: int):
    """The padding of one axis in conv_output_size's form: "VALID", "SAME", an int or (lo, hi)."""
    return padding[axis] if isinstance(padding, tuple) else padding


def _sizes(g: Geometry) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(conv_output_size per axis or None where it raises, the windows enumerated per axis)."""
    got, want = [], []
    for a in range(2):
        n, k, s, d = g.hw[a], g.kernel[a], g.stride[a], g.dilation[a]
        pad = _axis_padding(g.padding, a)
        want.append(_n_windows(n, d * (k - 1) + 1, s, *_explicit(pad, n, d * (k - 1) + 1, s),
                               g.ceil_mode))
        try:
            got.append(ops.conv_output_size(n, k, stride=s, padding=pad, dilation=d,
                                            ceil_mode=g.ceil_mode))
        except ValueError as e:
            assert str(e).startswith("conv_output_size: kernel spans"), e
            got.append(None)
    return (None if None in got else (got[0], got[1])), (want[0], want[1])


def _check_sizes(g: Geometry, op_shape, predicted, windows) -> None:
    """The op's spatial shape is conv_output_size's, which is the number of windows; where no
    window fits, both raise."""
    if predicted is None:
        assert op_shape is None, "conv_output_size raised but the op did not"
        assert 0 in windows
        return
    assert op_shape == predicted
    assert predicted == windows
    if g.padding == "SAME" and not g.ceil_mode:
        assert predicted == tuple(-(-n // s) for n, s in zip(g.hw, g.stride, strict=True))


def _op_spatial(fn, *args, match: str):
    """The (H, W) of ``fn``'s output shape traced by eval_shape, None if it raises ValueError
    (whose message must match)."""
    try:
        return tuple(jax.eval_shape(fn, *args).shape[1:3])
    except ValueError as e:
        assert re.search(match, str(e)), e
        return None


@_settings(150)
@given(g=geometries(pool=False), groups=st.integers(1, 3))
def test_conv_output_size_matches_conv2d(g, groups):
    predicted, windows = _sizes(g)
    x = jax.ShapeDtypeStruct((2, *g.hw, 2 * groups), jnp.float32)
    w = jax.ShapeDtypeStruct((*g.kernel, 2, 3 * groups), jnp.float32)

    def conv(x, w):
        return ops.conv2d(x, w, stride=g.stride, padding=g.padding, dilation=g.dilation,
                          groups=groups)

    out = _op_spatial(conv, x, w, match=r"^conv2d: kernel .* larger than the padded input")
    _check_sizes(g, out, predicted, windows)
    if out is not None:
        assert jax.eval_shape(conv, x, w).shape == (2, *out, 3 * groups)


@_settings(150)
@given(g=geometries(pool=True), op=st.sampled_from(["max_pool", "avg_pool", "avg_pool_exclude"]),
       default_stride=st.booleans())
def test_conv_output_size_matches_pooling(g, op, default_stride):
    if default_stride:
        g = g._replace(stride=g.kernel)
    predicted, windows = _sizes(g)
    kwargs = {"count_include_pad": False} if op == "avg_pool_exclude" else {}
    fn = getattr(ops, op.removesuffix("_exclude"))

    def pool(x):
        return fn(x, g.kernel, stride=None if default_stride else g.stride, padding=g.padding,
                  ceil_mode=g.ceil_mode, **kwargs)

    x = jax.ShapeDtypeStruct((1, *g.hw, 3), jnp.float32)
    pads = [_explicit(_axis_padding(g.padding, a), g.hw[a], g.kernel[a], g.stride[a])
            for a in range(2)]
    if any(max(p) > k // 2 for p, k in zip(pads, g.kernel, strict=True)):
        # pools refuse padding over half the window (windows of padding alone)
        with pytest.raises(ValueError, match=r"^\w+_pool: (window .* larger than the padded "
                           r"input|padding .* at most half the window)"):
            jax.eval_shape(pool, x)
        return
    out = _op_spatial(pool, x, match=r"^\w+_pool: window .* larger than the padded input")
    _check_sizes(g, out, predicted, windows)


@_settings(150)
@given(g=geometries(pool=True))
@example(g=Geometry(hw=(1, 1), kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=1,
                    ceil_mode=True))
def test_conv_output_size_ceil_mode_never_gives_fewer_windows(g):
    """Rounding up adds at most one window: ceil_mode gives floor mode's count or one more."""
    for a in range(2):
        pad = _axis_padding(g.padding, a)
        try:
            floor = ops.conv_output_size(g.hw[a], g.kernel[a], stride=g.stride[a], padding=pad)
        except ValueError:
            continue
        ceil = ops.conv_output_size(g.hw[a], g.kernel[a], stride=g.stride[a], padding=pad,
                                    ceil_mode=True)
        assert ceil in (floor, floor + 1), (a, floor, ceil)


# ---------------------------------------------------------------------------------------------
# Bad configurations raise LayerError naming the layer
# ---------------------------------------------------------------------------------------------


class Bad(NamedTuple):
    """``kind(**kwargs)``, then ``init(KEY, init_shape)``, then ``apply`` (traced) on an input
    of ``apply_shape``: the last stage given must raise; ``arg`` must appear in the message."""

    kind: str
    kwargs: dict
    init_shape: Any = None
    apply_shape: Any = None
    arg: str | None = None


def _not_positive_int():
    return st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True),
                     st.text(max_size=3), st.none(), st.just(2.0), st.just("3"))


def _not_pair():
    """Neither a positive int nor a pair of them."""
    good = st.integers(1, 5)
    return st.one_of(
        _not_positive_int(),
        st.tuples(good, _not_positive_int()), st.tuples(_not_positive_int(), good),
        st.lists(good, max_size=4).filter(lambda v: len(v) != 2).map(tuple),
        st.sets(good, min_size=2, max_size=2), st.just(np.array([2, 2])))


def _bad_padding():
    return st.one_of(
        st.text(max_size=5).filter(lambda s: s.upper() not in ("VALID", "SAME")),
        st.integers(max_value=-1), st.booleans(), st.floats(), st.none(),
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2))),
        st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2))] * 3),
        st.tuples(st.tuples(st.integers(max_value=-1), st.integers(0, 2)),
                  st.tuples(st.integers(0, 2), st.integers(0, 2))),
        st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                  st.tuples(st.integers(0, 2), st.one_of(st.floats(), st.booleans(),
                                                         st.text(max_size=2)))),
        st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
                  st.tuples(st.integers(0, 2), st.integers(0, 2))))


def _not_fraction():
    """Outside [0, 1): negative, >= 1 (infinity too), NaN, bools, strings, None."""
    return st.one_of(
        st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0),
        st.integers(max_value=-1), st.integers(min_value=1), st.just(math.nan), st.booleans(),
        st.text(max_size=3), st.none(), st.just("0.5"))


def _not_positive_finite():
    """Not > 0 and finite: zero, negative, infinity, NaN, bools, strings, None."""
    return st.one_of(
        st.floats(max_value=0.0), st.integers(max_value=0), st.just(math.inf),
        st.just(math.nan), st.booleans(), st.text(max_size=3), st.none(), st.just("1e-5"))


@st.composite
def bad_constructors(draw):
    """A constructor argument out of its domain; everything else valid."""
    choice = draw(st.sampled_from([
        "Conv.features", "Conv.kernel_size", "Conv.stride", "Conv.dilation", "Conv.groups",
        "Conv.padding", "Conv.features%groups", "MaxPool.window", "MaxPool.stride",
        "MaxPool.padding", "AvgPool.window", "AvgPool.stride", "AvgPool.padding",
        "Dense.features", "Dropout.rate", "BatchNorm.momentum", "BatchNorm.epsilon",
        "LeakyRelu.negative_slope", "Elu.alpha"]))
    kind, arg = choice.split(".")
    base = {"Conv": {"features": 4, "kernel_size": 3}, "MaxPool": {"window": 2},
            "AvgPool": {"window": 2}, "Dense": {"features": 3}}.get(kind, {})
    if arg == "features%groups":
        g = draw(st.integers(2, 6))
        f = draw(st.integers(1, 20).filter(lambda f: f % g))
        return Bad(kind, {**base, "features": f, "groups": g}, arg="divisible by groups")
    if arg in ("features", "groups"):
        value = draw(_not_positive_int())
    elif arg == "padding":
        value = draw(_bad_padding())
    elif arg in ("rate", "momentum"):
        value = draw(_not_fraction())
    elif arg == "epsilon":
        value = draw(_not_positive_finite())
    elif arg in ("negative_slope", "alpha"):
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, "0.1", None, 1j]))
    else:
        value = draw(_not_pair())
        if arg == "stride" and kind != "Conv" and value is None:
            value = 0  # a pool's stride=None means "the window"
    return Bad(kind, {**base, arg: value}, arg=arg)


@_settings(200)
@given(bad=bad_constructors())
def test_bad_constructor_arguments_raise_layer_error(bad):
    with pytest.raises(LayerError) as info:
        getattr(L, bad.kind)(**bad.kwargs)
    _check_error(info.value, bad)
    if bad.arg in bad.kwargs:  # the message shows the value given
        assert repr(bad.kwargs[bad.arg]) in str(info.value)


@st.composite
def bad_shapes(draw):
    """An init on an input that cannot work: wrong rank (Dense on 4-D), a kernel or window
    wider than the padded input, channels not divisible by groups."""
    choice = draw(st.sampled_from(["rank", "too_large", "groups"]))
    hw = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    c = draw(st.integers(1, 6))
    if choice == "rank":
        kind, rank_ok = draw(st.sampled_from([
            ("Conv", {4}), ("MaxPool", {4}), ("AvgPool", {4}), ("GlobalMaxPool", {4}),
            ("GlobalAvgPool", {4}), ("Dense", {2}), ("Flatten", None), ("BatchNorm", None)]))
        kwargs = {"Conv": {"features": 2, "kernel_size": 1}, "MaxPool": {"window": 1},
                  "AvgPool": {"window": 1}, "Dense": {"features": 2}}.get(kind, {})
        if rank_ok is None:  # Flatten and BatchNorm take any rank >= 2
            rank = 1
        else:
            rank = draw(st.integers(1, 6).filter(lambda r: r not in rank_ok))
        shape = (draw(st.sampled_from([None, 1, 2])),
                 *[draw(st.integers(1, 5)) for _ in range(rank - 1)])
        return Bad(kind, kwargs, init_shape=shape, arg="rank")
    if choice == "groups":
        g = draw(st.integers(2, 4))
        c = draw(st.integers(1, 12).filter(lambda c: c % g))
        kwargs = {"features": g * draw(st.integers(1, 2)), "kernel_size": 1, "groups": g}
        return Bad("Conv", kwargs, init_shape=(None, *hw, c), arg="divisible by groups")
    kind = draw(st.sampled_from(["Conv", "MaxPool", "AvgPool"]))
    mode = draw(st.sampled_from(["VALID", "int", "explicit"]))
    pads = _draw_pads(draw, mode, (3, 3))
    dil = [1, 1] if kind != "Conv" else [draw(st.integers(1, 3)) for _ in range(2)]
    axis = draw(st.integers(0, 1))  # this axis does not fit; the other one may or may not
    kernel = []
    for a, (n, d, (lo, hi)) in enumerate(zip(hw, dil, pads, strict=True)):
        smallest = (n + lo + hi - 1) // d + 2  # d * (k - 1) + 1 > n + lo + hi from here on
        kernel.append(draw(st.integers(smallest, smallest + 2)) if a == axis
                      else draw(st.integers(1, smallest + 1)))
    if kind == "Conv":
        kwargs = {"features": 2, "kernel_size": tuple(kernel), "dilation": tuple(dil)}
    else:
        kwargs = {"window": tuple(kernel)}
    kwargs["padding"] = _padding_arg(draw, mode, pads)
    return Bad(kind, kwargs, init_shape=(None, *hw, c), arg="larger than the padded input")


@_settings(150)
@given(bad=bad_shapes())
def test_bad_input_shapes_raise_layer_error_at_init(bad):
    layer = build((bad.kind, bad.kwargs))
    with pytest.raises(LayerError) as info:
        layer.init(KEY, bad.init_shape)
    _check_error(info.value, bad)
    if bad.kind == "Dense" and len(bad.init_shape) > 2:
        assert "put Flatten() before it" in str(info.value)


def _check_error(err: LayerError, bad: Bad) -> None:
    assert type(err) is LayerError
    assert isinstance(err, ValueError)
    assert err.kind == bad.kind
    assert str(err).startswith(f"{bad.kind} layer")
    if bad.arg is not None:
        assert bad.arg in str(err)


@st.composite
def bad_in_shapes(draw):
    """An ``in_shape`` that is not a shape: a dimension after the batch that is not a positive
    int, a batch that is neither None nor an int >= -1 (-1 means open), no batch at all, or not
    a tuple."""
    kind, rank = draw(st.sampled_from([
        ("Conv", 4), ("MaxPool", 4), ("AvgPool", 4), ("GlobalMaxPool", 4), ("GlobalAvgPool", 4),
        ("Flatten", 4), ("Dense", 2), ("Dropout", 3), ("BatchNorm", 4), ("Relu", 2),
        ("Softmax", 2)]))
    kwargs = {"Conv": {"features": 2, "kernel_size": 1}, "MaxPool": {"window": 1},
              "AvgPool": {"window": 1}, "Dense": {"features": 2},
              "Dropout": {"rate": 0.5}}.get(kind, {})
    shape = [None, *[draw(st.integers(1, 4)) for _ in range(rank - 1)]]
    where = draw(st.sampled_from(["dim", "batch", "whole"]))
    if where == "dim":
        shape[draw(st.integers(1, rank - 1))] = draw(st.one_of(
            st.integers(max_value=0), st.none(), st.floats(), st.booleans(), st.text(max_size=2),
            st.just(2.0)))
    elif where == "batch":
        shape[0] = draw(st.one_of(st.integers(max_value=-2), st.floats(), st.booleans(),
                                  st.text(max_size=2)))
    else:
        return Bad(kind, kwargs, init_shape=draw(st.sampled_from(
            [(), 4, None, "NHWC", {"shape": 4}, 2.5])))
    return Bad(kind, kwargs, init_shape=tuple(shape), arg="in_shape")


@_settings(150)
@given(bad=bad_in_shapes())
@example(bad=Bad("Relu", {}, init_shape=()))  # IndexError in layers._concrete
@example(bad=Bad("Conv", {"features": 2, "kernel_size": 1}, init_shape=(-2, 1, 1, 1),
                 arg="in_shape"))  # TypeError from jax.eval_shape
@example(bad=Bad("MaxPool", {"window": 1}, init_shape=(-2, 1, 1, 1),
                 arg="in_shape"))  # no error: out_shape (-2, 1, 1, 1)
def test_bad_in_shape_raises_layer_error(bad):
    layer = build((bad.kind, bad.kwargs))
    with pytest.raises(LayerError) as info:
        layer.init(KEY, bad.init_shape)
    _check_error(info.value, bad)


@st.composite
def bad_inputs(draw):
    """An apply on an input that disagrees with what init saw: another rank, another channel
    (feature) count, or a spatial size the kernel or window no longer fits."""
    choice = draw(st.sampled_from(["rank", "channels", "too_small"]))
    c = draw(st.integers(1, 4))
    if choice == "rank":
        kind = draw(st.sampled_from(["Conv", "MaxPool", "AvgPool", "GlobalMaxPool",
                                     "GlobalAvgPool", "Dense"]))
        kwargs = {"Conv": {"features": 2, "kernel_size": 1}, "MaxPool": {"window": 1},
                  "AvgPool": {"window": 1}, "Dense": {"features": 2}}.get(kind, {})
        init_shape = (None, c) if kind == "Dense" else (None, 3, 3, c)
        rank = draw(st.integers(0, 5).filter(lambda r: r != len(init_shape)))
        return Bad(kind, kwargs, init_shape, (2, 3, 3, c, 1)[:rank] if rank else ())
    if choice == "channels":
        kind = draw(st.sampled_from(["Conv", "Dense", "BatchNorm"]))
        other = draw(st.integers(1, 5).filter(lambda d: d != c))
        kwargs = {"Conv": {"features": 2, "kernel_size": 1}, "Dense": {"features": 2}}.get(
            kind, {})
        if kind == "Dense" or (kind == "BatchNorm" and draw(st.booleans())):
            return Bad(kind, kwargs, (None, c), (2, other))
        return Bad(kind, kwargs, (None, 3, 3, c), (2, 3, 3, other))
    kind = draw(st.sampled_from(["Conv", "MaxPool", "AvgPool"]))
    k = draw(st.integers(2, 4))
    kwargs = {"features": 2, "kernel_size": k} if kind == "Conv" else {"window": k}
    small = (draw(st.integers(1, k - 1)), draw(st.integers(1, 6)))
    return Bad(kind, kwargs, (None, 6, 6, c), (1, *draw(st.permutations(small)), c),
               arg="larger than the padded input")


@_settings(150)
@given(bad=bad_inputs())
@example(bad=Bad("BatchNorm", {}, (None, 3, 3, 2), (2, 3, 3, 3)))  # ValueError from jax
@example(bad=Bad("BatchNorm", {}, (None, 3, 3, 1), (2, 3, 3, 2)))  # no error: C=1 broadcast
@example(bad=Bad("BatchNorm", {}, (None, 4), (2, 1)))  # no error: the input broadcast to C=4
def test_bad_inputs_raise_layer_error_at_apply(bad):
    layer = build((bad.kind, bad.kwargs))
    _, params, state = layer.init(KEY, bad.init_shape)
    x = jax.ShapeDtypeStruct(bad.apply_shape, jnp.float32)
    with pytest.raises(LayerError) as info:
        jax.eval_shape(lambda p, s, x: layer.apply(p, s, x), params, state, x)
    _check_error(info.value, bad)


@_settings(60)
@given(kind=st.sampled_from(["Softmax", "LogSoftmax"]), rank=st.integers(2, 4),
       axis=st.one_of(st.integers(-8, 8), st.floats(), st.text(max_size=2), st.booleans(),
                      st.none()))
@example(kind="Softmax", rank=2, axis=1.5)  # TypeError from jax.nn.softmax
@example(kind="Softmax", rank=2, axis="a")  # NameError (an unbound named axis) from jax
def test_softmax_axis_is_an_int_in_range_or_a_layer_error(kind, rank, axis):
    """Construction or init either accepts ``axis`` (an int in [-rank, rank)) or raises
    LayerError, never an error from inside jax."""
    in_shape = (None, *range(2, rank + 1))
    valid = isinstance(axis, int) and not isinstance(axis, bool) and -rank <= axis < rank
    if valid:
        assert getattr(L, kind)(axis).init(KEY, in_shape)[0] == in_shape
        return
    with pytest.raises(LayerError) as info:
        getattr(L, kind)(axis).init(KEY, in_shape)
    _check_error(info.value, Bad(kind, {}, arg="axis"))
