"""Training and inference throughput: jaxcnn against raw JAX, PyTorch eager and torch.compile.

    .venv/bin/python benchmarks/train_throughput.py --no-xla --passes 5  # the README table
    .venv/bin/python benchmarks/train_throughput.py --quick              # a smoke run
    .venv/bin/python benchmarks/train_throughput.py --models lenet5 --batches 128 --passes 5

Contenders, for each model (``simple_cnn``, ``lenet5``; 28x28x1 inputs, 10 classes) and batch:

- ``jaxcnn``: what a user gets: ``train.make_train_step`` (softmax cross-entropy, Optax SGD with
  momentum 0.9) driven by ``train.make_epoch_fn(driver="scan")`` (a whole epoch of shuffled
  batches as one compiled ``lax.scan``); inference is ``jax.jit`` of ``model.apply``. Its
  convolutions take the platform's default path (:mod:`jaxcnn.cpu.conv` on CPU).
- ``jaxcnn[own step]`` (training only): the jaxcnn model in the step a user writes by hand:
  ``jax.jit`` of ``jax.value_and_grad`` of the loss of ``model.apply(..., train=True)`` and an
  Optax update, one call per batch in a Python loop (buffers donated); the CPU batch slices
  come from the model's own ``serial`` (:func:`jaxcnn.cpu.batch_slices`).
- ``jaxcnn[whole]`` (training only): the same with ``batch_slices=1``: each batch computed
  whole instead of in the slices ``make_train_step`` uses on a CPU, to show what they buy.
- ``jaxcnn[xla]``: the same with ``JAXCNN_CPU=off`` while tracing, i.e. plain
  ``lax.conv_general_dilated`` and its autodiff, to show what the CPU convolution buys.
- ``raw JAX``: a hand-written model of the same architecture on ``lax.conv_general_dilated``,
  ``lax.reduce_window`` and ``@``, with hand-written SGD + momentum, one jitted step (buffers
  donated) per batch in a Python loop.
- ``torch eager`` / ``torch.compile``: ``torch.nn`` (NCHW) with ``torch.optim.SGD(momentum=0.9)``;
  ``torch.compile(model)`` (inductor, default mode). Skipped with a note when torch is not
  installed (``pip install -e .[bench]``). PyTorch's intra-op threads are set to the machine's
  core count, as XLA's CPU client uses every core. Where JAX runs on a GPU, PyTorch runs on
  CUDA if it has it; a CPU-only torch there is labelled ``(cpu)`` in its rows.

Every contender runs on the same device-resident random data, for ``--seconds`` per pass; the
passes rotate the order, so slow drifts of a shared machine hit all of them alike. The table
gives the median images/s over the passes (and the min-max), the ratio to raw JAX, and the
fraction of a 2048x2048 float32 matmul's GFLOP/s measured in the same passes ("ceiling").
Below it, pass by pass, jaxcnn's images/s over the faster PyTorch contender's in that pass:
the median of those ratios and how many passes jaxcnn won, steadier than two medians; then
the same against raw JAX.

FLOPs per image are counted exactly from the layers' multiply-adds (:func:`jaxcnn.summary`):
inference is 2 x MACs; training is 2 x (forward + weight gradient of every layer + input
gradient of every layer but the first, which nobody needs) = 2 x (3 x MACs - MACs of the first
layer). Biases, activations, pooling, the loss and the optimizer are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Run from a checkout: the repository root first on the path, whatever the installed state.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from jaxcnn import cpu, models, summary  # noqa: E402
from jaxcnn import train as train_lib  # noqa: E402
from jaxcnn.losses import softmax_cross_entropy  # noqa: E402

try:
    import torch
except ImportError:  # the optional `bench` extra
    torch = None

LR, MOMENTUM = 0.01, 0.9
IN_SHAPE = (28, 28, 1)
MODELS = ("simple_cnn", "lenet5")


# ----------------------------------------------------------------------------- raw JAX models


def _conv(x, w, b, padding):
    y = lax.conv_general_dilated(x, w, (1, 1), padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def _avg_pool2(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def _max_pool2(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _raw_params(name: str, key) -> dict:
    shapes = {
        "simple_cnn": {"c1": (3, 3, 1, 32), "c2": (3, 3, 32, 64), "d1": (3136, 256),
                       "d2": (256, 10)},
        "lenet5": {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "d1": (400, 120), "d2": (120, 84),
                   "d3": (84, 10)},
    }[name]
    keys = jax.random.split(key, len(shapes))
    params = {}
    for k, (layer, shape) in zip(keys, shapes.items(), strict=True):
        fan_in = int(np.prod(shape[:-1]))
        params[layer] = {"w": jax.random.normal(k, shape) / np.sqrt(fan_in),
                         "b": jnp.zeros(shape[-1])}
    return params


def _raw_apply(name: str, p: dict, x):
    relu = jax.nn.relu
    if name == "simple_cnn":
        x = _avg_pool2(relu(_conv(x, p["c1"]["w"], p["c1"]["b"], "SAME")))
        x = _avg_pool2(relu(_conv(x, p["c2"]["w"], p["c2"]["b"], "SAME")))
        x = relu(x.reshape(x.shape[0], -1) @ p["d1"]["w"] + p["d1"]["b"])
        return x @ p["d2"]["w"] + p["d2"]["b"]
    x = _max_pool2(relu(_conv(x, p["c1"]["w"], p["c1"]["b"], "SAME")))
    x = _max_pool2(relu(_conv(x, p["c2"]["w"], p["c2"]["b"], "VALID")))
    x = relu(x.reshape(x.shape[0], -1) @ p["d1"]["w"] + p["d1"]["b"])
    x = relu(x @ p["d2"]["w"] + p["d2"]["b"])
    return x @ p["d3"]["w"] + p["d3"]["b"]


def _raw_loss(name, params, x, y):
    logp = jax.nn.log_softmax(_raw_apply(name, params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# ----------------------------------------------------------------------------- contenders


@dataclass
class Runner:
    """``run()`` does a chunk of work, blocks until it is done and returns the images done."""

    name: str
    run: Callable[[], int]


def _data(batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch * steps, *IN_SHAPE), dtype=np.float32)
    labels = rng.integers(0, 10, batch * steps).astype(np.int32)
    return images, labels


@contextlib.contextmanager
def _conv_impl(impl: str | None):
    """Turn jaxcnn's CPU mechanisms off (``impl="xla"``) while a contender is traced (jit
    traces on the first call)."""
    if impl is None:
        yield
        return
    with cpu.off():
        yield


def jaxcnn_train(name: str, batch: int, steps: int, impl: str | None = None,
                 whole: bool = False) -> Runner:
    model = getattr(models, name)()
    optimizer = optax.sgd(LR, momentum=MOMENTUM)
    ts = train_lib.create_train_state(model, optimizer, jax.random.key(0), (None, *IN_SHAPE))
    step = train_lib.make_train_step(model, softmax_cross_entropy, optimizer, jit=False,
                                     batch_slices=1 if whole else "auto")
    images, labels = _data(batch, steps)
    run_epoch = train_lib.make_epoch_fn(step, images, labels, batch, driver="scan")
    box = {"ts": ts, "epoch": 0}

    def run() -> int:
        box["ts"], metrics = run_epoch(box["ts"], seed=0, epoch=box["epoch"])  # device_get: blocks
        box["epoch"] += 1
        return batch * len(metrics["loss"])

    with _conv_impl(impl):
        run()  # compile
    label = "jaxcnn[whole]" if whole else "jaxcnn" if impl is None else f"jaxcnn[{impl}]"
    return Runner(label, run)


def _stepped(label: str, step_fn, params, opt_state, batch: int, steps: int) -> Runner:
    """A hand-written loop: ``step_fn(params, opt_state, x, y) -> (params, opt_state, loss)``
    jitted with its state donated, called once per device-resident batch."""
    step_fn = jax.jit(step_fn, donate_argnums=(0, 1))
    images, labels = _data(batch, steps)
    batches = [(jnp.asarray(images[i * batch:(i + 1) * batch]),
                jnp.asarray(labels[i * batch:(i + 1) * batch])) for i in range(steps)]
    box = {"p": params, "o": opt_state}

    def run() -> int:
        p, o = box["p"], box["o"]
        for x, y in batches:
            p, o, loss = step_fn(p, o, x, y)
        loss.block_until_ready()
        box["p"], box["o"] = p, o
        return batch * steps

    run()
    return Runner(label, run)


def own_step_train(name: str, batch: int, steps: int) -> Runner:
    model = getattr(models, name)()
    optimizer = optax.sgd(LR, momentum=MOMENTUM)
    _, params, state = model.init(jax.random.key(0), (None, *IN_SHAPE))

    def step_fn(params, opt_state, x, y):
        def loss_fn(p):
            logits, _ = model.apply(p, state, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _stepped("jaxcnn[own step]", step_fn, params, optimizer.init(params), batch, steps)


def jaxcnn_infer(name: str, batch: int, steps: int, impl: str | None = None) -> Runner:
    model = getattr(models, name)()
    _, params, state = model.init(jax.random.key(0), (None, *IN_SHAPE))
    forward = jax.jit(lambda p, s, x: model.apply(p, s, x)[0])
    xs = [jnp.asarray(x) for x in _data(batch, steps)[0].reshape(steps, batch, *IN_SHAPE)]

    def run() -> int:
        out = [forward(params, state, x) for x in xs]
        jax.block_until_ready(out)
        return batch * steps

    with _conv_impl(impl):
        run()
    return Runner("jaxcnn" if impl is None else f"jaxcnn[{impl}]", run)


def raw_train(name: str, batch: int, steps: int) -> Runner:
    params = _raw_params(name, jax.random.key(0))
    velocity = jax.tree.map(jnp.zeros_like, params)

    def step_fn(params, velocity, x, y):
        loss, grads = jax.value_and_grad(lambda p: _raw_loss(name, p, x, y))(params)
        velocity = jax.tree.map(lambda v, g: MOMENTUM * v + g, velocity, grads)
        params = jax.tree.map(lambda p, v: p - LR * v, params, velocity)
        return params, velocity, loss

    return _stepped("raw JAX", step_fn, params, velocity, batch, steps)


def raw_infer(name: str, batch: int, steps: int) -> Runner:
    params = _raw_params(name, jax.random.key(0))
    forward = jax.jit(lambda p, x: _raw_apply(name, p, x))
    xs = [jnp.asarray(x) for x in _data(batch, steps)[0].reshape(steps, batch, *IN_SHAPE)]

    def run() -> int:
        jax.block_until_ready([forward(params, x) for x in xs])
        return batch * steps

    run()
    return Runner("raw JAX", run)


def _torch_model(name: str):
    nn = torch.nn
    if name == "simple_cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(3136, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def torch_device() -> str:
    """Where PyTorch runs: CUDA when JAX runs on a GPU and this torch has CUDA, else the CPU."""
    if torch is not None and jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _torch_name(compiled: bool) -> str:
    """The contender's name, with PyTorch's device added where it is not JAX's (a CPU-only
    torch beside JAX on a GPU), so such a row is never read as a like-for-like comparison."""
    name = "torch.compile" if compiled else "torch eager"
    same = torch_device() == "cuda" or jax.default_backend() == "cpu"
    return name if same else f"{name} ({torch_device()})"


def _torch_sync() -> None:
    if torch_device() == "cuda":
        torch.cuda.synchronize()


def _torch_data(batch: int, steps: int):
    images, labels = _data(batch, steps)
    dev = torch_device()
    xs = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dev).split(batch)
    ys = torch.from_numpy(labels.astype(np.int64)).to(dev).split(batch)
    return list(zip(xs, ys, strict=True))


def torch_train(name: str, batch: int, steps: int, compiled: bool) -> Runner:
    torch.manual_seed(0)
    model = _torch_model(name).to(torch_device())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    net = torch.compile(model) if compiled else model
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = _torch_data(batch, steps)

    def run() -> int:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
        _torch_sync()
        return batch * steps

    run()
    return Runner(_torch_name(compiled), run)


def torch_infer(name: str, batch: int, steps: int, compiled: bool) -> Runner:
    torch.manual_seed(0)
    model = _torch_model(name).to(torch_device()).eval()
    net = torch.compile(model) if compiled else model
    xs = [x for x, _ in _torch_data(batch, steps)]

    def run() -> int:
        with torch.inference_mode():
            for x in xs:
                net(x)
        _torch_sync()
        return batch * steps

    run()
    return Runner(_torch_name(compiled), run)


def matmul_runner(n: int = 2048) -> tuple[Runner, float]:
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    mm = jax.jit(lambda a, b: a @ b)
    reps = 4

    def run() -> int:
        jax.block_until_ready([mm(a, b) for _ in range(reps)])
        return reps

    run()
    return Runner("matmul", run), 2.0 * n**3


# ----------------------------------------------------------------------------- measuring


def flops_per_image(name: str) -> tuple[float, float]:
    """(training, inference) FLOPs per image, counted exactly from the layers' MACs."""
    rows = [r for r in summary(getattr(models, name)(), (None, *IN_SHAPE)).rows if r.macs]
    macs = sum(r.macs for r in rows)
    return 2.0 * (3 * macs - rows[0].macs), 2.0 * macs


