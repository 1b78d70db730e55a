"""Datasets as NumPy arrays, and the batching primitive every training loop shares.

Conventions, fixed here for the whole library:
  - images are NHWC ``(N, H, W, C)`` float32 in ``[0, 1]`` (``C = 1`` for greyscale);
  - labels are ``(N,)`` int32 class indices;
  - a dataset is ``Splits(train, test, class_names)``, each split a ``Split(images, labels)``;
    it unpacks as the pair ``(train, test)``.

:func:`load` takes a built-in dataset's name (:data:`DATASETS`: ``"digits"``, ``"mnist"``,
``"fashion_mnist"``, ``"cifar10"``; read by :mod:`jaxcnn.datasets`, their files found, downloaded
and md5-checked by :mod:`jaxcnn.downloads`) or the path of a folder of the user's own images, one
subfolder per class (read by :mod:`jaxcnn.image_folder`). The containers and the stratified split
live in :mod:`jaxcnn.splits`; every public name of those modules that a caller needs is
re-exported here.

This module is NumPy only: it imports no JAX and knows nothing of training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxcnn.datasets import DATASETS, builtin_info, load_builtin, read_idx
from jaxcnn.downloads import CHECKSUMS, MIRRORS, default_cache_dir
from jaxcnn.image_folder import LAYOUT, folder_info, load_folder
from jaxcnn.splits import DatasetInfo, Split, Splits, split_rows, train_val_split

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "MIRRORS",
    "Batch",
    "DatasetInfo",
    "Split",
    "Splits",
    "batch_indices",
    "channel_stats",
    "default_cache_dir",
    "folder_info",
    "info",
    "iterate_batches",
    "load",
    "load_folder",
    "normalize",
    "read_idx",
    "split_rows",
    "train_val_split",
]


class Batch(NamedTuple):
    """A fixed-size batch: ``images`` (B, H, W, C) float32, ``labels`` (B,) int32 and
    ``mask`` (B,) float32, 1.0 for real rows and 0.0 for padding (whose image is zeros and label
    0)."""

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


# ----------------------------------------------------------------------------------------------
# Loading: a built-in name or a folder


def load(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    test_fraction: float = 0.2,
) -> Splits:
    """Load a dataset as ``Splits(train, test, class_names)`` of NHWC float32 images in [0, 1].

    ``name_or_path`` is a built-in name (a ``str`` in :data:`DATASETS`) or the path of an image
    folder laid out ``<folder>/<class>/<image>.png|jpg|jpeg``, or ``<folder>/train/<class>/...``
    beside ``<folder>/test/<class>/...`` (a ``Path``, or a ``str`` that is not a built-in name:
    pass ``"./mnist"`` for a folder named like one). For a folder, class names are the sorted
    subfolder names, ``image_size`` (an int, or ``(H, W)``) resizes every image, and without
    train/ and test/ a fixed-seed stratified ``test_fraction`` of each class is held out, the
    same on every call; if it mixes grey and colour images, all become RGB. See
    :func:`jaxcnn.image_folder.load_folder`. ``data_dir``, ``download`` and ``cache_dir`` apply
    to the built-in datasets only (``"digits"`` is bundled with scikit-learn and ignores them);
    they are looked for in ``data_dir``, ``$JAXCNN_DATA`` and the cache, downloaded into the
    cache when missing and ``download`` is true, and always checked against their md5 first.

    Raises ValueError (unknown name, bad argument), DatasetNotFoundError (no such folder, or a
    file nowhere and not downloadable), ChecksumError (wrong md5) or DataError (corrupt,
    truncated or malformed content; a folder that is not laid out as above).

    >>> (x, y), (xt, yt) = load("digits")
    >>> x.shape, x.dtype, y.dtype
    ((1437, 8, 8, 1), dtype('float32'), dtype('int32'))
    >>> load("digits").class_names[:3]
    ('0', '1', '2')
    """
    source = _source(name_or_path, image_size)
    if isinstance(source, Path):
        return load_folder(source, image_size=image_size, test_fraction=test_fraction)
    return load_builtin(source, data_dir=data_dir, download=download, cache_dir=cache_dir)


def info(
    name_or_path: str | os.PathLike[str], *, image_size: int | tuple[int, int] | None = None
) -> DatasetInfo:
    """Shape, class count and class names of a dataset, as :func:`load` would give them.

    A built-in dataset's facts are known without reading anything. For an image folder (``name``
    is the path as given) the class folders are listed and every image's header (mode and size)
    is read, but no pixels: see :func:`jaxcnn.image_folder.folder_info`.

    >>> info("cifar10").image_shape
    (32, 32, 3)
    """
    source = _source(name_or_path, image_size)
    if isinstance(source, Path):
        return folder_info(name_or_path, image_size=image_size)
    return builtin_info(source)


def _source(name_or_path: str | os.PathLike[str], image_size: object) -> str | Path:
    """The built-in name, or the folder's path; raises for a word that is neither."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        if image_size is not None:
            raise ValueError(
                f"image_size={image_size!r} applies to image folders only, but {name_or_path} "
                f"is a built-in dataset of {builtin_info(name_or_path).image_shape} images; "
                f"drop image_size."
            )
        return name_or_path
    path = Path(name_or_path).expanduser()
    if isinstance(name_or_path, str) and not _spelled_as_path(name_or_path) and not path.exists():
        raise ValueError(
            f"Unknown dataset {name_or_path!r}: it is not a built-in name "
            f"({', '.join(DATASETS)}) and no folder {path.absolute()} exists; pass a built-in "
            f"name or the path of a folder of class subfolders of images ({LAYOUT})."
        )
    return path  # load_folder says what is wrong with a path that is not an image folder


