"""jit-compiled training with Optax: one pytree of state, pure steps, whole-epoch drivers.

- :class:`TrainState` ``(params, state, opt_state, step, key)`` is everything that changes.
- :func:`make_train_step` gives a pure, jitted ``(ts, batch) -> (ts, metrics)``; a step whose
  loss or gradients are not finite changes nothing but ``step`` and reports ``finite = False``.
- :func:`make_epoch_fn` runs a whole epoch in one compiled call (``lax.scan`` over batches, the
  data kept on the device) or, when the data is too large for that, as a loop of compiled steps
  fed from the host; both do the same arithmetic, so they give the same parameters.
- :func:`evaluate` computes loss, accuracy and predictions over a split with fixed-shape,
  masked batches; :func:`fit` ties these together for users who want no loop of their own.

Dropout keys are ``fold_in(ts.key, ts.step)``: a run resumed at step s draws exactly the keys
an uninterrupted run draws.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import _conv_cpu, distributed
from jaxcnn import data as data_lib
from jaxcnn._types import Array, Key, Params, Shape, State
from jaxcnn.layers import Layer, layer_info
from jaxcnn.losses import accuracy, softmax_cross_entropy
from jaxcnn.ops import _is_int
from jaxcnn.summarize import summary

__all__ = [
    "CPU_L2_BYTES", "CPU_MAX_SLICES", "CPU_MIN_SLICED_BATCH", "CPU_SLICE_ROWS",
    "EarlyStopping", "TrainState", "batch_slices_for", "cpu_l2_cache_bytes", "cpu_slice_rows",
    "create_train_state", "data_parallel_mesh", "evaluate", "fit", "learning_rate",
    "make_epoch_fn", "make_eval_step", "make_train_step", "should_stop", "slice_rows",
]

LossFn = Callable[..., Array]
Metrics = dict[str, Array]

#: Above this many bytes of training data, "auto" streams batches from the host instead of
#: keeping the whole set on the device for a scanned epoch.
SCAN_MAX_BYTES = 2 * 1024**3


def cpu_slice_rows(features: Mapping[str, bool] | None = None) -> int:
    """Rows per slice that ``batch_slices="auto"`` aims at on this CPU: 32 with AVX-512, else
    16. A core with wider vectors finishes a slice's operations sooner, so their fixed cost
    weighs more and larger slices win (benchmarks/README.md, item 8: on a 2-core AVX-512
    EPYC, 32 rows trained 5-13% faster than 16; on a 2-core AVX2 EPYC, 16 rows were faster).
    ``features``: NumPy's runtime CPU feature table (the host's when None)."""
    if features is None:
        features = _numpy_cpu_features()
    return 32 if features.get("AVX512F") else 16


def _numpy_cpu_features() -> Mapping[str, bool]:
    """NumPy's runtime CPU feature table (``numpy._core`` in NumPy 2, ``numpy.core`` in 1.x);
    empty where neither has it, which means the narrower vectors."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return importlib.import_module(module).__cpu_features__
        except (ImportError, AttributeError):
            continue
    return {}


def cpu_l2_cache_bytes(root: str | os.PathLike[str] = "/sys/devices/system/cpu/cpu0/cache",
                       ) -> int | None:
    """The per-core L2 cache of the first CPU in bytes, from Linux's sysfs; None where it is not
    there (another OS, a container that hides it) or cannot be read."""
    for index in sorted(Path(root).glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip()
                                 for f in ("level", "type", "size"))
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data"):
            scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1:].upper(), 1)
            digits = size[:-1] if scale > 1 else size
            return int(digits) * scale if digits.isdigit() else None
    return None


def slice_rows(example_bytes: int, l2_bytes: int | None) -> int:
    """Rows per slice that ``batch_slices="auto"`` aims at for a model whose largest activation
    (a layer's output, float32) takes ``example_bytes`` per example, on a core with
    ``l2_bytes`` of L2 cache: 16 when 16 rows of it fit in L2 and 32 rows would not, else 32.

    Why: while a slice's activations stay in the core's L2 cache, the element-wise work between
    its convolutions (bias, ReLU, pooling and their gradients) runs from the cache, so slices
    as large as fit win; once they cannot fit even at 16 rows, larger slices win by running
    fewer, larger operations. Measured on three 2-core machines (``benchmarks/README.md``,
    item 10): LeNet-5 (18.8 KB per example at conv1) trains fastest at 16 rows on 512 KB of L2
    and at 32 rows on 1 MB; simple_cnn (100 KB per example) at 32 rows on both.
    ``l2_bytes`` None (unknown): :data:`CPU_SLICE_ROWS`, the rule by vector width."""
    if not l2_bytes or example_bytes <= 0:
        return CPU_SLICE_ROWS
    return 16 if 16 * example_bytes <= l2_bytes < 32 * example_bytes else 32


