"""Every row of docs/errors.md, triggered: the exception type and the whole message as the table
prints them, raised by jaxcnn's own code (never from inside JAX, optax or tensorboardX).

The table is the source: each row's id names a case below, every id in the table has a case and
every case a row, and the row's message (with ``…`` for the parts that depend on paths and
values) must match the exception's message in full.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import struct
import sys
import tarfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import checkpoint as ckpt
from jaxcnn import (
    cli,
    data,
    errors,
    experiment,
    files,
    losses,
    models,
    ops,
    registry,
    runs,
    scripts,
    tracking,
    train,
)
from jaxcnn import config as C
from jaxcnn import layers as L

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "errors.md"
PACKAGE = Path(jaxcnn.__file__).resolve().parent
KEY = jax.random.key(0)
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Exception types by the names the table uses.
TYPES: dict[str, type[BaseException]] = {
    **{n: getattr(errors, n) for n in dir(errors) if isinstance(getattr(errors, n), type)},
    "ValueError": ValueError}


@dataclass(frozen=True)
class Row:
    id: str
    area: str
    action: str
    exception: str
    message: str

    def pattern(self) -> str:
        """The message as a regular expression: literal, with ``…`` matching any text."""
        return "".join(".+" if part == "…" else re.escape(part)
                       for part in re.split("(…)", self.message))


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace(r"\|", "|") for c in cells]


def read_table(path: Path = TABLE) -> list[Row]:
    """The rows of every table in ``path`` whose header starts with ``id``; a row's area is the
    ``##`` heading above it."""
    rows, area, in_table = [], None, False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            area = line[3:].strip()
        if not line.startswith("|"):
            in_table = False
        elif _cells(line)[0] == "id":
            in_table = True
        elif in_table and not set(line) <= set("|- "):
            ident, action, exception, message = _cells(line)
            rows.append(Row(ident.strip("`"), area, action, exception.strip("`"),
                            message.removeprefix("`").removesuffix("`")))
    return rows


@dataclass
class Ctx:
    tmp: Path
    monkeypatch: pytest.MonkeyPatch


CASES: dict[str, Callable[[Ctx], Any]] = {}


def case(ident: str):
    def register(fn):
        assert ident not in CASES, ident
        CASES[ident] = fn
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# Layer configurations


case("conv-features")(lambda c: L.Conv(0, 3))
case("conv-kernel-size")(lambda c: L.Conv(8, (3, 3, 3)))
case("conv-stride")(lambda c: L.Conv(8, 3, stride=0))
case("conv-padding")(lambda c: L.Conv(8, 3, padding="FULL"))
case("conv-groups")(lambda c: L.Conv(6, 3, groups=4))
case("dense-features")(lambda c: L.Dense(2.5))
case("pool-window")(lambda c: L.MaxPool(0))
case("dropout-rate")(lambda c: L.Dropout(1.0))
case("batchnorm-momentum")(lambda c: L.BatchNorm(momentum=1.0))
case("leakyrelu-slope")(lambda c: L.LeakyRelu(float("nan")))
case("softmax-axis")(lambda c: L.Softmax(axis=1.5))
case("lambda-fn")(lambda c: L.Lambda(3))
case("serial-empty")(lambda c: L.serial())
case("serial-not-called")(lambda c: L.serial(L.Conv(8, 3), L.Relu))
case("serial-duplicate-names")(lambda c: L.serial(L.Relu(name="act"), L.Relu(name="act")))
case("parallel-combine")(lambda c: L.parallel(L.Relu(), L.Tanh(), combine="mean"))
case("residual-shortcut-name")(lambda c: L.residual(L.Relu(name="shortcut")))


# ----------------------------------------------------------------------------------------------
# Input shapes and dtypes


def _simple_cnn():
    model = models.simple_cnn()
    _, params, state = model.init(KEY, (None, 8, 8, 1))
    return model, params, state


