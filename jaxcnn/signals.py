"""Stop requests: SIGINT and SIGTERM heard while a run trains, so it can stop between two
compiled calls with a checkpoint instead of dying in the middle of one."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["StopSignals"]


class StopSignals:
    """While entered (``with StopSignals() as signals:``), the first SIGINT or SIGTERM is
    recorded (:meth:`heard`) and the run is expected to stop at its next chance; a second one
    raises KeyboardInterrupt at once. Signal handlers can only be set from the main thread:
    elsewhere nothing is caught."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after the running steps, "
              f"with a checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def heard(self) -> bool:
        """Whether a signal came."""
        return self.received is not None

    def agreed(self) -> bool:
        """Whether any process of a multi-process run heard a signal (a collective: every
        process asks at the same points, so all stop at the same step)."""
        from jax.experimental import multihost_utils

        heard = np.int32(self.received is not None)
        return bool(np.asarray(multihost_utils.process_allgather(heard)).any())

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (SIGTERM where another process heard it)."""
        return 128 + (self.received or signal.SIGTERM)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
