"""Reading a run's TensorBoard event files back with the ``tensorboard`` package's own reader."""

from __future__ import annotations

import os

from tensorboard.backend.event_processing import event_accumulator as ea


def accumulator(logdir: str | os.PathLike[str]) -> ea.EventAccumulator:
    """Every event in ``logdir`` (no sampling: every size guidance 0), loaded."""
    acc = ea.EventAccumulator(str(logdir), size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return acc
