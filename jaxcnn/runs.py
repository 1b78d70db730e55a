"""Run folders: where a run's files live, its status file and its saved config.

A run folder ``<runs_dir>/<experiment>/<YYYYmmdd-HHMMSS>-<6 hex>/`` holds ``config.json``
(the resolved config), ``summary.txt`` (the model table), ``run.json`` (status and progress,
rewritten atomically), ``checkpoints/``, the TensorBoard event files and, for a run whose
model, data or loss came from an experiment script, ``script/<name>.py``: a byte-for-byte copy
of that script. This module knows nothing of training.

``config.json`` names where the model, data and loss came from: a field that user code
replaced holds its source (``"my_script.py:get_model"``, or ``"python:<name>"`` for an object
given from Python), and the value the config held, which the user's functions saw, is kept
under ``"_replaced"`` so that :func:`load_config` gives back the config the run was made from.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jaxcnn import config as config_lib
from jaxcnn.errors import ConfigError, RunError
from jaxcnn.files import atomic_write

__all__ = ["CHECKPOINTS", "CONFIG_FILE", "STATUS_FILE", "SUMMARY_FILE", "RunResult", "code_block",
           "config_dict", "hparams_written", "load_config", "make_run_dir", "read_status",
           "resume_command", "save_config", "write_status"]

CHECKPOINTS = "checkpoints"
STATUS_FILE = "run.json"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.txt"


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its folder, config, the last epoch's record (``final``: e.g.
    ``test_accuracy``, ``val_accuracy``, ``train_loss``, and ``wall_time_s``), the record of
    the epoch with the best validation metric (``best``; None without a validation split),
    one record per epoch, and whether it ran to its end (False when stopped by
    ``stop_after_epochs``)."""

    run_dir: Path
    config: Any
    final: dict[str, float]
    best: dict[str, float] | None
    history: list[dict[str, float]] = field(default_factory=list)
    completed: bool = True

    @property
    def test_accuracy(self) -> float | None:
        """The headline: the test accuracy after the last epoch."""
        return self.final.get("test_accuracy")

    @property
    def best_val_test_accuracy(self) -> float | None:
        """The test accuracy at the epoch with the best validation metric."""
        return self.best.get("test_accuracy") if self.best else None


def code_block(text: str) -> str:
    """``text`` indented by four spaces: TensorBoard renders texts as Markdown, which keeps
    such a block verbatim."""
    return "\n".join("    " + line for line in text.splitlines())


def make_run_dir(runs_dir: str | os.PathLike[str], experiment: str) -> Path:
    """Create and return a new ``<runs_dir>/<experiment>/<YYYYmmdd-HHMMSS>-<6 hex>`` folder.

    Created with ``mkdir(exist_ok=False)`` and a random id, retried on a collision, so runs
    started in the same second never share a folder.
    """
    parent = Path(runs_dir) / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the runs folder {parent} ({e.strerror or e}); pass "
                       f"--runs-dir with a folder you can write") from None
    for _ in range(100):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            folder.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(f"cannot create a run folder in {parent} ({e.strerror or e}); pass "
                           f"--runs-dir with a folder you can write") from None
        return folder
    raise RunError(f"could not create a new run folder in {parent} after 100 tries")


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of ``run.json`` (empty where it is missing or unreadable)."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def write_status(run_dir: str | os.PathLike[str], *, drop: Sequence[str] = (),
                 **values: Any) -> None:
    """Update ``run.json`` with ``values`` and without the keys in ``drop``, atomically."""
    status = {k: v for k, v in {**read_status(run_dir), **values}.items() if k not in drop}
    atomic_write(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=1, allow_nan=True))


def hparams_written(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the event files in ``run_dir`` hold an hparams record (read with TensorBoard's
    own event file loader, torn tails included)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    return True
    return False


def resume_command(run_dir: str | os.PathLike[str]) -> str:
    """The shell command that continues the run in ``run_dir``."""
    return f"jaxcnn resume {shlex.quote(str(run_dir))}"


def config_dict(config: Any, sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``config`` as ``config.json`` holds it: each field in ``sources`` replaced by where its
    value came from, the replaced values under ``"_replaced"``."""
    d = config_lib.to_dict(config)
    if sources:
        d["_replaced"] = {k: d[k] for k in sources}
        d.update(sources)
    return d


def save_config(run_dir: str | os.PathLike[str], config: Any,
                sources: Mapping[str, str] | None = None) -> None:
    """Write ``config.json`` (see :func:`config_dict`) atomically."""
    atomic_write(Path(run_dir) / CONFIG_FILE,
                 json.dumps(config_dict(config, sources), indent=2) + "\n")


def load_config(run_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, str]]:
    """The config saved in run folder ``run_dir`` and the sources of the fields user code
    replaced (``{"model": "my_script.py:get_model", ...}``); RunError if ``run_dir`` is not a
    run folder or its config cannot be read."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunError(f"{folder} is not a run folder: it does not exist; pass a folder like "
                       f"runs/<experiment>/<timestamp>-<id>")
    try:
        text = (folder / CONFIG_FILE).read_text()
    except OSError:
        raise RunError(f"{folder} is not a run folder: it has no {CONFIG_FILE}; pass a folder "
                       f"like runs/<experiment>/<timestamp>-<id>") from None
    try:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config JSON cannot be parsed ({e}); restore or rewrite "
                              f"it") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config JSON must hold an object, got {type(d).__name__}")
        replaced = d.pop("_replaced", {})
        if not isinstance(replaced, dict):
            raise ConfigError("its _replaced entry must be an object")
        sources = {k: d[k] for k in replaced if k in d}
        return config_lib.from_dict({**d, **replaced}), sources
    except (ValueError, ConfigError) as e:  # named: "config JSON" alone does not say which file
        raise RunError(f"{folder / CONFIG_FILE} is not a valid run config: {e}") from None
