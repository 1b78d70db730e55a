"""Multi-process training on JAX's own distribution: start-up, and arrays that span processes.

Data-parallel training itself lives in :func:`jaxcnn.train.make_epoch_fn` (``mesh=``): the batch
is split over a 1-D :class:`jax.sharding.Mesh`, the train state is replicated, and XLA inserts
the gradient all-reduce. One process drives all devices of a host (several GPUs, a TPU host, or
CPU devices forced with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``); for several
hosts, run one process per host, call :func:`initialize` first, and the mesh of
:func:`jaxcnn.train.data_parallel_mesh` spans every process's devices.

Multi-process JAX is single-program, multiple-data: every process runs the same code on the
same data in the same order, and ``jax.devices()`` lists the devices of all processes while
each process can only read and write its own (``jax.local_devices()``). Hence:

- :func:`initialize` must run before anything touches a JAX backend (no ``jax.devices()``, no
  array, no computation; importing ``jax`` and ``jaxcnn`` is fine).
- ``jnp.asarray`` of host data makes a process-local array; arrays that span the mesh are made
  from data every process holds with :func:`replicate` (the train state, a dataset) and
  :func:`shard_batch` (a batch, split by rows), and read back with :func:`to_host`.
- Only the main process (:func:`is_main_process`) should write logs and checkpoints.

Single-process use needs none of this, and everything here also works there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.checks import is_key

__all__ = [
    "ENV_COORDINATOR", "ENV_COORDINATOR_BIND", "ENV_LOCAL_DEVICE_IDS", "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID", "initialize",
    "is_main_process", "local_copy", "replicate", "shard_batch", "to_host",
]

#: ``host:port`` of process 0's coordinator, read when ``coordinator_address`` is None.
ENV_COORDINATOR = "JAXCNN_COORDINATOR"
#: Number of processes, read when ``num_processes`` is None.
ENV_NUM_PROCESSES = "JAXCNN_NUM_PROCESSES"
#: This process's id in ``0 .. num_processes - 1``, read when ``process_id`` is None.
ENV_PROCESS_ID = "JAXCNN_PROCESS_ID"
#: Comma-separated ids of the local devices this process drives (e.g. ``0,1,2,3``), read when
#: ``local_device_ids`` is None. Under SLURM and Open MPI, JAX otherwise gives each process
#: only the device numbered by its local rank (one process per GPU).
ENV_LOCAL_DEVICE_IDS = "JAXCNN_LOCAL_DEVICE_IDS"
#: ``host:port`` that process 0's coordinator listens on (e.g. ``127.0.0.1:1234`` to keep a
#: one-host run on loopback), read when ``coordinator_bind_address`` is not passed; JAX's
#: default is every interface, at the port of the coordinator's address.
ENV_COORDINATOR_BIND = "JAXCNN_COORDINATOR_BIND_ADDRESS"

_COLLECTIVES_FLAG = "jax_cpu_collectives_implementation"


def _from_env(name: str, *, many: bool = False) -> int | list[int] | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    parts = [part.strip() for part in value.split(",")] if many else [value]
    if not all(part.isdigit() for part in parts):
        need, example = (("a comma-separated list of non-negative ints", "0,1") if many
                         else ("a non-negative int", "0"))
        raise ValueError(f"initialize: environment variable {name} must be {need}, got "
                         f"{value!r}; set it to e.g. {name}={example}")
    return [int(part) for part in parts] if many else int(value)


def _cpu_may_run() -> bool:
    # Before the backend starts, ``jax_platforms`` (or $JAX_PLATFORMS) is the only way to know
    # which backends will be created; unset means "all available", CPU always among them.
    platforms = jax.config.jax_platforms
    return not platforms or "cpu" in platforms.split(",")


def _enable_cpu_collectives() -> None:
    # JAX builds its CPU client with cross-process collectives only when this flag names an
    # implementation, and reads it once, when the backend starts; so it must be set here,
    # before jax.distributed.initialize and before any computation. JAX 0.10 already defaults
    # to "gloo"; older releases defaulted to none, and before 0.4.28 the flag was a boolean.
    if not _cpu_may_run():
        return
    current = getattr(jax.config, _COLLECTIVES_FLAG, "missing")
    if current == "missing":
        jax.config.update("jax_cpu_enable_gloo_collectives", True)
    elif current in (None, "none"):  # a user's "mpi" is left alone
        jax.config.update(_COLLECTIVES_FLAG, "gloo")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    **jax_options: Any,
) -> None:
    """Join this process to a multi-process JAX run (:func:`jax.distributed.initialize`), with
    cross-process collectives on CPU (Gloo) turned on.

    Call it first, before any JAX computation or ``jax.devices()``: both the CPU-collectives
    flag and the distributed client are read when JAX's backend starts, and JAX refuses
    (RuntimeError) once it has. Arguments left None are read from ``$JAXCNN_COORDINATOR``
    (``host:port`` of process 0), ``$JAXCNN_NUM_PROCESSES``, ``$JAXCNN_PROCESS_ID`` and
    ``$JAXCNN_LOCAL_DEVICE_IDS`` (``0,1,2,3``); whatever is still None is left to JAX's cluster
    auto-detection (SLURM, Open MPI, Cloud TPU, ...). ``$JAXCNN_COORDINATOR_BIND_ADDRESS``, if
    set, is the ``coordinator_bind_address`` unless that is passed.
    ``jax_options`` go to :func:`jax.distributed.initialize` unchanged (e.g.
    ``initialization_timeout=60``, ``coordinator_bind_address="127.0.0.1:1234"``).

    Process 0 (every process runs the same command, only the id differs)::

        >>> from jaxcnn import distributed
        >>> distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
    """
    if coordinator_address is None:
        coordinator_address = os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _from_env(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _from_env(ENV_PROCESS_ID)
    if local_device_ids is None:
        local_device_ids = _from_env(ENV_LOCAL_DEVICE_IDS, many=True)
    bind = os.environ.get(ENV_COORDINATOR_BIND, "").strip()
    if bind and "coordinator_bind_address" not in jax_options:
        jax_options["coordinator_bind_address"] = bind
    _enable_cpu_collectives()
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids, **jax_options)


def is_main_process() -> bool:
    """Whether this is process 0, the one that should log and checkpoint (always True in a
    single-process run). Starts the backend: call :func:`initialize` before it."""
    return jax.process_index() == 0


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if is_key(x):  # typed keys travel as their raw uint32 data
            return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding),
                                            impl=jax.random.key_impl(x))
        if not x.is_fully_addressable:  # already global: let XLA reshard it
            return jax.device_put(x, sharding)
    host = np.asarray(x)
    # Each process fills only its own devices, from the copy it holds: no cross-process
    # traffic, and no check that the copies agree (device_put would all-gather to check).
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every leaf an array replicated over all devices of ``mesh``.

    Every process must call it with the same values (the train state made from the same seed,
    the same dataset); each process fills only its own devices from its own copy. Leaves that
    are already replicated over ``mesh`` are returned as they are, so calling it every epoch
    is cheap. Typed PRNG keys are kept typed.

    >>> import jax.numpy as jnp
    >>> from jaxcnn.train import data_parallel_mesh
    >>> replicate({"w": jnp.ones(3)}, data_parallel_mesh())["w"].sharding.is_fully_replicated
    True
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """``tree`` of arrays (N, ...) as global arrays split by rows over all devices of ``mesh``
    (in the mesh's device order; N must divide evenly).

    Every process passes the same full batch and places only its own rows, so a data-parallel
    step sees one global batch without moving data between hosts.

    >>> import numpy as np
    >>> from jaxcnn.train import data_parallel_mesh
    >>> shard_batch(np.zeros((8, 2)), data_parallel_mesh()).shape
    (8, 2)
    """
    devices = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))

    def put(x):
        rows = np.shape(x)[0] if np.ndim(x) else None
        if rows is None or rows % devices:
            raise ValueError(f"shard_batch: every leaf needs a first axis divisible by the "
                             f"mesh's {devices} devices, got shape {np.shape(x)}; pad or drop "
                             f"rows to a multiple of {devices}")
        return _put(x, sharding)

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """``tree`` as NumPy arrays holding every element, also for arrays spread over processes.

    Collective when some array is split over processes (it is gathered): then every process
    must call it. Replicated and process-local arrays are read locally. Typed PRNG keys come
    back as their raw data (:func:`jax.random.key_data`).
    """

    def get(x):
        if is_key(x):
            x = jax.random.key_data(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def local_copy(tree: Any) -> Any:
    """``tree`` with every array replicated over several processes replaced by this process's
    own copy, so the main process can save it without a collective."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) and
                        not x.is_fully_addressable else x, tree)
