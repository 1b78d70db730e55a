"""The command line: overrides refused with exit code 2, `jaxcnn` subcommands, real processes."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxcnn import checkpoint as ckpt
from jaxcnn import cli, experiment
from jaxcnn import config as config_lib
from jaxcnn.config import Config
from jaxcnn.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# The tiny run of test_experiment, as command-line overrides (it shares the compiled code).
TINY = ["--experiment", "tiny", "--model", "simple_cnn", "--batch-size", "64", "--lr", "0.05",
        "--log-every", "5", "--num-feature-samples", "2", "--keep-checkpoints", "2",
        "--schedule", "step", "--decay-epochs", "2"]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "jaxcnn_cache"
    experiment.setup_compilation_cache(root / "jax")
    return root


@pytest.fixture(autouse=True)
def _cache(cache_root):
    return cache_root


def _env(cache_root):
    return {**os.environ, "JAXCNN_CACHE": str(cache_root), "PYTHONPATH": str(ROOT)}


def test_parse_overrides_forms():
    overrides, options = cli.parse_overrides(
        ["--epochs", "3", "--lr=0.05", "--runs-dir", "out", "--no-normalize", "--resume", "r",
         "--force", "--seed", "-1"], Config())
    assert overrides == {"epochs": "3", "lr": "0.05", "runs_dir": "out", "normalize": "false",
                         "seed": "-1"}
    assert options == {"resume": "r", "force": True, "help": False}
    assert cli.parse_overrides(["--normalize"], Config())[0] == {"normalize": "true"}


@pytest.mark.parametrize(("args", "match"), [
    (["--epoch", "3"], r"unknown config key 'epoch' \(did you mean 'epochs'\?\); valid keys are"),
    (["epochs", "3"], r"unexpected argument 'epochs'.*valid keys are"),
    (["--lr"], r"--lr needs a value.*valid keys are"),
])
def test_parse_overrides_refusals(args, match):
    with pytest.raises(ConfigError, match=match):
        cli.parse_overrides(args, Config())


@pytest.mark.parametrize("args", [["--epochs", "three"], ["--bogus", "1"], ["--model", "x"],
                                  ["--force"]])
def test_bad_overrides_exit_2_with_the_valid_keys(args, capsys):
    assert cli.run_main(Config(), args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    if args[0] != "--force" and args[0] != "--model":
        # Every field of the config, in order, printed in full.
        assert err.endswith(f"; valid keys are {', '.join(config_lib.valid_keys(Config))}\n")
        assert "valid keys are experiment, dataset, data_dir," in err and ", epochs, " in err


def test_help_lists_keys_with_this_experiments_defaults(capsys):
    assert cli.main(["run", "digits_cnn", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--batch-size" in out and "vgg_small" in out and "--resume RUN_DIR" in out


def test_summary_resolves_by_name_from_anywhere(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here: found beside the package source
    assert cli.main(["summary", "digits_cnn"]) == 0
    out = capsys.readouterr().out
    assert "stage1/conv1" in out and "total" in out and "53,194" in out
    assert cli.main(["summary", str(ROOT / "experiments" / "mnist_lenet5.py")]) == 0
    assert "61,706" in capsys.readouterr().out
    assert cli.main(["summary", "nope"]) == 2
    assert "valid names are" in capsys.readouterr().err
    assert cli.resolve_experiment("filters_demo") == ROOT / "experiments" / "filters_demo.py"


def test_summary_of_a_model_that_does_not_fit_prints_the_error_not_a_traceback(capsys):
    # LeNet-5's two 5x5 convolutions and pools need more than the digits' 8x8 pixels.
    assert cli.main(["summary", "digits_cnn", "--model", "lenet5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Conv layer 'conv2'") and "Traceback" not in err


def test_every_experiment_has_a_valid_config_and_a_docstring_command():
    names = cli.find_experiments()
    assert {"digits_cnn", "mnist_lenet5", "mnist_simple_cnn", "fashion_mnist",
            "cifar10_resnet20", "filters_demo"} <= set(names)
    for name in names:
        module = cli.load_experiment(name)
        config = module.get_config()
        assert config.experiment == name
        assert f"experiments/{name}.py" in module.__doc__
        # Runnable as a script: a main(), or a __main__ block that hands it to the runner.
        source = Path(module.__file__).read_text()
        assert callable(getattr(module, "main", None)) or (
            'if __name__ == "__main__":' in source and "cli.run_main(" in source), name


def test_run_runs_table_and_resume_via_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in ("0", "1"):
        assert cli.main(["run", "digits_cnn", *TINY, "--epochs", "1", "--seed", seed,
                         "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    accs = [line.split("test_accuracy=")[1].split()[0] for line in out.splitlines()
            if line.startswith("run ") and "test_accuracy=" in line]
    assert len(accs) == 2
    folders = sorted((runs / "tiny").iterdir())
    assert len(folders) == 2 and folders[0] != folders[1]
    assert cli.main(["runs", str(runs)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "experiment", "start"]
    rows = [r for r in table[2:] if r.strip()]
    assert len(rows) == 2
    for row, folder in zip(rows, folders, strict=True):
        assert row.startswith(f"tiny/{folder.name}") and "simple_cnn" in row
        assert "1/1" in row and "completed" in row
    shown = sorted(f"{100 * float(a):.2f}%" for a in accs)
    assert sorted(r.split()[10] for r in rows) == shown  # final test accuracy column
    # Extend the first run by one epoch through `jaxcnn resume`.
    assert cli.main(["resume", str(folders[0]), "--epochs", "2"]) == 0
    status = json.loads((folders[0] / "run.json").read_text())
    assert status["epochs_done"] == 2 and status["status"] == "completed"
    assert cli.main(["resume", str(folders[0]), "--batch-size", "32"]) == 1
    assert "changed batch_size" in capsys.readouterr().err
    assert cli.main(["runs", str(tmp_path / "missing")]) == 1


def test_on_a_terminal_of_unknown_size_the_epoch_bars_still_show(tmp_path, cache_root):
    # A new pseudo-terminal is 0 x 0 (as under `script`), where tqdm would hide its bar.
    main, child = os.openpty()
    chunks = []
    try:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "experiments" / "digits_cnn.py"), "--epochs", "2",
             "--model", "simple_cnn", "--runs-dir", str(tmp_path)], stdout=child,
            stderr=child, stdin=subprocess.DEVNULL, env=_env(cache_root), cwd=tmp_path)
        os.close(child)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # read as it writes: a full pty never blocks it
            if not select.select([main], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            proc.kill()
        returncode = proc.wait(timeout=30)
    finally:
        os.close(main)
    out = b"".join(chunks).decode(errors="replace").replace("\r", "\n")
    assert returncode == 0, out
    for e in (1, 2):
        assert any(f"digits_cnn epoch {e}/2: 100%" in line and "test_acc=" in line
                   for line in out.splitlines()), out


def test_default_command_end_to_end(tmp_path, cache_root):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "digits_cnn.py"), "--epochs", "1",
         "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
        env=_env(cache_root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "test_accuracy=" in proc.stdout
    (run_dir,) = (tmp_path / "digits_cnn").iterdir()
    assert {"config.json", "summary.txt", "run.json", "checkpoints"} <= {
        p.name for p in run_dir.iterdir()}
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_sigint_checkpoints_and_prints_the_resume_command(tmp_path, cache_root):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "digits_cnn.py"), *TINY, "--epochs", "3",
         "--runs-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(cache_root), cwd=tmp_path)
    try:
        first = proc.stdout.readline()  # printed once the signal handlers are in place
        assert first.startswith("run ") and "epochs 1 to 3" in first, first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    (run_dir,) = (tmp_path / "tiny").iterdir()
    # Stopped where it was heard, in epoch 1 (a checkpoint mid-epoch) or as it ended.
    assert f"continue it with: jaxcnn resume {run_dir}" in err and "epoch 2/3" not in out
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and status["epochs_done"] in (0, 1)
    assert ckpt.latest(run_dir / "checkpoints") is not None
    result = experiment.resume(run_dir, progress=False)
    assert result.completed and [h["epoch"] for h in result.history] == [1, 2, 3]
