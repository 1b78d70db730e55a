"""Batch slices: a training batch computed as independent slices, for XLA's CPU runtime.

XLA's CPU runtime runs most single operations (a convolution among them) on one core, but runs
independent operations side by side. A batch computed as slices whose outputs are concatenated
is the same function of the batch for a per-example model (up to float rounding), with
independent work for every core. :func:`batch_slices` is how many; :func:`jaxcnn.layers.serial`
applies it in training mode (so a hand-written step gets it too; in a serial with BatchNorm,
to its runs of per-example layers, in at most :data:`MAX_RUN_SLICES`) and
:func:`jaxcnn.steps.make_train_step` to any per-example model; :func:`whole_batch` stops a slice
from being cut again. :func:`slice_position` tells a layer where the slice it is traced on lies
in the batch, so that ``Dropout`` draws the whole batch's mask and keeps its slice's rows.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn.checks import is_int
from jaxcnn.cpu.features import has_avx512
from jaxcnn.cpu.switch import enabled
from jaxcnn.typedefs import Array

__all__ = ["MAX_RUN_SLICES", "MAX_SLICES", "MIN_SLICED_BATCH", "SLICE_ROWS", "SlicePosition",
           "batch_slices", "concat_slices", "slice_position", "slice_rows", "whole_batch"]


def slice_rows(features: Mapping[str, bool] | None = None) -> int:
    """Rows per batch slice on this CPU: 32 with AVX-512, else 16. A core with wider vectors
    finishes a slice's operations sooner, so their fixed cost weighs more and larger slices win
    (``benchmarks/README.md``, CPU mechanisms). ``features``: NumPy's runtime CPU feature table
    (the host's when None; :func:`jaxcnn.cpu.features.cpu_features`)."""
    return 32 if has_avx512(features) else 16


#: Rows a batch slice aims at on this host (:func:`slice_rows`).
SLICE_ROWS = slice_rows()
#: The most slices a batch is computed in.
MAX_SLICES = 16
#: The most slices a run of per-example layers between layers that mix examples (BatchNorm)
#: is computed in: each run ends in a join of its slices, and 16 slices of a run cost more than
#: they gained (``benchmarks/README.md``, CPU mechanisms).
MAX_RUN_SLICES = 4
#: Smaller batches run whole: slices of fewer than 16 rows gained nothing.
MIN_SLICED_BATCH = 64

# Set by whole_batch while a caller computes the batch's slices itself.
_WHOLE: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxcnn_whole_batch",
                                                             default=False)


@contextlib.contextmanager
def whole_batch() -> Iterator[None]:
    """Inside this block :func:`batch_slices` is 1: for a caller that already computes the
    batch in slices (a model nested in a sliced one, a step with explicit ``batch_slices``),
    so no slice is cut again, or to train a model whole in a step of your own. Read when a
    function is traced: a jitted function keeps what it was first traced with, so enter the
    block inside the function, or around its first call."""
    token = _WHOLE.set(True)
    try:
        yield
    finally:
        _WHOLE.reset(token)


def batch_slices(batch_size: object) -> int:
    """How many slices the training pass of a per-example model computes a batch of
    ``batch_size`` rows in, where the CPU mechanisms are on (:func:`jaxcnn.cpu.enabled`) and
    there is one device: the largest power of two of slices with at least :data:`SLICE_ROWS`
    rows each, at least 4 and at most :data:`MAX_SLICES`, from :data:`MIN_SLICED_BATCH` rows on
    (with 32 rows: 4 for batch 64-255, 8 for 256-511, 16 from 512 on). Else 1, and always 1 for
    a batch that is not a concrete int (symbolic under ``jax.export``) or inside
    :func:`whole_batch`."""
    if (_WHOLE.get() or not is_int(batch_size) or batch_size < MIN_SLICED_BATCH
            or not enabled() or jax.device_count() != 1):
        return 1
    fit = max(1, int(batch_size) // SLICE_ROWS)
    return min(MAX_SLICES, max(4, 1 << (fit.bit_length() - 1)))


class SlicePosition(NamedTuple):
    """Where a slice lies in its batch: ``rows`` rows from row ``start`` of ``total``."""

    start: int
    rows: int
    total: int

    @property
    def stop(self) -> int:
        """The row after the slice's last."""
        return self.start + self.rows


# Set by concat_slices while it traces fn on one slice.
_AT: contextvars.ContextVar[SlicePosition | None] = contextvars.ContextVar("jaxcnn_slice_at",
                                                                          default=None)


# Set by concat_slices: one list per enclosing call, to which a read of slice_position is
# added while fn is traced (a nested call's slices lie where the outer slice does).
_READS: contextvars.ContextVar[tuple[list[int], ...]] = contextvars.ContextVar(
    "jaxcnn_slice_position_reads", default=())


def slice_position() -> SlicePosition | None:
    """The rows of the whole batch that the slice being traced holds, inside
    :func:`concat_slices` (nested slices give rows of the outermost batch); None outside, where
    a layer sees the whole batch. Read when a function is traced."""
    for reads in _READS.get():
        reads.append(1)
    return _AT.get()


def concat_slices(fn: Callable[[Array], Any], x: Array, parts: int, *,
                  has_aux: bool = False) -> Any:
    """``fn`` over ``parts`` near-equal slices of the batch ``x`` (1 <= parts <= N),
    concatenated: independent work that XLA's CPU runtime runs on different cores. ``fn`` runs
    inside :func:`whole_batch`, so no model it applies cuts a slice again, and with
    :func:`slice_position` saying which rows of the batch it holds. ``has_aux``: ``fn``
    returns ``(output, aux)``; the result is then ``(concatenated outputs, the last slice's
    aux)``.

    Under a trace, ``fn`` is traced once for all slices of one shape (a nested ``jax.jit``,
    which XLA inlines), unless a trace asks :func:`slice_position` (``Dropout`` does): then
    every later slice is traced on its own, with its own position. So ``fn`` must return what
    it computes, not keep it by a side effect (``has_aux`` is for that)."""
    n = x.shape[0]
    outer = _AT.get()
    base, total = (0, n) if outer is None else (outer.start, outer.total)
    bounds = [n * k // parts for k in range(parts + 1)]
    # Shared only while tracing (a concrete batch runs op by op, as fn would), and through a
    # new function for each call, so no trace is shared with another batch or position.
    reads: list[int] = [] if isinstance(x, jax.core.Tracer) else [1]
    shared = jax.jit(lambda part: fn(part))
    outputs, aux = [], None
    with whole_batch():
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            token = _AT.set(SlicePosition(base + a, b - a, total))
            reads_token = _READS.set((*_READS.get(), reads))
            try:
                # Once a trace has read the position, later slices are traced afresh.
                out = fn(x[a:b]) if reads else shared(x[a:b])
            finally:
                _READS.reset(reads_token)
                _AT.reset(token)
            if has_aux:
                out, aux = out
            outputs.append(out)
    y = jnp.concatenate(outputs)
    return (y, aux) if has_aux else y