def _spelled_as_path(text: str) -> bool:
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return any(s in text for s in seps) or text.startswith(("~", "."))


# ----------------------------------------------------------------------------------------------
# Normalising


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of ``images`` (N, H, W, C).

    Returns two float32 arrays of shape (C,), accumulated in float64: two passes (the mean,
    then the squared deviations from it) over blocks of rows, so that no float64 copy of the
    whole set is made (NumPy's ``std`` made one: 340 MB and 0.8 s for MNIST's training set).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"channel_stats: images have shape {images.shape} but (N, H, W, C) is needed; "
            f"add the missing axes."
        )
    x = images.reshape(-1, images.shape[-1])
    if len(x) == 0:
        raise ValueError("channel_stats: images is empty; there is nothing to take stats of")
    step = 1 << 18
    total = np.zeros(x.shape[1], np.float64)
    for lo in range(0, len(x), step):
        total += x[lo:lo + step].sum(axis=0, dtype=np.float64)
    mean = total / len(x)
    squares = np.zeros_like(mean)
    for lo in range(0, len(x), step):
        d = x[lo:lo + step] - mean
        squares += np.einsum("ij,ij->j", d, d)
    return mean.astype(np.float32), np.sqrt(squares / len(x)).astype(np.float32)


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(images - mean) / std`` per channel, as float32 of the shape of ``images``.

    ``mean`` and ``std`` are scalars or (C,). A std that is not positive and finite raises
    ValueError rather than dividing by zero: a constant channel carries no information, so drop
    it or pass std 1 for it deliberately.

    >>> x = load("digits").train.images
    >>> z = normalize(x, *channel_stats(x))
    """
    images = np.asarray(images, dtype=np.float32)
    c = images.shape[-1] if images.ndim else 1
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    for arg, v in (("mean", mean), ("std", std)):
        if v.shape not in ((), (c,)):
            raise ValueError(
                f"normalize: {arg} has shape {v.shape} but a scalar or ({c},) is needed for "
                f"images with {c} channels; pass one value per channel."
            )
    bad = ~(np.isfinite(std) & (std > 0))
    if bad.any():
        raise ValueError(
            f"normalize: std={std.tolist()} has a zero, negative or non-finite entry at channel "
            f"{np.flatnonzero(np.atleast_1d(bad)).tolist()}, which would divide by zero; drop "
            f"constant channels or pass std 1 for them."
        )
    out = np.subtract(images, mean)  # one new array, divided in place: half the page faults
    np.divide(out, std, out=out)
    return out


# ----------------------------------------------------------------------------------------------
# Batching


def batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> np.ndarray:
    """Sample indices of one epoch, as int32 (num_batches, batch_size).

    The order is ``np.random.default_rng([seed, epoch]).permutation(n)`` (or ``arange(n)``
    without ``shuffle``), so epoch ``e`` of a resumed run repeats exactly. With
    ``drop_remainder`` the last partial batch is dropped; without it the last row is padded
    with -1. This is the one primitive both :func:`iterate_batches` and a whole-epoch
    ``lax.scan`` use.

    >>> batch_indices(5, 2, seed=0, shuffle=False, drop_remainder=False).tolist()
    [[0, 1], [2, 3], [4, -1]]
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or (batch_size < 1)
    ):
        raise ValueError(
            f"batch_indices: batch_size={batch_size!r} but a positive int is needed; pass e.g. 32."
        )
    if not isinstance(n, int | np.integer) or not 0 <= n < 2**31:
        raise ValueError(
            f"batch_indices: n={n!r} but an int in [0, 2**31) is needed; pass the number of "
            f"samples."
        )
    if not all(isinstance(v, int | np.integer) and v >= 0 for v in (seed, epoch)):
        raise ValueError(
            f"batch_indices: seed={seed!r} and epoch={epoch!r} must both be >= 0 (they seed "
            f"NumPy's SeedSequence); pass non-negative ints."
        )
    num_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    if num_batches == 0:
        raise ValueError(
            f"batch_indices: n={n} samples make no batch of batch_size={batch_size} with "
            f"drop_remainder={drop_remainder}; lower batch_size or pass drop_remainder=False."
        )
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    out = np.full(num_batches * batch_size, -1, dtype=np.int32)
    used = min(n, out.size)
    out[:used] = order[:used]
    return out.reshape(num_batches, batch_size)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> Iterator[Batch]:
    """Yield one epoch of :class:`Batch` of exactly ``batch_size`` rows each.

    Rows follow :func:`batch_indices`; padding rows (``drop_remainder=False``) have zero
    images, label 0 and mask 0.0, so every batch has the same shape and a jitted step never
    recompiles.

    >>> for images, labels, mask in iterate_batches(load("digits").train, 32, seed=0):
    ...     pass
    """
    images, labels = split
    if len(images) != len(labels):
        raise ValueError(
            f"iterate_batches: split has {len(images)} images but {len(labels)} labels; "
            f"pass a split whose arrays have the same length."
        )
    # Computed eagerly so bad arguments raise here, not at the first next().
    rows = batch_indices(
        len(labels),
        batch_size,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
    )
    return _batches(np.asarray(images), np.asarray(labels), rows)


def _batches(images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> Iterator[Batch]:
    for idx in rows:
        real = idx >= 0
        safe = np.where(real, idx, 0)
        x = images[safe]
        if not real.all():
            x[~real] = 0
        y = np.where(real, labels[safe], 0).astype(np.int32)
        yield Batch(x, y, real.astype(np.float32))
