"""Batch slices of a training step: how many slices a step computes a batch in, and the checks.

On the CPU, XLA's runtime runs most operations on one core; a batch computed as independent
slices (their logits concatenated before the loss) gives it work to run side by side. The
count on this host is :func:`jaxcnn.cpu_conv.batch_slices`, which :func:`jaxcnn.layers.serial`
applies in training mode; :func:`jaxcnn.steps.make_train_step` applies it to any per-example
model, or a count the caller chooses (``batch_slices``), which this module checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxcnn import cpu_conv
from jaxcnn.layers import Layer, layer_info
from jaxcnn.walk import first_not_per_example

__all__ = ["batch_slices_for", "check_batch_slices", "slice_count"]


def batch_slices_for(model: Layer, batch_size: int, batch_slices: int | str = "auto") -> int:
    """How many slices :func:`jaxcnn.steps.make_train_step` computes a batch of ``batch_size`` in.

    ``"auto"``: for a per-example model (:class:`jaxcnn.layers.LayerInfo`),
    :func:`jaxcnn.cpu_conv.batch_slices`: from batch 64 on, where jaxcnn's CPU convolution is on
    and there is one device, the largest power of two of slices with at least
    :data:`jaxcnn.cpu_conv.CPU_SLICE_ROWS` rows each (32 with AVX-512, else 16), at least 4 and
    at most 16; else 1. Slices of 64 rows or more split each of their convolutions once more, in
    4 (:func:`jaxcnn.cpu_conv.plan_for`). An int is used as given (at most the batch); with a
    batch sharded over several devices its slices would cut across the shards, which costs
    transfers between devices, so keep ``"auto"`` there.
    """
    check_batch_slices(model, batch_slices)
    return slice_count(model, batch_size, batch_slices)


def slice_count(model: Layer, batch_size: int, batch_slices: int | str) -> int:
    """:func:`batch_slices_for` for an already checked ``batch_slices``."""
    if batch_slices == "auto":
        return cpu_conv.batch_slices(batch_size) if layer_info(model).per_example else 1
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

