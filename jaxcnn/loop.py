"""The training loop, :class:`Loop`: epochs, evaluation, logging, checkpoints, early stopping
and stopping.

:class:`Loop` is the one loop of jaxcnn, behind both :func:`jaxcnn.train.fit` (research code:
a model, an optimizer and arrays in) and the experiment runner (:mod:`jaxcnn.experiment`: the
same loop plus a run folder, a config, resume and the command line). Given a
:class:`jaxcnn.tracking.MetricWriter`, it logs (``step`` is the number of optimizer steps taken):

- scalars ``train/loss``, ``train/accuracy``, ``train/learning_rate`` every ``log_every``
  steps (means over the steps since the previous point); each epoch ``train/epoch_loss``,
  ``train/epoch_accuracy``, ``val/loss``, ``val/accuracy``, ``test/loss``, ``test/accuracy``
  (for the splits given), ``perf/images_per_second``, ``perf/epoch_time_s`` (and
  ``train/skipped_steps`` with ``on_nonfinite="skip"``);
- histograms ``params/<path>`` and ``grads/<path>`` each epoch (gradients on a fixed
  training batch);
- images each epoch: ``filters/<conv path>`` (:func:`jaxcnn.visualize.filter_grid`),
  ``features/input`` and ``features/<conv path>`` (a few fixed images of the report split,
  the test split if given, else the validation split, and their maps after every conv layer),
  ``<split>/confusion_matrix`` and ``<split>/misclassified``.

The test split is only ever reported: the best checkpoint is the one with the best validation
metric, and early stopping may watch training or validation metrics, never test ones.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from jaxcnn import checkpoint as ckpt
from jaxcnn import data as data_lib
from jaxcnn import distributed
from jaxcnn.checks import is_int
from jaxcnn.early_stopping import EarlyStopping, should_stop
from jaxcnn.ema import ema_of
from jaxcnn.epoch_images import EpochImages
from jaxcnn.epochs import make_epoch_fn
from jaxcnn.errors import NonFiniteLossError
from jaxcnn.files import atomic_write
from jaxcnn.layers import Layer
from jaxcnn.losses import softmax_cross_entropy
from jaxcnn.progress import EpochBar, in_notebook
from jaxcnn.signals import StopSignals
from jaxcnn.steps import (
    LossFn,
    check_class_labels,
    create_train_state,
    evaluate,
    loss_caller,
    make_eval_step,
    make_train_step,
    target_kind,
)
from jaxcnn.tracking import MetricWriter, MultiWriter

__all__ = ["EPOCH_TAGS", "Loop"]

#: The record keys and the scalar tags each epoch writes them under.
EPOCH_TAGS = {"train_loss": "train/epoch_loss", "train_accuracy": "train/epoch_accuracy",
              "val_loss": "val/loss", "val_accuracy": "val/accuracy",
              "test_loss": "test/loss", "test_accuracy": "test/accuracy",
              "images_per_second": "perf/images_per_second",
              "epoch_time_s": "perf/epoch_time_s"}


def _mean(values: np.ndarray, ok: np.ndarray) -> float:
    return float(np.mean(values[ok])) if ok.any() else float("nan")


class Loop:
    """One training run's loop over epochs, built once and run until done or stopped.

    ``model`` is trained with ``optimizer`` on ``train`` (a :class:`jaxcnn.data.Split`) in
    shuffled batches of ``batch_size`` for ``epochs`` epochs, evaluating ``val`` and ``test``
    after each. ``writer``: where metrics go (nothing is logged without one).
    ``checkpoint_dir``: a checkpoint per epoch (the newest ``keep_checkpoints`` and the best by
    validation metric kept, with ``metadata`` added to each), and one in the middle of an epoch
    when ``stop`` asks for it. ``early_stopping`` / ``loss_tolerance`` end training early;
    ``on_nonfinite`` "stop" raises :class:`jaxcnn.errors.NonFiniteLossError` at the first step
    whose loss or gradients are not finite, "skip" leaves such steps out and counts them.
    ``show_images``: the report split's images as shown in TensorBoard (N, H, W, C) in [0, 1]
    (default: its inputs, each scaled to [0, 1]); ``class_names`` label the confusion matrix.
    ``progress``: a tqdm bar per epoch (None: where stderr is a terminal or in Jupyter);
    ``verbose`` prints one line per epoch where there is no bar. ``mesh``, ``main``: data
    parallel over a mesh (only the ``main`` process writes). ``restore_from``: a checkpoint to
    continue from (:meth:`restore`). ``augment``: a transform of each training batch on the
    device (:mod:`jaxcnn.augment`; evaluation never augments). ``on_save(loop)`` is called
    after every checkpoint.
    """

    def __init__(self, model: Layer, optimizer: optax.GradientTransformation,
                 train: data_lib.Split, *, epochs: int, batch_size: int = 128,
                 loss_fn: LossFn = softmax_cross_entropy, seed: int = 0,
                 val: data_lib.Split | None = None, test: data_lib.Split | None = None,
                 writer: MetricWriter | None = None,
                 checkpoint_dir: str | os.PathLike | None = None,
                 keep_checkpoints: int = 3, metadata: Mapping[str, Any] | None = None,
                 early_stopping: EarlyStopping | None = None,
                 loss_tolerance: float | None = None, log_every: int = 10,
                 on_nonfinite: str = "stop", driver: str = "auto",
                 steps_per_call: int | None = None, mesh: jax.sharding.Mesh | None = None,
                 main: bool = True, num_feature_samples: int = 4,
                 show_images: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, progress: bool | None = None,
                 verbose: bool = False, name: str = "train",
                 restore_from: str | os.PathLike | None = None,
                 augment: Callable[..., Any] | None = None,
                 on_save: Callable[[Loop], None] | None = None) -> None:
        if not is_int(epochs) or epochs < 1:
            raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"fit: on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train, self.val, self.test = train, val, test
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.writer = writer if writer is not None else MultiWriter([])
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_checkpoints, self.metadata = keep_checkpoints, dict(metadata or {})
        self.early_stopping, self.loss_tolerance = early_stopping, loss_tolerance
        self.log_every, self.on_nonfinite = log_every, on_nonfinite
        self.mesh, self.main = mesh, main
        self.name, self.verbose, self.on_save = name, verbose, on_save
        self.class_names = list(class_names) if class_names is not None else None
        self.steps_per_epoch = len(train.labels) // self.batch_size
        in_shape = (None, *np.shape(train.images)[1:])
        self._init = lambda key: create_train_state(model, optimizer, key, in_shape)
        # Progress of the run: epochs done, their records, a mid-epoch checkpoint's metrics.
        self.epoch, self.history, self.skipped, self.wall_before = 0, [], 0, 0.0
        self.partial: dict[str, np.ndarray] | None = None
        self.best: dict[str, Any] | None = None  # {"metric", "value", "epoch", "checkpoint"}
        if restore_from is None:
            self.ts = jax.jit(self._init)(jax.random.key(self.seed))  # one compile, not per op
        else:
            self.restore(restore_from)
        if mesh is not None:  # over every device of every process, from the same values
            self.ts = distributed.replicate(self.ts, mesh)
        logits = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=False)[0],
                                self.ts.params, self.ts.state,
                                jax.ShapeDtypeStruct((1, *in_shape[1:]), np.float32)).shape
        self.num_classes = int(logits[-1])
        self.keys = self._check_targets(logits)
        self.t_start = time.perf_counter()
        self.epochs_run = 0  # in this process

        step = make_train_step(model, loss_fn, optimizer, jit=False, augment=augment)
        self._run_epoch = make_epoch_fn(step, train.images, train.labels, self.batch_size,
                                        driver=driver, halt_on_nonfinite=on_nonfinite == "stop",
                                        mesh=mesh, steps_per_call=steps_per_call)
        self.eval_step = make_eval_step(model, loss_fn)
        sizes = [len(s.labels) for s in (val, test) if s is not None]
        self.eval_batch = min(1000, *sizes) if sizes else 1000
        report_name, report = ("test", test) if test is not None else ("val", val)
        self.epoch_images = EpochImages(model, report_name, report, self.num_classes,
                                        shown=show_images, class_names=class_names,
                                        num_feature_samples=num_feature_samples)
        b = min(self.batch_size, len(train.labels))
        grad_batch = (train.images[:b], train.labels[:b])
        self.grad_batch = (jax.device_put(grad_batch) if mesh is None else
                           distributed.shard_batch(grad_batch, mesh))
        call_loss = loss_caller(loss_fn, "fit")

        def grads(params, state, images, labels):
            def loss(p):
                out, _ = model.apply(p, state, images, key=jax.random.key(0), train=True)
                return call_loss(out, labels, None)

            return jax.grad(loss)(params)

        self.grads_fn = jax.jit(grads)
        tty = sys.stderr.isatty() or in_notebook()
        self.show_bar = bool((tty if progress is None else progress) and main)
        self.bar: Any = None

    # -- set-up --------------------------------------------------------------------------

    def _check_targets(self, logits: tuple[int, ...]) -> list[str]:
        """Check the labels of every split against the model's outputs; the record keys that
        an epoch reports."""
        keys = []
        for split_name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if split is None:
                continue
            check_class_labels("fit", split_name, split.labels, logits)
            keys.append(f"{split_name}_loss")
            if target_kind(np.asarray(split.labels), logits):
                keys.append(f"{split_name}_accuracy")
        rule = self.early_stopping
        if rule is not None and rule.metric not in keys:
            raise ValueError(f"fit: early_stopping watches {rule.metric!r}, which this "
                             f"training does not report; pick one of "
                             f"{', '.join(k for k in keys if not k.startswith('test_'))}"
                             f"{'' if self.val is not None else ' (pass val= for val_* metrics)'}")
        return keys

    def restore(self, path: str | os.PathLike) -> None:
        """Continue from checkpoint ``path``: the state, the epochs' records, the best
        checkpoint and a mid-epoch checkpoint's metrics, so the rest of the run is the same
        as if it had never stopped."""
        ts, meta = ckpt.restore(path, jax.eval_shape(self._init, jax.random.key(self.seed)))
        self.ts = ts
        self.epoch, self.history = int(meta["epoch"]), list(meta["history"])
        self.skipped = int(meta.get("skipped_steps", 0))
        self.wall_before = float(meta.get("wall_time_s", 0.0))
        self.best = meta.get("best")
        self.partial = None
        if meta.get("epoch_step"):
            self.partial = {k: np.asarray(v["values"], v["dtype"])
                            for k, v in meta["partial_metrics"].items()}

    def compile(self) -> None:
        """Compile the epoch's program now (or load it from JAX's compilation cache)."""
        self._run_epoch.compile(self.ts)

    @property
    def step(self) -> int:
        return int(self.ts.step)

    @property
    def epoch_step(self) -> int:
        """Steps of the current epoch already done (by a segment that was stopped)."""
        return 0 if self.partial is None else len(self.partial["loss"])

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    # -- the loop ------------------------------------------------------------------------

    def run(self, *, stop: Callable[[], bool] | None = None, max_epochs: int | None = None,
            signals: bool = False) -> str:
        """Train until ``epochs`` are done; returns ``"completed"``, ``"early_stopped"``,
        ``"paused"`` (after ``max_epochs`` epochs here) or ``"stopped"`` (``stop`` returned
        True, or with ``signals`` a SIGINT or SIGTERM came: the state is checkpointed where it
        stopped, mid-epoch if need be, within two compiled calls; a second signal interrupts
        at once)."""
        if signals:
            with StopSignals() as heard:
                agree = heard.agreed if jax.process_count() > 1 else heard.heard
                return self.run(stop=agree if stop is None else
                                (lambda: stop() or agree()), max_epochs=max_epochs)
        done = 0
        while self.epoch < self.epochs:
            record = self.train_epoch(stop)
            if record is None:
                return "stopped"
            done += 1
            if self.stops_early():
                return "early_stopped"
            if self.epoch < self.epochs and stop is not None and stop():
                return "stopped"
            if max_epochs is not None and done >= max_epochs:
                return "paused"
        return "completed"

    def train_epoch(self, stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """The next epoch (or the rest of one a mid-epoch checkpoint began), its evaluation,
        logging and checkpoint; its record, or None when ``stop`` said so before the epoch's
        end (then a mid-epoch checkpoint is saved and nothing of the epoch is logged yet)."""
        try:
            record = self._train_epoch(stop)
        except BaseException:
            self.close_bar()
            raise
        self.close_bar(record)
        if record is not None:
            self.epochs_run += 1
            if self.main and self.verbose and not self.show_bar:
                shown = " ".join(f"{k}={record[k]:.4f}" for k in self.keys if k in record)
                print(f"epoch {self.epoch}/{self.epochs} step {record['step']}: {shown} "
                      f"time={record['epoch_time_s']:.1f}s", flush=True)
        return record

    def _train_epoch(self, stop: Callable[[], bool] | None) -> dict[str, float] | None:
        begun = self.epoch_step
        start = self.step - begun  # the global step before the epoch's first
        feed = self._open_bar()
        t0 = time.perf_counter()
        ts, m = self._run_epoch(self.ts, seed=self.seed, epoch=self.epoch, start=begun,
                                stop=stop, progress=feed)
        train_time = time.perf_counter() - t0
        ran = len(m["loss"])
        if self.partial is not None:
            m = {k: np.concatenate([self.partial[k], m[k]]) for k in m}
        finite = np.asarray(m["finite"], bool)
        if self.on_nonfinite == "stop" and not finite.all():
            self._nonfinite(start, m)
        self.ts = ts
        if len(finite) < self.steps_per_epoch:
            self.partial = m
            self._checkpoint_partial()
            return None
        self.partial = None
        self.skipped += int((~finite).sum())
        self._log_train(start, m)
        record: dict[str, float] = {"epoch": self.epoch + 1, "step": self.step,
                                    "train_loss": _mean(m["loss"], finite)}
        if "accuracy" in m:
            record["train_accuracy"] = _mean(m["accuracy"], finite)
        report = None
        params = self.eval_params()
        for split_name, split in (("val", self.val), ("test", self.test)):
            if split is not None:
                r = evaluate(self.eval_step, params, ts.state, split, self.eval_batch,
                             mesh=self.mesh)
                record[f"{split_name}_loss"] = r["loss"]
                if "accuracy" in r:
                    record[f"{split_name}_accuracy"] = r["accuracy"]
                report = r
        record.update(epoch_time_s=time.perf_counter() - t0,
                      images_per_second=ran * self.batch_size / train_time)
        self._log_epoch(record, report)
        self.epoch += 1
        self.history.append(record)
        self._checkpoint(record)
        return record

    def eval_params(self) -> Any:
        """The parameters evaluated: the moving average where the optimizer keeps one
        (:func:`jaxcnn.ema.ema_params`), else the parameters themselves."""
        ema = ema_of(self.ts.opt_state)
        return self.ts.params if ema is None else ema

    def stops_early(self) -> bool:
        """Whether the records so far end training: the last epoch's training loss is under
        ``loss_tolerance``, or ``early_stopping`` says so."""
        if not self.history:
            return False
        if self.loss_tolerance and self.history[-1]["train_loss"] < self.loss_tolerance:
            return True
        return self.early_stopping is not None and should_stop(self.early_stopping,
                                                               self.history)

    # -- logging -------------------------------------------------------------------------

    def _log_train(self, start: int, m: dict[str, np.ndarray]) -> None:
        every = self.log_every
        finite = np.asarray(m["finite"], bool)
        for j in range(len(finite)):
            g = start + j + 1
            if g % every:
                continue
            lo = max(0, j - every + 1)
            ok = finite[lo: j + 1]
            scalars = {"train/loss": _mean(m["loss"][lo: j + 1], ok)}
            if "accuracy" in m:
                scalars["train/accuracy"] = _mean(m["accuracy"][lo: j + 1], ok)
            if "learning_rate" in m:
                scalars["train/learning_rate"] = float(m["learning_rate"][j])
            self.writer.write_scalars(g, scalars)

    def _log_epoch(self, record: dict[str, float], report: dict[str, Any] | None) -> None:
        step = record["step"]
        scalars = {tag: record[k] for k, tag in EPOCH_TAGS.items() if k in record}
        if self.on_nonfinite == "skip":
            scalars["train/skipped_steps"] = self.skipped
        self.writer.write_scalars(step, scalars)
        ts = self.ts
        grads = self.grads_fn(ts.params, ts.state, *self.grad_batch)
        self.writer.write_histograms(step, {
            **{f"params/{p}": v for p, v in ckpt.flatten(ts.params).items()},
            **{f"grads/{p}": v for p, v in ckpt.flatten(grads).items()}})
        self.writer.write_images(step, self.epoch_images(
            self.eval_params(), ts.state, report["predictions"] if report is not None else None))

    def final_metrics(self) -> dict[str, float]:
        """The last epoch's metrics by the scalar tags they were logged under."""
        last = self.history[-1] if self.history else {}
        return {EPOCH_TAGS[k]: last[k] for k in ("train_loss", "train_accuracy", "val_loss",
                                                   "val_accuracy", "test_loss", "test_accuracy")
                if k in last}

    def _open_bar(self) -> Callable[[dict[str, np.ndarray]], None] | None:
        """A bar over the steps of the epoch about to run, from where a mid-epoch checkpoint
        left it; its feed for the epoch function, or None without a bar."""
        if not self.show_bar:
            return None
        self.bar = EpochBar(self.steps_per_epoch, f"{self.name} epoch {self.epoch + 1}/"
                                                  f"{self.epochs}")
        if self.partial is not None:
            self.bar.feed(self.partial)
        return self.bar.feed

    def close_bar(self, record: dict[str, float] | None = None) -> None:
        """Close the epoch's progress bar, if one is open (with the epoch's ``record``)."""
        if self.bar is not None:
            self.bar.close(record)
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        self.writer.close()

    # -- checkpoints ---------------------------------------------------------------------

    def _nonfinite(self, start: int, m: dict[str, np.ndarray]) -> None:
        bad = int(np.argmin(m["finite"]))
        self._log_train(start, {k: v[:bad] for k, v in m.items()})
        self.writer.flush()
        last = ckpt.latest(self.ckpt_dir) if self.ckpt_dir is not None else None
        where = f"; the last good checkpoint {last} is intact" if last else ""
        raise NonFiniteLossError(
            f"fit: the loss became {float(m['loss'][bad])} at step {start + bad + 1} "
            f"(epoch {self.epoch + 1}){where}; lower the learning rate, or pass "
            f"on_nonfinite='skip' (--on-nonfinite skip) to drop such steps")

    def _checkpoint(self, record: dict[str, float]) -> None:
        name = f"ckpt-{self.epoch:06d}"
        key, sign = (("val_accuracy", 1.0) if "val_accuracy" in record else
                     ("val_loss", -1.0) if "val_loss" in record else (None, 0.0))
        if key is not None and (self.best is None or
                                sign * record[key] > sign * self.best["value"]):
            self.best = {"metric": key, "value": record[key], "epoch": self.epoch,
                         "checkpoint": name}
        self._save(name, {})

    def _checkpoint_partial(self) -> None:
        """A checkpoint in the middle of epoch ``self.epoch + 1``: the state after its first
        ``epoch_step`` steps and their metrics, so a resume finishes the epoch (same batches,
        same order) and logs it as if it had never stopped. Named ``ckpt-<epochs
        done>_step<global step>``, after the epoch's own and before the next by name."""
        partial = {k: {"dtype": np.asarray(v).dtype.name, "values": np.asarray(v).tolist()}
                   for k, v in self.partial.items()}
        self._save(f"ckpt-{self.epoch:06d}_step{self.step:09d}",
                   {"epoch_step": self.epoch_step, "partial_metrics": partial})

    def _save(self, name: str, extra: dict[str, Any]) -> None:
        if self.ckpt_dir is None or not self.main:
            return
        meta = {**self.metadata, "epoch": self.epoch, "step": self.step,
                "history": self.history, "data_order_seed": self.seed,
                "skipped_steps": self.skipped, "best": self.best,
                "wall_time_s": self.wall_time(), **extra}
        # Events first: a resume starts after this checkpoint, so its steps must be on disk
        # before it exists, or a kill right after it would lose them for good.
        self.writer.flush()
        ckpt.save(self.ckpt_dir, name, distributed.local_copy(self.ts), meta)
        best = self.best["checkpoint"] if self.best else None
        if best is not None:
            atomic_write(self.ckpt_dir / "best", f"{best}\n")
        ckpt.prune(self.ckpt_dir, self.keep_checkpoints, protect=[best] if best else [])
        if self.on_save is not None:
            self.on_save(self)
