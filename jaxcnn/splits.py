"""A dataset held in memory: its containers, and the one stratified split every loader shares.

Conventions, fixed here for the whole library:
  - images are NHWC ``(N, H, W, C)`` float32 in ``[0, 1]`` (``C = 1`` for greyscale);
  - labels are ``(N,)`` int32 class indices;
  - a dataset is ``Splits(train, test, class_names)``, each split a ``Split(images, labels)``.

This module is NumPy only: it imports no JAX (scikit-learn only inside :func:`train_val_split`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, overload

import numpy as np

__all__ = ["DatasetInfo", "Split", "Splits", "train_val_split"]


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


def train_val_split(split: Split, val_fraction: float, *, seed: int) -> tuple[Split, Split]:
    """Split ``split`` into ``(train, val)``, stratified by label and reproducible by ``seed``.

    ``val_fraction`` in (0, 1) is the share of samples that go to ``val``: scikit-learn's
    ``train_test_split(..., stratify=labels, random_state=seed)``, so it takes
    ``ceil(val_fraction * N)`` samples and needs at least two per class and one per class on
    each side.

    >>> from jaxcnn.data import load
    >>> train, val = train_val_split(load("digits").train, 0.1, seed=0)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"train_val_split: val_fraction={val_fraction!r} but it must lie strictly between "
            f"0 and 1; pass e.g. 0.1."
        )
    # Imported here: scikit-learn is slow to import and only splitting needs it.
    from sklearn.model_selection import train_test_split

    images, labels = split
    try:
        x, xv, y, yv = train_test_split(
            images, labels, test_size=val_fraction, stratify=labels, random_state=seed
        )
    except ValueError as e:
        raise ValueError(
            f"train_val_split: cannot stratify {len(labels)} samples with "
            f"val_fraction={val_fraction!r} ({e}); use a larger split or val_fraction."
        ) from e
    return Split(x, y), Split(xv, yv)