#: ``batch_slices="auto"`` on the CPU aims at this many rows a slice (the largest power of two
#: of slices that leaves this many each, from 4 slices up to :data:`CPU_MAX_SLICES`; a batch of
#: 64-127 gets 4 smaller ones) where the L2 cache or the input's shape is unknown:
#: :func:`cpu_slice_rows` of the host. Else :func:`slice_rows` decides.
CPU_SLICE_ROWS = cpu_slice_rows()
#: The per-core L2 cache of the host (:func:`cpu_l2_cache_bytes`), which :func:`slice_rows`
#: sizes the slices by; None where unknown.
CPU_L2_BYTES = cpu_l2_cache_bytes()
#: The most slices ``batch_slices="auto"`` takes; larger batches get larger slices.
CPU_MAX_SLICES = 16
#: ``batch_slices="auto"`` leaves smaller batches whole: they gained nothing from slices.
CPU_MIN_SLICED_BATCH = 64


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


def _target_kind(labels: Array | np.ndarray, logits_shape: Shape) -> str | None:
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
    kind = _target_kind(labels, logits.shape)
    if kind is None:
        return None
    return accuracy(logits, labels if kind == "index" else jnp.argmax(labels, -1), mask=mask)


def _check_fit_targets(where: str, name: str, labels: np.ndarray, logits_shape: Shape) -> None:
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


def _loss_caller(loss_fn: LossFn, where: str) -> Callable[[Array, Array, Array | None], Array]:
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


def _not_per_example(layer: Layer, path: tuple[str, ...] = ()) -> str:
    """The first layer in ``layer`` that is not per-example, by its path of child names."""
    info = layer_info(layer)
    for nm, child in info.children:
        if not layer_info(child).per_example:
            return _not_per_example(child, (*path, nm))
    return f"layer {'/'.join(path) or info.name or info.base!r} ({info.kind})"


def batch_slices_for(model: Layer, batch_size: int, batch_slices: int | str = "auto",
                     in_shape: Shape | None = None) -> int:
    """How many slices :func:`make_train_step` computes a batch of ``batch_size`` in.

    ``"auto"``: from batch 64 on, when jaxcnn's CPU convolution is on
    (:func:`jaxcnn._conv_cpu.enabled`: JAX's default backend is the CPU, or
    ``JAXCNN_CONV_IMPL=cpu``), there is one device in all, and the model is per-example
    (:class:`jaxcnn.layers.LayerInfo`), the largest power of two of slices with at least
    :func:`slice_rows` rows each (16 or 32, by the model's largest activation on the input
    ``in_shape`` and the host's L2 cache; :data:`CPU_SLICE_ROWS` where either is unknown), at
    least 4 and at most :data:`CPU_MAX_SLICES`. With 16 rows: 4 for batch 64-127, 8 for
    128-255, 16 from 256 on; with 32 rows: 4 for batch 64-255, 8 for 256-511, 16 from 512 on.
    Slices of 64 rows or more split each of their convolutions once more, in 4
    (:func:`jaxcnn._conv_cpu.plan_for`). Else 1. An int is used as given (at most the batch);
    with a batch sharded over several devices its slices would cut across the shards, which
    costs transfers between devices, so keep ``"auto"`` there. ``in_shape``: the input's
    shape, batch first (None allowed); :func:`make_train_step` passes the batch's shape, so
    pass it too to get the count the step uses (without it, :data:`CPU_SLICE_ROWS` rows).
    """
    _check_batch_slices(model, batch_slices)
    return _slice_count(model, batch_size, batch_slices, in_shape)