case("init-shape-not-ints")(lambda c: L.Conv(8, 3).init(KEY, (None, 28.0, 28, 1)))
case("init-rank")(lambda c: L.Conv(8, 3).init(KEY, (None, 28, 28)))
case("dense-after-conv")(lambda c: L.serial(L.Conv(4, 3), L.Dense(10)).init(KEY, (None, 8, 8, 1)))
case("kernel-larger-than-input")(lambda c: L.serial(L.Conv(4, 3), L.Conv(4, 5)).init(
    KEY, (None, 6, 6, 1)))
case("groups-input-channels")(lambda c: L.Conv(4, 3, groups=2).init(KEY, (None, 8, 8, 3)))
case("residual-shapes")(lambda c: L.residual(L.Conv(8, 3, padding="SAME")).init(
    KEY, (None, 8, 8, 4)))
case("parallel-shapes")(lambda c: L.parallel(L.Conv(4, 3), L.Conv(4, 1)).init(
    KEY, (None, 8, 8, 1)))


case("init-int-key")(lambda c: models.lenet5().init(0, (None, 28, 28, 1)))


@case("batchnorm-not-an-array")
def _(c):
    bn = L.BatchNorm()
    _, params, state = bn.init(KEY, (None, 4, 4, 3))
    return bn.apply(params, state, [[1.0]], train=True)


@case("apply-no-batch-axis")
def _(c):
    model, params, state = _simple_cnn()
    return model.apply(params, state, np.zeros((8, 8, 1), np.float32))


@case("apply-wrong-channels")
def _(c):
    model, params, state = _simple_cnn()
    return model.apply(params, state, np.zeros((2, 8, 8, 3), np.float32))


@case("apply-wrong-image-size")
def _(c):
    model, params, state = _simple_cnn()
    return model.apply(params, state, np.zeros((2, 28, 28, 1), np.float32))


@case("apply-integer-images")
def _(c):
    model, params, state = _simple_cnn()
    return model.apply(params, state, np.zeros((2, 8, 8, 1), np.uint8))


@case("apply-not-an-array")
def _(c):
    dense = L.Dense(3)
    _, params, state = dense.init(KEY, (None, 5))
    return dense.apply(params, state, [[0.0] * 5])


@case("apply-other-params")
def _(c):
    model, _, state = _simple_cnn()
    return model.apply({}, state, np.zeros((2, 8, 8, 1), np.float32))


@case("batchnorm-no-state")
def _(c):
    model = L.serial(L.Conv(4, 3), L.BatchNorm(), L.Flatten(), L.Dense(2))
    _, params, _ = model.init(KEY, (None, 6, 6, 1))
    return model.apply(params, {}, jnp.ones((2, 6, 6, 1)))


case("dropout-no-key")(lambda c: L.Dropout(0.5).apply({}, {}, jnp.ones((2, 3)), train=True))


@case("dropout-slice-rows")
def _(c):
    drop = L.Dropout(0.5)  # a slice of 2 rows of 4 that reaches it as 1 row
    return jaxcnn.cpu.concat_slices(
        lambda part: drop.apply({}, {}, part[:1], key=KEY, train=True)[0], jnp.ones((4, 3)), 2)


@case("batchnorm-channels")
def _(c):
    bn = L.BatchNorm()
    _, params, state = bn.init(KEY, (None, 4, 4, 2))
    return bn.apply(params, state, jnp.ones((2, 4, 4, 3)), train=True)


case("loss-float-labels")(lambda c: losses.softmax_cross_entropy(jnp.zeros((4, 10)),
                                                                 jnp.zeros((4,))))
case("accuracy-label-shape")(lambda c: losses.accuracy(jnp.zeros((4, 10)),
                                                       jnp.zeros((4, 1), jnp.int32)))
case("mse-shapes")(lambda c: losses.mse(jnp.zeros((4, 10)), jnp.zeros((4,))))
case("batch-slices-value")(lambda c: train.make_train_step(
    models.lenet5(), losses.softmax_cross_entropy, optax.sgd(0.1), batch_slices=0))
