"""The one walk over a model's layer tree: its structure (every layer, by its path in the
params) and its values (the model applied layer by layer, with outputs recorded on the way).

A model is a tree. Combinators (serial, parallel, residual) have children, named as in the
params: the layer at path ``residual1/conv2`` keeps its params at
``params["residual1"]["conv2"]``. A combinator wires its children by
:attr:`~jaxcnn.layers.LayerInfo.branches` (each branch a chain of children from the
combinator's input) and merges the branches' outputs by
:attr:`~jaxcnn.layers.LayerInfo.combine`. Every layer without branches is a leaf here.

- :func:`nodes` lists every layer, a combinator before its children; :func:`children` and
  :func:`subtree` step down one level, or to a layer's part of params and state.
- :func:`propagate` carries any value through the tree in the order ``apply`` computes:
  arrays (:func:`record_outputs`, :func:`intermediates`) or shapes and receptive fields
  (:func:`jaxcnn.summary`).
- :func:`first_not_per_example` finds the layer that keeps a model from being computed in
  slices of its batch.

>>> import jax
>>> from jaxcnn import layers as L, walk
>>> net = L.serial(L.Conv(4, 3), L.Relu(), L.residual(L.Conv(4, 3, padding="SAME")))
>>> [node.path for node in walk.nodes(net)]
['', 'conv1', 'relu1', 'residual1', 'residual1/conv1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from jaxcnn.errors import LayerError
from jaxcnn.layers.combinators import merge_branches
from jaxcnn.layers.core import Layer, LayerInfo, layer_info
from jaxcnn.typedefs import Array, Params, State

__all__ = ["Node", "children", "first_not_per_example", "intermediates", "nodes", "propagate",
           "record_outputs", "subtree"]

T = TypeVar("T")


@dataclass(frozen=True)
class Node:
    """One layer of a model: ``names`` is its path of child names from the model (``()`` for
    the model itself), ``info`` its :class:`~jaxcnn.layers.LayerInfo`."""

    names: tuple[str, ...]
    layer: Layer
    info: LayerInfo

    @property
    def path(self) -> str:
        """``"residual1/conv2"``; ``""`` for the model itself."""
        return "/".join(self.names)

    @property
    def label(self) -> str:
        """The name tables and dicts use for the layer: its path, or its kind's base name
        (``"serial"``, ``"conv"``) for the model itself."""
        return self.path or self.info.base


def _root(model: Layer) -> Node:
    return Node((), model, layer_info(model))


def children(node: Node) -> tuple[Node, ...]:
    """The layers directly inside ``node`` (a combinator's children; none for a leaf)."""
    return tuple(Node((*node.names, nm), child, layer_info(child))
                 for nm, child in node.info.children)


def nodes(model: Layer) -> Iterator[Node]:
    """Every layer of ``model``, the model itself first, each combinator before its children
    and children in their order. The paths are those of the params and state: a layer with
    params keeps them at ``subtree(params, node)``."""
    stack = [_root(model)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def subtree(tree: Params | State, node: Node | str) -> Any:
    """The part of ``tree`` (params or state) that belongs to ``node`` (or the layer at that
    path): ``{}`` for a layer that stores nothing. Anything but a dict is passed on as it is,
    for the layer's own check to name."""
    names = node.names if isinstance(node, Node) else tuple(n for n in node.split("/") if n)
    for nm in names:
        tree = tree.get(nm, {}) if isinstance(tree, dict) else tree
    return tree


def propagate(model: Layer, x: T, *, leaf: Callable[[Node, T], T],
              merge: Callable[[Node, T, list[T]], T]) -> T:
    """Carry ``x`` through ``model`` in the order ``apply`` computes, and return what comes
    out.

    A leaf turns its input into its output with ``leaf(node, x)``. A combinator runs each of
    its branches (its children in series, from the combinator's input ``x``; an empty branch
    passes ``x`` on) and hands the branches' outputs to ``merge(node, x, outputs)``. A
    :class:`~jaxcnn.errors.LayerError` raised inside a child is located at the child's path,
    as the combinators' own ``apply`` does. See :func:`record_outputs` for arrays and
    :func:`jaxcnn.summary` for shapes and receptive fields.
    """
    return _propagate(_root(model), x, leaf, merge)


def _propagate(node: Node, x: T, leaf: Callable, merge: Callable) -> T:
    if not node.info.branches:
        return leaf(node, x)
    kids = {child.names[-1]: child for child in children(node)}
    outputs = []
    for branch in node.info.branches:
        h = x
        for nm in branch:
            try:
                h = _propagate(kids[nm], h, leaf, merge)
            except LayerError as e:
                raise e.at(nm) from None
        outputs.append(h)
    return merge(node, x, outputs)


def record_outputs(model: Layer, params: Params, state: State, x: Array, *,
                   where: Callable[[Node], bool]) -> tuple[Array, dict[str, Array]]:
    """Apply ``model`` in inference mode one layer at a time; -> (its output, ``{label:
    output}`` of every layer, combinators included, for which ``where(node)``).

    x: (N, ...) as ``model.apply`` takes it. The output equals ``model.apply(params, state, x)``
    (each combinator's output is merged from its children's, as its ``apply`` does, so
    nothing is computed twice). Traceable: jit it, or ``jax.eval_shape`` it for the shapes.

    >>> import jax, numpy as np
    >>> from jaxcnn import layers as L
    >>> net = L.serial(L.Conv(2, 3), L.Relu(), L.Flatten(), L.Dense(3))
    >>> _, params, state = net.init(jax.random.key(0), (None, 5, 5, 1))
    >>> y, out = record_outputs(net, params, state, np.ones((1, 5, 5, 1), np.float32),
    ...                         where=lambda node: node.path in ("conv1", "relu1"))
    >>> {k: v.shape for k, v in out.items()}
    {'conv1': (1, 3, 3, 2), 'relu1': (1, 3, 3, 2)}
    """
    recorded: dict[str, Array] = {}

    def keep(node: Node, y: Array) -> Array:
        if where(node):
            recorded[node.label] = y
        return y

    def leaf(node: Node, h: Array) -> Array:
        y, _ = node.layer.apply(subtree(params, node), subtree(state, node), h, train=False)
        return keep(node, y)

    def merge(node: Node, h: Array, outputs: list[Array]) -> Array:
        return keep(node, merge_branches(node.info.combine, outputs))

    y = propagate(model, x, leaf=leaf, merge=merge)
    return y, recorded


def intermediates(model: Layer, params: Params, state: State, x: Array, *,
                  kinds: Sequence[str] = ("Conv",)) -> dict[str, Array]:
    """The outputs of every layer whose kind is in ``kinds`` (``LayerInfo.kind``, e.g.
    ``"Conv"``), by path (``"conv1"``, ``"residual1/conv2"``), in inference mode, at any depth
    of nested serial, parallel and residual combinators. x: (N, H, W, C) float32.

    >>> import jax, numpy as np
    >>> from jaxcnn import models
    >>> model = models.lenet5()
    >>> _, params, state = model.init(jax.random.key(0), (None, 28, 28, 1))
    >>> feats = intermediates(model, params, state, np.zeros((2, 28, 28, 1), np.float32))
    >>> {k: v.shape for k, v in feats.items()}
    {'conv1': (2, 28, 28, 6), 'conv2': (2, 10, 10, 16)}
    """
    if isinstance(kinds, str):
        raise ValueError(f"intermediates: kinds must be a sequence of layer kinds, e.g. "
                         f"({kinds!r},), got the string {kinds!r}")
    wanted = frozenset(kinds)
    return record_outputs(model, params, state, x, where=lambda node: node.info.kind in wanted)[1]


def first_not_per_example(model: Layer) -> str | None:
    """``"layer 'block1/bn' (BatchNorm)"``: the first layer of ``model`` that is not
    per-example (:attr:`~jaxcnn.layers.LayerInfo.per_example`), the innermost one on its
    path; None when the whole model is per-example, so its batch may be computed in slices.
    """
    node = _root(model)
    if node.info.per_example:
        return None
    while (inner := next((c for c in children(node) if not c.info.per_example), None)) is not None:
        node = inner
    return f"layer {node.path or node.info.name or node.info.base!r} ({node.info.kind})"
