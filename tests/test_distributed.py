"""Tests for jaxcnn.distributed and data-parallel training over many devices and processes.

This process has already started JAX with one CPU device, so runs over 8 devices, or over 2
processes joined by ``jax.distributed.initialize`` with Gloo collectives, happen in fresh
Python processes (tests/_distributed_worker.py) that write their results to ``tmp_path``; the
single-device reference runs here, from the same code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import _distributed_worker as worker
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _processes import free_port, wait_all

from jaxcnn import distributed
from jaxcnn.train import data_parallel_mesh

WORKER = Path(worker.__file__).resolve()
REPO = WORKER.parent.parent
TIMEOUT_S = 240.0  # generous: a loaded 2-core machine compiles slowly; the runs take ~10 s
TOL = 1e-5
ENV_VARS = (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
            distributed.ENV_LOCAL_DEVICE_IDS)


# ----------------------------------------------------------------------------------------------
# Helpers


def _worker_env(devices: int, xla_flags: str = "", **extra: str) -> dict[str, str]:
    """This environment for a worker with ``devices`` CPU devices, and ``extra`` set."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    flags = f"{env.get('XLA_FLAGS', '')} {xla_flags}"
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return {**env, **extra}


def _run_workers(tmp_path: Path, envs: list[dict[str, str]]) -> list[dict[str, np.ndarray]]:
    """Run one worker per env at once; return their results, or fail with their logs as soon
    as one fails (killing the rest, which would otherwise wait for it) or after TIMEOUT_S."""
    procs, logs, outs = [], [], []
    for i, env in enumerate(envs):
        logs.append(tmp_path / f"worker{i}.log")
        outs.append(tmp_path / f"worker{i}.npz")
        with open(logs[-1], "wb") as log:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(outs[-1])], cwd=REPO,
                                          env=env, stdout=log, stderr=subprocess.STDOUT))

    wait_all(procs, logs, TIMEOUT_S)
    return [dict(np.load(out)) for out in outs]


def _assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Every driver's per-step losses, final params, evaluation and logits agree to TOL."""
    for driver in worker.DRIVERS:
        keys = [k for k in want if k.startswith(f"{driver}/") and not k.endswith("_devices")]
        assert any("params[" in k for k in keys) and f"{driver}/loss" in keys
        for key in keys:
            if key.endswith("predictions"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            else:
                np.testing.assert_allclose(got[key], want[key], rtol=0, atol=TOL, err_msg=key)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """The single-device, single-process run (this process has one CPU device)."""
    assert jax.device_count() == 1
    out = worker.run()
    loss = out["scan/loss"]
    assert loss.shape == (worker.STEPS,) and loss[-1] < loss[0] - 0.05  # it does learn
    return out


# ----------------------------------------------------------------------------------------------
# Data-parallel training


@pytest.mark.slow
@pytest.mark.requires_cpu_backend(
    reason="the reference runs in this process and agrees to 1e-5 with the subprocesses' "
           "runs on CPU devices only when it runs on the CPU too")
def test_eight_devices_follow_the_single_device_run(tmp_path: Path, reference) -> None:
    hlo = tmp_path / "hlo"
    dump = f"--xla_dump_to={hlo} --xla_dump_hlo_module_re=^jit_(epoch_call|step)$"
    (got,) = _run_workers(tmp_path, [_worker_env(8, dump)])
    assert (int(got["device_count"]), int(got["process_count"])) == (8, 1)
    for driver in worker.DRIVERS:
        assert (got[f"{driver}/params_devices"] == 8).all()  # the state lived on every device
    _assert_matches(got, reference)
    # Data parallel, not 8 copies of the same work: each device convolves 64 / 8 = 8 rows, and
    # the gradients are all-reduced; in both drivers' compiled programs.
    for name in ("jit_epoch_call", "jit_step"):
        (path,) = hlo.glob(f"*.{name}.*after_optimizations.txt")
        text = path.read_text()
        assert "num_partitions=8" in text and "all-reduce(" in text, name
        assert re.search(r"= f32\[8,8,8,6\]\{[\d,]*\} ", text), name
        assert "f32[64,8,8,6]" not in text, name
    # shard_batch gave device i of the mesh rows [8i, 8i + 8) of the batch.
    rows = worker.problem()[0][: worker.BATCH]
    np.testing.assert_array_equal(got["layout/positions"], np.arange(8))
    np.testing.assert_array_equal(got["layout/rows"], rows.reshape(8, 8, *rows.shape[1:]))
    np.testing.assert_array_equal(got["layout/gathered"], rows)


@pytest.mark.slow
@pytest.mark.requires_cpu_backend(
    reason="the reference runs in this process and agrees to 1e-5 with the subprocesses' "
           "runs on CPU devices only when it runs on the CPU too")
def test_two_processes_agree_with_each_other_and_the_single_device_run(
    tmp_path: Path, reference
) -> None:
    coordinator = f"127.0.0.1:{free_port()}"
    envs = [_worker_env(2, JAXCNN_COORDINATOR=coordinator, JAXCNN_NUM_PROCESSES="2",
                        JAXCNN_PROCESS_ID=str(i)) for i in range(2)]
    results = _run_workers(tmp_path, envs)
    rows = worker.problem()[0][: worker.BATCH]
    for i, got in enumerate(results):
        assert int(got["process_index"]) == i and bool(got["is_main_process"]) == (i == 0)
        assert (int(got["device_count"]), int(got["local_device_count"])) == (4, 2)
        assert int(got["process_count"]) == 2
        for driver in worker.DRIVERS:
            assert (got[f"{driver}/params_devices"] == 4).all()  # spans both processes
        # Each process holds the quarter-batches of its own two devices, and only those.
        positions = got["layout/positions"]
        np.testing.assert_array_equal(positions, [2 * i, 2 * i + 1])
        quarters = rows.reshape(4, 16, *rows.shape[1:])
        np.testing.assert_array_equal(got["layout/rows"], quarters[positions])
        np.testing.assert_array_equal(got["layout/gathered"], rows)
        _assert_matches(got, reference)
    first, second = results
    for key in first:
        if "/params[" in key:
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)