def _largest_activation_bytes(model: Layer, in_shape: Shape) -> int | None:
    """Bytes per example of the model's largest layer output (or input), in float32; None
    where :func:`jaxcnn.summary` cannot walk the model (then the slices follow
    :data:`CPU_SLICE_ROWS`: a speed heuristic must never stop a model that trains).

    Remembered per model and shape, so an unjitted step does not walk the model each call."""
    try:
        return _largest_activation_cached(model, tuple(in_shape))
    except TypeError:  # a model that cannot be hashed: walk it each time
        return _largest_activation_uncached(model, tuple(in_shape))


def _largest_activation_uncached(model: Layer, in_shape: Shape) -> int | None:
    try:
        return 4 * max(row.neurons for row in summary(model, in_shape).rows)
    except Exception:  # noqa: BLE001 -- any failure of the walk means "unknown"
        return None


_largest_activation_cached = functools.lru_cache(maxsize=64)(_largest_activation_uncached)


def _slice_count(model: Layer, batch_size: int, batch_slices: int | str,
                 in_shape: Shape | None = None) -> int:
    """:func:`batch_slices_for` for an already checked ``batch_slices``."""
    if batch_slices == "auto":
        # at least 4 slices: fewer left a core idle (benchmarks/README.md, items 6 to 8)
        if (batch_size >= CPU_MIN_SLICED_BATCH and layer_info(model).per_example
                and _conv_cpu.enabled() and jax.device_count() == 1):
            rows = CPU_SLICE_ROWS
            if in_shape is not None and CPU_L2_BYTES:
                example_bytes = _largest_activation_bytes(model, in_shape)
                if example_bytes is not None:
                    rows = slice_rows(example_bytes, CPU_L2_BYTES)
            fit = max(1, int(batch_size) // rows)
            return min(CPU_MAX_SLICES, max(4, 1 << (fit.bit_length() - 1)))
        return 1
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
            f"its own, which changes the result of a layer that mixes examples or draws random "
            f"numbers; {_not_per_example(model)} is not per-example (BatchNorm, Dropout with "
            f"rate > 0, a Lambda without per_example=True and a user's own Layer are not); use "
            f"batch_slices=1 or 'auto'")


def make_train_step(model: Layer, loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    jit: bool = True, batch_slices: int | str = "auto",
                    ) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """A pure ``(ts, batch) -> (ts, metrics)``: forward in training mode, ``jax.value_and_grad``
    of ``loss_fn(logits, labels, mask=mask)`` (``loss_fn(logits, labels)`` for a loss without a
    ``mask`` keyword, which then refuses masked batches), an Optax update.

    ``batch`` is ``(images, labels)`` or ``(images, labels, mask)`` (a :class:`data.Batch`).
    ``optimizer`` is any Optax transformation: those that need the loss (``value``, e.g.
    ``optax.contrib.reduce_on_plateau``, ``optax.polyak_sgd``), its gradient and a function
    of the params (``grad``, ``value_fn``: ``optax.lbfgs``) get them.
    ``metrics``: ``loss``, ``accuracy`` (for integer class labels, or for one-hot or soft
    targets of the logits' shape against their arg-max), ``finite`` (False when the loss or a
    gradient was NaN or infinite: then params, state and opt_state are left as they were) and,
    with ``optax.inject_hyperparams``, ``learning_rate``.

    ``batch_slices`` (see :func:`batch_slices_for`): the model runs on that many slices of the
    batch, whose logits are concatenated before the loss. For a per-example model this is the
    same function of the whole batch (up to float rounding), but XLA's CPU runtime, which runs
    most operations on one core, then has independent forward and backward passes to run side
    by side: 1.1x-1.5x the images/s of LeNet-5 and simple_cnn on 2 cores
    (``benchmarks/README.md``, "Batch slices"). A model that is not per-example refuses an int > 1.
    """
    _check_batch_slices(model, batch_slices)
    call_loss = _loss_caller(loss_fn, "make_train_step")
    opt = optax.with_extra_args_support(optimizer)

    def forward(params, state, images, key):
        slices = _slice_count(model, images.shape[0], batch_slices, images.shape)  # checked
        if slices == 1:
            return model.apply(params, state, images, key=key, train=True)
        # A per-example model has no batch statistics to update: its state stays as it is.
        return _conv_cpu.concat_slices(
            lambda x: model.apply(params, state, x, key=key, train=True)[0], images,
            slices), state

    def step(ts: TrainState, batch) -> tuple[TrainState, Metrics]:
        images, labels, mask = _unpack(batch)
        key = jax.random.fold_in(ts.key, ts.step)

        def objective(params):
            logits, new_state = forward(params, ts.state, images, key)
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


