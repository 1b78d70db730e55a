"""Time to the first training step: a first launch, and a second one with JAX's persistent
compilation cache filled by the first.

    .venv/bin/python benchmarks/compile_cache.py                      # the README table
    .venv/bin/python benchmarks/compile_cache.py --experiment digits_cnn --rounds 5

Each round makes an empty temporary cache folder and launches the same experiment twice, one
after the other, as fresh processes: ``python experiments/<name>.py --epochs 1 --runs-dir
<tmp>`` with ``$JAXCNN_CACHE`` pointing at that folder, so the runner's compilation cache
(``<cache>/jax``, :func:`jaxcnn.experiment.setup_compilation_cache`) starts empty for the first
launch and holds every program the first one compiled for the second. The runner writes into
its ``run.json`` the moment its epoch's program is compiled (or loaded from the cache) and the
first step can start (``first_step_time``, after :meth:`jaxcnn.train.Loop.compile`);
the table gives the seconds from just before ``Popen`` to that moment, and to the process's
exit (one epoch of training, evaluation, logging and a checkpoint later).

MNIST is read from ``$JAXCNN_DATA`` or ``../shared/data``; without it the default experiment
falls back to ``digits_cnn`` with a note.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxcnn import data as data_lib  # noqa: E402
from jaxcnn.errors import DataError  # noqa: E402


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["JAXCNN_CACHE"] = str(cache)
    shared = ROOT.parent / "shared" / "data"
    if "JAXCNN_DATA" not in env and shared.is_dir():
        env["JAXCNN_DATA"] = str(shared)
    return env


def _mnist_available(env: dict[str, str]) -> bool:
    try:
        data_lib.load("mnist", data_dir=env.get("JAXCNN_DATA"), download=False)
    except DataError:
        return False
    return True


def launch(experiment: str, extra: list[str], cache: Path, runs: Path) -> tuple[float, float,
                                                                                  float | None]:
    """Run the experiment once; (seconds to its first step, seconds to exit, the runner's own
    time_to_first_step_s)."""
    cmd = [sys.executable, str(ROOT / "experiments" / f"{experiment}.py"), "--epochs", "1",
           "--runs-dir", str(runs), *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True)
    t_exit = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    status_files = sorted(runs.glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    status = json.loads(status_files[-1].read_text())
    return status["first_step_time"] - t0, t_exit, status.get("time_to_first_step_s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="mnist_lenet5")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("extra", nargs="*", help="more overrides for the experiment, after --")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.experiment.startswith("mnist") and not _mnist_available(_env(Path(tmp))):
            print(f"note: MNIST not found (set JAXCNN_DATA); timing digits_cnn instead of "
                  f"{args.experiment}")
            args.experiment = "digits_cnn"
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} cores")
    print(f"command: compile_cache.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"experiment: experiments/{args.experiment}.py --epochs 1 {' '.join(args.extra)}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    rows = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cache, runs = Path(tmp) / "cache", Path(tmp) / "runs"
            first = launch(args.experiment, args.extra, cache, runs)
            entries = len(list((cache / "jax").glob("*")))
            second = launch(args.experiment, args.extra, cache, runs)
        rows.append((first, second, entries))
        print(f"  round {r + 1}: first step after {first[0]:.2f} s (cold), {second[0]:.2f} s "
              f"(cached, {entries} cache entries): {first[0] / second[0]:.2f}x", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)\n")

    print("| round | launch | to first step (s) | runner's own (s) | to exit (s) |")
    print("|---:|---|---:|---:|---:|")
    for i, (first, second, _) in enumerate(rows):
        for name, (step, done, own) in (("first (empty cache)", first), ("second", second)):
            own_s = f"{own:.2f}" if own is not None else "-"
            print(f"| {i + 1} | {name} | {step:.2f} | {own_s} | {done:.2f} |")
    ratios = [f[0] / s[0] for f, s, _ in rows]
    cold = statistics.median(f[0] for f, _, _ in rows)
    warm = statistics.median(s[0] for _, s, _ in rows)
    print(f"\nmedian time to first step: {cold:.2f} s cold, {warm:.2f} s cached: "
          f"{cold / warm:.2f}x sooner (per round {min(ratios):.2f}x to {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
