"""Finding a built-in dataset's files on disk, downloading them, and checking their md5.

Where files are looked for, in order, for each file: ``data_dir``, the folder in ``$JAXCNN_DATA``,
then the cache (``cache_dir``, else ``$JAXCNN_CACHE``, else ``$XDG_CACHE_HOME/jaxcnn``, else
``~/.cache/jaxcnn``); in each folder both ``<folder>/<name>/<file>`` and ``<folder>/<file>``.
If a file is nowhere and ``download=True`` it is downloaded into ``<cache>/<name>/``: streamed
into a hidden temporary file beside the target, checked, then renamed into place atomically, so
an interrupted download never leaves a half-written file under the real name.

Every file is checked against its published md5 (:data:`CHECKSUMS`) before it is returned. On a
mismatch the data is not used and :class:`~jaxcnn.errors.ChecksumError` is raised; a bad copy
*in the cache* (which this module owns) is deleted first, so the next call downloads it afresh,
while a bad copy in ``data_dir`` or ``$JAXCNN_DATA`` (which the user owns) is left untouched.
A file whose md5 is the *other* dataset's (MNIST and Fashion-MNIST share file names, so a flat
folder can hold either) is skipped, not reported as corrupt.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

from jaxcnn.errors import ChecksumError, DatasetNotFoundError

__all__ = ["CHECKSUMS", "MIRRORS", "SearchDirs", "default_cache_dir", "fetch", "search_dirs"]

# Tables (constants: read, never mutated; tests replace entries with monkeypatch)

#: Published md5 of every file, keyed by ``(dataset, file name)``.
CHECKSUMS: dict[tuple[str, str], str] = {
    ("mnist", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("mnist", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("mnist", "t10k-images-idx3-ubyte.gz"): "9fb629c4189551a2d022fa330f9573f3",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ec29112dd5afa0611ce80d1b7f02629c",
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): "25c81989df183df01b3e8a0aad5dffbe",
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): "bef4ecab320f06d8554ea6380940ec79",
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): "bb300cfdad3c16e7a12a480ee83cd310",
    ("cifar10", "cifar-10-python.tar.gz"): "c58f30108f718f92721af3b95e74349a",
}

#: Base URLs tried in order; a file's URL is the base followed by its name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """The download cache: ``$JAXCNN_CACHE``, else ``$XDG_CACHE_HOME/jaxcnn``, else
    ``~/.cache/jaxcnn``."""
    if os.environ.get("JAXCNN_CACHE"):
        return Path(os.environ["JAXCNN_CACHE"]).expanduser().absolute()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser().absolute() / "jaxcnn"
    return Path.home() / ".cache" / "jaxcnn"


class SearchDirs(NamedTuple):
    """Where :func:`fetch` looks: ``user`` folders (``data_dir``, ``$JAXCNN_DATA``; read only,
    never written or deleted), then the ``cache`` it owns."""

    user: tuple[Path, ...]
    cache: Path


def search_dirs(
    data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None
) -> SearchDirs:
    """The folders to search, from the arguments and the environment, made absolute."""
    user = []
    if data_dir is not None:
        user.append(Path(data_dir).expanduser().absolute())
    if os.environ.get("JAXCNN_DATA"):
        user.append(Path(os.environ["JAXCNN_DATA"]).expanduser().absolute())
    cache = (
        Path(cache_dir).expanduser().absolute() if cache_dir is not None else default_cache_dir()
    )
    return SearchDirs(tuple(user), cache)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fetch(name: str, filename: str, dirs: SearchDirs, *, download: bool) -> tuple[Path, bytes]:
    """Where dataset ``name``'s ``filename`` is and its md5-verified bytes: found on disk,
    else downloaded into ``<cache>/<name>/``.

    Raises ChecksumError (a copy whose md5 is wrong) or DatasetNotFoundError (nowhere, and
    ``download`` is false or every mirror failed).
    """
    expected = CHECKSUMS[(name, filename)]
    # MNIST and Fashion-MNIST share file names, so in a flat folder a file may be the other
    # dataset's: such a file is intact, just not this one, and the search goes on past it.
    others = {md5: n for (n, f), md5 in CHECKSUMS.items() if f == filename and n != name}
    looked: list[str] = []
    for folder, in_cache in [*((d, False) for d in dirs.user), (dirs.cache, True)]:
        for path in (folder / name / filename, folder / filename):
            looked.append(str(path))
            if not path.is_file():
                continue
            data = path.read_bytes()
            actual = _md5(data)
            if actual == expected:
                return path, data
            if actual in others:
                looked[-1] += f" (holds the {others[actual]} file)"
                continue
            if in_cache:
                path.unlink(missing_ok=True)
                fix = "it was deleted from the cache, so load again to download it afresh"
            else:
                fix = "replace it with the original file (or delete it to use another copy)"
            raise ChecksumError(
                f"{name} file {path} has md5 {actual} but the published md5 is {expected}, so it "
                f"is corrupt or not the original and was not used; {fix}."
            )

    places = ", ".join(looked)
    how = (
        f"put {filename} in one of those folders, set JAXCNN_DATA to a folder holding it, "
        f"pass data_dir=<that folder>"
    )
    if not download:
        raise DatasetNotFoundError(
            f"{name} file {filename} is in none of the places looked ({places}) and "
            f"download=False; {how}, or call load with download=True while online."
        )
    target = dirs.cache / name / filename
    return target, _download(name, filename, expected, target.parent, places, how)


def _download(
    name: str, filename: str, expected: str, target_dir: Path, places: str, how: str
) -> bytes:
    """Download ``filename`` from the mirrors into ``target_dir``, atomically, md5-checked."""
    failures: list[str] = []
    mismatches: list[str] = []
    for base in MIRRORS[name]:
        url = base + filename
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            data = _download_verified(url, target_dir / filename, expected)
        except _Mismatch as e:
            mismatches.append(f"{url} gave md5 {e.actual}")
        except (OSError, EOFError, ValueError, http.client.HTTPException) as e:
            # URLError, HTTPError, timeouts, resets, IncompleteRead, unknown URL schemes
            failures.append(f"{url} failed with {type(e).__name__}: {e}")
        else:
            return data
    if mismatches:
        raise ChecksumError(
            f"{name} file {filename} was downloaded but {'; '.join(mismatches)} instead of the "
            f"published md5 {expected}, so nothing was saved to {target_dir}; retry later, or "
            f"put the original file in data_dir or $JAXCNN_DATA."
        )
    raise DatasetNotFoundError(
        f"{name} file {filename} is in none of the places looked ({places}) and downloading it "
        f"failed ({'; '.join(failures)}); {how}, or retry when online."
    )


class _Mismatch(Exception):
    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


def _download_verified(url: str, dest: Path, expected: str) -> bytes:
    # A hidden temporary file in the destination folder, so the final rename is atomic (same
    # file system) and a crash leaves at most a ``.<name>.*.part`` file, never ``<name>``.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        buf = io.BytesIO()
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                buf.write(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise _Mismatch(digest.hexdigest())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
    return buf.getvalue()
