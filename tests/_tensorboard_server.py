"""A real TensorBoard server on 127.0.0.1 for tests: start it on a free port, poll its HTTP
API until data shows, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _processes import free_port


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # always http://127.0.0.1
        return response.read()


def post_json(url: str, body: dict) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


class Server:
    """A running TensorBoard: ``base`` is its ``/data`` URL."""

    def __init__(self, proc: subprocess.Popen, base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def json(self, path: str, **query: Any) -> Any:
        q = f"?{urllib.parse.urlencode(query)}" if query else ""
        return json.loads(get(f"{self.base}/{path}{q}"))

    def scalars(self, run: str, tag: str) -> list[list[float]]:
        """[[wall_time, step, value], ...] of one scalar series."""
        return self.json("plugin/scalars/scalars", run=run, tag=tag)

    def poll(self, what: str, fetch: Callable[[], Any], ready: Callable[[Any], bool],
             timeout: float = 60.0) -> Any:
        """``fetch()`` until ``ready(result)``; fail clearly after ``timeout`` seconds."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"TensorBoard exited with {self.proc.returncode}:\n"
                            f"{self.log.read_text()[-3000:]}")
            try:
                last = fetch()
                if ready(last):
                    return last
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            time.sleep(0.2)
        pytest.fail(f"TensorBoard: no {what} after {timeout:.0f} s (last: {last!r}):\n"
                    f"{self.log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(logdir: Path, tmp_path: Path, *, load_fast: str = "false") -> Iterator[Server]:
    """TensorBoard over ``logdir`` on a free port of 127.0.0.1, stopped on exit."""
    port, log = free_port(), tmp_path / "tensorboard.log"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # TensorBoard's .tensorboard-info goes there
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
           "127.0.0.1", "--port", str(port), f"--load_fast={load_fast}", "--reload_interval", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield Server(proc, f"http://127.0.0.1:{port}/data", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
