"""Wall time from launch to 99.0% MNIST test accuracy: jaxcnn's runner against a plain
PyTorch loop of the same model, data, initial weights, batch order, optimizer and schedule.

    .venv/bin/python benchmarks/time_to_accuracy.py                   # the README table
    .venv/bin/python benchmarks/time_to_accuracy.py --rounds 1 --target 0.985

Contenders, each a fresh process whose clock starts just before ``Popen``, killed once it
reports a test accuracy of at least ``--target`` (the time is when it printed that epoch's
line), or left to finish its epochs:

- ``jaxcnn``: the runner as a user starts it, ``python experiments/mnist_lenet5.py`` (LeNet-5,
  SGD with momentum 0.9, lr 0.05, weight decay 5e-4, cosine decay over 10 epochs, batch 128,
  10% of the training set held out for validation, inputs standardised), with an empty
  compilation cache (``$JAXCNN_CACHE`` in a temporary folder). Each epoch it also evaluates
  the validation split, writes TensorBoard events (scalars, histograms, filters, feature maps,
  confusion matrix, misclassified images) and a checkpoint.
- ``jaxcnn (cached)``: the same command again, with the cache the first launch filled.
- ``torch``: this script's ``--torch-worker``: ``torch.nn`` LeNet-5 in NCHW,
  ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`` with the same per-step cosine
  ``LambdaLR``, ``torch.set_num_threads`` = cores; it reads the same IDX files itself (gzip and
  NumPy), trains on the same 54,000 rows (their indices come from ``jaxcnn.data``'s split),
  standardises them the same way, starts from jaxcnn's initial weights (converted to NCHW/OIHW)
  and visits the batches in the runner's order (``jaxcnn.data.batch_indices``' permutation),
  so both follow nearly the same trajectory and only speed differs. Each epoch it evaluates
  the test set only (what a plain loop needs to know its accuracy) and logs nothing.

Both keep freed memory (``jaxcnn.cpu.keep_freed_memory``, which the runner applies on the
CPU; the torch worker calls it too; ``benchmarks/keep_freed_memory.py`` measures it alone).

Rounds alternate the order. MNIST comes from ``$JAXCNN_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
ACCURACY = re.compile(r"^epoch (\d+)/\d+ .*test_accuracy=([0-9.]+)")


# ------------------------------------------------------------------------------ the PyTorch loop


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def torch_worker(spec_path: str) -> None:
    """The plain PyTorch loop; prints one ``epoch k/N ... test_accuracy=A`` line per epoch."""
    # As the runner does; loaded by path (it imports only the standard library), so that this
    # process imports neither jaxcnn's package nor JAX.
    loader = importlib.util.spec_from_file_location("_memory",
                                                    ROOT / "jaxcnn" / "cpu" / "memory.py")
    memory = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(memory)
    memory.keep_freed_memory()
    import torch
    import torch.nn.functional as F
    from torch import nn

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    folder = Path(spec["data_dir"])
    train_x, train_y, test_x, test_y = (_idx(folder / f) for f in FILES)
    rows = np.load(spec["train_rows"])
    x = train_x[rows].astype(np.float32) / 255.0
    mean, std = x.mean(dtype=np.float64), x.std(dtype=np.float64)
    x = torch.from_numpy(((x - mean) / std).astype(np.float32)[:, None])
    y = torch.from_numpy(train_y[rows].astype(np.int64))
    tx = torch.from_numpy(((test_x.astype(np.float32) / 255.0 - mean) / std)
                          .astype(np.float32)[:, None])
    ty = torch.from_numpy(test_y.astype(np.int64))

    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    init = np.load(spec["init"])
    with torch.no_grad():
        for layer, name in ((model[0], "conv1"), (model[3], "conv2")):
            layer.weight.copy_(torch.from_numpy(init[f"{name}/w"].transpose(3, 2, 0, 1)))
            layer.bias.copy_(torch.from_numpy(init[f"{name}/b"]))
        # jaxcnn flattens (h, w, c), torch (c, h, w): reorder dense1's input rows.
        w1 = init["dense1/w"].reshape(5, 5, 16, 120).transpose(3, 2, 0, 1).reshape(120, 400)
        model[7].weight.copy_(torch.from_numpy(np.ascontiguousarray(w1)))
        for layer, name in ((model[7], "dense1"), (model[9], "dense2"), (model[11], "dense3")):
            if name != "dense1":
                layer.weight.copy_(torch.from_numpy(init[f"{name}/w"].T.copy()))
            layer.bias.copy_(torch.from_numpy(init[f"{name}/b"]))

    epochs, batch, seed = spec["epochs"], spec["batch_size"], spec["seed"]
    steps = len(rows) // batch
    total = epochs * steps
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    print(f"first_step_time={time.time()}", flush=True)
    for epoch in range(epochs):
        model.train()
        # jaxcnn.data.batch_indices: the runner's order of this epoch.
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))[: steps * batch]
        for b in torch.from_numpy(order.reshape(steps, batch).astype(np.int64)):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(ty), 1000):
                correct += int((model(tx[i:i + 1000]).argmax(1) == ty[i:i + 1000]).sum())
        print(f"epoch {epoch + 1}/{epochs} step {(epoch + 1) * steps}: "
              f"test_accuracy={correct / len(ty):.4f}", flush=True)


# ------------------------------------------------------------------------------ the driver


def data_dir() -> Path | None:
    for folder in (os.environ.get("JAXCNN_DATA"), ROOT.parent / "shared" / "data"):
        if folder:
            for candidate in (Path(folder) / "mnist", Path(folder)):
                if all((candidate / f).is_file() for f in FILES):
                    return candidate
    return None


def prepare(tmp: Path, folder: Path) -> tuple[dict, Path]:
    """The torch worker's spec (the runner's config, the training rows of its split, its
    initial weights) and the data folder for the runner."""
    sys.path.insert(0, str(ROOT))
    import jax

    from jaxcnn import cli, registry, train
    from jaxcnn import data as data_lib

    config = cli.load_experiment("mnist_lenet5").get_config()
    splits = data_lib.load("mnist", data_dir=folder, download=False)
    rows, _ = data_lib.split_rows(splits.train.labels, config.val_fraction, seed=config.seed)
    np.save(tmp / "rows.npy", rows)
    steps = len(rows) // config.batch_size
    model = registry.build_model(config.model, 10)
    optimizer = registry.build_optimizer(config, steps)
    ts = jax.jit(lambda k: train.create_train_state(model, optimizer, k, (None, 28, 28, 1)))(
        jax.random.key(config.seed))  # the runner's own initialisation
    flat = {f"{layer}/{name}": np.asarray(v) for layer, p in ts.params.items()
            for name, v in p.items()}
    np.savez(tmp / "init.npz", **flat)
    assert config.optimizer == "momentum" and config.schedule == "cosine", config
    spec = {"data_dir": str(folder), "train_rows": str(tmp / "rows.npy"),
            "init": str(tmp / "init.npz"), "threads": os.cpu_count(), "epochs": config.epochs,
            "batch_size": config.batch_size, "seed": config.seed, "lr": config.lr,
            "momentum": config.momentum, "weight_decay": config.weight_decay}
    (tmp / "spec.json").write_text(json.dumps(spec))
    return spec, tmp / "spec.json"


def timed_run(cmd: list[str], env: dict[str, str], target: float, runs: Path | None = None
              ) -> tuple[float | None, int | None, float, float, float | None]:
    """Launch ``cmd``; (seconds to the first epoch line with test accuracy >= target or None,
    that epoch, the best accuracy seen, seconds until it ended or was killed, seconds to its
    first training step: the torch worker prints it, the runner writes it to the run.json of
    its newest run folder under ``runs``)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    reached, epoch, best, tail, first = None, None, 0.0, [], None
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-20:]
        if line.startswith("first_step_time="):
            first = float(line.split("=")[1]) - t0
        m = ACCURACY.match(line)
        if m:
            acc = float(m.group(2))
            best = max(best, acc)
            if acc >= target:
                reached, epoch = time.time() - t0, int(m.group(1))
                proc.kill()
                break
    proc.wait()
    if reached is None and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(tail)}")
    if runs is not None:
        newest = max(runs.glob("*/*/run.json"), key=lambda f: f.stat().st_mtime)
        first = json.loads(newest.read_text())["first_step_time"] - t0
    return reached, epoch, best, time.time() - t0, first


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--torch-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker)
        return
    folder = data_dir()
    if folder is None:
        raise SystemExit("MNIST's four .gz files are in neither $JAXCNN_DATA nor ../shared/data "
                         "(or their mnist/ folders); put them there first")

    import torch

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} cores; torch {torch.__version__} "
          f"({os.cpu_count()} threads)")
    print(f"command: time_to_accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"target: test accuracy >= {args.target}; data: {folder}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min)")
    print("malloc: keeps freed memory in both (jaxcnn.cpu.keep_freed_memory)", flush=True)
    results: dict[str, list] = {"jaxcnn": [], "jaxcnn (cached)": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        spec, spec_path = prepare(tmp, folder)
        torch_cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker",
                     str(spec_path)]
        for r in range(args.rounds):
            cache = tmp / f"cache{r}"
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("JAX_COMPILATION_CACHE")}
            env.update(JAXCNN_CACHE=str(cache), JAXCNN_DATA=str(folder))
            runner_cmd = [sys.executable, str(ROOT / "experiments" / "mnist_lenet5.py"),
                          "--runs-dir", str(tmp / "runs")]
            jobs = [("jaxcnn", runner_cmd), ("jaxcnn (cached)", runner_cmd),
                    ("torch", torch_cmd)]
            if r % 2:
                jobs = jobs[2:] + jobs[:2]
            for name, cmd in jobs:
                out = timed_run(cmd, env, args.target,
                                None if name == "torch" else tmp / "runs")
                results[name].append(out)
                reached = f"{out[0]:.1f} s at epoch {out[1]}" if out[0] else "not reached"
                print(f"  round {r + 1} {name}: {reached} (best {out[2]:.4f}, ran "
                      f"{out[3]:.1f} s, first step after {out[4]:.1f} s)", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)\n")
    print(f"| contender | s to {100 * args.target:.1f}% (median) | per round | epoch reached "
          f"| best accuracy | s to first step (median) |")
    print("|---|---:|---|---:|---:|---:|")
    for name, outs in results.items():
        times = [o[0] for o in outs if o[0] is not None]
        med = f"{statistics.median(times):.1f}" if len(times) == len(outs) else "not reached"
        per = ", ".join(f"{o[0]:.1f}" if o[0] else "-" for o in outs)
        epochs = ", ".join(str(o[1]) if o[1] else "-" for o in outs)
        best = max(o[2] for o in outs)
        first = statistics.median(o[4] for o in outs)
        print(f"| {name} | {med} | {per} | {epochs} | {best:.4f} | {first:.1f} |")


if __name__ == "__main__":
    main()
