"""A trained model as one serialized ``jax.export`` program, for serving without jaxcnn.

:func:`export_model` returns the bytes of ``f(x) -> probabilities``: x is ``(b, H, W, C)``
float32 images in [0, 1] for any batch size b (the batch dimension is symbolic), the output
``(b, K)`` float32 softmax probabilities. The per-channel normalisation ``(x - mean) / std``
is part of the program, the parameters and state are baked in as constants, and the model runs
in inference mode (``train=False``). A process that has only ``jax`` and NumPy runs it::

    import numpy as np
    from jax import export

    exp = export.deserialize(bytearray(open("model.jaxexport", "rb").read()))
    probs = np.asarray(exp.call(np.zeros((5, 28, 28, 1), np.float32)))  # (5, K)

JAX's serialization format needs the ``flatbuffers`` package on both sides.

The program is lowered for every platform in ``platforms`` at once; a multi-platform program
picks the lowering of the device it is called on. jaxcnn's CPU convolution
(:mod:`jaxcnn.cpu.conv`) is chosen when the function is traced, so it is used only for a
CPU-only export (where it is on, as on a CPU machine); every other export is traced with
XLA's own convolution (:func:`jaxcnn.cpu.off`), which every platform runs. The
probabilities agree to float32 rounding either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from jaxcnn import cpu, ops
from jaxcnn.checks import is_int
from jaxcnn.layers import Layer
from jaxcnn.typedefs import Params, State

__all__ = ["PLATFORMS", "export_model"]

#: The platforms ``jax.export`` can lower for.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_model(
    model: Layer,
    params: Params,
    state: State,
    *,
    input_shape: tuple[int, int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    platforms: Sequence[str] = ("cpu",),
) -> bytes:
    """The serialized ``jax.export`` program of ``x -> softmax(model((x - mean) / std))``.

    x: (b, H, W, C) float32 in [0, 1] with ``input_shape == (H, W, C)`` and any batch size b;
    returns (b, K) float32 class probabilities. ``mean`` and ``std``: C numbers each (one per
    channel), applied when given (``mean`` alone subtracts, ``std`` alone divides).
    ``platforms``: any of "cpu", "cuda", "rocm", "tpu", lowered together into one program.

    >>> import jax
    >>> from jaxcnn import models
    >>> model = models.lenet5(10)
    >>> _, params, state = model.init(jax.random.key(0), (None, 28, 28, 1))
    >>> data = export_model(model, params, state, input_shape=(28, 28, 1),
    ...                     platforms=("cpu", "cuda"))
    >>> exp = jax.export.deserialize(bytearray(data))
    >>> exp.platforms, exp.call(jax.numpy.zeros((3, 28, 28, 1))).shape
    (('cpu', 'cuda'), (3, 10))
    """
    where = "export_model"
    targets = _platforms(platforms, where)
    shape = _input_shape(input_shape, where)
    channels = shape[2]
    shift = _per_channel(mean, "mean", channels, shape, where)
    scale = _per_channel(std, "std", channels, shape, where)
    if scale is not None and not np.all(scale > 0):
        raise ValueError(f"{where}: std must be > 0 for every channel, got {std!r}; pass 1 "
                         f"for a channel to leave it unscaled")

    def probabilities(x: jax.Array) -> jax.Array:
        # the same float32 arithmetic as jaxcnn.data.normalize
        if shift is not None:
            x = x - shift
        if scale is not None:
            x = x / scale
        logits, _ = model.apply(params, state, x, train=False)
        return ops.softmax(logits)

    out = jax.eval_shape(probabilities, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    if out.ndim != 2:
        raise ValueError(f"{where}: the model maps input_shape {shape} to output shape "
                         f"{tuple(out.shape)}, but class scores (N, K) are needed; end the "
                         f"model with Flatten() and Dense(num_classes)")
    spec = jax.ShapeDtypeStruct(export.symbolic_shape(f"b, {shape[0]}, {shape[1]}, "
                                                      f"{shape[2]}"), jnp.float32)
    lower = export.export(jax.jit(probabilities), platforms=targets)
    if targets == ("cpu",):
        exported = lower(spec)
    else:
        # A program that also runs elsewhere must not carry the CPU-specific convolution.
        with cpu.off():
            exported = lower(spec)
    return bytes(exported.serialize())


def _platforms(platforms: Any, where: str) -> tuple[str, ...]:
    names = (platforms,) if isinstance(platforms, str) else platforms
    valid = ", ".join(repr(p) for p in PLATFORMS)
    try:
        names = tuple(names)
    except TypeError:
        names = None
    if not names or not all(isinstance(p, str) and p.lower() in PLATFORMS for p in names):
        raise ValueError(f"{where}: platforms must be a non-empty sequence of {valid}, got "
                         f"{platforms!r}; pass e.g. ('cpu',) or ('cpu', 'cuda')")
    return tuple(dict.fromkeys(p.lower() for p in names))  # in order, without repeats


def _input_shape(input_shape: Any, where: str) -> tuple[int, int, int]:
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or not all(is_int(d) and d >= 1 for d in dims):
        raise ValueError(f"{where}: input_shape must be 3 ints >= 1, (H, W, C), got "
                         f"{input_shape!r}; pass the shape of one image without the batch, "
                         f"e.g. (28, 28, 1)")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _per_channel(values: Any, what: str, channels: int, shape: tuple[int, int, int],
                 where: str) -> np.ndarray | None:
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (channels,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: {what} must hold one finite number per channel, {channels} "
                         f"for input_shape {shape}, got {values!r}")
    return arr
