"""jaxcnn's CPU mechanisms, behind one switch.

On a CPU, XLA's defaults are slow for training convolutional networks. jaxcnn does four things
of its own there, each kept because a paired benchmark showed 5% or more on some kind of machine
(figures and commands in ``benchmarks/README.md``, "The CPU mechanisms in place"):

- :mod:`jaxcnn.cpu.conv`: a ``jax.custom_jvp`` convolution whose gradients XLA's CPU backend
  runs fast inside a ``lax.scan`` (dW as one GEMM, dX as the canonical correlation with the
  rotated kernel, few-channel forms (with AVX-512, :func:`has_avx512`, dX of 2-7 input
  channels as a GEMM), each convolution of the differentiated pass in 4 batch slices).
  :func:`jaxcnn.ops.conv2d`, so every ``Conv`` layer, uses it. simple_cnn trained 25x (batch
  128) to 70x (1024) faster than with JAX's own derivatives, lenet5 5x to 11x.
- :mod:`jaxcnn.cpu.slices`: a training batch of a per-example model (Dropout included: it
  draws the whole batch's mask, :func:`slice_position`) computed as 4 to 16 slices
  (:func:`batch_slices`) whose outputs are concatenated, applied by
  :func:`jaxcnn.layers.serial` in training mode and by :func:`jaxcnn.steps.make_train_step`:
  1.13x-1.50x the images/s of the whole batch on 2 cores. In a serial with BatchNorm, its
  runs of per-example layers from a Conv or Dense on, in at most :data:`MAX_RUN_SLICES`
  slices: the VGG with BatchNorm 1.07x (batch 128) and 1.25x (1024) (Intel).
- :mod:`jaxcnn.cpu.memory`: glibc's ``malloc`` keeping the memory it frees
  (:func:`keep_freed_memory`), which the runner applies: 1.01x-1.28x.
- :mod:`jaxcnn.cpu.dispatch`: JAX's CPU client running each compiled call on the calling
  thread (:func:`call_inline`), applied when jaxcnn is imported before JAX's first
  computation: a training step called once per batch from Python, the step a researcher
  writes, simple_cnn 1.43x-1.64x the images/s of the same step dispatched asynchronously,
  LeNet-5 even (Zen 3).

The switch is ``JAXCNN_CPU``, read when a function is traced (and, for the dispatch, when
jaxcnn is imported): ``auto`` (default: on where JAX's
default backend is the CPU; a GPU or TPU gets none of it), ``on`` or ``off``; :func:`off` turns
all of it off for what is traced inside it. Finer controls: ``make_train_step(...,
batch_slices=1)`` (no slices) and :func:`whole_batch` for the slices. Removed: a slice size
chosen from the L2 cache (1.02x-1.04x), and a large batch's gradient taken in chunks one after
another. The chunks gained up to 1.30x only while calls were dispatched asynchronously, making
up for the dispatch thread; with calls inline they gained nothing on Zen 3 (0.91x-1.03x) and
cost LeNet-5 at batch 1024 up to 9% (not measured inline on AVX-512).
"""

from jaxcnn.cpu.conv import Plan, conv2d, plan_for
from jaxcnn.cpu.dispatch import call_inline
from jaxcnn.cpu.features import cpu_features, has_avx512
from jaxcnn.cpu.memory import keep_freed_memory
from jaxcnn.cpu.slices import (
    MAX_RUN_SLICES,
    MAX_SLICES,
    MIN_SLICED_BATCH,
    SLICE_ROWS,
    SlicePosition,
    batch_slices,
    concat_slices,
    slice_position,
    slice_rows,
    whole_batch,
)
from jaxcnn.cpu.switch import ENV_VAR, enabled, off

__all__ = [
    "ENV_VAR", "MAX_RUN_SLICES", "MAX_SLICES", "MIN_SLICED_BATCH", "Plan", "SLICE_ROWS",
    "SlicePosition",
    "batch_slices", "call_inline", "concat_slices", "conv2d", "cpu_features", "enabled",
    "has_avx512", "keep_freed_memory", "off",
    "plan_for", "slice_position", "slice_rows", "whole_batch",
]

# Before JAX's first computation, where jaxcnn is imported first (cpu.dispatch).
call_inline()
