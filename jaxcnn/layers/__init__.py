"""Layers as pairs of pure functions over plain dicts of arrays.

Every layer, leaf or combinator, is a :class:`Layer` ``(init, apply)`` with one signature:

    init(key, in_shape) -> (out_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, state)

- ``in_shape``/``out_shape`` include the batch dimension first, which may be ``None`` (open);
  activations are NHWC ``(N, H, W, C)``, conv kernels HWIO (see :mod:`jaxcnn.ops`).
- ``params`` are the trainable arrays, ``state`` the non-trainable ones (BatchNorm's running
  mean and variance); both are nested dicts with readable names (``{"conv1": {"w", "b"}}``)
  and ``{}`` for layers that have none. Combinators only keep entries for children that have
  something to store.
- ``key`` is an explicit ``jax.random.key``; only Dropout needs one, and only in training.
- ``train=True`` makes BatchNorm use batch statistics (and return updated running ones) and
  Dropout drop; ``train=False`` (the default) is inference.

Configuration is checked when a layer is constructed, shapes when ``init`` sees them; both
raise :class:`jaxcnn.errors.LayerError` (a ``ValueError``) naming the layer, the value given
and the value needed. Output shapes come from ``jax.eval_shape`` of ``apply`` itself, so the
shape ``init`` predicts is the shape ``apply`` returns.

The package has three modules: :mod:`~jaxcnn.layers.core` (the :class:`Layer` type,
:class:`LayerInfo` and the checks every layer shares, public for layers written elsewhere),
:mod:`~jaxcnn.layers.leaves` (the leaf layers) and :mod:`~jaxcnn.layers.combinators`
(``serial``, ``parallel``, ``residual``); every public name is re-exported here.

>>> import jax
>>> from jaxcnn import layers as L
>>> net = L.serial(L.Conv(8, 3, padding="SAME"), L.Relu(), L.MaxPool(2), L.Flatten(), L.Dense(10))
>>> out_shape, params, state = net.init(jax.random.key(0), (None, 28, 28, 1))
>>> out_shape, sorted(params)
((None, 10), ['conv1', 'dense1'])
"""

from jaxcnn.layers.combinators import child_names, parallel, residual, serial
from jaxcnn.layers.core import Layer, LayerInfo, layer_info
from jaxcnn.layers.leaves import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Elu,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Lambda,
    LeakyRelu,
    LogSoftmax,
    MaxPool,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
)

__all__ = [
    "AvgPool", "BatchNorm", "Conv", "Dense", "Dropout", "Elu", "Flatten", "GlobalAvgPool",
    "GlobalMaxPool", "Lambda", "Layer", "LayerInfo", "LeakyRelu", "LogSoftmax", "MaxPool", "Relu",
    "Sigmoid", "Softmax", "Tanh", "child_names", "layer_info", "parallel", "residual", "serial",
]