case("batch-slices-not-per-example")(lambda c: train.make_train_step(
    L.serial(L.Conv(4, 3), L.BatchNorm(), L.Relu()), losses.softmax_cross_entropy,
    optax.sgd(0.1), batch_slices=4))


@case("cpu-variable")
def _(c):
    c.monkeypatch.setenv("JAXCNN_CPU", "gpu")
    return ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)))


# ----------------------------------------------------------------------------------------------
# Configs and command-line overrides


def _command_line(*args: str) -> C.Config:
    """What ``run_main`` does with a script's overrides (it prints the error and exits 2)."""
    overrides, _ = cli.parse_overrides(list(args), C.Config())
    return C.override(C.Config(), overrides)


case("cli-unknown-key")(lambda c: _command_line("--epoch", "3"))
case("cli-not-a-pair")(lambda c: _command_line("epochs", "3"))
case("cli-missing-value")(lambda c: _command_line("--epochs", "3", "--lr"))
case("cli-wrong-type")(lambda c: _command_line("--epochs", "three"))
case("cli-bad-bool")(lambda c: _command_line("--normalize", "maybe"))
case("cli-bad-list")(lambda c: _command_line("--decay-epochs", "5,ten"))
case("cli-bad-choice")(lambda c: _command_line("--model", "resnet50"))
case("cli-out-of-range")(lambda c: _command_line("--epochs", "0"))
case("cli-negative-lr")(lambda c: _command_line("--lr", "-0.1"))
case("cli-val-fraction")(lambda c: _command_line("--val-fraction", "1"))
case("cli-experiment-name")(lambda c: _command_line("--experiment", "runs/a"))
case("config-wrong-type")(lambda c: C.Config(lr="0.1"))
case("cli-unknown-experiment")(lambda c: cli.resolve_experiment("digitz"))
case("cli-script-missing")(lambda c: cli.resolve_experiment("experiments/nope.py"))


@case("cli-script-without-get-config")
def _(c):
    (c.tmp / "mine.py").write_text("CONFIG = None\n")
    return cli.load_experiment(str(c.tmp / "mine.py"))


case("batch-larger-than-data")(lambda c: experiment.run(C.Config(
    experiment="big", batch_size=5000, runs_dir=str(c.tmp / "runs")), progress=False))
case("config-seed-too-large")(lambda c: _command_line("--seed", "4294967296"))


@case("val-fraction-too-small")
def _(c):
    try:
        return experiment.run(C.Config(experiment="v", val_fraction=0.001,
                                       runs_dir=str(c.tmp / "runs")), progress=False)
    finally:
        assert not (c.tmp / "runs").exists()  # refused before a folder was made


case("config-dataset-unknown")(lambda c: _command_line("--dataset", "imagenet"))
case("config-image-size-builtin")(lambda c: _command_line("--image-size", "32"))
case("config-label-smoothing")(lambda c: _command_line("--label-smoothing", "1"))
case("config-ema-decay")(lambda c: _command_line("--ema-decay", "1"))
case("config-warmup-without-schedule")(lambda c: _command_line("--warmup-epochs", "1"))
case("config-decay-epochs-without-schedule")(
    lambda c: _command_line("--decay-epochs", "2,4"))


@case("config-augment-unknown")
def _(c):
    try:
        return experiment.run(C.Config(experiment="a", augment=("crop:4", "rotate"),
                                       runs_dir=str(c.tmp / "runs")), progress=False)
    finally:
        assert not (c.tmp / "runs" / "a").exists() or not any((c.tmp / "runs" / "a").iterdir())
case("config-early-stopping-without-val")(lambda c: _command_line(
    "--early-stopping-patience", "3", "--val-fraction", "0"))
case("early-stopping-test-metric")(lambda c: train.EarlyStopping(metric="test_accuracy"))


def _run_own(c: Ctx, **user: Any) -> experiment.RunResult:
    """``experiment.run`` of the digits with the user's own ``model``/``data``/``loss_fn``,
    which must be refused before a run folder is made."""
    try:
        return experiment.run(C.Config(experiment="own", runs_dir=str(c.tmp / "runs")),
                              progress=False, **user)
    finally:
        assert not (c.tmp / "runs").exists()


