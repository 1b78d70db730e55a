"""Helpers for tests that run several Python processes at once (data-parallel and
multi-process training)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout_s: float) -> None:
    """Wait for every process; fail with the tail of each one's log as soon as one fails
    (killing the rest, which may wait for it in a collective), or after ``timeout_s``."""
    def report(why: str) -> str:
        return why + "".join(f"\n--- process {i} (exit {p.returncode}):\n"
                             f"{logs[i].read_text()[-3000:]}" for i, p in enumerate(procs))

    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                pytest.fail(report(f"still running after {timeout_s:.0f} s; killed"))
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    if any(p.returncode != 0 for p in procs):
        pytest.fail(report("a process failed"))
