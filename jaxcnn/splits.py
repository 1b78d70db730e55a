"""A dataset held in memory: its containers, and the one stratified split every loader shares.

Conventions, fixed here for the whole library:
  - images are NHWC ``(N, H, W, C)`` float32 in ``[0, 1]`` (``C = 1`` for greyscale);
  - labels are ``(N,)`` int32 class indices;
  - a dataset is ``Splits(train, test, class_names)``, each split a ``Split(images, labels)``.

This module is NumPy only: it imports no JAX (scikit-learn only inside :func:`split_rows`, and
not where its cache already holds the split).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, overload

import numpy as np

from jaxcnn.errors import RunError
from jaxcnn.files import atomic_write

__all__ = ["DatasetInfo", "Split", "Splits", "split_rows", "train_val_split"]


class Split(NamedTuple):
    """One split: ``images`` (N, H, W, C) float32 in [0, 1], ``labels`` (N,) int32."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Splits:
    """A dataset's ``train`` and ``test`` :class:`Split`, and ``class_names[i]`` naming label i
    (None when unknown).

    It unpacks, indexes and measures as the pair ``(train, test)``; ``class_names`` rides along
    as an attribute only, so ``(x, y), (xt, yt) = splits`` works.

    >>> s = Splits(Split(np.zeros((2, 8, 8, 1)), np.arange(2)), Split(np.zeros((1, 8, 8, 1)),
    ...            np.arange(1)), ("a", "b"))
    >>> train, test = s
    >>> len(s), s[1] is test, s.class_names
    (2, True, ('a', 'b'))
    """

    train: Split
    test: Split
    class_names: tuple[str, ...] | None = None

    def __iter__(self) -> Iterator[Split]:
        return iter((self.train, self.test))

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, index: int) -> Split: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Split, ...]: ...

    def __getitem__(self, index: int | slice) -> Split | tuple[Split, ...]:
        return (self.train, self.test)[index]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing it.

    ``image_shape`` is ``(H, W, C)``; ``class_names[i]`` names label ``i``.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]


def train_val_split(split: Split, val_fraction: float, *, seed: int,
                    cache: str | os.PathLike[str] | None = None) -> tuple[Split, Split]:
    """Split ``split`` into ``(train, val)``, stratified by label and reproducible by ``seed``.

    ``val_fraction`` in (0, 1) is the share of samples that go to ``val``: scikit-learn's
    ``train_test_split(..., stratify=labels, random_state=seed)``, so it takes
    ``ceil(val_fraction * N)`` samples and needs at least two per class and one per class on
    each side. ``cache``: a folder that keeps the split's rows (:func:`split_rows`).

    >>> from jaxcnn.data import load
    >>> train, val = train_val_split(load("digits").train, 0.1, seed=0)
    """
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    if len(images) != len(labels):
        raise ValueError(f"train_val_split: {len(images)} images but {len(labels)} labels; "
                         f"give one label per image")
    rows, val_rows = split_rows(labels, val_fraction, seed=seed, cache=cache)
    return (Split(images[rows], labels[rows]), Split(images[val_rows], labels[val_rows]))


def split_rows(labels: np.ndarray, val_fraction: float, *, seed: int,
               cache: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows :func:`train_val_split` puts on each side, ``(train_rows, val_rows)``: int64
    indices into ``labels`` (N,) (or (N, K) soft targets), in the split's shuffled order.

    With ``cache`` (a folder), the rows are kept there in a file named by a hash of the labels,
    ``val_fraction``, ``seed`` and scikit-learn's version, and read back by the next call with
    the same four: the runner passes ``<jaxcnn cache>/splits``, so a launch that repeats a
    split does not import scikit-learn (about 1 s of a 2-core machine's start-up). A file that
    is not a split of these rows is ignored and written again; a folder that cannot be written
    only costs the cache."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"train_val_split: val_fraction={val_fraction!r} but it must lie strictly between "
            f"0 and 1; pass e.g. 0.1."
        )
    labels = np.asarray(labels)
    n = len(labels)
    file = _rows_file(cache, labels, val_fraction, seed) if cache is not None else None
    if file is not None:
        rows = _read_rows(file, n)
        if rows is not None:
            return rows
    # Imported here: scikit-learn is slow to import and only splitting needs it.
    from sklearn.model_selection import train_test_split

    try:
        rows, val_rows = train_test_split(np.arange(n), test_size=val_fraction, stratify=labels,
                                          random_state=seed)
    except ValueError as e:
        raise ValueError(
            f"train_val_split: cannot stratify {n} samples with "
            f"val_fraction={val_fraction!r} ({e}); use a larger split or val_fraction."
        ) from e
    if file is not None:
        _write_rows(file, rows, val_rows)
    return rows.astype(np.int64), val_rows.astype(np.int64)


def _rows_file(cache: str | os.PathLike[str], labels: np.ndarray, val_fraction: float,
               seed: int) -> Path | None:
    """The file in ``cache`` that keeps this split's rows; None where scikit-learn's version
    cannot be read (no cache then: a file could outlive the split it was made by)."""
    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None
    key = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    key.update(repr((labels.dtype.str, labels.shape, float(val_fraction), int(seed),
                     version)).encode())
    return Path(cache) / f"{key.hexdigest()[:32]}.npz"


def _read_rows(file: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows kept in ``file``, where they are a split of ``range(n)``; else None."""
    try:
        with np.load(file) as kept:
            rows, val_rows = kept["rows"], kept["val_rows"]
        if (rows.ndim != 1 or val_rows.ndim != 1 or rows.dtype.kind not in "iu"
                or val_rows.dtype.kind not in "iu" or len(rows) == 0 or len(val_rows) == 0
                or len(rows) + len(val_rows) != n):
            return None
        every = np.concatenate([rows, val_rows]).astype(np.int64)
        if every.min() < 0 or every.max() >= n or np.bincount(every, minlength=n).max() != 1:
            return None
    except (OSError, KeyError, ValueError, TypeError, AttributeError, EOFError,
            zipfile.BadZipFile):
        return None
    return rows.astype(np.int64), val_rows.astype(np.int64)


def _write_rows(file: Path, rows: np.ndarray, val_rows: np.ndarray) -> None:
    """Keep the rows in ``file`` (:func:`jaxcnn.files.atomic_write`; nothing where it cannot)."""
    small = np.int32 if len(rows) + len(val_rows) < 2**31 else np.int64
    blob = io.BytesIO()
    np.savez_compressed(blob, rows=rows.astype(small), val_rows=val_rows.astype(small))
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, blob.getvalue())
    except (OSError, RunError):
        pass
