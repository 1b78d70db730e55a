"""The built-in datasets: their facts, and readers for their published file formats.

``"digits"`` (scikit-learn's bundled 8x8 digits, offline, the project's default), ``"mnist"``,
``"fashion_mnist"`` (the published gzip IDX files) and ``"cifar10"`` (the published python
archive, read without unpacking it to disk). Files are found, downloaded and md5-checked by
:mod:`jaxcnn.downloads` before anything here parses them.

This module is NumPy only: it imports no JAX and knows nothing of training.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.downloads import fetch, search_dirs
from jaxcnn.errors import DataError, DatasetNotFoundError
from jaxcnn.splits import DatasetInfo, Split, Splits, train_val_split

__all__ = ["DATASETS", "builtin_info", "load_builtin", "load_digits", "read_idx"]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

_DIGITS_TEST_SIZE = 0.2
_DIGITS_SEED = 0

# IDX element type codes (third magic byte) -> big-endian NumPy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801

_DIGIT_NAMES = tuple(str(i) for i in range(10))
_INFO = {
    "digits": DatasetInfo("digits", (8, 8, 1), 10, _DIGIT_NAMES),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, _DIGIT_NAMES),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        (28, 28, 1),
        10,
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (32, 32, 3),
        10,
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


def builtin_info(name: str) -> DatasetInfo:
    """Shape, class count and class names of built-in dataset ``name``, without loading it.

    >>> builtin_info("cifar10").image_shape
    (32, 32, 3)
    """
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; valid names are {', '.join(DATASETS)}, so pass one of them."
        )
    return _INFO[name]


def load_builtin(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Splits:
    """Load built-in dataset ``name`` as ``Splits(train, test, class_names)``.

    ``"digits"`` is bundled with scikit-learn and ignores the path arguments. Other datasets
    are looked for in ``data_dir``, ``$JAXCNN_DATA`` and the cache, downloaded into the cache
    when missing and ``download`` is true, and always checked against their md5 first.

    Raises ValueError (unknown name), DatasetNotFoundError (nowhere and not downloadable),
    ChecksumError (wrong md5) or DataError (corrupt, truncated or malformed content).
    """
    class_names = builtin_info(name).class_names
    if name == "digits":
        train, test = load_digits()
        return Splits(train, test, class_names)
    dirs = search_dirs(data_dir, cache_dir)
    if name == "cifar10":
        train, test = _load_cifar10(*fetch(name, _CIFAR_ARCHIVE, dirs, download=download))
        return Splits(train, test, class_names)
    # Fetch (and checksum) all four files before parsing any, so a bad file fails fast.
    raw = {f: fetch(name, f, dirs, download=download) for f in _IDX_FILES}
    return Splits(_idx_split(name, raw, "train"), _idx_split(name, raw, "t10k"), class_names)


def load_digits() -> Splits:
    """scikit-learn's 1,797 digits, 8x8 scaled from 0..16 to [0, 1], split 80/20 stratified with
    a fixed seed (the same split on every call): 1,437 train, 360 test images."""
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    labels = bunch.target.astype(np.int32)
    train, test = train_val_split(Split(images, labels), _DIGITS_TEST_SIZE, seed=_DIGITS_SEED)
    return Splits(train, test, _DIGIT_NAMES)


# ----------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def read_idx(source: str | os.PathLike[str] | bytes, *, magic: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) into an array of its declared shape.

    ``source`` is a path or the file's bytes. ``magic``, when given, is the exact magic number
    required (``0x00000803`` for uint8 images (N, H, W), ``0x00000801`` for uint8 labels (N,)).
    Raises DataError for a truncated or corrupt gzip stream, an unknown or unexpected magic
    number, or a payload shorter or longer than the header promises: never a short array.

    >>> read_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3])).tolist()
    [7, 3]
    """
    if isinstance(source, bytes | bytearray):
        return _read_idx(bytes(source), "IDX bytes", magic)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"IDX file {source} does not exist; pass the path of an IDX "
                                   f"file or its bytes.") from None
    return _read_idx(raw, f"IDX file {source}", magic)


