"""Training and evaluation steps: one pytree of state, pure jitted functions over batches.

- :class:`TrainState` ``(params, state, opt_state, step, key)`` is everything that changes.
- :func:`make_train_step` gives a pure, jitted ``(ts, batch) -> (ts, metrics)``; a step whose
  loss or gradients are not finite changes nothing but ``step`` and reports ``finite = False``.
- :func:`make_eval_step` and :func:`evaluate` compute loss, accuracy and predictions over a
  split with fixed-shape, masked batches.

Dropout keys are ``fold_in(ts.key, ts.step)``: a run resumed at step s draws exactly the keys
an uninterrupted run draws.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import cpu, distributed
from jaxcnn import data as data_lib
from jaxcnn.layers import Layer, layer_info
from jaxcnn.losses import accuracy, softmax_cross_entropy
from jaxcnn.typedefs import Array, Key, Params, Shape, State
from jaxcnn.walk import first_not_per_example

__all__ = [
    "LossFn", "Metrics", "TrainState", "batch_slices_for", "check_class_labels",
    "create_train_state", "data_parallel_mesh", "evaluate", "learning_rate", "make_eval_step",
    "make_train_step", "loss_caller", "takes_mask", "target_kind",
]

LossFn = Callable[..., Array]
Metrics = dict[str, Array]


class TrainState(NamedTuple):
    """Everything a training step changes, as one pytree (checkpoint it whole)."""

    params: Params
    state: State
    opt_state: optax.OptState
    step: Array
    key: Key


def create_train_state(model: Layer, optimizer: optax.GradientTransformation, key: Key,
                       in_shape: Shape) -> TrainState:
    """Initialise ``model`` for inputs of ``in_shape`` (batch first) and ``optimizer`` on its
    params; ``key`` is split into the init key and the key dropout steps fold into."""
    init_key, step_key = jax.random.split(key)
    _, params, state = model.init(init_key, tuple(in_shape))
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), step_key)


def learning_rate(opt_state: optax.OptState) -> Array | None:
    """The current learning rate when the optimizer was built with ``optax.inject_hyperparams``
    (as the runner does), else None."""
    return optax.tree_utils.tree_get(
        opt_state, "learning_rate", None,
        filtering=lambda _, value: isinstance(value, jax.Array | np.ndarray | float))


def _unpack(batch) -> tuple[Array, Array, Array | None]:
    if len(batch) == 2:
        return batch[0], batch[1], None
    images, labels, mask = batch
    return images, labels, mask


def _is_classification(labels: Array) -> bool:
    return labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer)


def target_kind(labels: Array | np.ndarray, logits_shape: Shape) -> str | None:
    """How accuracy reads ``labels`` for logits (N, K): ``"index"`` for integer class labels
    (N,), ``"one_hot"`` for one-hot or soft targets (N, K > 1) (e.g. for ``mse``), None for
    other targets, which get no accuracy."""
    if _is_classification(labels):
        return "index"
    if labels.ndim == 2 and len(logits_shape) == 2 and labels.shape[1] == logits_shape[1] > 1:
        return "one_hot"
    return None


def _accuracy(logits: Array, labels: Array, mask: Array | None) -> Array | None:
    """Accuracy as :func:`_target_kind` reads the labels (one-hot ones by their arg-max)."""
    kind = target_kind(labels, logits.shape)
    if kind is None:
        return None
    return accuracy(logits, labels if kind == "index" else jnp.argmax(labels, -1), mask=mask)


def check_class_labels(where: str, name: str, labels: np.ndarray, logits_shape: Shape) -> None:
    """Integer class labels must lie in [0, K) for K logits: a negative one would wrap around
    to another class, a large one give NaN."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or not labels.size:
        return
    k = logits_shape[-1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{where}: {name} labels must be class indices in [0, {k}) for the "
                         f"model's {k} outputs, got values from {lo} to {hi}; renumber the "
                         f"classes from 0, or give the last Dense layer {hi + 1} outputs")


def takes_mask(loss_fn: LossFn) -> bool:
    """Whether ``loss_fn`` takes a ``mask`` keyword (as :mod:`jaxcnn.losses` do); one that
    cannot be inspected is assumed to."""
    try:
        params = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "mask" and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD
               for p in params)


def loss_caller(loss_fn: LossFn, where: str) -> Callable[[Array, Array, Array | None], Array]:
    """``loss_fn(logits, labels, mask=mask)`` for a loss that takes a mask (``None`` on an
    unmasked batch); ``loss_fn(logits, labels)`` for one that does not, which works on
    unmasked batches and is refused, by name, on masked ones."""
    masked = takes_mask(loss_fn)

    def call(logits, labels, mask):
        if masked:
            return loss_fn(logits, labels, mask=mask)
        if mask is not None:
            name = getattr(loss_fn, "__name__", repr(loss_fn))
            raise TypeError(f"{where}: this batch has a mask (padding rows to leave out), but "
                            f"loss_fn {name} takes no mask keyword; give it one, "
                            f"mask=None, that averages over the rows where mask is 1, as "
                            f"jaxcnn.losses.softmax_cross_entropy does")
        return loss_fn(logits, labels)

    return call


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)



