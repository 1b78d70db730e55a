"""The benchmark scripts' own set-up, where a mistake would make a figure wrong or the script
fail only when someone runs it: every script imports against the current jaxcnn and builds
its command line, and time_to_accuracy.py's PyTorch worker trains on the runner's training
rows from the runner's initial weights."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import data

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where dataclasses look up the script's annotations
    spec.loader.exec_module(module)
    return module


SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_imports_and_builds_its_command_line(name, capsys):
    """A name a script imports from jaxcnn that was renamed or removed fails here, not on the
    next run."""
    script = _script(name)
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_time_to_accuracy_gives_the_torch_worker_the_runners_rows_and_weights(tmp_path,
                                                                             monkeypatch):
    tta = _script("time_to_accuracy")
    monkeypatch.setenv("JAXCNN_CACHE", str(tmp_path / "cache"))
    folder = tta.data_dir()
    if folder is None:
        pytest.skip("../shared/data not found (nor $JAXCNN_DATA): real MNIST files are "
                    "unavailable")
    spec, spec_file = tta.prepare(tmp_path, folder)
    assert json.loads(spec_file.read_text()) == spec
    labels = data.load("mnist", data_dir=folder, download=False).train.labels
    want, val = data.split_rows(labels, 0.1, seed=spec["seed"])
    rows = np.load(spec["train_rows"])
    np.testing.assert_array_equal(rows, want)
    assert len(rows) + len(val) == 60_000 and len(rows) == 54_000
    init = np.load(spec["init"])
    assert sorted(init) == ["conv1/b", "conv1/w", "conv2/b", "conv2/w", "dense1/b", "dense1/w",
                            "dense2/b", "dense2/w", "dense3/b", "dense3/w"]
    assert init["conv1/w"].shape == (5, 5, 1, 6) and np.abs(init["conv1/w"]).sum() > 0
