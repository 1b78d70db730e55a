"""Data-parallel training in a fresh process, for tests/test_distributed.py.

    python tests/_distributed_worker.py OUT.npz

The test sets the devices through the environment:
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` gives this process N CPU devices, and
``JAXCNN_COORDINATOR``, ``JAXCNN_NUM_PROCESSES`` and ``JAXCNN_PROCESS_ID`` (read by
:func:`jaxcnn.distributed.initialize`) make it one process of several. The worker trains
:func:`problem` for one epoch with both drivers over a mesh of every device, evaluates, runs a
forward pass on a row-sharded batch, and writes it all to ``OUT.npz``; the test builds the
single-device reference from the same :func:`problem` with :func:`run` in its own process.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import optax

from jaxcnn import distributed
from jaxcnn import layers as L
from jaxcnn.data import Split
from jaxcnn.losses import softmax_cross_entropy
from jaxcnn.train import (
    create_train_state,
    data_parallel_mesh,
    evaluate,
    make_epoch_fn,
    make_eval_step,
    make_train_step,
)

STEPS, BATCH, SEED = 20, 64, 0
DRIVERS = ("scan", "loop")
EVAL_ROWS = 200


def problem():
    """``(images, labels, model, optimizer)``: 20 batches of 64 8x8x1 images whose labels a
    fixed linear map of the pixels decides (so the loss falls), a small CNN, SGD momentum."""
    rng = np.random.default_rng(SEED)
    images = rng.normal(size=(STEPS * BATCH, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(images.reshape(len(images), -1) @ rng.normal(size=(64, 10)), axis=-1)
    return images, labels.astype(np.int32), small_cnn(), optax.sgd(0.05, momentum=0.9)


def small_cnn() -> L.Layer:
    """conv 6@3x3 SAME -> ReLU -> avg-pool 2 -> dense 10: small, because compiling, not
    arithmetic, is what these runs spend their time on."""
    return L.serial(L.Conv(6, 3, padding="SAME"), L.Relu(), L.AvgPool(2), L.Flatten(),
                    L.Dense(10))


def initial_key() -> jax.Array:
    """The train state's key. RBG rather than the default threefry: threefry's bit generator
    takes seconds to compile on CPU for every parameter shape, RBG a fraction of that."""
    return jax.random.key(SEED, impl="rbg")


def run(mesh=None) -> dict[str, np.ndarray]:
    """Train one epoch (``STEPS`` steps) of :func:`problem` with each driver (over ``mesh``),
    then evaluate and take logits of the first batch; all as NumPy arrays named by driver."""
    images, labels, model, optimizer = problem()
    # Every process builds the same initial state from the same key.
    ts0 = create_train_state(model, optimizer, initial_key(), (None, *images.shape[1:]))
    if mesh is not None:
        # In a multi-process run the state must span the mesh before it enters the epoch
        # function: device_put cannot move a process-local key array onto other hosts' devices.
        ts0 = distributed.replicate(ts0, mesh)
    step = make_train_step(model, softmax_cross_entropy, optimizer, jit=False)
    eval_step = make_eval_step(model)
    forward = jax.jit(lambda params, state, x: model.apply(params, state, x)[0])
    batch = images[:BATCH] if mesh is None else distributed.shard_batch(images[:BATCH], mesh)
    out = {}
    for driver in DRIVERS:
        epoch_fn = make_epoch_fn(step, images, labels, BATCH, driver=driver, mesh=mesh)
        ts, metrics = epoch_fn(ts0, seed=SEED, epoch=0)
        out[f"{driver}/loss"] = np.asarray(metrics["loss"])
        params = distributed.to_host(ts.params)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            out[f"{driver}/params{jax.tree_util.keystr(path)}"] = leaf
        out[f"{driver}/params_devices"] = np.array(
            [len(leaf.sharding.device_set) for leaf in jax.tree.leaves(ts.params)])
        result = evaluate(eval_step, ts.params, ts.state,
                          Split(images[:EVAL_ROWS], labels[:EVAL_ROWS]), batch_size=100)
        out[f"{driver}/eval"] = np.array([result["loss"], result["accuracy"]])
        out[f"{driver}/predictions"] = result["predictions"]
        out[f"{driver}/logits"] = distributed.to_host(forward(ts.params, ts.state, batch))
    return out


def layout(mesh) -> dict[str, np.ndarray]:
    """Where :func:`distributed.shard_batch` put this process's rows: the mesh positions of its
    devices, and the rows each holds, in that order."""
    images = problem()[0][:BATCH]
    batch = distributed.shard_batch(images, mesh)
    position = {d.id: i for i, d in enumerate(mesh.devices.flat)}
    shards = sorted(batch.addressable_shards, key=lambda s: position[s.device.id])
    return {"layout/positions": np.array([position[s.device.id] for s in shards]),
            "layout/rows": np.stack([np.asarray(s.data) for s in shards]),
            "layout/gathered": distributed.to_host(batch)}


def main(out_path: str) -> None:
    if os.environ.get(distributed.ENV_COORDINATOR):
        # Bind the coordinator where the test points it (loopback), and give up soon if a peer
        # never shows, rather than after JAX's 5 minutes.
        distributed.initialize(coordinator_bind_address=os.environ[distributed.ENV_COORDINATOR],
                               initialization_timeout=60)
    mesh = data_parallel_mesh()
    out = {"device_count": np.array(jax.device_count()),
           "local_device_count": np.array(jax.local_device_count()),
           "process_count": np.array(jax.process_count()),
           "process_index": np.array(jax.process_index()),
           "is_main_process": np.array(distributed.is_main_process()), **layout(mesh)}
    out.update(run(mesh))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
