"""Checkpoints: a pytree as an ``.npz`` of its leaves keyed by tree path, plus JSON metadata.

A checkpoint named ``ckpt-000003`` in folder ``checkpoints/`` is two files:

- ``ckpt-000003.npz``: one array per leaf, keyed by its path (``params/conv1/w``,
  ``opt_state/inner_state/0/trace/conv1/w``, ``step``); PRNG key leaves are stored as their raw
  ``jax.random.key_data`` and re-wrapped with the template's implementation on restore;
- ``ckpt-000003.json``: the caller's metadata (epoch, step, config, history, ...) plus the npz
  file's size and sha256, so a truncated or altered npz is recognised as incomplete.

Every file is written atomically (:func:`jaxcnn.files.atomic_write`): into a temporary file in
the same folder, flushed and fsynced, renamed over the target with ``os.replace``, then the
folder is fsynced. The npz is written before its JSON and the ``latest`` file (the name of the
newest checkpoint) last, so a kill at any moment leaves the previous checkpoint intact and
named. :func:`latest` trusts ``latest`` only if it names a complete checkpoint, and otherwise
falls back to the newest complete one; stray temporary files are ignored (and removed by the
next :func:`save`).

:func:`restore` checks the checkpoint against a freshly initialised template of the same tree:
every leaf path present on both sides with the same shape and dtype, else
:class:`~jaxcnn.errors.CheckpointError` naming the first leaf that differs. This module knows
nothing of training: any pytree of arrays works.

>>> import tempfile, jax.numpy as jnp
>>> d = tempfile.mkdtemp()
>>> _ = save(d, "ckpt-000001", {"w": jnp.ones(3)}, {"epoch": 1})
>>> tree, meta = restore(latest(d), {"w": jnp.zeros(3)})
>>> tree["w"].tolist(), meta["epoch"]
([1.0, 1.0, 1.0], 1)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.checks import is_key
from jaxcnn.errors import CheckpointError
from jaxcnn.files import TMP_PREFIX, atomic_write

__all__ = ["checkpoints", "flatten", "is_complete", "latest", "read_metadata",
           "restore", "save", "prune"]

LATEST = "latest"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` of ``tree`` in leaf order; a path joins dict keys, NamedTuple field names
    and sequence indices with ``/`` (``params/conv1/w``)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out: dict[str, Any] = {}
    for path, leaf in leaves:
        out["/".join(_key_name(k) for k in path) or "_"] = leaf
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(directory: str | os.PathLike[str], name: str, tree: Any,
         metadata: Mapping[str, Any]) -> Path:
    """Write checkpoint ``name`` of ``tree`` with JSON-ready ``metadata`` into ``directory``
    (created if missing) and make it the latest; returns the path of its ``.npz``. Raises
    CheckpointError for a bad name, metadata that is not JSON-ready, or a folder that cannot be
    created, before writing anything."""
    if not _NAME.match(name) or name == LATEST:
        raise CheckpointError(f"checkpoint name {name!r} must be letters, digits, '_', '-' or '.' "
                              f"and not {LATEST!r}")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the checkpoint folder {folder} "
                              f"({e.strerror or e}); pass a folder you can write") from None
    for stale in folder.glob(f"{TMP_PREFIX}*"):  # left by a kill during an earlier save
        stale.unlink(missing_ok=True)
    arrays, key_leaves = {}, []
    for path, leaf in flatten(tree).items():
        if is_key(leaf):
            key_leaves.append(path)
            leaf = jax.random.key_data(leaf)
        arrays[path] = np.asarray(jax.device_get(leaf))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    meta = {**metadata, "_checkpoint": {"npz_bytes": len(blob), "npz_sha256": _sha256(blob),
                                        "key_leaves": key_leaves}}
    try:  # before anything is written: a refused checkpoint leaves the folder as it was
        meta_text = json.dumps(meta, indent=1, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name}: metadata must hold only dicts, lists, str, "
                              f"numbers, bools and None ({e})") from None
    npz = folder / f"{name}.npz"
    atomic_write(npz, blob)
    atomic_write(folder / f"{name}.json", meta_text)
    atomic_write(folder / LATEST, name + "\n")
    return npz


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of the checkpoint whose ``.npz`` (or ``.json``) is ``path``; raises
    CheckpointError when it is missing or unreadable."""
    js = Path(path).with_suffix(".json")
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata {js} cannot be read "
                              f"({getattr(e, 'strerror', None) or e}); the checkpoint is "
                              f"incomplete, so resume from another one") from None
    if not isinstance(meta, dict) or "_checkpoint" not in meta:
        raise CheckpointError(f"checkpoint metadata {js} is not a jaxcnn checkpoint's")
    return meta


