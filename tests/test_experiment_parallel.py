"""The runner's ``data_parallel`` and ``distributed`` options, in fresh processes.

This process has already started JAX with one CPU device, so the data-parallel run (8 CPU
devices from ``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and the distributed run
(2 processes of 2 devices each, joined by ``jax.distributed.initialize`` on loopback) go
through the command line in subprocesses, all started at once; the single-device reference
runs here meanwhile, from the same config.

All four runs use XLA's own convolution (``JAXCNN_CPU=off``) and RBG keys
(``jax_default_prng_impl=rbg``): compiling, not training, is what these runs spend their time
on, and jaxcnn's CPU convolution (which splits the batch into slices) and threefry's key
derivation take several times longer to compile for 8 partitions. Neither changes what the
runner does with a mesh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _processes import free_port, wait_all
from tensorboard.backend.event_processing import event_accumulator as ea

from jaxcnn import checkpoint as ckpt
from jaxcnn import config as config_lib
from jaxcnn import experiment, train
from jaxcnn.config import Config
from jaxcnn.errors import ConfigError, RunError

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240.0  # generous: a loaded 2-core machine compiles slowly; the runs take ~20 s
TOL = 1e-5
# The tiny run of test_experiment, one epoch (20 steps of 64 digits).
OVERRIDES = {"experiment": "tiny", "model": "simple_cnn", "epochs": "1", "batch_size": "64",
             "lr": "0.05", "log_every": "5", "num_feature_samples": "2",
             "keep_checkpoints": "2", "schedule": "step", "decay_epochs": "2"}
MAIN = ("import sys; from jaxcnn import cli; from jaxcnn.config import Config; "
        "raise SystemExit(cli.run_main(Config(), sys.argv[1:], prog='runner'))")
ENV_VARS = ("JAXCNN_COORDINATOR", "JAXCNN_COORDINATOR_BIND_ADDRESS", "JAXCNN_NUM_PROCESSES",
            "JAXCNN_PROCESS_ID", "JAXCNN_LOCAL_DEVICE_IDS")


def _args(runs_dir: Path, *flags: str) -> list[str]:
    pairs = [f"--{k.replace('_', '-')}={v}" for k, v in OVERRIDES.items()]
    return [*pairs, f"--runs-dir={runs_dir}", *flags]


def _env(cache: Path, devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    flags = env.get("XLA_FLAGS", "")
    env.update(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
               JAX_PLATFORMS="cpu", JAXCNN_CACHE=str(cache), PYTHONPATH=str(ROOT),
               JAXCNN_CPU="off", JAX_DEFAULT_PRNG_IMPL="rbg", **extra)
    return env


def _start(log: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", MAIN, *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _the_run(runs_dir: Path) -> Path:
    (run_dir,) = (runs_dir / "tiny").iterdir()  # exactly one run folder
    return run_dir


def _outcome(run_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """The final params (from the last checkpoint), the train/loss curve and run.json."""
    with np.load(ckpt.latest(run_dir / "checkpoints")) as z:
        params = {k: z[k] for k in z.files if k.startswith("params/")}
    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    curve = np.array([(e.step, e.value) for e in acc.Scalars("train/loss")])
    return params, curve, json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same one-epoch run on 1 device (here), on 8 devices and on 2 processes x 2 devices
    (subprocesses, started first so that they overlap)."""
    tmp = tmp_path_factory.mktemp("parallel")
    cache = tmp_path_factory.getbasetemp() / "jaxcnn_cache"
    experiment.setup_compilation_cache(cache / "jax")
    dirs = {name: tmp / name for name in ("single", "eight", "processes")}
    coordinator = f"127.0.0.1:{free_port()}"
    logs = [tmp / f"{name}.log" for name in ("eight", "process0", "process1")]
    procs = [_start(logs[0], _args(dirs["eight"], "--data-parallel"), _env(cache, 8))]
    for i in range(2):
        env = _env(cache, 2, JAXCNN_COORDINATOR=coordinator, JAXCNN_NUM_PROCESSES="2",
                   JAXCNN_PROCESS_ID=str(i), JAXCNN_COORDINATOR_BIND_ADDRESS=coordinator)
        procs.append(_start(logs[i + 1], _args(dirs["processes"], "--distributed"), env))
    impl = jax.config.jax_default_prng_impl
    try:
        config = config_lib.override(Config(), {**OVERRIDES, "runs_dir": str(dirs["single"])})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JAXCNN_CPU", "off")
            jax.config.update("jax_default_prng_impl", "rbg")
            experiment.run(config, progress=False)
    finally:
        jax.config.update("jax_default_prng_impl", impl)
        wait_all(procs, logs, TIMEOUT_S)
    return {**dirs, "logs": logs}


