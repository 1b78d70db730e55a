"""Whole-epoch drivers: one epoch of a training step as compiled calls over the data.

:func:`make_epoch_fn` runs an epoch in one compiled call (a loop over batches, the data
kept on the device) or, when the data is too large for that, as a loop of compiled steps fed
from the host; both do the same arithmetic, so they give the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import data as data_lib
from jaxcnn import distributed
from jaxcnn.checks import is_int
from jaxcnn.steps import Metrics, TrainState

__all__ = ["SCAN_MAX_BYTES", "make_epoch_fn"]


#: Above this many bytes of training data, "auto" streams batches from the host instead of
#: keeping the whole set on the device for a scanned epoch.
SCAN_MAX_BYTES = 2 * 1024**3


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
    loop over its batches; ``"loop"`` keeps the data on the host and calls one compiled step
    per batch; ``"auto"`` scans when the data is at most :data:`SCAN_MAX_BYTES`. ``metrics``
    holds one value per step (NumPy, fetched once at the end). With ``halt_on_nonfinite``, the
    first step with a non-finite loss freezes the state for the rest of the epoch, so the
    caller can stop exactly there.

    ``run(ts, *, seed, epoch, start=0, stop=None, progress=None)``: ``start`` skips the epoch's
    first ``start`` steps (to continue an epoch that a checkpoint interrupted: the same batches
    in the same order follow); ``stop``, a function of no arguments, is asked between calls and,
    once it returns True, the epoch ends early: ``metrics`` then holds only the steps that ran.
    ``progress(metrics)`` is called with the NumPy metrics of each call (or step) once it has
    finished, while the next one runs (the last call's come back as the result): a progress
    bar's feed that adds no wait.
    ``steps_per_call`` (scan driver) splits the epoch into calls of that many steps, each a
    compiled call with at most one more queued behind it, so ``stop`` is heard within two
    calls; None scans the whole epoch in one call (``stop`` is then asked only at its end). The
    number of steps is an argument of the one compiled program, so the shorter last call and a
    resumed epoch's first call compile nothing new. The loop driver asks ``stop`` after every
    step. Every split gives bit-identical results: each step runs the same compiled body.

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
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"make_epoch_fn: batch_size must be a positive int, got {batch_size!r}")
    if steps_per_call is not None and (not is_int(steps_per_call) or steps_per_call < 1):
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
        # it holds, so this works as well when the mesh spans several processes. device_put,
        # not jnp.asarray: that runs a small compiled copy for every array.
        return jax.device_put(tree) if mesh is None else distributed.replicate(
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
        size = steps if steps_per_call is None else min(steps_per_call, steps)

        def run(ts, *, seed, epoch, start=0, stop=None, progress=None):
            idx = order(seed, epoch)[_check_start(start, steps)]
            carry, out = first_carry(ts), []
            for lo in range(0, len(idx), size):
                rows, count = _padded(idx[lo: lo + size], size)
                carry, metrics = epoch_call(carry, dev_images, dev_labels, place(rows),
                                           place(np.int32(count)))
                out.append((metrics, count))
                if len(out) > 1:  # one call queued behind the running one, no more
                    jax.block_until_ready(out[-2][0])
                    if progress is not None:
                        progress(_first(*jax.device_get(out[-2])))
                if stop is not None and lo + size < len(idx) and stop():
                    break
            return carry[0], _stack(out)

        @jax.jit
        def epoch_call(carry, images, labels, idx, count):
            # The first `count` steps of `idx` (size, batch), in a loop whose trip count is an
            # argument, so every call of an epoch, the shorter last one and a resumed epoch's
            # first included, runs this one program. Steps past `count` leave their rows of
            # the metrics zero. The step is a nested jit (inlined by XLA), traced once for its
            # metrics' shapes and the loop alike.
            step = jax.jit(lambda carry, rows: body(carry, (images[rows], labels[rows])))
            shapes = jax.eval_shape(step, carry, idx[0])[1]
            metrics = jax.tree.map(lambda s: jnp.zeros((size, *s.shape), s.dtype), shapes)

            def one(i, state):
                carry, metrics = state
                carry, m = step(carry, idx[i])
                return carry, jax.tree.map(lambda all_, v: all_.at[i].set(v), metrics, m)

            return jax.lax.fori_loop(0, count, one, (carry, metrics))

        def compile_first_call(ts):
            epoch_call.lower(first_carry(ts), dev_images, dev_labels,
                            place(order(0, 0)[:size]), place(np.int32(size))).compile()

        run.compile = compile_first_call  # type: ignore[attr-defined]
        return run

    @jax.jit
    def step(carry, images, labels):
        # The step as a nested jit in a loop of one, as the scanned epoch runs it, so both
        # drivers give bit-identical results.
        return jax.lax.scan(jax.jit(body), carry, (images[None], labels[None]))

    def run(ts, *, seed, epoch, start=0, stop=None, progress=None):
        idx = order(seed, epoch)[_check_start(start, steps)]
        carry, out = first_carry(ts), []
        for i, rows in enumerate(idx):
            carry, metrics = step(carry, *place_batch((images[rows], labels[rows])))
            out.append((metrics, 1))
            if progress is not None and i:
                progress(jax.device_get(out[-2][0]))
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


def _padded(rows: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """A call's batch indices (k, batch) padded with row 0 to (size, batch), and k."""
    count = len(rows)
    if count < size:
        rows = np.concatenate([rows, np.zeros((size - count, rows.shape[1]), rows.dtype)])
    return rows, count


def _first(metrics: Metrics, count: int) -> Metrics:
    """The first ``count`` steps of one call's NumPy metrics."""
    return jax.tree.map(lambda v: np.asarray(v)[:count], metrics)


def _stack(out: list[tuple[Metrics, int]]) -> dict[str, np.ndarray]:
    """Per-call metrics (each with a leading step axis, ``count`` of them real) as one NumPy
    array per name, fetched in one transfer."""
    fetched = jax.device_get([m for m, _ in out])
    calls = [_first(m, count) for m, (_, count) in zip(fetched, out, strict=True)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *calls)