def make_train_step(model: Layer, loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    jit: bool = True, batch_slices: int | str = "auto",
                    augment: Callable[..., Any] | None = None,
                    ) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """A pure ``(ts, batch) -> (ts, metrics)``: forward in training mode, ``jax.value_and_grad``
    of ``loss_fn(logits, labels, mask=mask)`` (``loss_fn(logits, labels)`` for a loss without a
    ``mask`` keyword, which then refuses masked batches), an Optax update.

    ``batch`` is ``(images, labels)`` or ``(images, labels, mask)`` (a :class:`data.Batch`).
    ``augment(key, images, labels) -> (images, labels)`` (:mod:`jaxcnn.augment`) transforms
    each batch inside the step, on the device, with a key derived from the step's own
    (``fold_in(fold_in(ts.key, ts.step), 1)``), so a run is deterministic for its seed and a
    resumed run draws what an uninterrupted one draws; labels it turns into soft targets
    (mixup, cutmix) go to the loss as they are, and accuracy reads their arg-max.
    ``optimizer`` is any Optax transformation: those that need the loss (``value``, e.g.
    ``optax.contrib.reduce_on_plateau``, ``optax.polyak_sgd``), its gradient and a function
    of the params (``grad``, ``value_fn``: ``optax.lbfgs``) get them.
    ``metrics``: ``loss``, ``accuracy`` (for integer class labels, or for one-hot or soft
    targets of the logits' shape against their arg-max), ``finite`` (False when the loss or a
    gradient was NaN or infinite: then params, state and opt_state are left as they were) and,
    with ``optax.inject_hyperparams``, ``learning_rate``.

    ``batch_slices`` (see :func:`batch_slices_for`): the model runs on that many
    slices of the batch, whose logits are concatenated before the loss. For a per-example model
    this is the same function of the whole batch (up to float rounding), but XLA's CPU runtime,
    which runs most operations on one core, then has independent forward and backward passes to
    run side by side: 1.1x-1.5x the images/s of LeNet-5 and simple_cnn on 2 cores
    (``benchmarks/README.md``, "Batch slices"). ``"auto"`` is the count a per-example
    :func:`jaxcnn.layers.serial` takes by itself in training mode (so a hand-written step gets
    the same); an int overrides it, 1 turns slicing off. A model that is not per-example
    refuses an int > 1; with ``"auto"``, its serials compute their runs of per-example
    layers in slices (:func:`jaxcnn.layers.serial`).
    """
    _check_batch_slices(model, batch_slices)
    call_loss = loss_caller(loss_fn, "make_train_step")
    opt = optax.with_extra_args_support(optimizer)

    # "auto" leaves a model that mixes examples to its serials, which slice their runs of
    # per-example layers; otherwise the count is decided here and the serials must not cut it.
    own_runs = batch_slices == "auto" and not layer_info(model).per_example

    def forward(params, state, images, key, count):
        if count == 1:
            with contextlib.nullcontext() if own_runs else cpu.whole_batch():
                return model.apply(params, state, images, key=key, train=True)
        # A per-example model has no batch statistics to update: its state stays as it is.
        return cpu.concat_slices(
            lambda x: model.apply(params, state, x, key=key, train=True)[0], images,
            count), state

    def step(ts: TrainState, batch) -> tuple[TrainState, Metrics]:
        images, labels, mask = _unpack(batch)
        key = jax.random.fold_in(ts.key, ts.step)
        if augment is not None:
            images, labels = augment(jax.random.fold_in(key, 1), images, labels)

        count = _slice_count(model, images.shape[0], batch_slices)  # checked

        def objective(params):
            logits, new_state = forward(params, ts.state, images, key, count)
            return call_loss(logits, labels, mask), (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            ts.params)
        updates, opt_state = opt.update(grads, ts.opt_state, ts.params, value=loss, grad=grads,
                                        value_fn=lambda p: objective(p)[0])
        params = optax.apply_updates(ts.params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads)

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        metrics = {"loss": loss, "finite": finite}
        acc = _accuracy(logits, labels, mask)
        if acc is not None:
            metrics["accuracy"] = acc
        lr = learning_rate(opt_state)  # the rate this update used
        if lr is not None:
            metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
        new_ts = TrainState(keep(params, ts.params), keep(new_state, ts.state),
                            keep(opt_state, ts.opt_state), ts.step + 1, ts.key)
        return new_ts, metrics

    return jax.jit(step) if jit else step


def batch_slices_for(model: Layer, batch_size: int, batch_slices: int | str = "auto") -> int:
    """How many slices :func:`make_train_step` computes a batch of ``batch_size`` in.

    ``"auto"``: for a per-example model (:class:`jaxcnn.layers.LayerInfo`),
    :func:`jaxcnn.cpu.batch_slices`: from batch 64 on, where jaxcnn's CPU convolution is on
    and there is one device, the largest power of two of slices with at least
    :data:`jaxcnn.cpu.SLICE_ROWS` rows each (32 with AVX-512, else 16), at least 4 and
    at most 16; else 1 (the serials of a model that is not per-example then cut their runs of
    per-example layers themselves, :func:`jaxcnn.layers.serial`). Slices of 64 rows or more
    split each of their convolutions once more, in 4 (:func:`jaxcnn.cpu.plan_for`). An int is
    used as given (at most the batch); with a batch sharded over several devices its slices
    would cut across the shards, which costs
    transfers between devices, so keep ``"auto"`` there.
    """
    _check_batch_slices(model, batch_slices)
    return _slice_count(model, batch_size, batch_slices)