@pytest.mark.slow
@pytest.mark.requires_cpu_backend(
    reason="the reference runs in this process and agrees to 1e-5 with the subprocesses' "
           "runs on CPU devices only when it runs on the CPU too")
def test_data_parallel_over_eight_devices_follows_one_device(runs) -> None:
    params, curve, status = _outcome(_the_run(runs["single"]))
    got_params, got_curve, got_status = _outcome(_the_run(runs["eight"]))
    assert (status["devices"], status["processes"]) == (1, 1)
    assert (got_status["devices"], got_status["processes"]) == (8, 1)
    assert got_status["status"] == "completed" and len(curve) == 4
    np.testing.assert_allclose(got_curve, curve, rtol=0, atol=TOL)
    assert params.keys() == got_params.keys()
    for key in params:
        np.testing.assert_allclose(got_params[key], params[key], rtol=0, atol=TOL, err_msg=key)
    assert got_status["final"]["test_accuracy"] == pytest.approx(
        status["final"]["test_accuracy"], abs=1 / 360)


@pytest.mark.slow
@pytest.mark.requires_cpu_backend(
    reason="the reference runs in this process and agrees to 1e-5 with the subprocesses' "
           "runs on CPU devices only when it runs on the CPU too")
def test_two_processes_write_one_run_folder_that_matches_one_process(runs) -> None:
    params, curve, _ = _outcome(_the_run(runs["single"]))
    run_dir = _the_run(runs["processes"])  # one folder, written by process 0 alone
    got_params, got_curve, status = _outcome(run_dir)
    assert (status["devices"], status["processes"]) == (4, 2)
    assert status["status"] == "completed"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    np.testing.assert_allclose(got_curve, curve, rtol=0, atol=TOL)
    for key in params:
        np.testing.assert_allclose(got_params[key], params[key], rtol=0, atol=TOL, err_msg=key)
    # Both processes trained in that folder; only process 0 reported its epochs.
    first, second = (log.read_text() for log in runs["logs"][1:])
    assert f"run {run_dir}: test_accuracy=" in first and f"run {run_dir}: test_accuracy=" in second
    assert "epoch 1/1" in first and "epoch 1/1" not in second


def test_a_batch_that_does_not_split_over_the_devices_is_refused(tmp_path, monkeypatch) -> None:
    three = jax.sharding.Mesh(np.array(jax.devices() * 3), ("data",))  # one device, thrice
    monkeypatch.setattr(train, "data_parallel_mesh", lambda: three)
    config = config_lib.override(Config(), {**OVERRIDES, "runs_dir": str(tmp_path),
                                            "data_parallel": True})
    with pytest.raises(ConfigError, match=r"batch_size=64 does not split evenly over the 3 "
                                          r"devices.*multiple of 3"):
        experiment.run(config)
    assert not (tmp_path / "tiny").exists()  # refused before a folder was made


def test_distributed_without_a_cluster_is_refused(tmp_path, monkeypatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    config = config_lib.override(Config(), {**OVERRIDES, "runs_dir": str(tmp_path),
                                            "distributed": True})
    with pytest.raises(RunError, match=r"could not join the multi-process run .*"
                                       r"JAXCNN_COORDINATOR=host:port.*--no-distributed"):
        experiment.run(config)
    assert not (tmp_path / "tiny").exists()