# ----------------------------------------------------------------------------------------------
# initialize: arguments, environment, CPU collectives


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record calls to jax.distributed.initialize instead of making them (this process's
    backend is already running, so a real call would only raise)."""
    seen: list[tuple] = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: seen.append((a, kw)))
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return seen


def test_initialize_reads_the_environment(calls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAXCNN_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("JAXCNN_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAXCNN_PROCESS_ID", "3")
    monkeypatch.setenv("JAXCNN_LOCAL_DEVICE_IDS", "0, 1")
    distributed.initialize()
    distributed.initialize(process_id=1, local_device_ids=[0], initialization_timeout=9)
    assert calls == [
        (("10.0.0.1:1234", 4, 3), {"local_device_ids": [0, 1]}),
        (("10.0.0.1:1234", 4, 1), {"local_device_ids": [0], "initialization_timeout": 9}),
    ]


def test_initialize_without_arguments_leaves_detection_to_jax(calls) -> None:
    distributed.initialize()
    assert calls == [((None, None, None), {"local_device_ids": None})]


@pytest.mark.parametrize(("name", "value", "need"), [
    ("JAXCNN_NUM_PROCESSES", "two", "a non-negative int, got 'two'"),
    ("JAXCNN_PROCESS_ID", "-1", "a non-negative int, got '-1'"),
    ("JAXCNN_LOCAL_DEVICE_IDS", "0;1", "a comma-separated list of non-negative ints, got '0;1'"),
])
def test_initialize_rejects_a_malformed_environment_variable(
    calls, monkeypatch: pytest.MonkeyPatch, name: str, value: str, need: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be {need}; set it to e.g. {name}="):
        distributed.initialize("127.0.0.1:1234")
    assert calls == []


@pytest.mark.parametrize(("platforms", "before", "after"), [
    (None, None, "gloo"),  # turned on
    ("cpu,cuda", None, "gloo"),
    (None, "mpi", "mpi"),  # a user's choice is kept
    ("cuda", None, None),  # no CPU backend will run: nothing to turn on
])
def test_initialize_turns_on_cpu_collectives(calls, platforms, before, after) -> None:
    flag = "jax_cpu_collectives_implementation"
    saved = (jax.config.jax_platforms, getattr(jax.config, flag))
    try:
        jax.config.update("jax_platforms", platforms)
        jax.config.update(flag, before)
        distributed.initialize("127.0.0.1:1234", 1, 0)
        assert getattr(jax.config, flag) == after
    finally:
        jax.config.update("jax_platforms", saved[0])
        jax.config.update(flag, saved[1])
    assert len(calls) == 1


def test_initialize_after_the_backend_started_raises() -> None:
    jax.devices()  # make sure the backend is running, so nothing below can start a service
    with pytest.raises(RuntimeError, match="must be called before any JAX calls"):
        distributed.initialize("127.0.0.1:1", 1, 0)


# ----------------------------------------------------------------------------------------------
# Arrays over a mesh (one device here; 8 and 2x2 above)


def test_replicate_places_every_leaf_and_keeps_keys_typed() -> None:
    mesh = data_parallel_mesh()
    tree = {"w": np.arange(6.0).reshape(2, 3), "n": jnp.int32(3), "key": jax.random.key(7)}
    out = distributed.replicate(tree, mesh)
    for leaf in jax.tree.leaves(out):
        assert leaf.sharding.is_fully_replicated
        assert leaf.sharding.device_set == set(mesh.devices.flat)
    assert jax.dtypes.issubdtype(out["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(out["key"]),
                                  jax.random.key_data(tree["key"]))
    np.testing.assert_array_equal(out["w"], tree["w"])
    assert distributed.replicate(out, mesh)["w"] is out["w"]  # already placed: no copy


def test_shard_batch_and_to_host_round_trip() -> None:
    mesh = data_parallel_mesh()
    batch = (np.arange(24.0).reshape(4, 6), np.arange(4))
    out = distributed.shard_batch(batch, mesh)
    assert all(a.sharding.spec == jax.sharding.PartitionSpec(("data",)) for a in out)
    back = distributed.to_host({"batch": out, "key": jax.random.key(1)})
    np.testing.assert_array_equal(back["batch"][0], batch[0])
    np.testing.assert_array_equal(back["key"], jax.random.key_data(jax.random.key(1)))


def test_shard_batch_rejects_rows_that_do_not_split_evenly() -> None:
    devices = jax.devices() * 3  # a mesh of 3 (the same device thrice) to split 4 rows over
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    with pytest.raises(ValueError, match=r"divisible by the mesh's 3 devices, got shape \(4, 2\)"):
        distributed.shard_batch(np.zeros((4, 2)), mesh)
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        distributed.shard_batch(np.float32(1.0), data_parallel_mesh())


def test_is_main_process_in_a_single_process_run() -> None:
    assert distributed.is_main_process()
