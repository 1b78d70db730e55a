"""CPU batch slices: how many slices a training step computes a batch in, and why.

On the CPU, XLA's runtime runs most operations on one core; a batch computed as independent
slices (their logits concatenated before the loss) gives it work to run side by side. This
module decides the count (:func:`batch_slices_for`, ``"auto"``) from the batch, the model
(per-example layers only), the host's vector width and L2 cache;
:func:`jaxcnn.steps.make_train_step` applies it.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import cpu_conv
from jaxcnn.layers import Layer, layer_info
from jaxcnn.summarize import summary
from jaxcnn.typedefs import Shape
from jaxcnn.walk import first_not_per_example

__all__ = [
    "CPU_L2_BYTES", "CPU_MAX_SLICES", "CPU_MIN_SLICED_BATCH", "CPU_SLICE_ROWS", "batch_slices_for",
    "check_batch_slices", "cpu_l2_cache_bytes", "cpu_slice_rows", "largest_activation_bytes",
    "slice_count", "slice_rows",
]


def cpu_slice_rows(features: Mapping[str, bool] | None = None) -> int:
    """Rows per slice that ``batch_slices="auto"`` aims at on this CPU: 32 with AVX-512, else
    16. A core with wider vectors finishes a slice's operations sooner, so their fixed cost
    weighs more and larger slices win (benchmarks/README.md, item 8: on a 2-core AVX-512
    EPYC, 32 rows trained 5-13% faster than 16; on a 2-core AVX2 EPYC, 16 rows were faster).
    ``features``: NumPy's runtime CPU feature table (the host's when None)."""
    if features is None:
        features = _numpy_cpu_features()
    return 32 if features.get("AVX512F") else 16


def _numpy_cpu_features() -> Mapping[str, bool]:
    """NumPy's runtime CPU feature table (``numpy._core`` in NumPy 2, ``numpy.core`` in 1.x);
    empty where neither has it, which means the narrower vectors."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return importlib.import_module(module).__cpu_features__
        except (ImportError, AttributeError):
            continue
    return {}


def cpu_l2_cache_bytes(root: str | os.PathLike[str] = "/sys/devices/system/cpu/cpu0/cache",
                       ) -> int | None:
    """The per-core L2 cache of the first CPU in bytes, from Linux's sysfs; None where it is not
    there (another OS, a container that hides it) or cannot be read."""
    for index in sorted(Path(root).glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip()
                                 for f in ("level", "type", "size"))
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data"):
            scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1:].upper(), 1)
            digits = size[:-1] if scale > 1 else size
            return int(digits) * scale if digits.isdigit() else None
    return None


def slice_rows(example_bytes: int, l2_bytes: int | None) -> int:
    """Rows per slice that ``batch_slices="auto"`` aims at for a model whose largest activation
    (a layer's output, float32) takes ``example_bytes`` per example, on a core with
    ``l2_bytes`` of L2 cache: 16 when 16 rows of it fit in L2 and 32 rows would not, else 32.

    Why: while a slice's activations stay in the core's L2 cache, the element-wise work between
    its convolutions (bias, ReLU, pooling and their gradients) runs from the cache, so slices
    as large as fit win; once they cannot fit even at 16 rows, larger slices win by running
    fewer, larger operations. Measured on three 2-core machines (``benchmarks/README.md``,
    item 10): LeNet-5 (18.8 KB per example at conv1) trains fastest at 16 rows on 512 KB of L2
    and at 32 rows on 1 MB; simple_cnn (100 KB per example) at 32 rows on both.
    ``l2_bytes`` None (unknown): :data:`CPU_SLICE_ROWS`, the rule by vector width."""
    if not l2_bytes or example_bytes <= 0:
        return CPU_SLICE_ROWS
    return 16 if 16 * example_bytes <= l2_bytes < 32 * example_bytes else 32


#: ``batch_slices="auto"`` on the CPU aims at this many rows a slice (the largest power of two
#: of slices that leaves this many each, from 4 slices up to :data:`CPU_MAX_SLICES`; a batch of
#: 64-127 gets 4 smaller ones) where the L2 cache or the input's shape is unknown:
#: :func:`cpu_slice_rows` of the host. Else :func:`slice_rows` decides.
CPU_SLICE_ROWS = cpu_slice_rows()
#: The per-core L2 cache of the host (:func:`cpu_l2_cache_bytes`), which :func:`slice_rows`
#: sizes the slices by; None where unknown.
CPU_L2_BYTES = cpu_l2_cache_bytes()
#: The most slices ``batch_slices="auto"`` takes; larger batches get larger slices.
CPU_MAX_SLICES = 16
#: ``batch_slices="auto"`` leaves smaller batches whole: they gained nothing from slices.
CPU_MIN_SLICED_BATCH = 64