def _import_script(c: Ctx, name: str, text: str) -> Any:
    """The script ``<tmp>/<name>`` imported as ``jaxcnn run`` imports one (its module is
    removed from ``sys.modules`` after the test)."""
    path = c.tmp / name
    path.write_text(text)
    c.monkeypatch.setitem(sys.modules, scripts.SCRIPT_MODULE_PREFIX + path.stem, None)
    return scripts.import_file(path)


GET_MODEL = ("from jaxcnn import models\n\n\ndef get_model(config):\n"
             "    return models.simple_cnn()\n")
GET_DATA = "from jaxcnn import data\n\n\ndef get_data(config):\n    return data.load('digits')\n"

case("run-data-not-splits")(lambda c: _run_own(
    c, data=(np.zeros((100, 8, 8, 1), np.float32), np.zeros(100, np.int32))))


@case("run-model-not-a-layer")
def _(c):
    def get_model(config):  # forgets to return the model
        L.serial(L.Conv(8, 3), L.Relu(), L.Flatten(), L.Dense(10))

    return _run_own(c, model=get_model)


case("run-loss-not-callable")(lambda c: _run_own(c, loss_fn="softmax_cross_entropy"))


@case("run-several-scripts")
def _(c):
    mine = _import_script(c, "my_model.py", GET_MODEL)
    theirs = _import_script(c, "my_data.py", GET_DATA)
    return _run_own(c, model=mine.get_model, data=theirs.get_data)


# ----------------------------------------------------------------------------------------------
# Data files


