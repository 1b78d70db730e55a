"""Reliability of the runner in real processes: SIGKILL at any moment, SIGINT/SIGTERM, a
diverging loss, and runs started at once.

Every process is ``tests/_reliability_worker.py``: the ``jaxcnn`` command, able to SIGKILL
itself on entering a chosen I/O call (see its docstring). The runs are the tiny digits run
(:data:`TINY`, 22 steps an epoch), with JAX's persistent compilation cache in a folder the
session owns, so only the first process compiles.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest
from _events import accumulator
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from jaxcnn import checkpoint as ckpt
from jaxcnn import components, data, experiment, registry, train
from jaxcnn import config as C
from jaxcnn.errors import NonFiniteLossError, RunError
from jaxcnn.losses import softmax_cross_entropy

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "_reliability_worker.py"
EPOCHS = 3
STEPS_PER_EPOCH = 1437 // 64
# The tiny run as command-line overrides; no validation split, so no process imports sklearn.
TINY = ["--experiment", "tiny", "--model", "simple_cnn", "--batch-size", "64", "--lr", "0.05",
        "--log-every", "5", "--num-feature-samples", "2", "--schedule", "step",
        "--decay-epochs", "2", "--val-fraction", "0"]
KILLS = 20
# How the 20 kills are aimed: "time" kills after a random delay within the startup and first
# epoch of the process; the others on the N-th fsync / rename / event write / event-file flush
# (N random) of the first epoch the process trains, or of the run's end once every epoch is
# checkpointed (see tests/_reliability_worker.py).
KILL_MODES = ["time"] * 5 + ["event"] * 4 + ["flush"] * 3 + ["fsync"] * 4 + ["replace"] * 4
TIMING_KEYS = ("epoch_time_s", "images_per_second")


def _tiny_config(runs_dir, **kw) -> C.Config:
    cfg = C.Config(experiment="tiny", model="simple_cnn", batch_size=64, lr=0.05, log_every=5,
                   num_feature_samples=2, schedule="step", decay_epochs=(2,), val_fraction=0.0,
                   epochs=EPOCHS, runs_dir=str(runs_dir))
    return C.override(cfg, kw)


@pytest.fixture(scope="module", autouse=True)
def cache_root(tmp_path_factory):
    """This process's compilation cache, in the session's cache folder (as in test_cli)."""
    root = tmp_path_factory.getbasetemp() / "jaxcnn_cache"
    experiment.setup_compilation_cache(root / "jax")
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A folder of this session that its pytest-xdist workers share: the digits, the worker
    processes' compilation cache and the reference run are made once, by whichever comes
    first (see :func:`_locked`)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "reliability"
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def _locked(folder: Path):
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def env(shared):
    """The environment of every worker process: the shared caches, the digits as an .npz."""
    digits = shared / "digits.npz"
    with _locked(shared):
        if not digits.exists():
            (x, y), (xt, yt) = data.load("digits")
            np.savez(shared / "digits.tmp.npz", x=x, y=y, xt=xt, yt=yt)
            os.replace(shared / "digits.tmp.npz", digits)
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXCNN_")}
    return {**base, "JAXCNN_CACHE": str(shared / "cache"), "JAXCNN_DIGITS_NPZ": str(digits),
            "PYTHONPATH": str(ROOT)}


@dataclass
class Proc:
    popen: subprocess.Popen
    out: Path
    err: Path
    started: float

    def wait(self, timeout: float = 300) -> tuple[int, str, str]:
        try:
            rc = self.popen.wait(timeout)
        finally:
            self.popen.kill()
        return rc, self.out.read_text(), self.err.read_text()


def _start(args, env, folder: Path, *, kill_at: str | None = None, **extra_env) -> Proc:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(list(folder.glob("*.out")))
    out, err = folder / f"{n:03d}.out", folder / f"{n:03d}.err"
    env = {**env, **extra_env, **({"JAXCNN_KILL_AT": kill_at} if kill_at else {})}
    with open(out, "w") as fo, open(err, "w") as fe:
        popen = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=fo,
                                 stderr=fe, env=env, cwd=folder)
    return Proc(popen, out, err, time.time())


def _phases(err: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^PHASE (\S+) (\S+)$", err, re.M)}


def _epochs_printed(out: str) -> list[int]:
    return [int(e) for e in re.findall(r"^epoch (\d+)/\d+ step", out, re.M)]


def _tensor_accumulator(run_dir):
    acc = pea.EventAccumulator(str(run_dir), size_guidance={pea.TENSORS: 0})
    acc.Reload()
    return acc


@dataclass
class Reference:
    """An uninterrupted run of the worker, every checkpoint kept, with its I/O call counts."""

    run_dir: Path
    counts: dict[str, dict[str, int]]
    t_startup: float  # from process start to training epoch 1
    t_epoch: float

    def checkpoint(self, epoch: int) -> Path:
        return self.run_dir / "checkpoints" / f"ckpt-{epoch:06d}.npz"


@pytest.fixture(scope="module")
def reference(env, shared) -> Reference:
    folder, done = shared / "reference", shared / "reference.json"
    with _locked(shared):
        if not done.exists():
            proc = _start(["run", *TINY, "--epochs", EPOCHS, "--keep-checkpoints", EPOCHS + 1,
                           "--runs-dir", folder / "runs"], env, folder,
                          JAXCNN_COUNT_TO=str(folder / "counts.json"))
            rc, out, err = proc.wait()
            assert rc == 0, err
            assert _epochs_printed(out) == list(range(1, EPOCHS + 1))
            (run_dir,) = (folder / "runs" / "tiny").iterdir()
            t = _phases(err)
            done.write_text(json.dumps({
                "run_dir": str(run_dir), "counts": json.loads((folder / "counts.json").read_text()),
                "t_startup": t["1"] - proc.started, "t_epoch": (t["end"] - t["1"]) / EPOCHS}))
    ref = json.loads(done.read_text())
    return Reference(Path(ref["run_dir"]), ref["counts"], ref["t_startup"], ref["t_epoch"])


@pytest.fixture(scope="module")
def template():
    """The TrainState structure every checkpoint of the tiny run must fit (traced, not run)."""
    cfg = _tiny_config("unused")
    model = registry.build_model(cfg.model, 10)
    opt = registry.build_optimizer(cfg, STEPS_PER_EPOCH)
    return jax.eval_shape(lambda k: train.create_train_state(model, opt, k, (None, 8, 8, 1)),
                          jax.random.key(0))


def _assert_same_tree(a, b, what: str) -> None:
    fa, fb = ckpt.flatten(a), ckpt.flatten(b)
    assert list(fa) == list(fb)
    for k in fa:
        x, y = fa[k], fb[k]
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}: {k}")


def _assert_same_run(run_dir: Path, ref: Reference, template) -> None:
    """``run_dir`` completed with exactly the reference's checkpoint, history and events."""
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["epochs_done"] == EPOCHS
    got, meta = ckpt.restore(ckpt.latest(run_dir / "checkpoints"), template)
    want, ref_meta = ckpt.restore(ref.checkpoint(EPOCHS), template)
    assert meta["epoch"] == EPOCHS
    _assert_same_tree(got, want, "final TrainState")
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in meta["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING_KEYS}
                     for h in ref_meta["history"]]
    for f in run_dir.glob("events.out.tfevents.*"):  # every file parses, torn tails included
        list(LegacyEventFileLoader(str(f)).Load())
    acc, ref_acc = accumulator(run_dir), accumulator(ref.run_dir)
    tags, ref_tags = acc.Tags(), ref_acc.Tags()
    assert set(tags["scalars"]) == set(ref_tags["scalars"])
    for tag in ref_tags["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: duplicated steps {steps}"
        assert steps == [e.step for e in ref_acc.Scalars(tag)], tag
        if not tag.startswith(("perf/", "hparams/")):
            assert [e.value for e in acc.Scalars(tag)] == [e.value for e in ref_acc.Scalars(tag)]
    assert set(tags["histograms"]) == set(ref_tags["histograms"])
    for tag in ref_tags["histograms"]:
        assert [e.step for e in acc.Histograms(tag)] == [e.step for e in
                                                         ref_acc.Histograms(tag)], tag
    assert set(acc.PluginTagToContent("hparams")) == set(ref_acc.PluginTagToContent("hparams"))
    # Images and texts are tensor summaries, which the EventAccumulator above never purges; the
    # reader of TensorBoard's own Python loader (--load_fast=false) does, for every tag.
    acc, ref_acc = _tensor_accumulator(run_dir), _tensor_accumulator(ref.run_dir)
    assert set(acc.Tags()["tensors"]) == set(ref_acc.Tags()["tensors"])
    for tag in ref_acc.Tags()["tensors"]:
        steps = [e.step for e in acc.Tensors(tag)]
        if tag.startswith("_hparams_/"):
            # A kill right after the hparams' flush makes the resume write them again: the
            # known bug test_killed_at_the_end_the_hparams_are_written_exactly_once[end:replace:1]
            # pins; here they must be there, at step 0.
            steps = sorted(set(steps))
        assert steps == [e.step for e in ref_acc.Tensors(tag)], tag


@pytest.mark.slow
def test_sigkill_at_20_moments_then_resume_equals_the_uninterrupted_run(
        env, reference, template, tmp_path):
    """20 SIGKILLs across one run (and the runs that follow once it completes), each followed
    by ``jaxcnn resume``: the latest complete checkpoint always loads, equals the uninterrupted
    run's at that epoch and is at most one epoch behind the last epoch being trained; a run
    killed before its first checkpoint is resumed too, and starts over in the same folder; every
    completed run ends bit for bit equal to the uninterrupted one, with every event exactly once.

    A kill is aimed in one of two ways (seeded): after a random delay within the process's
    startup and first epoch (as long as the reference run took for them), or on entering the
    N-th ``os.fsync``, ``os.replace``, event write or event-file flush of the first epoch the
    process trains (N random up to that epoch's count in the reference run), which puts it
    inside checkpoint writes, event writes and flushes, or the run's end (hparams, status,
    close). The places the aimed kills landed are checked to include all three.
    """
    rng = np.random.default_rng(2024)
    modes = list(rng.permutation(KILL_MODES))
    runs = tmp_path / "runs"
    run_dir: Path | None = None
    epoch = 0  # the latest complete checkpoint's epoch of run_dir
    kills, completed, landed = 0, 0, []
    t_startup = reference.t_startup

    def fresh_folders() -> set[Path]:
        return set((runs / "tiny").iterdir()) if (runs / "tiny").is_dir() else set()

    while kills < KILLS or run_dir is not None:
        mode = modes[kills] if kills < KILLS else None
        before = fresh_folders()
        args = (["resume", run_dir] if run_dir is not None else
                ["run", *TINY, "--epochs", EPOCHS, "--runs-dir", runs])
        phase = str(epoch + 1) if epoch < EPOCHS else "end"
        kill_at = None
        if mode not in (None, "time"):
            n = int(rng.integers(1, max(reference.counts[phase][mode], 1) + 1))
            kill_at = f"{phase}:{mode}:{n}"
        proc = _start(args, env, tmp_path / "procs", kill_at=kill_at)
        if mode == "time":
            delay = rng.uniform(0, t_startup + reference.t_epoch)
            try:
                proc.popen.wait(delay)
            except subprocess.TimeoutExpired:
                proc.popen.send_signal(signal.SIGKILL)
        rc, out, err = proc.wait()
        phases = _phases(err)
        if phases:  # this machine's speed now: the next delays follow it
            t_startup = min(phases.values()) - proc.started
        if run_dir is None:
            new = fresh_folders() - before
            assert len(new) <= 1
            run_dir = new.pop() if new else None
        printed = max(_epochs_printed(out), default=epoch)
        if rc == 0:  # nothing killed it (an aim past the run's end): the run completed
            assert run_dir is not None, err
            _assert_same_run(run_dir, reference, template)
            completed += 1
            run_dir, epoch = None, 0
            continue
        assert rc == -signal.SIGKILL, err
        kills += 1
        if kill_at is not None:
            where = re.search(r"^KILLED \S+ in (.*)$", err, re.M)
            assert where, err
            landed.append(where[1])
        if run_dir is None:  # killed before the run folder existed
            assert printed == 0
            continue
        latest = ckpt.latest(run_dir / "checkpoints")
        if latest is None:  # killed before the first checkpoint
            assert epoch == 0 and printed == 0, err
            if not (run_dir / "config.json").exists():  # not yet a run folder: a new run
                with pytest.raises(RunError, match=r"is not a run folder"):
                    experiment.resume(run_dir)
                run_dir = None
            # else the next `jaxcnn resume` starts the run over in the same folder
            continue
        tree, meta = ckpt.restore(latest, template)
        new_epoch = meta["epoch"]
        # Nothing reported done is lost, and at most the epoch in progress.
        assert max(epoch, printed) <= new_epoch <= min(printed + 1, EPOCHS), (kill_at, err)
        _assert_same_tree(tree, ckpt.restore(reference.checkpoint(new_epoch), template)[0],
                          f"checkpoint of epoch {new_epoch} after kill {kills} ({kill_at})")
        epoch = new_epoch

    assert completed >= 1
    # Where the aimed kills landed: inside a checkpoint write, an event write on the writer
    # thread, and an event-file flush.
    assert any("checkpoint.py:save > files.py:atomic_write" in w for w in landed), landed
    assert any("tensorboard_writer.py:_loop" in w and "event_file_writer.py:write_event" in w
               for w in landed), landed
    assert any(re.search(r"tensorboard_writer.py:(flush|close)$", w) for w in landed), landed


def _wait_for(proc: Proc, pattern: str, timeout: float = 300) -> None:
    """Poll the worker's stderr until ``pattern`` appears (fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, proc.err.read_text(), re.M):
        assert proc.popen.poll() is None, proc.err.read_text()
        assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_running_steps_checkpoints_flushes_and_exits(
        sig, code, env, reference, template, tmp_path):
    """SIGINT/SIGTERM during epoch 1, with 2 steps a compiled call: the run stops within two
    calls (4 steps), in the middle of the epoch, saves a mid-epoch checkpoint, keeps the events
    of every finished epoch (none of epoch 1), prints the resume command and exits with 128 +
    the signal; resuming (after SIGTERM) finishes epoch 1 from that step and ends exactly where
    the uninterrupted run does (which ran 20 steps a call)."""
    runs = tmp_path / "runs"
    # 0.3 s between calls: 3.3 s of epoch 1 to land in, and a signal sent within 0.3 s of
    # its start is heard at the first question, after the first call.
    proc = _start(["run", *TINY, "--epochs", EPOCHS, "--steps-per-call", 2, "--runs-dir", runs],
                  env, tmp_path, JAXCNN_SLOW_CALLS="0.3")
    _wait_for(proc, r"^PHASE 1 ")  # training epoch 1, the handlers long in place
    sent = time.time()
    proc.popen.send_signal(sig)
    rc, out, err = proc.wait()
    assert rc == code, err
    (run_dir,) = (runs / "tiny").iterdir()
    assert f"{sig.name} received: stopping after the running steps, with a checkpoint" in err
    stopped = re.search(r"stopped at step (\d+), (\d+) of 22 steps into epoch (\d+) of 3 "
                        r"\(checkpoint saved\); continue it with: jaxcnn resume (\S+)", err)
    assert stopped, err
    step, into, epoch = map(int, stopped.groups()[:3])
    assert stopped[4] == str(run_dir)
    k = len(_epochs_printed(out))
    assert k == 0 and epoch == 1 and step == into, err
    if sent < _phases(err)["1"] + 0.2:
        assert into == 2, err  # heard at the first question
    assert 2 <= into <= 20 and into % 2 == 0, err  # within the epoch, after whole calls
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and status["epochs_done"] == k
    latest = ckpt.latest(run_dir / "checkpoints")
    assert latest.name == f"ckpt-{k:06d}_step{step:09d}.npz"
    assert not (run_dir / "checkpoints" / "best").exists()  # no whole epoch to be best yet
    tree, meta = ckpt.restore(latest, template)
    assert int(tree.step) == step and meta["epoch_step"] == into and meta["epoch"] == k
    assert len(meta["partial_metrics"]["loss"]["values"]) == into
    # The events are flushed and read back: the config and summary texts of step 0, and
    # nothing of epoch 1, whose steps are logged once it ends (after the resume).
    acc = accumulator(run_dir)
    assert acc.Tags()["scalars"] == [] and acc.Tags()["histograms"] == []
    assert {"config", "model_summary"} <= set(
        _tensor_accumulator(run_dir).Tags()["tensors"])
    if sig == signal.SIGINT:
        return  # resuming after SIGINT: tests/test_cli.py
    proc = _start(["resume", run_dir], env, tmp_path)
    rc, out, err = proc.wait()
    assert rc == 0, err
    assert _epochs_printed(out) == list(range(k + 1, EPOCHS + 1))
    _assert_same_run(run_dir, reference, template)


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_resume_starts_over_in_the_same_folder(
        env, reference, template, tmp_path):
    """Killed as epoch 1's checkpoint is published (its events already flushed): no complete
    checkpoint, so ``jaxcnn resume`` starts the run over in its folder, clearing those events,
    and ends exactly where the uninterrupted run does."""
    runs = tmp_path / "runs"
    proc = _start(["run", *TINY, "--epochs", EPOCHS, "--runs-dir", runs], env, tmp_path,
                  kill_at="1:replace:1")
    rc, out, err = proc.wait()
    assert rc == -signal.SIGKILL and "checkpoint.py:save > files.py:atomic_write" in err, err
    (run_dir,) = (runs / "tiny").iterdir()
    assert ckpt.latest(run_dir / "checkpoints") is None and _epochs_printed(out) == []
    assert _raw_steps(run_dir, "test/accuracy") == [STEPS_PER_EPOCH]  # flushed before it
    rc, out, err = _start(["resume", run_dir], env, tmp_path).wait()
    assert rc == 0, err
    assert "has no complete checkpoint yet (it was stopped before its first): starting the run " \
           "over in the same folder" in err
    assert _epochs_printed(out) == list(range(1, EPOCHS + 1))
    assert sorted((runs / "tiny").iterdir()) == [run_dir]  # no new folder
    assert _raw_steps(run_dir, "test/accuracy") == [(e + 1) * STEPS_PER_EPOCH
                                                    for e in range(EPOCHS)]
    _assert_same_run(run_dir, reference, template)


def _raw_steps(run_dir: Path, tag: str) -> list[int]:
    """Every step of scalar ``tag`` in the event files, as written (nothing purged)."""
    return [e.step for f in sorted(run_dir.glob("events.out.tfevents.*"))
            for e in LegacyEventFileLoader(str(f)).Load()
            for v in e.summary.value if v.tag == tag and v.HasField("simple_value")]


def _hparams_records(run_dir: Path) -> int:
    """How many hparams records (the plugin's session-start summary) the event files hold."""
    return sum(v.tag == "_hparams_/session_start_info"
               for f in sorted(run_dir.glob("events.out.tfevents.*"))
               for e in LegacyEventFileLoader(str(f)).Load() for v in e.summary.value)


@pytest.mark.slow
@pytest.mark.parametrize("second_kill", ["end:replace:2", "end:replace:3"])
def test_killed_at_the_end_the_hparams_are_written_exactly_once(
        second_kill, env, reference, template, tmp_path):
    """Killed after the last checkpoint, before its hparams reach the event file: the resume
    writes them. Killed after they are flushed, before the status says "completed" (at the
    rename of run.json recording them, ``end:replace:2``, after the one saying they are being
    written, or at the one saying "completed", ``end:replace:3``): the next resume does not
    write them again (where run.json cannot tell, it reads the event files)."""
    runs = tmp_path / "runs"
    proc = _start(["run", *TINY, "--epochs", EPOCHS, "--runs-dir", runs], env, tmp_path,
                  kill_at="end:event:1")  # the hparams record, queued but not yet written
    rc, _, err = proc.wait()
    assert rc == -signal.SIGKILL and "KILLED end:event:1 in" in err, err
    (run_dir,) = (runs / "tiny").iterdir()
    final = EPOCHS * STEPS_PER_EPOCH
    assert ckpt.read_metadata(ckpt.latest(run_dir / "checkpoints"))["epoch"] == EPOCHS
    assert _raw_steps(run_dir, "test/accuracy")[-1] == final
    assert _hparams_records(run_dir) == 0
    assert "hparams_step" not in json.loads((run_dir / "run.json").read_text())
    # A rename of run.json after the hparams were flushed, before it says "completed".
    proc = _start(["resume", run_dir], env, tmp_path, kill_at=second_kill)
    rc, _, err = proc.wait()
    assert rc == -signal.SIGKILL and "runs.py:write_status" in err, err
    assert json.loads((run_dir / "run.json").read_text())["status"] != "completed"
    assert _hparams_records(run_dir) == 1
    rc, out, err = _start(["resume", run_dir], env, tmp_path).wait()
    assert rc == 0 and _epochs_printed(out) == [], err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["hparams_step"] == final
    assert _hparams_records(run_dir) == 1
    # The hparams name the curves the run logged, with no hparams/* scalars beside them.
    assert not _raw_steps(run_dir, "hparams/test_accuracy")
    _assert_same_run(run_dir, reference, template)


def test_diverging_loss_stops_naming_the_step_and_the_intact_checkpoint(template, tmp_path):
    """A learning rate multiplied by 1e6 after epoch 1 makes epoch 2 diverge: the run stops with
    NonFiniteLossError naming the first non-finite step and the epoch-1 checkpoint, which stays
    the latest, loads, and equals the state after epoch 1; with on_nonfinite="skip" the same run
    completes, counting the dropped steps, with finite parameters."""
    cfg = _tiny_config(tmp_path / "runs", epochs=3, decay_epochs=(1,), decay_factor=1e6)
    with pytest.raises(NonFiniteLossError) as info:
        experiment.run(cfg, progress=False)
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    good = run_dir / "checkpoints" / "ckpt-000001.npz"
    message = str(info.value)
    m = re.fullmatch(
        rf"fit: the loss became (nan|inf|-inf) at step (\d+) \(epoch 2\); the last good "
        rf"checkpoint {re.escape(str(good))} is intact; lower the learning rate, or pass "
        rf"on_nonfinite='skip' \(--on-nonfinite skip\) to drop such steps \(run "
        rf"{re.escape(str(run_dir))}: resume from it with a smaller --lr: jaxcnn resume "
        rf"{re.escape(str(run_dir))} --lr <smaller> --force\)", message)
    assert m, message
    bad_step = int(m[2])
    assert STEPS_PER_EPOCH < bad_step <= 2 * STEPS_PER_EPOCH
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert ckpt.latest(run_dir / "checkpoints") == good
    assert [p.name for p in ckpt.checkpoints(run_dir / "checkpoints")] == [good.name]
    tree, meta = ckpt.restore(good, template)
    assert meta["epoch"] == 1 and int(tree.step) == STEPS_PER_EPOCH
    # The same config stopped cleanly after epoch 1 holds the same state, bit for bit.
    first = experiment.run(C.override(cfg, {"runs_dir": str(tmp_path / "first")}),
                           stop_after_epochs=1, progress=False)
    _assert_same_tree(tree, ckpt.restore(ckpt.latest(first.run_dir / "checkpoints"),
                                          template)[0], "epoch-1 state")
    # Epoch 2 again from that checkpoint, every step kept: the first non-finite loss is the
    # step the message named.
    splits = components.build(cfg, None, None, None)
    opt = registry.build_optimizer(cfg, STEPS_PER_EPOCH)
    step = train.make_train_step(registry.build_model(cfg.model, 10), softmax_cross_entropy,
                                 opt, jit=False)
    epoch_fn = train.make_epoch_fn(step, splits.train.images, splits.train.labels, cfg.batch_size)
    _, metrics = epoch_fn(tree, seed=cfg.seed, epoch=1)
    finite = np.asarray(metrics["finite"], bool)
    assert STEPS_PER_EPOCH + int(np.argmin(finite)) + 1 == bad_step and not finite.all()
    # With on_nonfinite="skip" the same run goes on past those steps, leaving the state as it
    # was at each: the same epoch 1 (another compiled epoch, so up to rounding), finite to the
    # end.
    skip = experiment.run(C.override(cfg, {"on_nonfinite": "skip",
                                           "runs_dir": str(tmp_path / "skip")}), progress=False)
    assert skip.completed and len(skip.history) == 3
    final, skip_meta = ckpt.restore(ckpt.latest(skip.run_dir / "checkpoints"), template)
    assert skip_meta["skipped_steps"] > 0
    assert {k: v for k, v in skip.history[0].items() if k not in TIMING_KEYS} == pytest.approx(
        {k: v for k, v in meta["history"][0].items() if k not in TIMING_KEYS}, rel=1e-5)
    assert all(np.isfinite(np.asarray(v)).all() for v in ckpt.flatten(final.params).values())


@pytest.mark.slow
def test_four_runs_started_at_once_get_their_own_folders_and_all_their_events(
        env, tmp_path):
    """Four runs started together into one runs folder, each told it is the same second and
    the same first random id: each retries into its own folder and writes every event."""
    runs = tmp_path / "runs"
    procs = [_start(["run", *TINY, "--epochs", 2, "--runs-dir", runs], env, tmp_path / f"p{i}",
                    JAXCNN_SAME_SECOND="1") for i in range(4)]
    results = [p.wait() for p in procs]
    assert [rc for rc, _, _ in results] == [0] * 4, [err for _, _, err in results]
    folders = sorted((runs / "tiny").iterdir())
    assert len(folders) == 4
    assert all(f.name.startswith("20240101-120000-") for f in folders)
    assert sum(f.name.endswith("-000000") for f in folders) == 1  # the others retried
    named = sorted(re.search(r"^run (\S+): test_accuracy", out, re.M)[1] for _, out, _ in results)
    assert named == [str(f) for f in folders]  # each process reported its own folder
    epoch_steps = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    finals = []
    for folder in folders:
        assert json.loads((folder / "run.json").read_text())["status"] == "completed"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        acc = accumulator(folder)
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(5, 45, 5))
        assert [e.step for e in acc.Scalars("test/accuracy")] == epoch_steps
        assert _hparams_records(folder) == 1 and not _raw_steps(folder, "hparams/test_accuracy")
        for tag in acc.Tags()["histograms"]:
            assert [e.step for e in acc.Histograms(tag)] == epoch_steps, tag
        assert len(acc.Tags()["histograms"]) == 16
        assert [e.step for e in acc.Tensors("features/conv1")] == epoch_steps
        finals.append(np.load(ckpt.latest(folder / "checkpoints")))
    for other in finals[1:]:  # the same seed: the same result in every folder
        for k in finals[0].files:
            np.testing.assert_array_equal(finals[0][k], other[k], err_msg=k)