def timed(runner: Runner, seconds: float) -> float:
    """Units of work per second over at least ``seconds`` (whole chunks)."""
    done, start = 0, time.perf_counter()
    while True:
        done += runner.run()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def _steps(batch: int, mode: str) -> int:
    """Steps per chunk: about 2048 images for training, 4096 for inference (at least 2)."""
    return max(2, (2048 if mode == "train" else 4096) // batch)


def build(args) -> list[tuple[tuple[str, int, str], Runner]]:
    have_torch = torch is not None
    groups = []
    for name in args.models:
        for batch in args.batches:
            for mode in ("train", "infer"):
                steps = _steps(batch, mode)
                print(f"compiling {name} b{batch} {mode} ...", file=sys.stderr, flush=True)
                if mode == "train":
                    runners = [jaxcnn_train(name, batch, steps),
                               own_step_train(name, batch, steps)]
                    if not args.no_whole:
                        runners.append(jaxcnn_train(name, batch, steps, whole=True))
                    if not args.no_xla:
                        runners.append(jaxcnn_train(name, batch, steps, impl="xla"))
                    runners.append(raw_train(name, batch, steps))
                    if have_torch:
                        runners += [torch_train(name, batch, steps, False)]
                        if not args.no_compile:
                            runners += [torch_train(name, batch, steps, True)]
                else:
                    runners = [jaxcnn_infer(name, batch, steps)]
                    if not args.no_xla:
                        runners.append(jaxcnn_infer(name, batch, steps, impl="xla"))
                    runners.append(raw_infer(name, batch, steps))
                    if have_torch:
                        runners += [torch_infer(name, batch, steps, False)]
                        if not args.no_compile:
                            runners += [torch_infer(name, batch, steps, True)]
                groups += [((name, batch, mode), r) for r in runners]
    return groups


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Model name", "unknown CPU").strip()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    p.add_argument("--passes", type=int, default=3, help="interleaved passes (median reported)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per contender per pass")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-xla", action="store_true",
                   help="skip jaxcnn[xla] (slow: about 30 img/s for simple_cnn at batch 1024)")
    p.add_argument("--no-whole", action="store_true",
                   help="skip jaxcnn[whole] (training without batch slices)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc as it is (default: jaxcnn.cpu."
                        "keep_freed_memory(), as the runner does, for every contender)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: lenet5, batch 32, 1 pass of 0.2 s, no torch.compile, "
                        "jaxcnn[whole] or jaxcnn[xla]")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.quick:
        args.models, args.batches, args.passes, args.seconds = ["lenet5"], [32], 1, 0.2
        args.no_compile = args.no_xla = args.no_whole = True
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"--models: unknown {bad}; choose from {list(MODELS)}")

    cores = os.cpu_count() or 1
    if torch is not None:
        torch.set_num_threads(cores)
    # As the runner does; it holds for every contender of this process, PyTorch's included.
    kept = not args.default_malloc and cpu.keep_freed_memory()
    header = [
        f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"machine: {lscpu_model()}, {cores} cores; jax {jax.__version__} "
        f"({jax.default_backend()}), "
        + (f"torch {torch.__version__} on {torch_device()} ({torch.get_num_threads()} CPU "
           f"threads = cores)"
           if torch is not None else "torch not installed: PyTorch rows skipped "
           "(pip install -e .[bench])"),
        f"command: {' '.join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])}",
        f"passes: {args.passes} x {args.seconds:g} s per contender, order rotated each pass",
        f"load average at start: {os.getloadavg()[0]:.2f} (1 min)",
        "malloc: " + ("keeps freed memory (jaxcnn.cpu.keep_freed_memory), for every "
                      "contender" if kept else "glibc's default"),
    ]
    print("\n".join(header), flush=True)

    mm, mm_flops = matmul_runner()
    groups = build(args)
    rates: dict[int, list[float]] = {i: [] for i in range(len(groups))}
    mm_rates: list[float] = []
    order = list(range(len(groups)))
    for pass_ in range(args.passes):
        shift = (pass_ * max(1, len(order) // args.passes + 1)) % len(order)
        rotated = order[shift:] + order[:shift]
        if pass_ % 2:
            rotated.reverse()
        mm_rates.append(timed(mm, min(args.seconds, 1.0)) * mm_flops / 1e9)
        for i in rotated:
            rates[i].append(timed(groups[i][1], args.seconds))
        print(f"pass {pass_ + 1}/{args.passes} done", file=sys.stderr, flush=True)
    mm_rates.append(timed(mm, min(args.seconds, 1.0)) * mm_flops / 1e9)
    ceiling = statistics.median(mm_rates)

    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min); other processes share these "
          f"cores, and PyTorch's OpenMP threads slow down far more than XLA's when they do")
    print(f"matmul 2048x2048 f32: median {ceiling:.0f} GFLOP/s "
          f"(min {min(mm_rates):.0f}, max {max(mm_rates):.0f}) over {len(mm_rates)} runs")
    print()
    print(render(groups, rates, ceiling))
    lines = paired(groups, rates)
    if lines:
        print("\nPaired, pass by pass (the machine's speed drifts between passes): jaxcnn's "
              "images/s over the faster PyTorch contender's in the same pass")
        print("\n".join(lines))
    lines = paired(groups, rates, against=("raw JAX",))
    if lines:
        print("\nPaired, pass by pass: jaxcnn's images/s over raw JAX's in the same pass")
        print("\n".join(lines))
    lines = paired(groups, rates, against=("jaxcnn",), ours_name="jaxcnn[own step]",
                   exact=True)
    if lines:
        print("\nPaired, pass by pass: jaxcnn[own step]'s images/s over jaxcnn's (make_train_step "
              "in a scanned epoch) in the same pass")
        print("\n".join(lines))
    if torch is None:
        print("\nPyTorch rows skipped: torch is not installed (pip install -e .[bench]).")


