"""Datasets of the user's own images: a folder holding one subfolder of PNG or JPEG files per class.

Two layouts are read:
  - ``<folder>/<class>/<image>``: split here into train and test, stratified by class, holding
    out ``test_fraction`` of every class with the fixed seed :data:`SPLIT_SEED` (independent of
    any run's seed, so every run tests on the same images);
  - ``<folder>/train/<class>/<image>`` and ``<folder>/test/<class>/<image>``, used as given when
    both ``train/`` and ``test/`` exist (other subfolders beside them, such as ``val/``, are
    ignored); both must hold the same classes.

Class names are the class folders' names, sorted (Python string order); label ``i`` is the
``i``-th name. A class's images are the files directly in its folder whose suffix is ``.png``,
``.jpg`` or ``.jpeg`` in any case, in sorted name order; other files, deeper folders and names
starting with ``.`` (hidden files and folders, macOS ``._`` copies) are skipped. Each split keeps
that order: class by class, file by file.

Pixels come out as stored, float32 NHWC in [0, 1]: a grey image (Pillow modes ``1``, ``L``,
``LA``, and 16-bit ``I;16``/``I``, scaled by 1/65535) has one channel, any other (``RGB``, and
``RGBA``, ``P``, ``CMYK``, ... converted to RGB, alpha dropped) three. If a dataset mixes grey and
colour images, the grey ones become RGB (the grey value in every channel), so all have three
channels. All images must share one height and width unless ``image_size`` is given, which
resizes every image to it with Pillow's bilinear filter (antialiased when shrinking).

This module is NumPy only: it imports no JAX, and imports Pillow and scikit-learn when called.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxcnn.datasets import DATASETS
from jaxcnn.errors import DataError, DatasetNotFoundError
from jaxcnn.splits import DatasetInfo, Split, Splits, split_rows

__all__ = ["IMAGE_EXTENSIONS", "LAYOUT", "SPLIT_SEED", "folder_info", "load_folder"]

#: Suffixes (compared in lower case) of the files read as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: The seed of the stratified train/test split of a folder without ``train/`` and ``test/``.
SPLIT_SEED = 0
#: The layout an image folder needs, as error messages spell it.
LAYOUT = "<folder>/<class>/<image>.png"

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_16BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_MAX_THREADS = 16


class _Image(NamedTuple):
    path: Path
    label: int
    grey: bool
    size: tuple[int, int]  # (H, W) as stored


class _Scan(NamedTuple):
    root: Path
    class_names: tuple[str, ...]
    train: list[_Image]
    test: list[_Image] | None  # None: split here
    shape: tuple[int, int, int]  # (H, W, C) after resizing and channel conversion


def load_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int] | None = None,
    test_fraction: float = 0.2,
) -> Splits:
    """Read the images under ``path`` as ``Splits(train, test, class_names)``.

    images (N, H, W, C) float32 in [0, 1], labels (N,) int32 indices into the sorted class
    names. ``image_size`` (an int for square, or ``(H, W)``) resizes every image; without it all
    images must have the same size. ``test_fraction`` is the share of each class held out as test
    when the folder has no ``train/`` and ``test/`` subfolders (otherwise it is unused).
    See the module docstring for the layouts and how pixels are converted.

    Raises DatasetNotFoundError (no such path), DataError (not a folder, no or one class, an
    empty class folder, train/ and test/ with different classes, an unreadable image, sizes that
    differ, a class too small to split) or ValueError (a bad ``image_size`` or ``test_fraction``).

    >>> (x, y), (xt, yt) = load_folder("flowers", image_size=64)  # doctest: +SKIP
    """
    if not (isinstance(test_fraction, float | int) and not isinstance(test_fraction, bool)
            and 0.0 < test_fraction < 1.0):
        raise ValueError(
            f"test_fraction={test_fraction!r} but it must lie strictly between 0 and 1; "
            f"pass e.g. 0.2."
        )
    scan = _scan(path, image_size)
    if scan.test is not None:
        train, test = _read_all(scan.train, scan.shape), _read_all(scan.test, scan.shape)
        return Splits(train, test, scan.class_names)
    labels = np.array([im.label for im in scan.train], dtype=np.int32)
    _check_stratifiable(scan, labels, test_fraction)
    rows, test_rows = split_rows(labels, test_fraction, seed=SPLIT_SEED)
    # Each split back in file order (class by class, sorted names), whatever the shuffle was.
    train = _read_all([scan.train[i] for i in np.sort(rows)], scan.shape)
    test = _read_all([scan.train[i] for i in np.sort(test_rows)], scan.shape)
    return Splits(train, test, scan.class_names)


def folder_info(
    path: str | os.PathLike[str], *, image_size: int | tuple[int, int] | None = None
) -> DatasetInfo:
    """Shape, class count and class names of the image folder ``path``, as :func:`load_folder`
    would give them; ``name`` is ``path`` as a string.

    It lists the class folders and reads every image's header (mode and size), not its pixels,
    so it checks the layout, the sizes and the channels but not that every image decodes.
    """
    scan = _scan(path, image_size)
    return DatasetInfo(os.fspath(path), scan.shape, len(scan.class_names), scan.class_names)


# ----------------------------------------------------------------------------------------------
# Finding the images


def _scan(path: str | os.PathLike[str], image_size: int | tuple[int, int] | None) -> _Scan:
    size = _check_image_size(image_size)
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist; pass the path of a folder of class subfolders "
            f"of images ({LAYOUT}) or one of the built-in dataset names {', '.join(DATASETS)}."
        )
    if not root.is_dir():
        raise DataError(
            f"image folder {root} is a file, not a folder; pass the path of a folder of class "
            f"subfolders of images ({LAYOUT}) or one of the built-in dataset names "
            f"{', '.join(DATASETS)}."
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_classes, test_classes = _class_folders(root / "train"), _class_folders(root / "test")
        names = [d.name for d in train_classes]
        if names != [d.name for d in test_classes]:
            only_train = sorted(set(names) - {d.name for d in test_classes})
            only_test = sorted({d.name for d in test_classes} - set(names))
            raise DataError(
                f"image folder {root} has train/ and test/ with different class folders (only in "
                f"train/: {only_train}; only in test/: {only_test}); give both the same classes."
            )
        _check_two_classes(root, names)
        train = _images(train_classes, split_layout=True)
        test: list[_Image] | None = _images(test_classes, split_layout=True)
    else:
        classes = _class_folders(root)
        names = [d.name for d in classes]
        _check_two_classes(root, names)
        train, test = _images(classes, split_layout=False), None
    every = train + (test or [])
    if size is None:
        first = every[0]
        for im in every:
            if im.size != first.size:
                raise DataError(
                    f"image file {im.path} is {im.size[0]}x{im.size[1]} (HxW) but "
                    f"{first.path} is {first.size[0]}x{first.size[1]}; pass image_size=(H, W) "
                    f"(or an int for square images) to resize them all to one size."
                )
        size = first.size
    channels = 1 if all(im.grey for im in every) else 3
    return _Scan(root, tuple(names), train, test, (*size, channels))


def _check_image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    pair = (image_size, image_size) if _positive_int(image_size) else image_size
    if (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
            and all(_positive_int(v) for v in pair)):
        return int(pair[0]), int(pair[1])
    raise ValueError(
        f"image_size={image_size!r} but a positive int or an (H, W) pair of positive ints is "
        f"needed; pass e.g. 32 or (32, 48)."
    )


def _positive_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_folders(folder: Path) -> list[Path]:
    classes = sorted((d for d in folder.iterdir() if d.is_dir() and _visible(d)),
                     key=lambda d: d.name)
    if not classes:
        raise DataError(
            f"image folder {folder} has no class subfolders; lay it out as {LAYOUT}, one "
            f"subfolder of images per class."
        )
    return classes


def _check_two_classes(root: Path, names: list[str]) -> None:
    if len(names) < 2:
        raise DataError(
            f"image folder {root} has one class folder ({names[0]}) but a classifier needs at "
            f"least two; add one subfolder of images per class."
        )


def _images(classes: list[Path], *, split_layout: bool) -> list[_Image]:
    out = []
    for label, folder in enumerate(classes):
        files = sorted((f for f in folder.iterdir()
                        if f.suffix.lower() in IMAGE_EXTENSIONS and _visible(f) and f.is_file()),
                       key=lambda f: f.name)
        if not files:
            # A lone train/ or test/ is a class like any other: say so, it is an easy slip.
            hint = (f" (a {folder.name}/ folder is read as a split only beside a "
                    f"{'test' if folder.name == 'train' else 'train'}/ folder)"
                    if not split_layout and folder.name in ("train", "test") else "")
            raise DataError(
                f"class folder {folder} holds no .png, .jpg or .jpeg files{hint}; add images to "
                f"it or remove it."
            )
        out += [_header(f, label) for f in files]
    return out


def _header(path: Path, label: int) -> _Image:
    """The file's mode and size, read from its header without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _Image(path, label, img.mode in _GREY_MODES, (img.height, img.width))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: Exception) -> DataError:
    return DataError(f"image file {path} cannot be read ({type(e).__name__}: {e}); replace or "
                     f"delete it.")