def _read_idx(data: bytes, where: str, magic: int | None) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except EOFError as e:
            raise DataError(
                f"{where} is a gzip stream that ends early ({e}), so the file is truncated; "
                f"download or copy it again."
            ) from e
        except (OSError, zlib.error) as e:
            raise DataError(
                f"{where} is not a valid gzip stream ({e}); download or copy it again."
            ) from e

    if len(data) < 4:
        raise DataError(
            f"{where} holds {len(data)} bytes, fewer than the 4-byte IDX magic number; "
            f"the file is truncated or not IDX, so download or copy it again."
        )
    found = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{where} starts with magic number 0x{found:08x}, which is not IDX (it needs "
            f"0x0000TTDD with a known type TT and DD >= 1 dimensions); pass an IDX file."
        )
    if magic is not None and found != magic:
        raise DataError(
            f"{where} has IDX magic number 0x{found:08x} but 0x{magic:08x} is needed here; "
            f"check that the right file (images or labels) is in this place."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{where} holds {len(data)} bytes, fewer than its {header}-byte header for {ndim} "
            f"dimensions; the file is truncated, so download or copy it again."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have != need:
        kind = "truncated" if have < need else "followed by unexpected extra bytes"
        raise DataError(
            f"{where} has {have} data bytes but its header promises {need} for shape {shape}, "
            f"so it is {kind}; download or copy it again."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _idx_split(name: str, raw: dict[str, tuple[Path, bytes]], prefix: str) -> Split:
    img_path, img_bytes = raw[f"{prefix}-images-idx3-ubyte.gz"]
    lbl_path, lbl_bytes = raw[f"{prefix}-labels-idx1-ubyte.gz"]
    img_file, lbl_file = f"{name} file {img_path}", f"{name} file {lbl_path}"
    images = _read_idx(img_bytes, img_file, _IDX_IMAGES_MAGIC)
    labels = _read_idx(lbl_bytes, lbl_file, _IDX_LABELS_MAGIC)
    h, w, _ = _INFO[name].image_shape
    if images.shape[1:] != (h, w):
        raise DataError(
            f"{img_file} holds images of {images.shape[1]}x{images.shape[2]} pixels but "
            f"{h}x{w} are needed; use the original {name} file."
        )
    if len(images) != len(labels):
        raise DataError(
            f"{img_file} holds {len(images)} images but {lbl_file} holds {len(labels)} labels, "
            f"and the counts must match; use the original pair of files."
        )
    _check_labels(name, lbl_file, labels)
    x = images.astype(np.float32)
    x /= 255.0
    return Split(x[..., None], labels.astype(np.int32))


def _check_labels(name: str, where: str, labels: np.ndarray) -> None:
    k = _INFO[name].num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise DataError(
            f"{where} holds labels from {labels.min()} to {labels.max()} but they must "
            f"lie in 0..{k - 1}; use the original {name} file."
        )


# ----------------------------------------------------------------------------------------------
# CIFAR-10


def _load_cifar10(path: Path, archive: bytes) -> tuple[Split, Split]:
    # The batches are Python 2 pickles; they are unpickled only after the archive's md5 matched.
    names = [f"data_batch_{i}" for i in range(1, 6)]
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in (*names, "test_batch"):
                    f = tar.extractfile(member)
                    if f is None:  # cannot happen for a regular file; keeps the type checker calm
                        continue
                    found[base] = _cifar_batch(base, pickle.load(f, encoding="bytes"))
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as e:
        raise DataError(
            f"cifar10 archive {path} cannot be read ({type(e).__name__}: {e}); download it again."
        ) from e
    missing = [n for n in (*names, "test_batch") if n not in found]
    if missing:
        raise DataError(
            f"cifar10 archive {path} lacks the batches {', '.join(missing)}, which "
            f"are needed; use the original archive."
        )
    train = [found[n] for n in names]
    return (
        Split(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        Split(*found["test_batch"]),
    )


def _cifar_batch(base: str, batch: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(
            f"cifar10 batch {base} is not a dict with b'data' and b'labels'; "
            f"use the original archive."
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"cifar10 batch {base} holds data of shape {data.shape} and dtype {data.dtype} but "
            f"(N, 3072) uint8 is needed; use the original archive."
        )
    if labels.shape != (len(data),):
        raise DataError(
            f"cifar10 batch {base} holds {len(data)} images but labels of shape {labels.shape}, "
            f"and one label per image is needed; use the original archive."
        )
    _check_labels("cifar10", f"cifar10 batch {base}", labels)
    # Rows are channel-major (1024 red, 1024 green, 1024 blue, each row-major 32x32): CHW -> HWC.
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32)
    x /= 255.0
    return x, labels.astype(np.int32)
