"""A model's table: per layer its output shape, parameters, neurons, receptive field, jump and
multiply-adds, with totals.

The receptive field r and jump j (distance in input pixels between neighbouring outputs) follow
the usual recurrence, per spatial axis: r_out = r_in + (d * (k - 1)) * j_in and
j_out = j_in * s for a window k, dilation d and stride s; global pooling and Flatten see the
whole input. Parallel branches and residual sums take the largest of their branches.

>>> from jaxcnn import models, summary
>>> table = summary(models.lenet5(), (None, 28, 28, 1))
>>> table.total_params, table.rows[1].name, table.rows[1].out_shape
(61706, 'conv1', (None, 28, 28, 6))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import jax

from jaxcnn import walk
from jaxcnn.layers.core import Layer, format_shape
from jaxcnn.typedefs import Shape

__all__ = ["Summary", "SummaryRow", "summary"]


@dataclass(frozen=True)
class SummaryRow:
    """One layer: ``name`` is its path in the params (``stage1/conv2``); ``receptive_field`` and
    ``jump`` are (h, w) in input pixels, None where the input has no spatial axes."""

    name: str
    kind: str
    out_shape: Shape
    params: int
    state: int
    neurons: int
    receptive_field: tuple[int, int] | None
    jump: tuple[int, int] | None
    macs: int


@dataclass(frozen=True)
class Summary:
    """The rows (the input first, then every layer in order) and their totals."""

    rows: tuple[SummaryRow, ...]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def total_state(self) -> int:
        return sum(r.state for r in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def out_shape(self) -> Shape:
        return self.rows[-1].out_shape

    def to_dicts(self) -> list[dict]:
        """The rows as plain dicts (JSON-ready)."""
        return [asdict(r) for r in self.rows]

    def __str__(self) -> str:
        head = ("layer", "kind", "output shape", "params", "neurons", "receptive field", "jump",
                "MACs")
        body = [(r.name, r.kind, format_shape(r.out_shape), f"{r.params:,}", f"{r.neurons:,}",
                 _hw(r.receptive_field), _hw(r.jump), f"{r.macs:,}") for r in self.rows]
        foot = ("total", "", "", f"{self.total_params:,}", "", "", "", f"{self.total_macs:,}")
        widths = [max(len(row[i]) for row in (head, *body, foot)) for i in range(len(head))]
        right = {3, 4, 7}

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        rule = "-" * len(line(head))
        extra = f"\nnon-trainable state: {self.total_state:,}" if self.total_state else ""
        return "\n".join([line(head), rule, *map(line, body), rule, line(foot)]) + extra


def _hw(v: tuple[int, int] | None) -> str:
    if v is None:
        return "-"
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _init_abstract(layer: Layer, in_shape: Shape):
    """(out_shape, params, state) of ``layer.init`` traced without allocating arrays."""
    box = {}

    def init(key):
        out, params, state = layer.init(key, in_shape)
        box["out"] = out
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0))
    return box["out"], params, state


def _geometry(info, in_shape, out_shape, rf, jump):
    if rf is None:
        return None, None
    if jump is None:  # after a global layer every output already sees the whole input
        return rf, None
    if info.window is not None:
        rf = tuple(r + d * (k - 1) * j for r, k, d, j in
                   zip(rf, info.window, info.dilation, jump, strict=True))
        return rf, tuple(j * s for j, s in zip(jump, info.stride, strict=True))
    if info.is_global and len(in_shape) == 4:
        rf = tuple(r + (n - 1) * j for r, n, j in zip(rf, in_shape[1:3], jump, strict=True))
        return rf, None
    return rf, jump


def _merge(a, b):
    if a is None or b is None:
        return a if b is None else b
    return tuple(max(x, y) for x, y in zip(a, b, strict=True))


def _rows(model: Layer, in_shape: Shape, rf, jump) -> list[SummaryRow]:
    """A row per leaf and per merging combinator (a serial one adds none), in apply's order:
    the value carried through the model is (shape, receptive field, jump)."""
    rows: list[SummaryRow] = []

    def leaf(node: walk.Node, flow):
        shape, rf, jump = flow
        out_shape, params, state = _init_abstract(node.layer, shape)
        rf, jump = _geometry(node.info, shape, out_shape, rf, jump)
        macs = node.info.macs(shape, out_shape) if node.info.macs else 0
        rows.append(SummaryRow(node.label, node.info.kind, out_shape, _count(params),
                               _count(state), math.prod(out_shape[1:]), rf, jump, macs))
        return out_shape, rf, jump

    def merge(node: walk.Node, flow, outputs):
        if node.info.combine is None:  # serial: its children's rows are its rows
            return outputs[0]
        out_rf = out_jump = None
        for _, b_rf, b_jump in outputs:
            out_rf, out_jump = _merge(out_rf, b_rf), _merge(out_jump, b_jump)
        out_shape, _, _ = _init_abstract(node.layer, flow[0])
        rows.append(SummaryRow(node.label, f"{node.info.kind}({node.info.combine})", out_shape,
                               0, 0, math.prod(out_shape[1:]), out_rf, out_jump, 0))
        return out_shape, out_rf, out_jump

    walk.propagate(model, (in_shape, rf, jump), leaf=leaf, merge=merge)
    return rows


def summary(model: Layer, in_shape: Shape) -> Summary:
    """The table of ``model`` for inputs of ``in_shape`` (batch first, None allowed).

    Counts come from the shapes ``init`` produces (traced, nothing allocated); ``print`` the
    result for a text table, or read ``.rows`` and the ``total_*`` properties. MACs are
    multiply-adds per example (conv and dense layers).
    """
    in_shape = tuple(in_shape)
    _init_abstract(model, in_shape)  # a bad shape fails here, with the failing layer's path
    spatial = len(in_shape) == 4
    rows: list[SummaryRow] = [SummaryRow("input", "Input", in_shape, 0, 0,
                                         math.prod(d for d in in_shape[1:]),
                                         (1, 1) if spatial else None,
                                         (1, 1) if spatial else None, 0)]
    rows += _rows(model, in_shape, rows[0].receptive_field, rows[0].jump)
    return Summary(tuple(rows))
