"""Training for research code: :func:`fit`, and the training API in one namespace.

:func:`fit` trains a model on arrays with :class:`jaxcnn.loop.Loop`, the one loop of jaxcnn,
which the experiment runner (:mod:`jaxcnn.experiment`) also runs; so a model trained here logs
the same TensorBoard items and writes the same checkpoints as a built-in experiment (the list is
in :mod:`jaxcnn.loop`).

The building blocks are re-exported here: :class:`~jaxcnn.loop.Loop`, :mod:`jaxcnn.steps` (the
pure train and eval steps, the batch slice count) and :mod:`jaxcnn.epochs` (whole-epoch
drivers). The CPU execution plan the steps use is :mod:`jaxcnn.cpu`.

The test split is only ever reported: the best checkpoint is the one with the best validation
metric, and early stopping may watch training or validation metrics, never test ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import optax

from jaxcnn import data as data_lib
from jaxcnn.early_stopping import EarlyStopping, should_stop
from jaxcnn.epoch_images import conv_kernels
from jaxcnn.epochs import SCAN_MAX_BYTES, make_epoch_fn
from jaxcnn.layers import Layer
from jaxcnn.loop import Loop
from jaxcnn.losses import softmax_cross_entropy
from jaxcnn.progress import in_notebook
from jaxcnn.steps import (
    LossFn,
    TrainState,
    batch_slices_for,
    create_train_state,
    data_parallel_mesh,
    evaluate,
    learning_rate,
    make_eval_step,
    make_train_step,
)
from jaxcnn.tracking import MetricWriter

__all__ = [
    "SCAN_MAX_BYTES", "EarlyStopping", "Loop", "TrainState", "batch_slices_for", "conv_kernels",
    "create_train_state", "data_parallel_mesh", "evaluate", "fit",
    "in_notebook", "learning_rate", "make_epoch_fn", "make_eval_step", "make_train_step",
    "should_stop",
]


def fit(
    model: Layer,
    optimizer: optax.GradientTransformation,
    train: data_lib.Split,
    *,
    epochs: int,
    batch_size: int = 128,
    loss_fn: LossFn = softmax_cross_entropy,
    seed: int = 0,
    val: data_lib.Split | None = None,
    test: data_lib.Split | None = None,
    early_stopping: EarlyStopping | None = None,
    loss_tolerance: float | None = None,
    driver: str = "auto",
    writer: MetricWriter | None = None,
    log_every: int = 10,
    checkpoint_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool | None = None,
    augment: Callable[..., Any] | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Train ``model`` on ``train`` for up to ``epochs`` epochs; returns the final state and one
    record per epoch (``epoch`` counted from 1, ``step``, ``train_loss``, ``train_accuracy``
    and, for the splits given, ``val_loss``, ``val_accuracy``, ``test_loss``, ``test_accuracy``;
    the accuracies where they apply, see :func:`make_train_step`; ``epoch_time_s``,
    ``images_per_second``).

    This is :class:`Loop`, the experiment runner's loop: with a ``writer`` (any
    :class:`jaxcnn.tracking.MetricWriter`, e.g. a ``TensorBoardWriter(logdir)``) it logs what
    the runner logs, and with ``checkpoint_dir`` it saves a checkpoint each epoch and, on
    SIGINT or SIGTERM, one where it stopped (raising KeyboardInterrupt after it). ``augment``
    transforms every training batch on the device (:mod:`jaxcnn.augment`). Stops early by
    ``early_stopping`` (its metric must be a training or validation one the epochs report) or
    once the epoch's mean training loss is below ``loss_tolerance``. Integer labels outside
    the model's classes raise ValueError; a non-finite loss raises
    :class:`jaxcnn.errors.NonFiniteLossError` (a FloatingPointError).
    """
    loop = Loop(model, optimizer, train, epochs=epochs, batch_size=batch_size, loss_fn=loss_fn,
                seed=seed, val=val, test=test, writer=writer, checkpoint_dir=checkpoint_dir,
                early_stopping=early_stopping, loss_tolerance=loss_tolerance, driver=driver,
                log_every=log_every, class_names=class_names, progress=progress, name="fit",
                augment=augment,
                steps_per_call=20 if checkpoint_dir is not None else None)
    try:
        outcome = loop.run(signals=checkpoint_dir is not None)
    finally:
        loop.close_bar()
        loop.writer.flush()
    if outcome == "stopped":
        raise KeyboardInterrupt(f"fit: stopped by a signal at step {loop.step}, with a "
                                f"checkpoint in {checkpoint_dir}; continue from it with "
                                f"train.Loop(..., restore_from=checkpoint.latest(...)).run()")
    return loop.ts, loop.history