def _idx(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return struct.pack(f">I{arr.ndim}I", 0x800 + arr.ndim, *arr.shape) + arr.tobytes()


def _mnist_folder(c: Ctx, **replace: bytes) -> Path:
    """Four small MNIST files in ``<tmp>/data/mnist`` (any in ``replace`` swapped for the given
    bytes), their md5 taken as the published one, as the real files' would be."""
    folder = c.tmp / "data" / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in IDX_FILES:
        count = 5 if name.startswith("train") else 3
        arr = rng.integers(0, 256, (count, 28, 28)) if "images" in name else \
            rng.integers(0, 10, count)
        payload = replace.get(name, gzip.compress(_idx(arr)))
        (folder / name).write_bytes(payload)
        c.monkeypatch.setitem(data.CHECKSUMS, ("mnist", name),
                              hashlib.md5(payload).hexdigest())
    return folder.parent


def _load_mnist(c: Ctx, folder: Path) -> data.Splits:
    return data.load("mnist", data_dir=folder, cache_dir=c.tmp / "cache", download=False)


case("data-unknown-name")(lambda c: data.load("imagenet"))


@case("data-checksum")
def _(c):
    folder = _mnist_folder(c)
    c.monkeypatch.setitem(data.CHECKSUMS, ("mnist", IDX_FILES[0]), "0" * 32)
    return _load_mnist(c, folder)


@case("data-checksum-in-cache")
def _(c):
    (c.tmp / "cache" / "mnist").mkdir(parents=True)
    (c.tmp / "cache" / "mnist" / IDX_FILES[0]).write_bytes(b"half a download")
    return _load_mnist(c, c.tmp / "empty")


case("data-missing-offline")(lambda c: _load_mnist(c, c.tmp / "empty"))


@case("data-download-fails")
def _(c):
    c.monkeypatch.setitem(data.MIRRORS, "mnist", ((c.tmp / "mirror").as_uri() + "/",))
    return data.load("mnist", data_dir=c.tmp / "empty", cache_dir=c.tmp / "cache")


@case("data-gzip-truncated")
def _(c):
    whole = gzip.compress(_idx(np.zeros((5, 28, 28))))
    return _load_mnist(c, _mnist_folder(c, **{IDX_FILES[0]: whole[: len(whole) // 2]}))


@case("data-payload-short")
def _(c):
    short = gzip.compress(_idx(np.zeros((5, 28, 28)))[:-100])
    return _load_mnist(c, _mnist_folder(c, **{IDX_FILES[0]: short}))


@case("data-wrong-magic")
def _(c):
    labels = gzip.compress(_idx(np.arange(5)))
    return _load_mnist(c, _mnist_folder(c, **{IDX_FILES[0]: labels}))


@case("data-not-idx")
def _(c):
    png = gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(24))
    return _load_mnist(c, _mnist_folder(c, **{IDX_FILES[1]: png}))


@case("data-count-mismatch")
def _(c):
    six = gzip.compress(_idx(np.arange(6)))
    return _load_mnist(c, _mnist_folder(c, **{IDX_FILES[1]: six}))


@case("data-label-range")
def _(c):
    labels = gzip.compress(_idx(np.array([0, 1, 2, 3, 12])))
    return _load_mnist(c, _mnist_folder(c, **{IDX_FILES[1]: labels}))


@case("data-cifar-batches")
def _(c):
    folder = c.tmp / "data" / "cifar10"
    folder.mkdir(parents=True)
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        blob = pickle.dumps({b"labels": [1], b"data": np.zeros((1, 3072), np.uint8)}, 2)
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.size = len(blob)
        tar.addfile(member, io.BytesIO(blob))
    c.monkeypatch.setitem(data.CHECKSUMS, ("cifar10", path.name),
                          hashlib.md5(path.read_bytes()).hexdigest())
    return data.load("cifar10", data_dir=folder.parent, download=False)


case("data-idx-path-missing")(lambda c: data.read_idx(c.tmp / "t10k-labels-idx1-ubyte"))
case("data-normalize-std")(lambda c: data.normalize(np.zeros((2, 4, 4, 1), np.float32), 0.5,
                                                    0.0))

case("data-split-lengths")(lambda c: data.train_val_split(
    data.Split(np.zeros((50, 2, 2, 1), np.float32), np.zeros(49, np.int32)), 0.1, seed=0))


def _image_folder(c: Ctx, counts: dict[str, int], size: tuple[int, int] = (6, 6)) -> Path:
    """``counts[cls]`` flat grey PNGs of ``size`` (H, W) in ``<tmp>/photos/<cls>/``."""
    from PIL import Image

    root = c.tmp / "photos"
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (size[1], size[0]), 10 * i).save(root / cls / f"{i}.png")
    return root


case("data-builtin-image-size")(lambda c: data.load("mnist", image_size=32))
case("data-folder-missing")(lambda c: data.load(Path("nowhere")))
case("data-folder-is-a-file")(
    lambda c: data.load(str(_image_folder(c, {"cats": 1}) / "cats" / "0.png")))


@case("data-folder-no-classes")
def _(c):
    from PIL import Image

    (c.tmp / "photos").mkdir()
    Image.new("L", (6, 6)).save(c.tmp / "photos" / "0.png")
    return data.load(c.tmp / "photos")


case("data-folder-one-class")(lambda c: data.load(_image_folder(c, {"cats": 3})))
case("data-folder-train-test-classes")(lambda c: data.load(_image_folder(
    c, {"train/a": 1, "train/b": 1, "train/c": 1, "test/a": 1, "test/b": 1, "test/d": 1})))


@case("data-folder-empty-class")
def _(c):
    folder = _image_folder(c, {"cats": 2})
    (folder / "dogs").mkdir()
    return data.load(folder)


@case("data-image-unreadable")
def _(c):
    folder = _image_folder(c, {"cats": 2, "dogs": 2})
    (folder / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    return data.load(folder)


@case("data-folder-sizes-differ")
def _(c):
    _image_folder(c, {"a": 2})
    return data.load(_image_folder(c, {"b": 1}, size=(6, 8)))


case("data-folder-image-size")(
    lambda c: data.load(_image_folder(c, {"a": 2, "b": 2}), image_size=0))
case("data-folder-test-fraction")(
    lambda c: data.load(_image_folder(c, {"a": 2, "b": 2}), test_fraction=1.0))
case("data-folder-class-too-small")(
    lambda c: data.load(_image_folder(c, {"cats": 3, "dogs": 1})))
case("data-folder-split-too-small")(
    lambda c: data.load(_image_folder(c, {"a": 2, "b": 2, "c": 2}), test_fraction=0.2))


# ----------------------------------------------------------------------------------------------
# Run folders


def _tiny(runs: Path, **kw) -> C.Config:
    return C.Config(experiment="tiny", model="simple_cnn", epochs=2, batch_size=64,
                    runs_dir=str(runs), **kw)


def _run_folder(c: Ctx) -> Path:
    """A run folder as the runner leaves it after epoch 1 of :func:`_tiny` (the state freshly
    initialised rather than trained: what is checked here is only its structure)."""
    cfg = _tiny(c.tmp / "runs")
    run = runs.make_run_dir(cfg.runs_dir, cfg.experiment)
    (run / "config.json").write_text(C.to_json(cfg))
    steps = int(0.9 * 1437) // cfg.batch_size
    ts = train.create_train_state(models.simple_cnn(), registry.build_optimizer(cfg, steps),
                                  KEY, (None, 8, 8, 1))
    ts = ts._replace(step=jnp.asarray(steps, jnp.int32))
    ckpt.save(run / "checkpoints", "ckpt-000001", ts, {"epoch": 1, "step": steps, "history": []})
    return run


@case("runs-folder-unwritable")
def _(c):
    (c.tmp / "runs").write_text("a file where the runs folder should be")
    return experiment.run(_tiny(c.tmp / "runs"))


@case("run-folder-unwritable")
def _(c):
    (c.tmp / "runs" / "tiny").mkdir(parents=True)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # root ignores permission bits: the file system says no
        if self.parent == c.tmp / "runs" / "tiny":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    c.monkeypatch.setattr(Path, "mkdir", mkdir)
    return experiment.run(_tiny(c.tmp / "runs"))


case("resume-missing-folder")(lambda c: experiment.resume(c.tmp / "runs" / "tiny" / "gone"))
case("resume-not-a-run")(lambda c: experiment.resume(c.tmp))


@case("resume-corrupt-config")
def _(c):
    run = _run_folder(c)
    (run / "config.json").write_text('{"_class": "Config", "epochs": 2,')
    return experiment.resume(run)


@case("resume-filters-run")
def _(c):
    (c.tmp / "config.json").write_text(C.to_json(C.FiltersConfig()))
    return experiment.resume(c.tmp)


case("runs-table-missing")(lambda c: cli.runs_table(c.tmp / "runs"))


def _script_run(c: Ctx, source: str = "mine.py:get_model") -> Path:
    """A run folder as the runner leaves it for a model from the script ``mine.py`` (before
    its first checkpoint): the script's copy, its sha256 in run.json, its source in
    config.json."""
    cfg = _tiny(c.tmp / "runs")
    run = runs.make_run_dir(cfg.runs_dir, cfg.experiment)
    (c.tmp / "mine.py").write_text(GET_MODEL)
    runs.write_status(run, status="starting", script=scripts.copy_script(c.tmp / "mine.py", run))
    runs.save_config(run, cfg, {"model": source})
    return run


@case("resume-script-changed")
def _(c):
    run = _script_run(c)
    with open(run / "script" / "mine.py", "a") as f:
        f.write("import os\n")
    return experiment.resume(run)


@case("resume-script-missing")
def _(c):
    run = _script_run(c)
    (run / "script" / "mine.py").unlink()
    return experiment.resume(run)


@case("resume-script-unrecorded")
def _(c):
    run = _script_run(c)
    runs.write_status(run, drop=("script",))
    return experiment.resume(run)


case("resume-python-object")(lambda c: experiment.resume(_script_run(c, "python:Layer")))


case("run-folder-removed")(lambda c: files.atomic_write(c.tmp / "gone" / "run.json", "{}"))


@case("event-folder-unwritable")
def _(c):
    (c.tmp / "logs").write_text("a file")
    return tracking.TensorBoardWriter(c.tmp / "logs" / "run1")


@case("event-writer-closed")
def _(c):
    writer = tracking.TensorBoardWriter(c.tmp)
    writer.close()
    return writer.write_scalars(1, {"train/loss": 0.5})


case("event-image-range")(lambda c: tracking.MemoryWriter().write_images(
    3, {"inputs": np.full((8, 8, 1), 255.0)}))


@case("nonfinite-loss")
def _(c):
    cfg = C.Config(experiment="tiny", model="simple_cnn", epochs=1, batch_size=64, lr=1e9,
                   log_every=5, num_feature_samples=2, keep_checkpoints=2, schedule="step",
                   decay_epochs=(2,), runs_dir=str(c.tmp / "runs"))  # test_experiment's compile
    return experiment.run(cfg, progress=False)


# ----------------------------------------------------------------------------------------------
# Checkpoints


case("resume-changed-config")(lambda c: experiment.resume(_run_folder(c),
                                                          overrides={"lr": 0.1, "seed": 1}))
case("resume-other-model")(lambda c: experiment.resume(
    _run_folder(c), overrides={"model": "vgg_small"}, force=True))


@case("resume-no-complete-checkpoint")
def _(c):
    run = _run_folder(c)
    npz = run / "checkpoints" / "ckpt-000001.npz"
    npz.write_bytes(npz.read_bytes()[:-10])
    return experiment.resume(run)


def _saved(c: Ctx) -> Path:
    return ckpt.save(c.tmp / "ck", "ckpt-000001", {"conv1": {"w": jnp.ones((3, 3, 1, 4))}},
                     {"epoch": 1})


@case("checkpoint-truncated")
def _(c):
    npz = _saved(c)
    npz.write_bytes(npz.read_bytes()[:100])
    return ckpt.restore(npz, {"conv1": {"w": jnp.ones((3, 3, 1, 4))}})


@case("checkpoint-metadata-missing")
def _(c):
    npz = _saved(c)
    npz.with_suffix(".json").unlink()
    return ckpt.restore(npz, {"conv1": {"w": jnp.ones((3, 3, 1, 4))}})


@case("checkpoint-metadata-foreign")
def _(c):
    npz = _saved(c)
    npz.with_suffix(".json").write_text(json.dumps({"epoch": 1}))
    return ckpt.restore(npz, {"conv1": {"w": jnp.ones((3, 3, 1, 4))}})


@case("checkpoint-not-npz")
def _(c):
    npz = _saved(c)
    junk = b"not a zip archive"
    meta = json.loads(npz.with_suffix(".json").read_text())
    meta["_checkpoint"].update(npz_bytes=len(junk), npz_sha256=hashlib.sha256(junk).hexdigest())
    npz.write_bytes(junk)
    npz.with_suffix(".json").write_text(json.dumps(meta))
    return ckpt.restore(npz, {"conv1": {"w": jnp.ones((3, 3, 1, 4))}})


case("checkpoint-other-shape")(lambda c: ckpt.restore(
    _saved(c), {"conv1": {"w": jnp.ones((5, 5, 1, 4))}}))
case("checkpoint-other-dtype")(lambda c: ckpt.restore(
    _saved(c), {"conv1": {"w": jnp.ones((3, 3, 1, 4), jnp.int32)}}))
case("checkpoint-missing-leaf")(lambda c: ckpt.restore(
    _saved(c), {"conv1": {"w": jnp.ones((3, 3, 1, 4)), "b": jnp.ones(4)}}))
case("checkpoint-extra-leaf")(lambda c: ckpt.restore(_saved(c), {"conv2": {}, "conv1": {}}))
case("checkpoint-name")(lambda c: ckpt.save(c.tmp, "latest", {"w": jnp.ones(2)}, {}))


@case("checkpoint-folder-unwritable")
def _(c):
    (c.tmp / "checkpoints").write_text("a file")
    return ckpt.save(c.tmp / "checkpoints", "ckpt-000001", {"w": jnp.ones(2)}, {})


case("checkpoint-metadata-not-json")(lambda c: ckpt.save(
    c.tmp, "ckpt-000001", {"w": jnp.ones(2)}, {"epoch": np.int64(1)}))


# ----------------------------------------------------------------------------------------------
# The tests


ROWS = read_table()


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    # The one case that trains (nonfinite-loss) compiles into the session's cache, never the
    # user's; the others compile nothing.
    experiment.setup_compilation_cache(tmp_path_factory.getbasetemp() / "jaxcnn_cache" / "jax")


def test_every_row_has_a_case_and_every_case_a_row():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert set(ids) == set(CASES), (set(ids) ^ set(CASES))
    assert len(ROWS) >= 45
    assert all(r.exception in TYPES for r in ROWS), [r.exception for r in ROWS]
    assert {r.area for r in ROWS} == {"Layer configurations", "Input shapes and dtypes",
                                      "Configs and command-line overrides", "Data files",
                                      "Run folders", "Using a trained model", "Checkpoints"}


def _innermost_frame(exc: BaseException) -> traceback.FrameSummary:
    return traceback.extract_tb(exc.__traceback__)[-1]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_error(row: Row, tmp_path, monkeypatch):
    monkeypatch.delenv("JAXCNN_DATA", raising=False)
    monkeypatch.setenv("JAXCNN_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.chdir(tmp_path)
    expected = TYPES[row.exception]
    with pytest.raises(expected, match=f"^{row.pattern()}$") as info:
        CASES[row.id](Ctx(tmp_path, monkeypatch))
    exc = info.value
    assert type(exc) is expected  # the very type the table names, not a subclass
    assert type(exc).__module__ in ("jaxcnn.errors", "builtins")
    # Raised by jaxcnn itself, so the traceback ends in jaxcnn's code with jaxcnn's message ...
    frame = _innermost_frame(exc)
    assert Path(frame.filename).resolve().is_relative_to(PACKAGE), frame
    # ... and shows no exception from inside JAX, optax or tensorboardX behind it.
    shown = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    while shown is not None:
        assert not type(shown).__module__.startswith(("jax", "optax", "tensorboardX")), shown
        shown = shown.__cause__ or (None if shown.__suppress_context__ else shown.__context__)


def test_the_command_line_prints_the_tables_message_and_exits_2(capsys):
    (row,) = [r for r in ROWS if r.id == "cli-wrong-type"]
    assert cli.run_main(C.Config(), ["--epochs", "three"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"error: {row.pattern()}\n", err), err


# ----------------------------------------------------------------------------------------------
# Using a trained model


case("load-missing-run")(lambda c: jaxcnn.load(c.tmp / "nothing"))


@case("load-no-checkpoint")
def _(c):
    run = _run_folder(c)
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    return jaxcnn.load(run)


case("load-checkpoint-name")(lambda c: jaxcnn.load(_run_folder(c), checkpoint="ckpt-000009"))
case("predict-image-shape")(lambda c: jaxcnn.load(_run_folder(c), checkpoint="last").predict(
    np.zeros((2, 9, 9, 1), np.uint8)))
case("predict-float-range")(lambda c: jaxcnn.load(_run_folder(c), checkpoint="last").predict(
    np.full((8, 8, 1), 255.0, np.float32)))


@case("predict-unreadable-file")
def _(c):
    from jaxcnn import trained

    (c.tmp / "broken.png").write_bytes(b"not a png")
    return trained.read_image(c.tmp / "broken.png", (8, 8, 1))


@case("export-platforms")
def _(c):
    from jaxcnn.export import export_model

    model = models.lenet5()
    _, params, state = model.init(KEY, (None, 28, 28, 1))
    return export_model(model, params, state, input_shape=(28, 28, 1), platforms=("gpu",))


@case("grad-cam-no-conv")
def _(c):
    from jaxcnn import explain

    model = L.serial(L.Flatten(), L.Dense(3))
    _, params, state = model.init(KEY, (None, 4, 4, 1))
    return explain.grad_cam(model, params, state, np.zeros((4, 4, 1), np.float32))