def data_parallel_mesh(devices: list | None = None, axis: str = "data") -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``, which after
    ``jax.distributed.initialize`` spans every process) for data-parallel training."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.array(devices), (axis,))


def make_epoch_fn(
    train_step: Callable[[TrainState, Any], tuple[TrainState, Metrics]],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    driver: str = "auto",
    halt_on_nonfinite: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    steps_per_call: int | None = None,
) -> Callable[..., tuple[TrainState, dict[str, np.ndarray]]]:
    """``run(ts, *, seed, epoch) -> (ts, metrics)``: one epoch over ``images`` (N, H, W, C) and
    ``labels`` (N,) in shuffled batches of ``batch_size`` (the incomplete last batch dropped;
    :func:`jaxcnn.data.batch_indices` fixes the order from ``seed`` and ``epoch``).

    ``driver``: ``"scan"`` keeps the data on the device and runs the epoch as one compiled
    ``lax.scan``; ``"loop"`` keeps the data on the host and calls one compiled step per batch;
    ``"auto"`` scans when the data is at most :data:`SCAN_MAX_BYTES`. ``metrics`` holds one
    value per step (NumPy, fetched once at the end). With ``halt_on_nonfinite``, the first step
    with a non-finite loss freezes the state for the rest of the epoch, so the caller can stop
    exactly there.

    ``run(ts, *, seed, epoch, start=0, stop=None, progress=None)``: ``start`` skips the epoch's
    first ``start`` steps (to continue an epoch that a checkpoint interrupted: the same batches
    in the same order follow); ``stop``, a function of no arguments, is asked between calls and,
    once it returns True, the epoch ends early: ``metrics`` then holds only the steps that ran.
    ``progress(metrics)`` is called with the NumPy metrics of each call (or step) once it has
    finished, while the next one runs (the last call's come back as the result): a progress
    bar's feed that adds no wait.
    ``steps_per_call`` (scan driver) splits the epoch into scans of that many steps (and one
    shorter program for the rest), each a compiled call with at most one more queued behind
    it, so ``stop`` is heard within two calls; None scans the whole epoch in one call (``stop``
    is then asked only at its end). The loop driver asks ``stop`` after every step. Every
    split gives bit-identical results: each step runs the same compiled scan body.

    ``run.compile(ts)`` compiles the epoch's program for ``ts`` (or loads it from JAX's
    persistent compilation cache) without running it, so the first epoch starts at once: the
    runner uses it to note when its first step could start.

    ``mesh``: data-parallel training over a 1-D :class:`jax.sharding.Mesh` (see
    :func:`data_parallel_mesh`): every batch is split over the mesh's devices along its first
    axis, the train state is replicated, and XLA inserts the gradient all-reduce. The result is
    the single-device result up to float rounding; ``batch_size`` must divide evenly.
    """
    if driver not in ("auto", "scan", "loop"):
        raise ValueError(f"make_epoch_fn: driver must be 'auto', 'scan' or 'loop', got {driver!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"make_epoch_fn: batch_size must be a positive int, got {batch_size!r}")
    if steps_per_call is not None and (not _is_int(steps_per_call) or steps_per_call < 1):
        raise ValueError(f"make_epoch_fn: steps_per_call must be a positive int or None, got "
                         f"{steps_per_call!r}")
    batch_size = int(batch_size)
    steps_per_call = None if steps_per_call is None else int(steps_per_call)
    n = len(images)
    if batch_size > n:
        raise ValueError(f"make_epoch_fn: batch_size ({batch_size}) is larger than the "
                         f"{n} training examples; use a batch size of at most {n}")
    if driver == "auto":
        driver = "scan" if images.nbytes + labels.nbytes <= SCAN_MAX_BYTES else "loop"
    if mesh is not None:
        devices = mesh.devices.size
        if mesh.devices.ndim != 1 or batch_size % devices:
            raise ValueError(f"make_epoch_fn: data-parallel training needs a 1-D mesh and a "
                             f"batch_size divisible by its {devices} devices, got batch_size "
                             f"{batch_size} and mesh shape {dict(mesh.shape)}")
        split_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            mesh.axis_names[0]))

    def shard(batch):
        if mesh is None:
            return batch
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, split_rows), batch)

    def place(tree):
        # With a mesh: replicated over it, each process filling its own devices from the copy
        # it holds, so this works as well when the mesh spans several processes.
        return jax.tree.map(jnp.asarray, tree) if mesh is None else distributed.replicate(
            tree, mesh)

    def place_batch(batch):
        # With a mesh: each process puts only its own devices' rows of the batch.
        return place(batch) if mesh is None else distributed.shard_batch(batch, mesh)

    def body(carry, batch):
        ts, halted = carry
        new_ts, metrics = train_step(ts, shard(batch))
        if halt_on_nonfinite:
            new_ts = jax.tree.map(lambda old, new: jnp.where(halted, old, new), ts, new_ts)
            halted = halted | ~metrics["finite"]
        return (new_ts, halted), metrics

    def order(seed, epoch):
        return data_lib.batch_indices(n, batch_size, seed=seed, epoch=epoch, shuffle=True,
                                      drop_remainder=True)

    steps = n // batch_size

    def first_carry(ts):
        # The scan carry: the state and whether a non-finite step has halted the epoch.
        return place(ts), place(np.array(False))

    if driver == "scan":
        dev_images, dev_labels = place(images), place(labels)

        def run(ts, *, seed, epoch, start=0, stop=None, progress=None):
            idx = order(seed, epoch)[_check_start(start, steps)]
            size = len(idx) if steps_per_call is None else steps_per_call
            carry, out = first_carry(ts), []
            for lo in range(0, len(idx), size):
                carry, metrics = scan_epoch(carry, dev_images, dev_labels,
                                            place(idx[lo: lo + size]))
                out.append(metrics)
                if len(out) > 1:  # one call queued behind the running one, no more
                    jax.block_until_ready(out[-2])
                    if progress is not None:
                        progress(jax.device_get(out[-2]))
                if stop is not None and lo + size < len(idx) and stop():
                    break
            return carry[0], _stack(out)

        @jax.jit
        def scan_epoch(carry, images, labels, idx):
            def gathered(carry, rows):
                return body(carry, (images[rows], labels[rows]))

            return jax.lax.scan(gathered, carry, idx)

        def compile_first_call(ts):
            size = steps if steps_per_call is None else min(steps_per_call, steps)
            scan_epoch.lower(first_carry(ts), dev_images, dev_labels,
                             place(order(0, 0)[:size])).compile()

        run.compile = compile_first_call  # type: ignore[attr-defined]
        return run

    @jax.jit
    def step(carry, images, labels):
        # A scan of length one compiles the step exactly as the scanned epoch does, so both
        # drivers give bit-identical results.
        return jax.lax.scan(body, carry, (images[None], labels[None]))

    def run(ts, *, seed, epoch, start=0, stop=None, progress=None):
        idx = order(seed, epoch)[_check_start(start, steps)]
        carry, out = first_carry(ts), []
        for i, rows in enumerate(idx):
            carry, metrics = step(carry, *place_batch((images[rows], labels[rows])))
            out.append(metrics)
            if progress is not None and i:
                progress(jax.device_get(out[-2]))
            if stop is not None and i + 1 < len(idx) and stop():
                break
        return carry[0], _stack(out)

    def compile_step(ts):
        rows = order(0, 0)[0]
        step.lower(first_carry(ts), *place_batch((images[rows], labels[rows]))).compile()

    run.compile = compile_step  # type: ignore[attr-defined]
    return run