def _verify(npz: Path) -> tuple[dict[str, Any], bytes]:
    meta = read_metadata(npz)
    info = meta["_checkpoint"]
    try:
        blob = npz.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {npz} cannot be read ({e.strerror or e})") from None
    if len(blob) != info.get("npz_bytes") or _sha256(blob) != info.get("npz_sha256"):
        raise CheckpointError(f"checkpoint {npz} holds {len(blob)} bytes whose sha256 differs "
                              f"from the {info.get('npz_bytes')} recorded in its metadata; it is "
                              f"truncated or altered, so resume from an earlier checkpoint")
    return meta, blob


def is_complete(npz: str | os.PathLike[str]) -> bool:
    """Whether ``npz`` and its metadata exist and match (size and sha256)."""
    try:
        _verify(Path(npz))
    except CheckpointError:
        return False
    return True


def checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``.npz`` files in ``directory`` that have metadata, oldest first by name (complete or
    not: see :func:`is_complete`)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.npz") if not p.name.startswith(TMP_PREFIX)
                  and p.with_suffix(".json").exists())


def latest(directory: str | os.PathLike[str]) -> Path | None:
    """The latest complete checkpoint's ``.npz`` in ``directory``: the one ``latest`` names if it
    is complete, else the newest complete one by name; None when there is none."""
    folder = Path(directory)
    try:
        named = (folder / LATEST).read_text().strip()
    except OSError:
        named = ""
    if named and _NAME.match(named) and is_complete(folder / f"{named}.npz"):
        return folder / f"{named}.npz"
    for npz in reversed(checkpoints(folder)):
        if is_complete(npz):
            return npz
    return None


def prune(directory: str | os.PathLike[str], keep: int, protect: Iterable[str] = ()) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (by name) except those named in
    ``protect`` (e.g. the best one); returns the deleted ``.npz`` paths."""
    protected = set(protect)
    folder = Path(directory)
    try:
        newest = (folder / LATEST).read_text().strip()
    except OSError:
        newest = ""
    protected.add(newest)
    ckpts = checkpoints(folder)
    removed = []
    for npz in ckpts[: max(len(ckpts) - keep, 0)]:
        if npz.stem in protected:
            continue
        npz.with_suffix(".json").unlink(missing_ok=True)  # metadata first: then it is incomplete
        npz.unlink(missing_ok=True)
        removed.append(npz)
    return removed


def _key_impl(ref: Any) -> Any:
    """The PRNG implementation of a key leaf, concrete or abstract (``jax.eval_shape``)."""
    if isinstance(ref, jax.Array):
        return jax.random.key_impl(ref)
    return getattr(ref.dtype, "_impl", None)  # None: JAX's default implementation


def restore(path: str | os.PathLike[str], template: Any, *,
            partial: bool = False) -> tuple[Any, dict[str, Any]]:
    """The tree saved at ``path`` (an ``.npz``) in the structure of ``template``, and its metadata.

    ``template`` is a freshly initialised tree of the same kind, or its ``jax.eval_shape``
    (only its structure, shapes and dtypes are used, so nothing needs computing). Raises
    CheckpointError when the checkpoint is incomplete, or when a leaf path is missing on either
    side or a shape or dtype differs, naming the first such leaf in the template's order, e.g.
    ``params/conv1/w: checkpoint (5, 5, 1, 6), model (3, 3, 1, 6)``. ``partial``: the template
    is part of what was saved (e.g. ``{"params": ..., "state": ...}`` of a saved TrainState):
    saved leaves outside it are left out instead of refused.
    """
    npz = Path(path)
    meta, blob = _verify(npz)
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except (OSError, ValueError):  # NumPy's own message would suggest unpickling it
        raise CheckpointError(f"checkpoint {npz} is not an .npz archive although its size and "
                              f"sha256 match its metadata; it was not written by "
                              f"jaxcnn.checkpoint.save, so resume from another one") from None
    flat_template = flatten(template)
    leaves = []
    for key, ref in flat_template.items():
        want = jax.eval_shape(jax.random.key_data, ref) if is_key(ref) else ref
        want_shape, want_dtype = tuple(np.shape(want)), np.dtype(want.dtype)
        if key not in stored:
            raise CheckpointError(f"checkpoint {npz} does not fit this model: {key}: missing from "
                                  f"the checkpoint, model {want_shape}; it was saved from a "
                                  f"different model or optimizer")
        arr = stored[key]
        if arr.shape != want_shape:
            raise CheckpointError(f"checkpoint {npz} does not fit this model: {key}: checkpoint "
                                  f"{arr.shape}, model {want_shape}")
        if arr.dtype != want_dtype:
            raise CheckpointError(f"checkpoint {npz} does not fit this model: {key}: checkpoint "
                                  f"dtype {arr.dtype}, model {want_dtype}")
        if is_key(ref):
            leaves.append(jax.random.wrap_key_data(arr, impl=_key_impl(ref)))
        else:
            leaves.append(jax.numpy.asarray(arr))
    extra = [k for k in stored if k not in flat_template]
    if extra and not partial:
        raise CheckpointError(f"checkpoint {npz} does not fit this model: {extra[0]}: checkpoint "
                              f"{stored[extra[0]].shape}, not in the model; it was saved from a "
                              f"different model or optimizer")
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, leaves), meta