def _check_stratifiable(scan: _Scan, labels: np.ndarray, test_fraction: float) -> None:
    # scikit-learn's conditions, checked first so the message can name the class and the fix.
    counts = np.bincount(labels, minlength=len(scan.class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < 2:
        raise DataError(
            f"image folder {scan.root}: class folder '{scan.class_names[smallest]}' holds "
            f"{counts[smallest]} image, too few for a stratified test split (every class needs "
            f"at least 2); add images to it, or lay the folder out as train/<class>/ and "
            f"test/<class>/."
        )
    n, k = len(labels), len(scan.class_names)
    n_test = math.ceil(test_fraction * n)
    if n_test < k or n - n_test < k:
        raise DataError(
            f"image folder {scan.root}: test_fraction={test_fraction!r} of its {n} images gives "
            f"{n_test} test and {n - n_test} train images for {k} classes, but a stratified "
            f"split needs at least as many test and as many train images as classes; change "
            f"test_fraction, add images, or lay the folder out as train/<class>/ and "
            f"test/<class>/."
        )


# ----------------------------------------------------------------------------------------------
# Reading the pixels


def _read_all(images: list[_Image], shape: tuple[int, int, int]) -> Split:
    """Decode ``images`` into one (N, H, W, C) float32 array, several files at a time (Pillow
    decodes without the GIL), each into its own row, so the result is in the order given."""
    out = np.empty((len(images), *shape), dtype=np.float32)

    def read_into(i: int) -> None:
        out[i] = _pixels(images[i], shape)

    threads = max(1, min(_MAX_THREADS, os.cpu_count() or 1, len(images)))
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(read_into, i) for i in range(len(images))]
        try:
            for f in futures:  # in file order, so the first bad file is the one reported
                f.result()
        finally:
            for f in futures:
                f.cancel()
    return Split(out, np.array([im.label for im in images], dtype=np.int32))


def _pixels(im: _Image, shape: tuple[int, int, int]) -> np.ndarray:
    """One image as (H, W, C) float32 in [0, 1], resized to ``shape[:2]`` if it differs."""
    from PIL import Image

    h, w, c = shape
    try:
        with Image.open(im.path) as img:
            if img.mode in _16BIT_MODES:
                # Pillow's conversion to L clips 16-bit values at 255, so scale them here, and
                # resize in float (mode F) to keep the precision.
                x = np.asarray(img, dtype=np.float32) / np.float32(65535)
                if (h, w) != im.size:
                    x = np.asarray(Image.fromarray(x).resize((w, h), Image.Resampling.BILINEAR))
                x = np.clip(x, 0.0, 1.0)[..., None]
            else:
                img = img.convert("L" if im.grey else "RGB")
                if (h, w) != im.size:
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                x = np.asarray(img).astype(np.float32).reshape(h, w, -1)
                x /= np.float32(255)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise _unreadable(im.path, e) from e
    return np.repeat(x, c, axis=-1) if x.shape[-1] != c else x
