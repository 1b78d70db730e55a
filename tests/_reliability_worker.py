"""The ``jaxcnn`` command in a fresh process that can SIGKILL itself at a chosen I/O call, for
tests/test_reliability.py.

    python tests/_reliability_worker.py run --epochs 4 --runs-dir R ...   # jaxcnn run digits_cnn
    python tests/_reliability_worker.py resume RUN_DIR                    # jaxcnn resume RUN_DIR

The arguments go to :func:`jaxcnn.cli.main` unchanged (``run`` gets the experiment name
``digits_cnn`` put in front). The runner is the library's own, with these additions, steered by
environment variables:

- ``JAXCNN_KILL_AT=PHASE:KIND:N``: the process sends itself SIGKILL on entering the N-th call
  of KIND counted from the start of PHASE. PHASE is an epoch number (counting starts when the
  runner starts training that epoch) or ``end`` (when the last epoch's training returns, or at
  once when a resumed run has no epoch left: the hparams, the final status and closing the event
  file follow). KIND is ``fsync`` (``os.fsync``: every atomic checkpoint, ``latest``, ``best``
  and status write, and every event-file flush), ``replace`` (``os.replace``: the rename that
  publishes each of those files), ``event`` (tensorboardX's ``EventsWriter`` appending one
  event, on the writer thread) or ``flush`` (``EventsWriter.flush``: the event file flushed and
  fsynced, before each checkpoint and at the end). Just before dying it writes
  ``KILLED PHASE:KIND:N in <call chain>`` to stderr, so the test knows where the kill landed.
- ``JAXCNN_COUNT_TO=FILE``: write the number of calls of each KIND per phase to FILE as JSON at
  exit (``{"1": {"fsync": 11, "replace": 5, "event": 6, "flush": 1}, ..., "end": {...}}``), to
  calibrate N.
- ``JAXCNN_DIGITS_NPZ=FILE``: load the digits from FILE (the test's own ``data.load("digits")``)
  instead of through scikit-learn, whose import alone takes seconds per process.
- ``JAXCNN_SLOW_CALLS=SECONDS``: the runner sleeps that long each time it asks whether a
  signal came (between two compiled calls of training), so a signal sent as an epoch starts
  lands in its middle.
- ``JAXCNN_SAME_SECOND=1``: every run folder gets the timestamp 20240101-120000 and, on the first
  try, the id ``000000``, so runs started at once collide and must retry.

Every phase entry is also written to stderr as ``PHASE <phase> <time.time()>``, for timing.
torch is hidden from this process: it is installed only for the benchmarks, and tensorboardX
imports it when present, which costs seconds per process and changes nothing here.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import secrets
import signal
import sys
import threading
import time
import traceback
import types
from datetime import datetime


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())

import numpy as np  # noqa: E402
from tensorboardX import event_file_writer  # noqa: E402

from jaxcnn import cli, data, datasets, runs, signals, train  # noqa: E402

KINDS = ("fsync", "replace", "event", "flush")
_KILL = os.environ.get("JAXCNN_KILL_AT", "")
_KILL_PHASE, _KILL_KIND, _KILL_N = _KILL.split(":") if _KILL else ("", "", "0")
_lock = threading.Lock()
_phase: str | None = None
_armed = False
_seen = 0
_counts: dict[str, dict[str, int]] = {}


def _chain() -> str:
    frames = [f for f in traceback.extract_stack()[:-3]
              if "/jaxcnn/" in f.filename or "tensorboardX" in f.filename]
    return " > ".join(f"{os.path.basename(f.filename)}:{f.name}" for f in frames)


def _hit(kind: str) -> None:
    global _seen
    with _lock:
        if _phase is not None:
            _counts.setdefault(_phase, dict.fromkeys(KINDS, 0))[kind] += 1
        if _armed and kind == _KILL_KIND:
            _seen += 1
            if _seen == int(_KILL_N):
                os.write(2, f"\nKILLED {_KILL} in {_chain()}\n".encode())
                os.kill(os.getpid(), signal.SIGKILL)


def _enter(phase: str) -> None:
    global _phase, _armed
    with _lock:
        _phase = phase
        _armed = _armed or phase == _KILL_PHASE
    os.write(2, f"PHASE {phase} {time.time()}\n".encode())


def _counted(kind: str, fn):
    def wrapped(*args, **kwargs):
        _hit(kind)
        return fn(*args, **kwargs)

    return wrapped


os.fsync = _counted("fsync", os.fsync)
os.replace = _counted("replace", os.replace)
event_file_writer.EventsWriter._write_serialized_event = _counted(
    "event", event_file_writer.EventsWriter._write_serialized_event)
event_file_writer.EventsWriter.flush = _counted("flush", event_file_writer.EventsWriter.flush)

_init, _train_epoch = train.Loop.__init__, train.Loop.train_epoch


def _init_traced(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.epoch >= self.epochs:
        _enter("end")


def _train_epoch_traced(self, stop=None):
    _enter(str(self.epoch + 1))
    record = _train_epoch(self, stop)
    if self.epoch >= self.epochs:
        _enter("end")
    return record


train.Loop.__init__ = _init_traced
train.Loop.train_epoch = _train_epoch_traced

_DIGITS = os.environ.get("JAXCNN_DIGITS_NPZ")
if _DIGITS:
    def _load_digits() -> data.Splits:
        with np.load(_DIGITS) as f:
            return data.Splits(data.Split(f["x"], f["y"]), data.Split(f["xt"], f["yt"]),
                               tuple(str(i) for i in range(10)))

    datasets.load_digits = _load_digits

if os.environ.get("JAXCNN_SLOW_CALLS"):
    _heard, _pause = signals.StopSignals.heard, float(os.environ["JAXCNN_SLOW_CALLS"])

    def _slow_heard(self):
        time.sleep(_pause)
        return _heard(self)

    signals.StopSignals.heard = _slow_heard

if os.environ.get("JAXCNN_SAME_SECOND"):
    class _Noon(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 1, 12, 0, 0)

    _ids = iter(["000000"])
    runs.datetime = _Noon
    runs.secrets = types.SimpleNamespace(
        token_hex=lambda n: next(_ids, None) or secrets.token_hex(n))


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        argv = ["run", "digits_cnn", *argv[1:]]
    code = cli.main(argv)
    if os.environ.get("JAXCNN_COUNT_TO"):
        with open(os.environ["JAXCNN_COUNT_TO"], "w") as f:
            json.dump(_counts, f)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
