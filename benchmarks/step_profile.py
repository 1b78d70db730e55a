"""Where a training step's time goes: a per-operation profile of jaxcnn's scanned epoch.

    .venv/bin/python benchmarks/step_profile.py                   # lenet5, batch 1024
    .venv/bin/python benchmarks/step_profile.py --model simple_cnn --batch 128 \\
        --plans "picked;conv2:dx=conv"

For each plan (as in ``conv_plans.py``: ``picked`` or overrides of ``jaxcnn.cpu.plan_for``), one
compiled epoch of ``make_train_step`` (``batch_slices.build``) is run under ``jax.profiler`` and
the trace's XLA operations are summed by kind (the name without its ``.N`` suffix). XLA's CPU
runtime runs most operations on the thread that reaches them, but hands an Eigen convolution
(``conv_general_dilated``) to its thread pool and goes on: such an operation is counted from its
start to its ``end:`` event, which includes the time it waited for a thread, so the sum over
kinds exceeds the wall time when operations overlap. ``in flight`` splits the wall time by how
many operations were running at once: time with none is the runtime's own overhead.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batch_slices  # noqa: E402
import conv_plans  # noqa: E402
import jax  # noqa: E402

from jaxcnn import cpu  # noqa: E402


def spans(trace: dict) -> list[tuple[float, float, str]]:
    """(start, end, kind) in microseconds of each XLA operation on the runtime's threads."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    events = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in trace["traceEvents"]
                    if e.get("ph") == "X" and names.get((e["pid"], e["tid"]), "").startswith(
                        "tf_XLA") and not e["name"].startswith(("ThunkExecutor",
                                                                "ThreadpoolListener",
                                                                "SlinkyThreadPool")))
    ends = collections.defaultdict(list)  # on any thread: a pool task may end it elsewhere
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e["name"].startswith("end: "):
            ends[e["name"][5:]].append(e["ts"] + e.get("dur", 0))
    for times in ends.values():
        times.sort()
    taken: collections.Counter = collections.Counter()
    out = []
    for start, end, name in events:
        if name.startswith("end: ") or name.startswith("while"):
            continue
        if ends.get(name):  # handed to the thread pool: until its end event
            k = taken[name]
            taken[name] += 1
            end = max(end, ends[name][k]) if k < len(ends[name]) else end
        out.append((start, end, re.sub(r"\.\d+$", "", name)))
    return out


def summary(ops: list[tuple[float, float, str]], steps: int, top: int) -> str:
    if not ops:
        raise SystemExit("step_profile: the trace holds no XLA operations on threads named "
                         "tf_XLA*; this JAX version names its runtime's threads otherwise")
    edges = sorted([(a, 1) for a, _, _ in ops] + [(b, -1) for _, b, _ in ops])
    level, last = 0, edges[0][0]
    flight: collections.Counter = collections.Counter()
    for t, d in edges:
        flight[min(level, 3)] += t - last
        last, level = t, level + d
    wall = (edges[-1][0] - edges[0][0]) / 1000 / steps
    kinds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for a, b, kind in ops:
        kinds[kind] += b - a
        counts[kind] += 1
    lines = [f"wall {wall:.1f} ms/step; in flight: " + ", ".join(
        f"{'3+' if k == 3 else k}: {v / 1000 / steps:.1f} ms" for k, v in sorted(flight.items())),
        "", "| operation kind | ms/step | calls/step |", "|---|---:|---:|"]
    lines += [f"| {kind} | {v / 1000 / steps:.2f} | {counts[kind] / steps:.0f} |"
              for kind, v in kinds.most_common(top)]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--plans", default="picked", help="';'-separated, as in conv_plans.py")
    p.add_argument("--steps", type=int, default=16, help="steps an epoch")
    p.add_argument("--top", type=int, default=12, help="operation kinds listed")
    args = p.parse_args(argv)
    cpu.keep_freed_memory()
    shapes = conv_plans.kernel_shapes(args.model)
    x, y = batch_slices.random_data(args.batch, args.steps)
    print(f"{args.model}, batch {args.batch}, {args.steps} steps; AVX-512: {cpu.has_avx512()}; "
          f"jax {jax.__version__}")
    for plan in [s.strip() for s in args.plans.split(";") if s.strip()]:
        with conv_plans.planned(conv_plans.parse_plan(plan), shapes):
            run = batch_slices.build(args.model, args.batch, "auto", x, y)
        times = []
        for epoch in range(1, 4):
            t = time.perf_counter()
            run(epoch)
            times.append((time.perf_counter() - t) * 1000 / args.steps)
        plain = statistics.median(times)
        with tempfile.TemporaryDirectory() as tmp:
            with jax.profiler.trace(tmp, create_perfetto_trace=True):
                run(4)
            trace = json.load(gzip.open(next(Path(tmp).rglob("*.trace.json.gz"))))
        print(f"\n### {plan} ({plain:.1f} ms/step unprofiled, median of 3 epochs)\n")
        print(summary(spans(trace), args.steps, args.top))


if __name__ == "__main__":
    main()
