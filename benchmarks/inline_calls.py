"""Paired A/B of ``jaxcnn.cpu.call_inline``: a hand-written training step called inline against
the same step dispatched asynchronously (JAX's default).

    .venv/bin/python benchmarks/inline_calls.py                  # the table in benchmarks/README
    .venv/bin/python benchmarks/inline_calls.py --models lenet5 --batches 128 --passes 5

JAX reads ``jax_cpu_enable_async_dispatch`` once, when it makes its CPU client, so every
measurement is a fresh worker process (this script with ``--worker``): in each pass one worker
per mode, in an order that rotates from pass to pass. ``inline`` imports jaxcnn as a user would;
``async`` sets ``jax_cpu_enable_async_dispatch = True`` right after the import, before JAX's
first computation. A worker builds ``train_throughput.py``'s ``jaxcnn[own step]`` (the model in a
``jax.jit(jax.value_and_grad(...))`` step, one call per batch from Python) and ``jaxcnn``
(``make_train_step`` in a scanned epoch, one call per epoch) on the same random data, compiles
both, then runs ``--rounds`` rounds of each, alternating, and reports the median images/s of
each and the median over the rounds of own step over ``jaxcnn``. All keep freed memory
(``cpu.keep_freed_memory``). The table gives, per mode, the medians over the passes, and the
inline own step's images/s over the async one's in the same pass (median, passes won).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("inline", "async")


def worker(mode: str, model: str, batch: int, steps: int, rounds: int) -> dict:
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    import jax

    from jaxcnn import cpu

    if mode == "async":
        jax.config.update("jax_cpu_enable_async_dispatch", True)
    cpu.keep_freed_memory()
    import train_throughput as tt

    own = tt.own_step_train(model, batch, steps)
    epoch = tt.jaxcnn_train(model, batch, steps)
    rates: dict[str, list[float]] = {"own": [], "jaxcnn": []}
    for r in range(rounds):
        for key, runner in (("own", own), ("jaxcnn", epoch))[::1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            n = runner.run()
            rates[key].append(n / (time.perf_counter() - t))
    return {"own": statistics.median(rates["own"]), "jaxcnn": statistics.median(rates["jaxcnn"]),
            "ratio": statistics.median(a / b for a, b in zip(rates["own"], rates["jaxcnn"],
                                                             strict=True)),
            "async_dispatch": bool(jax.config.values["jax_cpu_enable_async_dispatch"])}


def run_worker(mode: str, model: str, batch: int, steps: int, rounds: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", mode, "--models", model,
                          "--batches", str(batch), "--steps", str(steps),
                          "--rounds", str(rounds)],
                         capture_output=True, text=True, env={**os.environ, "JAXCNN_CPU": "auto"})
    if out.returncode:
        raise SystemExit(f"worker {mode} {model} b{batch} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["async_dispatch"] != (mode == "async"):
        raise SystemExit(f"worker {mode}: async dispatch was {result['async_dispatch']}")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="simple_cnn,lenet5")
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each contender per worker")
    p.add_argument("--steps", type=int, default=None,
                   help="steps a round (default: 20 below batch 512, else 6)")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        steps = args.steps or (20 if int(args.batches) < 512 else 6)
        print(json.dumps(worker(args.worker, args.models, int(args.batches), steps,
                                args.rounds)))
        return
    load = os.getloadavg()[0]
    print(f"inline_calls: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, load {load:.2f}", flush=True)
    print("| model | batch | mode | own step img/s | jaxcnn img/s | own/jaxcnn | "
          "inline/async own (won) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            steps = args.steps or (20 if batch < 512 else 6)
            got: dict[str, list[dict]] = {m: [] for m in MODES}
            for k in range(args.passes):
                for mode in (MODES if k % 2 == 0 else MODES[::-1]):
                    got[mode].append(run_worker(mode, model, batch, steps, args.rounds))
            paired = [a["own"] / b["own"] for a, b in zip(got["inline"], got["async"],
                                                          strict=True)]
            for mode in MODES:
                rows = got[mode]
                last = (f"{statistics.median(paired):.3f} ({sum(r > 1 for r in paired)}"
                        f"/{len(paired)})" if mode == "inline" else "")
                print(f"| {model} | {batch} | {mode} | "
                      f"{statistics.median(r['own'] for r in rows):,.0f} | "
                      f"{statistics.median(r['jaxcnn'] for r in rows):,.0f} | "
                      f"{statistics.median(r['ratio'] for r in rows):.3f} | {last} |",
                      flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
