"""Progress bars: one tqdm bar per epoch over its steps, with the running loss and accuracy.

tqdm's widget bar in Jupyter (:func:`in_notebook`), its terminal bar elsewhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["EpochBar", "in_notebook"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where progress bars are tqdm's widgets)."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class EpochBar:
    """A bar over ``total`` steps of one epoch. :meth:`feed` takes each finished call's
    per-step metrics (``loss``, ``finite`` and maybe ``accuracy``, NumPy arrays) and shows the
    epoch's running means; :meth:`close` shows the epoch's record."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm

        try:
            known = min(os.get_terminal_size(sys.stderr.fileno())) > 0
        except (OSError, ValueError):
            known = False
        # A terminal of unknown size (0 x 0, as `script` makes) would hide tqdm's bar.
        size = ({"dynamic_ncols": True} if known or in_notebook() else
                {"ncols": 130, "nrows": 24})
        self.bar: Any = tqdm(total=total, desc=desc, unit="step", **size)
        self.sums = np.zeros(3)  # loss, accuracy, finite steps
        self.accuracy = False

    def feed(self, m: Mapping[str, np.ndarray]) -> None:
        ok = np.asarray(m["finite"], bool)
        self.accuracy = "accuracy" in m
        acc = np.sum(np.asarray(m["accuracy"])[ok]) if self.accuracy else 0.0
        self.sums += (np.sum(np.asarray(m["loss"])[ok]), acc, ok.sum())
        self.bar.update(len(ok))
        if self.sums[2]:
            shown = {"loss": f"{self.sums[0] / self.sums[2]:.4f}"}
            if self.accuracy:
                shown["acc"] = f"{self.sums[1] / self.sums[2]:.4f}"
            self.bar.set_postfix(**shown, refresh=False)

    def close(self, record: Mapping[str, float] | None = None) -> None:
        """Close the bar, full and showing ``record``'s loss and accuracies if given."""
        if record is not None:
            self.bar.n = self.bar.total
            shown = {short: f"{record[k]:.4f}" for k, short in (
                ("train_loss", "loss"), ("train_accuracy", "acc"), ("val_accuracy", "val_acc"),
                ("test_accuracy", "test_acc")) if k in record}
            self.bar.set_postfix(**shown, refresh=False)
        self.bar.close()