def batch_slices_for(model: Layer, batch_size: int, batch_slices: int | str = "auto",
                     in_shape: Shape | None = None) -> int:
    """How many slices :func:`jaxcnn.steps.make_train_step` computes a batch of ``batch_size`` in.

    ``"auto"``: from batch 64 on, when jaxcnn's CPU convolution is on
    (:func:`jaxcnn.cpu_conv.enabled`: JAX's default backend is the CPU, or
    ``JAXCNN_CONV_IMPL=cpu``), there is one device in all, and the model is per-example
    (:class:`jaxcnn.layers.LayerInfo`), the largest power of two of slices with at least
    :func:`slice_rows` rows each (16 or 32, by the model's largest activation on the input
    ``in_shape`` and the host's L2 cache; :data:`CPU_SLICE_ROWS` where either is unknown), at
    least 4 and at most :data:`CPU_MAX_SLICES`. With 16 rows: 4 for batch 64-127, 8 for
    128-255, 16 from 256 on; with 32 rows: 4 for batch 64-255, 8 for 256-511, 16 from 512 on.
    Slices of 64 rows or more split each of their convolutions once more, in 4
    (:func:`jaxcnn.cpu_conv.plan_for`). Else 1. An int is used as given (at most the batch);
    with a batch sharded over several devices its slices would cut across the shards, which
    costs transfers between devices, so keep ``"auto"`` there. ``in_shape``: the input's
    shape, batch first (None allowed); :func:`jaxcnn.steps.make_train_step` passes the batch's
    shape, so pass it too to get the count the step uses (without it, :data:`CPU_SLICE_ROWS` rows).
    """
    check_batch_slices(model, batch_slices)
    return slice_count(model, batch_size, batch_slices, in_shape)


def largest_activation_bytes(model: Layer, in_shape: Shape) -> int | None:
    """Bytes per example of the model's largest layer output (or input), in float32; None
    where :func:`jaxcnn.summary` cannot walk the model (then the slices follow
    :data:`CPU_SLICE_ROWS`: a speed heuristic must never stop a model that trains).

    Remembered per model and shape, so an unjitted step does not walk the model each call."""
    try:
        return _largest_activation_cached(model, tuple(in_shape))
    except TypeError:  # a model that cannot be hashed: walk it each time
        return _largest_activation_uncached(model, tuple(in_shape))


def _largest_activation_uncached(model: Layer, in_shape: Shape) -> int | None:
    try:
        return 4 * max(row.neurons for row in summary(model, in_shape).rows)
    except Exception:  # noqa: BLE001 -- any failure of the walk means "unknown"
        return None


_largest_activation_cached = functools.lru_cache(maxsize=64)(_largest_activation_uncached)


def slice_count(model: Layer, batch_size: int, batch_slices: int | str,
                 in_shape: Shape | None = None) -> int:
    """:func:`batch_slices_for` for an already checked ``batch_slices``."""
    if batch_slices == "auto":
        # at least 4 slices: fewer left a core idle (benchmarks/README.md, items 6 to 8)
        if (batch_size >= CPU_MIN_SLICED_BATCH and layer_info(model).per_example
                and cpu_conv.enabled() and jax.device_count() == 1):
            rows = CPU_SLICE_ROWS
            if in_shape is not None and CPU_L2_BYTES:
                example_bytes = largest_activation_bytes(model, in_shape)
                if example_bytes is not None:
                    rows = slice_rows(example_bytes, CPU_L2_BYTES)
            fit = max(1, int(batch_size) // rows)
            return min(CPU_MAX_SLICES, max(4, 1 << (fit.bit_length() - 1)))
        return 1
    return max(1, min(int(batch_slices), batch_size))


def check_batch_slices(model: Layer, batch_slices: Any) -> None:
    if batch_slices == "auto":
        return
    if isinstance(batch_slices, bool) or not isinstance(batch_slices, int | np.integer) or (
            batch_slices < 1):
        raise ValueError(f"make_train_step: batch_slices must be 'auto' or an int >= 1, got "
                         f"{batch_slices!r}")
    if batch_slices > 1 and not layer_info(model).per_example:
        raise ValueError(
            f"make_train_step: batch_slices={batch_slices} computes each slice of the batch on "
            f"its own, which changes the result of a layer that mixes examples or draws random "
            f"numbers; {first_not_per_example(model)} is not per-example (BatchNorm, Dropout with "
            f"rate > 0, a Lambda without per_example=True and a user's own Layer are not); use "
            f"batch_slices=1 or 'auto'")

