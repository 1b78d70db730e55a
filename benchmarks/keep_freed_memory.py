"""What ``jaxcnn.cpu.keep_freed_memory`` is worth: training images/s with and without it.

    .venv/bin/python benchmarks/keep_freed_memory.py                  # the table in the README
    .venv/bin/python benchmarks/keep_freed_memory.py --models lenet5 --batches 128 --rounds 6

The setting holds for a whole process, so the two sides cannot share one: each round runs one
fresh process with glibc's default ``malloc`` and one with ``keep_freed_memory()``, in an
order that alternates from round to round. Each process compiles the scanned training epoch
(``train.make_epoch_fn``, ``batch_slices="auto"``, in compiled calls of 20 steps as the
runner's ``steps_per_call``, SGD with momentum, ``--images`` device-resident random 28x28x1
images) of every model and batch, and times ``--epochs`` epochs of each after one warm-up
epoch. The table gives the median images/s of each side, the median over the rounds of their
ratio (kept / default) with the rounds kept won, and the minor page faults per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(models_: list[str], batches: list[int], images: int, epochs: int, keep: bool) -> None:
    import resource

    from batch_slices import build, random_data  # this folder's; it imports jaxcnn

    from jaxcnn import cpu

    applied = cpu.keep_freed_memory() if keep else False
    out = {"applied": applied}
    for name in models_:
        for batch in batches:
            steps = max(2, images // batch)
            n = steps * batch
            run = build(name, batch, "auto", *random_data(batch, steps), steps_per_call=20)
            faults, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for e in range(epochs):
                run(e + 1)
            secs = time.perf_counter() - t
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            out[f"{name}:{batch}"] = [epochs * n / secs, faults / (epochs * steps)]
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet5,simple_cnn")
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--images", type=int, default=20480,
                   help="images per epoch (rounded down to whole batches)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per case and process")
    p.add_argument("--child", choices=("keep", "default"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    models_ = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.child:
        child(models_, batches, args.images, args.epochs, args.child == "keep")
        return
    print(f"{os.cpu_count()} cores; {args.rounds} rounds of two processes; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rates: dict[str, dict[str, list[list[float]]]] = {"keep": {}, "default": {}}
    applied = True
    for r in range(args.rounds):
        for side in (("keep", "default") if r % 2 == 0 else ("default", "keep")):
            cmd = [sys.executable, __file__, "--child", side, "--models", args.models,
                   "--batches", args.batches, "--images", str(args.images),
                   "--epochs", str(args.epochs)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.strip().splitlines()[-1])
            applied &= res.pop("applied") or side == "default"
            for case, v in res.items():
                rates[side].setdefault(case, []).append(v)
        print(f"  round {r + 1} done", flush=True)
    if not applied:
        print("note: keep_freed_memory() did not apply here (not Linux with glibc): both "
              "sides ran glibc's default")
    print("\n| model | batch | default img/s | kept img/s | kept / default (median) | rounds "
          "won | page faults per step, default / kept |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, kept in rates["keep"].items():
        default = rates["default"][case]
        ratio = [k[0] / d[0] for k, d in zip(kept, default, strict=True)]
        name, batch = case.split(":")
        print(f"| {name} | {batch} | {statistics.median(d[0] for d in default):,.0f} | "
              f"{statistics.median(k[0] for k in kept):,.0f} | {statistics.median(ratio):.3f} | "
              f"{sum(x > 1 for x in ratio)}/{len(ratio)} | "
              f"{statistics.median(d[1] for d in default):,.0f} / "
              f"{statistics.median(k[1] for k in kept):,.0f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
