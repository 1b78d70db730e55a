"""Time from launch to the first training step of an experiment, cached, split into its parts.

    .venv/bin/python benchmarks/startup.py                       # mnist_lenet5, 5 rounds
    .venv/bin/python benchmarks/startup.py --experiment fashion_mnist --rounds 3

Each launch is a fresh process running the experiment script as ``python <script>`` would, with
timers around the runner's public phases, which it prints and exits once the first step can
start (after ``Loop.compile``, when the runner writes ``first_step_time``). A first launch fills
a temporary compilation cache (``$JAXCNN_CACHE``); then ``--rounds`` launches are measured with
it filled. The phases, in the order they run:

- ``python``: from the process's start to the first line of this bootstrap (the interpreter);
- ``import jax``, then ``import jaxcnn`` (the runner: optax, tensorboardX, NumPy's extras);
- ``read data``: ``components.load_splits`` (reading and checking the files);
- ``split``: ``data.train_val_split`` (its rows read from ``<jaxcnn cache>/splits``, where an
  earlier launch kept them; else with scikit-learn's import);
- ``normalize``: ``data.channel_stats`` and ``data.normalize``;
- ``other set-up``: the rest of ``components.build`` (the model's check against the data) and
  the run folder, its summary and config;
- ``Loop()``: the loop's set-up (the data onto the device, the train state);
- ``compile``: ``Loop.compile``, tracing the epoch and loading it from the cache;
- ``total``: from the process's start to the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BOOTSTRAP = r'''
import json, os, runpy, sys, time
from pathlib import Path

def age():
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - started

phases = {"python": age()}
t0 = time.perf_counter() - phases["python"]
t = time.perf_counter()
import jax  # noqa: E402
phases["import jax"] = time.perf_counter() - t
t = time.perf_counter()
from jaxcnn import cli, components, data, train  # noqa: E402
phases["import jaxcnn"] = time.perf_counter() - t
timed = {}

def timer(owner, name, phase):
    inner = getattr(owner, name)
    def wrapped(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            timed[phase] = timed.get(phase, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapped)

timer(components, "load_splits", "read data")
timer(data, "train_val_split", "split")
timer(data, "channel_stats", "normalize")
timer(data, "normalize", "normalize")
timer(train.Loop, "__init__", "Loop()")
t_imported = time.perf_counter()
compile_ = train.Loop.compile

def compile_and_stop(self):
    t = time.perf_counter()
    compile_(self)
    end = time.perf_counter()
    phases.update(timed)
    phases["compile"] = end - t
    phases["other set-up"] = (end - t_imported) - sum(timed.values()) - phases["compile"]
    phases["total"] = end - t0
    print("STARTUP " + json.dumps(phases), flush=True)
    os._exit(0)

train.Loop.compile = compile_and_stop
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
'''

ORDER = ["python", "import jax", "import jaxcnn", "read data", "split", "normalize",
         "other set-up", "Loop()", "compile", "total"]


def launch(script: Path, cache: Path, runs: Path, extra: list[str]) -> dict[str, float]:
    """One fresh process up to its first step: its phases in seconds."""
    env = dict(os.environ, JAXCNN_CACHE=str(cache))
    env.setdefault("JAXCNN_DATA", str(ROOT.parent / "shared" / "data"))
    out = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, str(script), "--runs-dir", str(runs), "--epochs", "1",
         *extra], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("STARTUP "):
            return json.loads(line[len("STARTUP "):])
    raise SystemExit(f"{script.name} did not reach its first step:\n{out.stdout}\n{out.stderr}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="mnist_lenet5")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("extra", nargs="*", help="more overrides for the experiment, after --")
    args = p.parse_args(argv)
    script = ROOT / "experiments" / f"{args.experiment}.py"
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; {script.name}, "
          f"cached, {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        cache, runs = Path(tmp) / "cache", Path(tmp) / "runs"
        launch(script, cache, runs, args.extra)  # fills the cache
        rounds = [launch(script, cache, runs, args.extra) for _ in range(args.rounds)]
    print("\n| phase | seconds (median) | per round |\n| --- | ---: | --- |")
    for phase in ORDER:
        values = [r.get(phase, 0.0) for r in rounds]
        print(f"| {phase} | {statistics.median(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