def _check_start(start: int, steps: int) -> slice:
    if isinstance(start, bool) or not isinstance(start, int | np.integer) or not \
            0 <= start < steps:
        raise ValueError(f"make_epoch_fn: start must be an int in [0, {steps}) (the steps of an "
                         f"epoch), got {start!r}")
    return slice(int(start), None)


def _stack(out: list[Metrics]) -> dict[str, np.ndarray]:
    """Per-call metrics (each with a leading step axis) as one NumPy array per name."""
    return jax.device_get(jax.tree.map(lambda *xs: jnp.concatenate(xs), *out))


def make_eval_step(model: Layer, loss_fn: LossFn = softmax_cross_entropy
                   ) -> Callable[[Params, State, Any], Metrics]:
    """A jitted ``(params, state, batch) -> metrics`` in inference mode: ``loss`` and
    ``accuracy`` (means over the unmasked examples; accuracy as in :func:`make_train_step`,
    left out for targets it does not apply to), ``count`` (their number) and ``predictions``
    (arg-max class per row, padding rows included)."""
    call_loss = _loss_caller(loss_fn, "make_eval_step")

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


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs
    (``mode`` "max" for accuracies, "min" for losses)."""

    metric: str = "val_accuracy"
    mode: str = "max"
    patience: int = 5
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: mode must be 'max' or 'min', got {self.mode!r}")
        if not _is_int(self.patience) or \
                self.patience < 1:
            raise ValueError(f"EarlyStopping: patience must be a positive int, got "
                             f"{self.patience!r}")
        object.__setattr__(self, "patience", int(self.patience))
        if not self.min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {self.min_delta!r}")


def should_stop(rule: EarlyStopping, history: list[Mapping[str, float]]) -> bool:
    """Whether ``rule`` stops training after the epochs in ``history`` (one dict per epoch)."""
    values = [h[rule.metric] for h in history if rule.metric in h]
    if len(values) <= rule.patience:
        return False
    sign = 1.0 if rule.mode == "max" else -1.0
    best_before = max(sign * v for v in values[: -rule.patience])
    recent = max(sign * v for v in values[-rule.patience:])
    return not recent > best_before + rule.min_delta


def fit(
    model: Layer,
    optimizer: optax.GradientTransformation,
    train: data_lib.Split,
    *,
    epochs: int,
    batch_size: int = 128,
    loss_fn: LossFn = softmax_cross_entropy,
    seed: int = 0,
    val: data_lib.Split | None = None,
    early_stopping: EarlyStopping | None = None,
    loss_tolerance: float | None = None,
    driver: str = "auto",
) -> tuple[TrainState, list[dict[str, float]]]:
    """Train ``model`` on ``train`` for up to ``epochs`` epochs; returns the final state and one
    dict of metrics per epoch (``train_loss``, ``train_accuracy`` and, with ``val``,
    ``val_loss``, ``val_accuracy``; the accuracies where they apply, see
    :func:`make_train_step`). Stops early by ``early_stopping`` (its metric must be one of
    those) or once the epoch's mean training loss is below ``loss_tolerance``. Integer labels
    outside the model's classes raise ValueError; a non-finite loss raises FloatingPointError.
    """
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
    epochs = int(epochs)
    ts = create_train_state(model, optimizer, jax.random.key(seed),
                            (None, *train.images.shape[1:]))
    logits = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=False)[0], ts.params,
                            ts.state, jax.ShapeDtypeStruct((1, *train.images.shape[1:]),
                                                           train.images.dtype)).shape
    keys = []  # the metrics each epoch's record will hold
    for name, split in (("train", train), ("val", val)):
        if split is not None:
            _check_fit_targets("fit", name, split.labels, logits)
            keys.append(f"{name}_loss")
            if _target_kind(np.asarray(split.labels), logits):
                keys.append(f"{name}_accuracy")
    if early_stopping is not None and early_stopping.metric not in keys:
        raise ValueError(f"fit: early_stopping watches {early_stopping.metric!r}, which this "
                         f"training does not report; pick one of {', '.join(keys)}"
                         f"{'' if val is not None else ' (pass val= for the val_* metrics)'}")
    step = make_train_step(model, loss_fn, optimizer, jit=False)
    run_epoch = make_epoch_fn(step, train.images, train.labels, batch_size, driver=driver)
    eval_step = make_eval_step(model, loss_fn)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        start = int(ts.step)
        ts, metrics = run_epoch(ts, seed=seed, epoch=epoch)
        if not metrics["finite"].all():
            bad = int(np.argmin(metrics["finite"]))
            raise FloatingPointError(f"fit: the loss became {metrics['loss'][bad]} at step "
                                     f"{start + bad} (epoch {epoch}); lower the learning rate")
        record = {"epoch": epoch, "train_loss": float(np.mean(metrics["loss"]))}
        if "accuracy" in metrics:
            record["train_accuracy"] = float(np.mean(metrics["accuracy"]))
        if val is not None:
            v = evaluate(eval_step, ts.params, ts.state, val)
            record["val_loss"] = v["loss"]
            if "accuracy" in v:
                record["val_accuracy"] = v["accuracy"]
        history.append(record)
        if early_stopping is not None and should_stop(early_stopping, history):
            break
        if loss_tolerance is not None and record["train_loss"] < loss_tolerance:
            break
    return ts, history

