"""A plain (non-editable) install ships the built-in experiments: in a fresh virtual
environment, run from an empty folder, ``jaxcnn list`` shows them and ``jaxcnn run digits_cnn``
trains. Offline: the wheel is built with the running interpreter's setuptools (no build
isolation) and installed without dependencies, which the new environment reads from the running
interpreter's site-packages through a ``.pth`` file."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = {"digits_cnn", "mnist_lenet5", "mnist_simple_cnn", "fashion_mnist",
            "cifar10_resnet20", "filters_demo"}
# What a wheel is built from: the rest of the checkout (build/, runs/, .venv ...) stays out.
SOURCES = ["pyproject.toml", "setup.py", "README.md", "jaxcnn", "experiments"]


def _dependency_paths() -> list[str]:
    """The running interpreter's site-packages folders, where jaxcnn's dependencies are (not
    the checkout: only folders named site-packages or dist-packages)."""
    paths = []
    for p in sys.path:
        if p and Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir():
            if p not in paths:
                paths.append(p)
    return paths


def _can_build_wheels() -> bool:
    """Whether setuptools here has the bdist_wheel command (built in since 70.1; earlier ones
    need the wheel package), checked without importing setuptools."""
    try:
        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _run(args, *, cwd, env, timeout):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{args} exited with {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.slow
def test_plain_install_ships_and_runs_the_builtin_experiments(tmp_path, tmp_path_factory):
    if not _can_build_wheels():
        pytest.skip("building the wheel offline needs setuptools>=70.1 (in the test extra)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_", "CONDA"))}
    env.update(PYTHONNOUSERSITE="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               JAXCNN_CACHE=str(tmp_path_factory.getbasetemp() / "jaxcnn_cache"))

    # 1. A wheel, built from a copy of the sources (an in-tree build would leave build/ behind).
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", wheels, src], cwd=tmp_path, env=env, timeout=300)
    (wheel,) = wheels.glob("jaxcnn-*.whl")

    # 2. A fresh virtual environment that sees the running interpreter's packages as a last
    #    resort (appended to sys.path after its own site-packages), then jaxcnn into it.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env, timeout=300)
    python, jaxcnn = venv / "bin" / "python", venv / "bin" / "jaxcnn"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path, env=env, timeout=60).stdout.strip())
    (site / "_jaxcnn_test_dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path,
         env=env, timeout=300)

    # 3. From an empty folder: jaxcnn and its experiments come from the new site-packages.
    work = tmp_path / "work"
    work.mkdir()
    out = _run([python, "-c", "import jaxcnn, jaxcnn.experiments as e; print(jaxcnn.__file__); "
                "print(e.__file__)"], cwd=work, env=env, timeout=120).stdout.split()
    for file in out:
        assert Path(file).resolve().is_relative_to(site.resolve()), out

    listing = _run([jaxcnn, "list"], cwd=work, env=env, timeout=120).stdout
    rows = dict(line.split(None, 1) for line in listing.splitlines() if line.strip())
    assert BUILTINS <= set(rows), listing
    assert "__init__" not in rows
    for name in BUILTINS:
        path = Path(rows[name].strip())
        assert path.resolve() == (site / "jaxcnn" / "experiments" / f"{name}.py").resolve()

    runs = tmp_path / "runs"
    _run([jaxcnn, "run", "digits_cnn", "--epochs", "1", "--runs-dir", runs], cwd=work, env=env,
         timeout=600)
    (config,) = runs.glob("digits_cnn/*/config.json")
    assert json.loads(config.read_text())["experiment"] == "digits_cnn"
    status = json.loads((config.parent / "run.json").read_text())
    assert status["status"] == "completed" and status["epochs_done"] == 1
    assert list(work.iterdir()) == []  # nothing written to the current folder