def _slice_count(model: Layer, batch_size: int, batch_slices: int | str) -> int:
    """:func:`batch_slices_for` for an already checked ``batch_slices``."""
    if batch_slices == "auto":
        return cpu.batch_slices(batch_size) if layer_info(model).per_example else 1
    return max(1, min(int(batch_slices), batch_size))


def _check_batch_slices(model: Layer, batch_slices: Any) -> None:
    if batch_slices == "auto":
        return
    if isinstance(batch_slices, bool) or not isinstance(batch_slices, int | np.integer) or (
            batch_slices < 1):
        raise ValueError(f"make_train_step: batch_slices must be 'auto' or an int >= 1, got "
                         f"{batch_slices!r}")
    if batch_slices > 1 and not layer_info(model).per_example:
        raise ValueError(
            f"make_train_step: batch_slices={batch_slices} computes each slice of the batch on "
            f"its own, which changes the result of a layer that mixes examples; "
            f"{first_not_per_example(model)} is not per-example (BatchNorm, a Lambda without "
            f"per_example=True and a user's own Layer are not); use batch_slices=1 or 'auto'")


def data_parallel_mesh(devices: list | None = None, axis: str = "data") -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``, which after
    ``jax.distributed.initialize`` spans every process) for data-parallel training."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.array(devices), (axis,))



def make_eval_step(model: Layer, loss_fn: LossFn = softmax_cross_entropy
                   ) -> Callable[[Params, State, Any], Metrics]:
    """A jitted ``(params, state, batch) -> metrics`` in inference mode: ``loss`` and
    ``accuracy`` (means over the unmasked examples; accuracy as in :func:`make_train_step`,
    left out for targets it does not apply to), ``count`` (their number) and ``predictions``
    (arg-max class per row, padding rows included)."""
    call_loss = loss_caller(loss_fn, "make_eval_step")

    @jax.jit
    def eval_step(params, state, batch):
        images, labels, mask = _unpack(batch)
        logits, _ = model.apply(params, state, images, train=False)
        count = jnp.sum(mask) if mask is not None else jnp.asarray(labels.shape[0], jnp.float32)
        out = {"loss": call_loss(logits, labels, mask), "count": count,
               "predictions": jnp.argmax(logits, -1)}
        acc = _accuracy(logits, labels, mask)
        if acc is not None:
            out["accuracy"] = acc
        return out

    eval_step.takes_mask = takes_mask(loss_fn)  # type: ignore[attr-defined]
    return eval_step


def evaluate(eval_step: Callable[[Params, State, Any], Metrics], params: Params, state: State,
             split: data_lib.Split, batch_size: int = 1000, *,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """Loss and accuracy over every example of ``split`` (fixed-shape batches, the last one
    padded and masked), and ``predictions`` (N,) as a NumPy array in the split's order.
    ``accuracy`` is left out where the eval step gives none (targets it does not apply to).
    An eval step whose loss takes no mask (``eval_step.takes_mask`` False) gets the last
    batch unpadded instead (one more compile).

    ``mesh``: split every batch by rows over the mesh's devices (``batch_size`` is rounded up
    to a multiple of their number; the padding rows are masked), with ``params`` and ``state``
    replicated over it. In a multi-process run every process must call this alike."""
    n = len(split.labels)
    batch_size = min(batch_size, n)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    masks = getattr(eval_step, "takes_mask", True)
    if mesh is not None and not masks:
        raise TypeError("evaluate: data-parallel evaluation pads its batches with masked rows, "
                        "but this eval step's loss takes no mask keyword; give the loss one, "
                        "mask=None, as jaxcnn.losses.softmax_cross_entropy does")
    idx = data_lib.batch_indices(n, batch_size, seed=0, shuffle=False, drop_remainder=False)
    totals: dict[str, float] = {}
    predictions = []
    for rows in idx:
        real = rows >= 0
        if masks:
            safe = np.where(real, rows, 0)
            batch = (split.images[safe], split.labels[safe], real.astype(np.float32))
        else:
            batch = (split.images[rows[real]], split.labels[rows[real]])
            real = real[real]
        if mesh is not None:
            batch = distributed.shard_batch(batch, mesh)
        m = eval_step(params, state, batch)
        count = float(m["count"])
        for k in ("loss", "accuracy"):
            if k in m:
                totals[k] = totals.get(k, 0.0) + float(m[k]) * count
        predictions.append(distributed.to_host(m["predictions"])[real])
    return {**{k: v / n for k, v in totals.items()}, "predictions": np.concatenate(predictions)}


