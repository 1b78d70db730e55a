"""Early stopping: when a run's epoch records say that training should end.

The records are the training loop's (:class:`jaxcnn.loop.Loop`), one dict per epoch. Test
metrics are for reporting only, so a rule may not watch them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jaxcnn.checks import is_int

__all__ = ["EarlyStopping", "should_stop"]


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs
    (``mode`` "max" for accuracies, "min" for losses). ``metric`` is a key of the epoch
    records: ``val_accuracy``, ``val_loss``, ``train_loss`` or ``train_accuracy``."""

    metric: str = "val_accuracy"
    mode: str = "max"
    patience: int = 5
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: mode must be 'max' or 'min', got {self.mode!r}")
        if not is_int(self.patience) or self.patience < 1:
            raise ValueError(f"EarlyStopping: patience must be a positive int, got "
                             f"{self.patience!r}")
        object.__setattr__(self, "patience", int(self.patience))
        if not self.min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {self.min_delta!r}")
        if self.metric.startswith("test_"):
            raise ValueError(f"EarlyStopping: metric={self.metric!r} would choose when to stop "
                             f"by the test split, which is for reporting only; watch a "
                             f"validation metric such as 'val_accuracy'")


def should_stop(rule: EarlyStopping, history: Sequence[Mapping[str, float]]) -> bool:
    """Whether ``rule`` stops training after the epochs in ``history`` (one dict per epoch)."""
    values = [h[rule.metric] for h in history if rule.metric in h]
    if len(values) <= rule.patience:
        return False
    sign = 1.0 if rule.mode == "max" else -1.0
    best_before = max(sign * v for v in values[: -rule.patience])
    recent = max(sign * v for v in values[-rule.patience:])
    return not recent > best_before + rule.min_delta