def paired(groups, rates, against: tuple[str, ...] = ("torch",), ours_name: str = "jaxcnn",
           exact: bool = False) -> list[str]:
    """Per model, batch and mode: the median over the passes of ``ours_name``'s images/s
    divided by the faster contender's in the same pass among those whose name starts with one
    of ``against`` (PyTorch's by default; with ``exact``, whose name is one of them), and in
    how many passes ``ours_name`` was faster."""
    out = []
    for key in dict.fromkeys(k for k, _ in groups):
        ours = [rates[i] for i, (k, r) in enumerate(groups) if k == key and r.name == ours_name]
        theirs = [rates[i] for i, (k, r) in enumerate(groups)
                  if k == key and r.name != ours_name
                  and (r.name in against if exact else r.name.startswith(against))]
        if not ours or not theirs:
            continue
        ratios = [a / max(t) for a, *t in zip(ours[0], *theirs, strict=True)]
        out.append(f"- {key[0]} b{key[1]} {key[2]}: median {statistics.median(ratios):.2f}x, "
                   f"faster in {sum(r > 1 for r in ratios)}/{len(ratios)} passes")
    return out


def render(groups, rates, ceiling: float) -> str:
    head = ("model", "batch", "mode", "contender", "img/s", "min-max", "x raw JAX", "GFLOP/s",
            "% ceiling")
    body, last = [], None
    for i, ((name, batch, mode), runner) in enumerate(groups):
        med = statistics.median(rates[i])
        raw = next(statistics.median(rates[j]) for j, (key, r) in enumerate(groups)
                   if key == (name, batch, mode) and r.name == "raw JAX")
        train_f, infer_f = flops_per_image(name)
        gflops = med * (train_f if mode == "train" else infer_f) / 1e9
        key = (name, batch, mode)
        body.append(("" if key == last else name, "" if key == last else str(batch),
                     "" if key == last else mode, runner.name, f"{med:,.0f}",
                     f"{min(rates[i]):,.0f}-{max(rates[i]):,.0f}", f"{med / raw:.2f}",
                     f"{gflops:.1f}", f"{100 * gflops / ceiling:.0f}%"))
        last = key
    widths = [max(len(r[c]) for r in (head, *body)) for c in range(len(head))]
    right = {1, 4, 5, 6, 7, 8}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if k in right else c.ljust(w)
                                 for k, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if k in right else ("-" * (w + 2))
                         for k, w in enumerate(widths)) + "|"
    flops = "; ".join(f"{m}: train {flops_per_image(m)[0] / 1e6:.2f}, infer "
                      f"{flops_per_image(m)[1] / 1e6:.2f} MFLOP/img"
                      for m in dict.fromkeys(k[0] for k, _ in groups))
    return "\n".join([line(head), sep, *(line(r) for r in body), "", f"FLOPs: {flops}"])


if __name__ == "__main__":
    main()
