"""Tests of jaxcnn.data against independent references: the real MNIST / Fashion-MNIST files and
their published facts, scikit-learn's digits, hand-built IDX and CIFAR-10 files, and NumPy."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import http.client
import io
import os
import pickle
import re
import struct
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import data
from jaxcnn.errors import ChecksumError, DataError, DatasetNotFoundError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The table in shared/data/README.md (the publishers' md5 sums), typed in independently.
PUBLISHED_MD5 = {
    ("mnist", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("mnist", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("mnist", "t10k-images-idx3-ubyte.gz"): "9fb629c4189551a2d022fa330f9573f3",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ec29112dd5afa0611ce80d1b7f02629c",
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): "25c81989df183df01b3e8a0aad5dffbe",
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): "bef4ecab320f06d8554ea6380940ec79",
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def _real_data_dir() -> Path | None:
    env = os.environ.get("JAXCNN_TEST_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return folder if (folder / "mnist" / IDX_FILES[0]).is_file() else None


REAL = _real_data_dir()
needs_real = pytest.mark.skipif(
    REAL is None,
    reason="../shared/data not found (set JAXCNN_TEST_DATA to the folder holding mnist/ and "
    "fashion_mnist/)",
)


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's JAXCNN_DATA or writes to the real cache."""
    monkeypatch.delenv("JAXCNN_DATA", raising=False)
    monkeypatch.setenv("JAXCNN_CACHE", str(tmp_path / "default-cache"))


# ---------------------------------------------------------------------------------------------
# Real MNIST / Fashion-MNIST, loaded once per module


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    if REAL is None:
        pytest.skip("../shared/data not found: real MNIST files are unavailable")
    cache = tmp_path_factory.mktemp("empty-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("JAXCNN_DATA", raising=False)
        return data.load("mnist", data_dir=REAL, download=False, cache_dir=cache)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if REAL is None:
        pytest.skip("../shared/data not found: real Fashion-MNIST files are unavailable")
    cache = tmp_path_factory.mktemp("empty-cache")
    with pytest.MonkeyPatch.context() as mp:  # found through the environment variable this time
        mp.setenv("JAXCNN_DATA", str(REAL))
        return data.load("fashion_mnist", download=False, cache_dir=cache)


@needs_real
def test_real_files_match_published_md5():
    for (name, filename), md5 in PUBLISHED_MD5.items():
        assert _md5((REAL / name / filename).read_bytes()) == md5, (name, filename)
        assert data.CHECKSUMS[(name, filename)] == md5
    assert data.CHECKSUMS[("cifar10", "cifar-10-python.tar.gz")] == CIFAR_MD5


def _check_real(splits, mean, std, train_counts, test_counts, first_train, first_test):
    (x, y), (xt, yt) = splits
    assert splits.train.images is x
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert x.dtype == xt.dtype == np.float32 and y.dtype == yt.dtype == np.int32
    for images in (x, xt):
        assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(y, minlength=10).tolist() == train_counts
    assert np.bincount(yt, minlength=10).tolist() == test_counts
    assert y[:3].tolist() == first_train and yt[:3].tolist() == first_test
    # The normalisation constants every MNIST / Fashion-MNIST tutorial quotes.
    m, s = data.channel_stats(x)
    np.testing.assert_allclose(m, [mean], atol=1e-4)
    np.testing.assert_allclose(s, [std], atol=1e-4)


def test_mnist_real(mnist):
    _check_real(
        mnist,
        mean=0.1307,
        std=0.3081,
        train_counts=[5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        test_counts=[980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        first_train=[5, 0, 4],
        first_test=[7, 2, 1],
    )


def test_fashion_mnist_real(fashion):
    _check_real(
        fashion,
        mean=0.2860,
        std=0.3530,
        train_counts=[6000] * 10,
        test_counts=[1000] * 10,
        first_train=[9, 0, 0],
        first_test=[9, 2, 1],
    )
    assert data.info("fashion_mnist").class_names[fashion.train.labels[0]] == "Ankle boot"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_pixels_match_raw_bytes(name, mnist, fashion):
    """Every test-set pixel equals its byte in the file, read with a few lines of NumPy."""
    splits = {"mnist": mnist, "fashion_mnist": fashion}[name]
    raw = gzip.decompress((REAL / name / "t10k-images-idx3-ubyte.gz").read_bytes())
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(10000, 28, 28)
    np.testing.assert_array_equal(np.rint(splits.test.images[..., 0] * 255), pixels)
    raw = gzip.decompress((REAL / name / "train-labels-idx1-ubyte.gz").read_bytes())
    np.testing.assert_array_equal(splits.train.labels, np.frombuffer(raw, np.uint8, offset=8))


# ---------------------------------------------------------------------------------------------
# Small hand-built IDX files


def _idx(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x800 + arr.ndim if magic is None else magic
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def _write_mnist(folder: Path, monkeypatch, *, n=(5, 3), seed=0, **overrides) -> dict:
    """Write four small valid MNIST-format files into ``folder`` and accept their md5.

    ``overrides`` maps a file name to the bytes to write instead (their md5 is accepted too).
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, count in zip(("train", "t10k"), n, strict=True):
        arrays[f"{prefix}-images-idx3-ubyte.gz"] = rng.integers(0, 256, (count, 28, 28))
        arrays[f"{prefix}-labels-idx1-ubyte.gz"] = rng.integers(0, 10, count)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, arr in arrays.items():
        payload = overrides.get(filename, gzip.compress(_idx(arr)))
        (folder / filename).write_bytes(payload)
        monkeypatch.setitem(data.CHECKSUMS, ("mnist", filename), _md5(payload))
    return arrays


def test_read_idx_bytes_and_path(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    raw = _idx(arr)
    np.testing.assert_array_equal(data.read_idx(raw), arr)
    np.testing.assert_array_equal(data.read_idx(gzip.compress(raw), magic=0x803), arr)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    out = data.read_idx(tmp_path / "a.gz")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and out.flags.writeable
    # A wider type: big-endian int32 in the file, native values out.
    wide = struct.pack(">I1I", 0x0C01, 2) + np.array([-7, 70000], ">i4").tobytes()
    assert data.read_idx(wide).tolist() == [-7, 70000]


def test_read_idx_gzip_cut_short():
    packed = gzip.compress(_idx(np.ones((4, 28, 28))))
    for cut in (len(packed) // 2, len(packed) - 4):
        with pytest.raises(DataError, match=r"gzip stream that ends early .* truncated"):
            data.read_idx(packed[:cut])


def test_read_idx_payload_shorter_than_header_promises():
    raw = _idx(np.ones((4, 28, 28)))
    with pytest.raises(DataError, match=r"has 3131 data bytes but its header promises 3136"):
        data.read_idx(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match=r"fewer than its 16-byte header"):
        data.read_idx(raw[:10])
    with pytest.raises(DataError, match=r"followed by unexpected extra bytes"):
        data.read_idx(raw + b"\0")


def test_read_idx_wrong_magic():
    labels = _idx(np.arange(10))
    with pytest.raises(DataError, match=r"magic number 0x00000801 but 0x00000803 is needed"):
        data.read_idx(labels, magic=0x803)
    with pytest.raises(DataError, match=r"magic number 0x89504e47, which is not IDX"):
        data.read_idx(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError, match=r"not a valid gzip stream"):
        data.read_idx(b"\x1f\x8b" + bytes(30))


def test_load_small_mnist_pixels_and_layouts(tmp_path, monkeypatch):
    arrays = _write_mnist(tmp_path / "a" / "mnist", monkeypatch)
    splits = data.load("mnist", data_dir=tmp_path / "a", download=False)
    (x, y), (xt, yt) = splits
    assert x.shape == (5, 28, 28, 1) and xt.shape == (3, 28, 28, 1)
    assert splits.class_names == tuple("0123456789")
    # Pixel (i, h, w) of the file is images[i, h, w, 0] == byte / 255.
    src = arrays["train-images-idx3-ubyte.gz"]
    assert x[2, 3, 17, 0] == np.float32(src[2, 3, 17]) / np.float32(255)
    np.testing.assert_array_equal(np.rint(x[..., 0] * 255), src)
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte.gz"])

    # data_dir wins over $JAXCNN_DATA; the flat layout <folder>/<file> works too.
    other = _write_mnist(tmp_path / "b", monkeypatch, n=(4, 2), seed=1)
    monkeypatch.setenv("JAXCNN_DATA", str(tmp_path / "b"))
    (x, y), _ = data.load("mnist", download=False)
    np.testing.assert_array_equal(y, other["train-labels-idx1-ubyte.gz"])
    # ...and the cache (here from $JAXCNN_CACHE) is looked in last.
    monkeypatch.delenv("JAXCNN_DATA")
    cached = _write_mnist(tmp_path / "default-cache" / "mnist", monkeypatch, n=(6, 1), seed=2)
    (x, y), _ = data.load("mnist", download=False)
    np.testing.assert_array_equal(y, cached["train-labels-idx1-ubyte.gz"])


def test_flat_folder_of_the_other_dataset_is_skipped(tmp_path, monkeypatch):
    """MNIST and Fashion-MNIST share file names: a flat MNIST folder is no corrupt Fashion-MNIST."""
    _write_mnist(tmp_path / "flat", monkeypatch)
    monkeypatch.setenv("JAXCNN_DATA", str(tmp_path / "flat"))
    flat = re.escape(str(tmp_path / "flat" / IDX_FILES[0]))
    with pytest.raises(DatasetNotFoundError, match=rf"{flat} \(holds the mnist file\)"):
        data.load("fashion_mnist", cache_dir=tmp_path / "cache", download=False)
    assert data.load("mnist", download=False).train.images.shape == (5, 28, 28, 1)


def test_load_truncated_file_is_data_error(tmp_path, monkeypatch):
    short = gzip.compress(_idx(np.ones((5, 28, 28)))[:-100])
    _write_mnist(tmp_path / "mnist", monkeypatch, **{"train-images-idx3-ubyte.gz": short})
    with pytest.raises(DataError, match=r"train-images.*header promises 3920 for shape"):
        data.load("mnist", data_dir=tmp_path, download=False)


def test_load_swapped_files_is_magic_error(tmp_path, monkeypatch):
    labels = gzip.compress(_idx(np.arange(5)))
    _write_mnist(tmp_path / "mnist", monkeypatch, **{"train-images-idx3-ubyte.gz": labels})
    with pytest.raises(DataError, match=r"magic number 0x00000801 but 0x00000803 is needed"):
        data.load("mnist", data_dir=tmp_path, download=False)


def test_load_count_mismatch_is_data_error(tmp_path, monkeypatch):
    six = gzip.compress(_idx(np.arange(6)))
    _write_mnist(tmp_path / "mnist", monkeypatch, **{"train-labels-idx1-ubyte.gz": six})
    with pytest.raises(
        DataError, match=r"train-images\S* holds 5 images but .*train-labels\S* holds 6 labels"
    ):
        data.load("mnist", data_dir=tmp_path, download=False)


def test_load_bad_label_value_is_data_error(tmp_path, monkeypatch):
    bad = gzip.compress(_idx(np.array([0, 1, 2, 3, 12])))
    _write_mnist(tmp_path / "mnist", monkeypatch, **{"train-labels-idx1-ubyte.gz": bad})
    with pytest.raises(DataError, match=r"labels from 0 to 12 but they must lie in 0\.\.9"):
        data.load("mnist", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# Checksums


@needs_real
def test_checksum_mismatch_real_file_in_data_dir(tmp_path, monkeypatch):
    name = "t10k-labels-idx1-ubyte.gz"
    flipped = bytearray((REAL / "mnist" / name).read_bytes())
    flipped[100] ^= 0xFF
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / name).write_bytes(flipped)
    monkeypatch.setenv("JAXCNN_DATA", str(REAL))  # the other three files come from here
    pattern = rf"{re.escape(str(tmp_path / 'mnist' / name))} has md5 {_md5(flipped)} but the "
    pattern += r"published md5 is ec29112dd5afa0611ce80d1b7f02629c.*not used"
    with pytest.raises(ChecksumError, match=pattern):
        data.load("mnist", data_dir=tmp_path, download=False)
    assert (tmp_path / "mnist" / name).read_bytes() == flipped  # the user's file is untouched


def test_checksum_mismatch_in_cache_deletes_the_copy(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _write_mnist(cache / "mnist", monkeypatch)
    bad = cache / "mnist" / "train-labels-idx1-ubyte.gz"
    good_md5 = data.CHECKSUMS[("mnist", bad.name)]
    flipped = bytearray(bad.read_bytes())
    flipped[-1] ^= 1
    bad.write_bytes(flipped)
    with pytest.raises(ChecksumError, match=rf"md5 {_md5(flipped)} .* md5 is {good_md5}.*deleted"):
        data.load("mnist", cache_dir=cache, download=False)
    assert not bad.exists()


def test_cifar10_wrong_archive_is_checksum_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match=rf"md5 {_md5(b'not the archive')} .* {CIFAR_MD5}"):
        data.load("cifar10", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# Missing files, offline, downloading


def _places(tmp_path: Path, name: str, filename: str) -> list[Path]:
    return [tmp_path / p / sub for p in "abc" for sub in (f"{name}/{filename}", filename)]


def test_missing_offline_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_DATA", str(tmp_path / "b"))
    with pytest.raises(DatasetNotFoundError, match=r"download=False; .*set JAXCNN_DATA") as e:
        data.load("mnist", data_dir=tmp_path / "a", cache_dir=tmp_path / "c", download=False)
    assert isinstance(e.value, FileNotFoundError)
    for place in _places(tmp_path, "mnist", "train-images-idx3-ubyte.gz"):
        assert str(place) in str(e.value)


def test_missing_and_network_down_lists_places_and_urls(tmp_path, monkeypatch):
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("JAXCNN_DATA", str(tmp_path / "b"))
    f = "train-images-idx3-ubyte.gz"
    with pytest.raises(DatasetNotFoundError, match=r"downloading it failed .*URLError") as e:
        data.load("mnist", data_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    for place in _places(tmp_path, "mnist", f):
        assert str(place) in str(e.value)
    mirrors = [
        f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}",
        f"http://yann.lecun.com/exdb/mnist/{f}",
    ]
    assert tried == mirrors
    assert all(url in str(e.value) for url in mirrors)
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]


class _Response(io.BytesIO):
    """A urlopen response serving ``payload``; raises after ``fail_after`` bytes if given."""

    def __init__(self, payload: bytes, fail_after: int | None = None, error=None) -> None:
        super().__init__(payload)
        self.fail_after, self.error = fail_after, error

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise self.error
        n = 1000 if n is None or n < 0 else min(n, 1000)  # small pieces, like a socket
        return super().read(n)


@needs_real
def test_download_into_cache_then_load_from_it(tmp_path, monkeypatch, mnist):
    tried = []

    def mirror(url, *args, **kwargs):
        tried.append(url)
        if "ossci" in url:  # the first mirror is down: the second must be tried
            raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, None)
        return _Response((REAL / "mnist" / url.rsplit("/", 1)[-1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", mirror)
    cache = tmp_path / "cache"
    (x, y), (xt, yt) = data.load("mnist", cache_dir=cache)
    assert len(tried) == 8 and tried[1] == "http://yann.lecun.com/exdb/mnist/" + IDX_FILES[0]
    np.testing.assert_array_equal(y, mnist.train.labels)
    np.testing.assert_array_equal(xt, mnist.test.images)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(IDX_FILES)
    for f in IDX_FILES:
        assert _md5((cache / "mnist" / f).read_bytes()) == PUBLISHED_MD5[("mnist", f)]

    # The second call reads the cache and never touches the network.
    monkeypatch.setattr(urllib.request, "urlopen", pytest.fail)
    np.testing.assert_array_equal(data.load("mnist", cache_dir=cache).train.labels, y)


@pytest.mark.parametrize(
    "error", [ConnectionResetError("reset by peer"), http.client.IncompleteRead(b"x" * 2000, 3000)]
)
def test_partial_download_leaves_nothing(tmp_path, monkeypatch, error):
    payload = os.urandom(5000)  # only its md5 matters: the download fails before any parsing
    monkeypatch.setitem(data.CHECKSUMS, ("mnist", IDX_FILES[0]), _md5(payload))
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, **kw: _Response(payload, 2000, error)
    )
    kind = type(error).__name__
    with pytest.raises(DatasetNotFoundError, match=rf"{IDX_FILES[0]} .*failed with {kind}"):
        data.load("mnist", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []  # no .part, no half file


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    payload = os.urandom(5000)
    monkeypatch.setitem(data.CHECKSUMS, ("mnist", IDX_FILES[0]), _md5(payload))
    short = payload[:-10]  # the server closed early but cleanly
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: _Response(short))
    with pytest.raises(ChecksumError, match=rf"gave md5 {_md5(short)} .*nothing was saved"):
        data.load("mnist", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_CACHE", str(tmp_path / "j"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.default_cache_dir() == tmp_path / "j"
    monkeypatch.delenv("JAXCNN_CACHE")
    assert data.default_cache_dir() == tmp_path / "x" / "jaxcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert data.default_cache_dir() == tmp_path / "h" / ".cache" / "jaxcnn"


# ---------------------------------------------------------------------------------------------
# CIFAR-10, on a tiny archive in the published format


def _cifar_archive(path: Path, batches: dict[str, dict]) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            blob = pickle.dumps(batch, protocol=2)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(blob)
            tar.addfile(member, io.BytesIO(blob))
    return path.read_bytes()


def test_cifar10_tiny_archive(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    batches, rows = {}, {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batches[name] = {b"batch_label": b"x", b"labels": [i, 9 - i], b"data": rows[name]}
    # One known pixel: image 1 of test_batch, row h=3, column w=17, blue channel (c=2).
    rows["test_batch"][1, 2 * 1024 + 3 * 32 + 17] = 201
    (tmp_path / "cifar10").mkdir()
    blob = _cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", batches)
    monkeypatch.setitem(data.CHECKSUMS, ("cifar10", "cifar-10-python.tar.gz"), _md5(blob))

    splits = data.load("cifar10", data_dir=tmp_path, download=False)
    (x, y), (xt, yt) = splits
    assert x.shape == (10, 32, 32, 3) and xt.shape == (2, 32, 32, 3)
    assert splits.class_names[0] == "airplane" and splits.class_names[9] == "truck"
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5] and yt.tolist() == [5, 4]
    assert xt[1, 3, 17, 2] == np.float32(201) / np.float32(255)
    # Any pixel: the file stores image i as 3 planes of 32 rows of 32 bytes.
    train_rows = np.concatenate([rows[f"data_batch_{k}"] for k in range(1, 6)])
    for i, h, w, c in rng.integers(0, [10, 32, 32, 3], (50, 4)):
        assert x[i, h, w, c] * 255 == pytest.approx(train_rows[i, c * 1024 + h * 32 + w])


def test_cifar10_missing_batch_is_data_error(tmp_path, monkeypatch):
    batch = {b"labels": [1], b"data": np.zeros((1, 3072), np.uint8)}
    blob = _cifar_archive(tmp_path / "cifar-10-python.tar.gz", {"data_batch_1": batch})
    monkeypatch.setitem(data.CHECKSUMS, ("cifar10", "cifar-10-python.tar.gz"), _md5(blob))
    with pytest.raises(DataError, match=r"lacks the batches data_batch_2, .*test_batch"):
        data.load("cifar10", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# Names and info


def test_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^Unknown dataset 'imagenet': it is not a built-in name "
                       r"\(digits, mnist, fashion_mnist, cifar10\) and no folder "
                       + re.escape(str(tmp_path / "imagenet")) + r" exists; .*a folder of class"):
        data.load("imagenet")
    with pytest.raises(ValueError, match=r"built-in name \(digits, .*cifar10\)"):
        data.info("MNIST")
    # A word naming an existing folder is a folder, not an unknown name.
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DataError, match="has no class subfolders"):
        data.load("imagenet")


def test_builtin_refuses_image_size():
    with pytest.raises(ValueError, match=r"image_size=32 applies to image folders only, but "
                       r"mnist is a built-in dataset of \(28, 28, 1\) images"):
        data.load("mnist", image_size=32, download=False)
    with pytest.raises(ValueError, match="applies to image folders only"):
        data.info("digits", image_size=8)


def test_info():
    assert data.info("digits") == data.DatasetInfo("digits", (8, 8, 1), 10, tuple("0123456789"))
    assert data.info("mnist").image_shape == (28, 28, 1)
    assert data.info("mnist").class_names == tuple("0123456789")
    fashion = data.info("fashion_mnist").class_names
    assert fashion == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    cifar = data.info("cifar10")
    assert cifar.image_shape == (32, 32, 3) and cifar.num_classes == 10
    assert cifar.class_names == (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        cifar.num_classes = 11


@pytest.mark.parametrize("module", ["data", "datasets", "downloads", "image_folder", "splits"])
def test_data_modules_import_no_jax_and_no_private_names(module):
    source = Path(data.__file__).with_name(f"{module}.py").read_text()
    tree = ast.parse(source)
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [n.module or "" for n in froms]
    assert imported and not [m for m in imported if m == "jax" or m.startswith("jax.")]
    # Only public names cross between jaxcnn's modules.
    private = [(n.module, a.name) for n in froms if (n.module or "").startswith("jaxcnn")
               for a in n.names if a.name.startswith("_")]
    assert not private, private
    # Pillow and scikit-learn are imported when called, never at import time.
    top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    top += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert not [m for m in top if m.split(".")[0] in ("PIL", "sklearn")], top


def test_every_old_public_name_is_still_in_data():
    for name in ("CHECKSUMS", "DATASETS", "MIRRORS", "Batch", "DatasetInfo", "Split", "Splits",
                 "batch_indices", "channel_stats", "default_cache_dir", "info", "iterate_batches",
                 "load", "normalize", "read_idx", "split_rows", "train_val_split"):
        assert name in data.__all__ and hasattr(data, name), name
    assert all(hasattr(data, name) for name in data.__all__)


# ---------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_shapes_and_values(digits):
    from sklearn.datasets import load_digits

    (x, y), (xt, yt) = digits
    assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    # Together the two splits are exactly sklearn's 1797 (image, label) pairs, scaled by 1/16.
    ref = load_digits()
    ours = np.concatenate([np.concatenate([x, xt]).reshape(-1, 64) * 16, np.c_[np.r_[y, yt]]], 1)
    theirs = np.concatenate([ref.data, ref.target[:, None]], 1)
    np.testing.assert_array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0))
    assert np.rint(ours).tolist() == ours.tolist() and len(ours) == len(theirs)


def test_digits_stratified_and_deterministic(digits):
    counts = np.bincount(np.r_[digits.train.labels, digits.test.labels])
    test_counts = np.bincount(digits.test.labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    again = data.load("digits")
    np.testing.assert_array_equal(again.train.images, digits.train.images)
    np.testing.assert_array_equal(again.test.labels, digits.test.labels)


def test_splits_unpack_as_a_pair_and_carry_class_names(digits):
    assert digits.class_names == tuple("0123456789")
    (x, y), (xt, yt) = digits
    train, test = digits
    assert train is digits.train is digits[0] is digits[-2] and test is digits.test is digits[1]
    assert x is train.images and yt is test.labels
    assert len(digits) == 2 and list(digits) == [train, test] and digits[:] == (train, test)
    with pytest.raises(IndexError):
        digits[2]
    plain = data.Splits(train, test)  # the two-argument construction still works
    assert plain.class_names is None and plain.train is train
    named = data.Splits(train, test, class_names=("a", "b"))
    assert named.class_names == ("a", "b") and len(named) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        named.class_names = ("c",)


# ---------------------------------------------------------------------------------------------
# train_val_split, channel_stats, normalize


def _id_split(n: int, seed: int = 0) -> data.Split:
    """Images whose single pixel is the sample's index; imbalanced labels 0..3."""
    labels = np.random.default_rng(seed).choice(4, n, p=[0.1, 0.2, 0.3, 0.4]).astype(np.int32)
    return data.Split(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), labels)


def test_train_val_split_stratified_disjoint_seeded():
    split = _id_split(400)
    train, val = data.train_val_split(split, 0.25, seed=3)
    assert len(val.labels) == 100 and len(train.labels) == 300
    ids = np.r_[train.images.ravel(), val.images.ravel()].astype(int)
    assert sorted(ids) == list(range(400))  # disjoint, nothing lost
    np.testing.assert_array_equal(split.labels[train.images.ravel().astype(int)], train.labels)
    counts = np.bincount(split.labels, minlength=4)
    assert np.all(np.abs(np.bincount(val.labels, minlength=4) - 0.25 * counts) <= 1)
    same = data.train_val_split(split, 0.25, seed=3)[1]
    other = data.train_val_split(split, 0.25, seed=4)[1]
    np.testing.assert_array_equal(same.images, val.images)
    assert not np.array_equal(other.images, val.images)


def test_train_val_split_is_sklearns_train_test_split():
    from sklearn.model_selection import train_test_split

    split = _id_split(300, seed=1)
    train, val = data.train_val_split(split, 0.2, seed=5)
    x, xv, y, yv = train_test_split(split.images, split.labels, test_size=0.2,
                                    stratify=split.labels, random_state=5)
    for got, want in zip((*train, *val), (x, y, xv, yv), strict=True):
        np.testing.assert_array_equal(got, want)


def test_split_rows_cache_is_read_back_without_sklearn(tmp_path, monkeypatch):
    labels = _id_split(200).labels
    want = data.split_rows(labels, 0.1, seed=2)
    got = data.split_rows(labels, 0.1, seed=2, cache=tmp_path)
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and kept[0].suffix == ".npz"
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)  # importing it now fails
    again = data.split_rows(labels, 0.1, seed=2, cache=tmp_path)
    for a, b, c in zip(want, got, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ImportError):  # another seed is not in the cache
        data.split_rows(labels, 0.1, seed=3, cache=tmp_path)
    with pytest.raises(ImportError):  # nor are other labels
        data.split_rows(labels[::-1].copy(), 0.1, seed=2, cache=tmp_path)
    with pytest.raises(ImportError):  # nor another fraction
        data.split_rows(labels, 0.2, seed=2, cache=tmp_path)
    with pytest.raises(ImportError):  # nor the same values in another dtype
        data.split_rows(labels.astype(np.int64), 0.1, seed=2, cache=tmp_path)


def test_split_rows_cache_of_soft_targets(tmp_path):
    labels = np.eye(4, dtype=np.float32)[_id_split(120).labels]  # (N, 4) one-hot
    want = data.split_rows(labels, 0.25, seed=1)
    data.split_rows(labels, 0.25, seed=1, cache=tmp_path)
    got = data.split_rows(labels, 0.25, seed=1, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    counts = np.bincount(labels[want[1]].argmax(1), minlength=4)  # stratified by class
    assert np.all(np.abs(counts - 0.25 * np.bincount(labels.argmax(1), minlength=4)) <= 1)


def test_split_rows_without_sklearns_version_keeps_no_cache(tmp_path, monkeypatch):
    from jaxcnn import splits

    def missing(name):
        raise splits.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(splits.metadata, "version", missing)
    labels = _id_split(100).labels
    got = data.split_rows(labels, 0.2, seed=0, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []
    for a, b in zip(data.split_rows(labels, 0.2, seed=0), got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_val_split_refuses_images_and_labels_of_different_lengths():
    split = _id_split(50)
    with pytest.raises(ValueError, match="50 images but 49 labels"):
        data.train_val_split(data.Split(split.images, split.labels[:49]), 0.2, seed=0)


def test_the_runner_keeps_its_split_in_the_cache(tmp_path, monkeypatch):
    from jaxcnn import components
    from jaxcnn import config as C

    monkeypatch.setenv("JAXCNN_CACHE", str(tmp_path))
    cfg = C.Config(dataset="digits", model="simple_cnn", val_fraction=0.1)
    built = components.build(cfg, None, None, None)
    kept, = (tmp_path / "splits").iterdir()
    train = data.load("digits").train
    with np.load(kept) as rows:
        np.testing.assert_array_equal(built.val.labels, train.labels[rows["val_rows"]])


@pytest.mark.parametrize("bad", ["garbage", "not a split", "rows of another size",
                                 "rows of another rank", "an npy file"])
def test_split_rows_cache_ignores_and_rewrites_a_bad_file(tmp_path, bad):
    labels = _id_split(100).labels
    want = data.split_rows(labels, 0.2, seed=0)
    data.split_rows(labels, 0.2, seed=0, cache=tmp_path)
    file, = tmp_path.iterdir()
    if bad == "garbage":
        file.write_bytes(b"not an npz file")
    elif bad == "not a split":
        np.savez(file, rows=np.zeros(80, np.int64), val_rows=np.arange(20))
    elif bad == "rows of another size":
        np.savez(file, rows=np.arange(50), val_rows=np.arange(50, 60))
    elif bad == "rows of another rank":
        np.savez(file, rows=np.arange(80).reshape(80, 1), val_rows=np.arange(80, 100))
    else:
        with open(file, "wb") as f:
            np.save(f, np.arange(100))
    got = data.split_rows(labels, 0.2, seed=0, cache=tmp_path)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    with np.load(file) as kept:  # written again
        np.testing.assert_array_equal(kept["val_rows"], want[1])


def test_split_rows_where_the_cache_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder would be")
    labels = _id_split(100).labels
    got = data.split_rows(labels, 0.2, seed=0, cache=blocker / "splits")
    for a, b in zip(data.split_rows(labels, 0.2, seed=0), got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_val_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"val_fraction=.* strictly between 0 and 1"):
        data.train_val_split(_id_split(40), fraction, seed=0)


def test_channel_stats_and_normalize():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 4, 5, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]).astype(np.float32)
    mean, std = data.channel_stats(x)
    assert mean.shape == std.shape == (3,)
    for c in range(3):
        assert mean[c] == pytest.approx(x[..., c].mean(), rel=1e-5)
        assert std[c] == pytest.approx(x[..., c].std(), rel=1e-5)
    x0 = x.copy()
    z = data.normalize(x, mean, std)
    assert z.shape == x.shape and z.dtype == np.float32
    np.testing.assert_array_equal(x, x0)  # the input is left as it was
    np.testing.assert_array_equal(z, (x0 - mean) / std)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_channel_stats_over_several_blocks_of_rows_match_float64():
    # 2**18 rows a block: 300,000 pixels of 3 channels take two, with a remainder. A large mean
    # and a small spread, where a one-pass sum of squares would lose the variance.
    rng = np.random.default_rng(1)
    x = rng.normal(1000.0, 0.01, size=(3000, 10, 10, 3)).astype(np.float32)
    mean, std = data.channel_stats(x)
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-5)
    with pytest.raises(ValueError, match="channel_stats: images is empty"):
        data.channel_stats(np.zeros((0, 2, 2, 1), np.float32))


def test_normalize_refuses_zero_std():
    x = np.ones((4, 2, 2, 2), np.float32)
    mean, std = data.channel_stats(x)
    assert std.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"std=\[0\.0, 0\.0\] .* channel \[0, 1\].*divide by zero"):
        data.normalize(x, mean, std)
    with pytest.raises(ValueError, match=r"mean has shape \(3,\) but a scalar or \(2,\)"):
        data.normalize(x, np.zeros(3), 1.0)


# ---------------------------------------------------------------------------------------------
# batch_indices, iterate_batches


def test_batch_indices_shapes_and_padding():
    rows = data.batch_indices(10, 3, seed=0, drop_remainder=False)
    assert rows.shape == (4, 3) and rows.dtype == np.int32
    assert rows[-1, 1:].tolist() == [-1, -1] and (rows[:-1] >= 0).all() and rows[-1, 0] >= 0
    assert sorted(rows[rows >= 0].tolist()) == list(range(10))
    dropped = data.batch_indices(10, 3, seed=0)
    assert dropped.shape == (3, 3)
    np.testing.assert_array_equal(dropped, rows[:3])
    assert data.batch_indices(6, 3, seed=0, drop_remainder=False).shape == (2, 3)


def test_batch_indices_order_is_seeded_per_epoch():
    a = data.batch_indices(100, 10, seed=7, epoch=3)
    np.testing.assert_array_equal(a.ravel(), np.random.default_rng([7, 3]).permutation(100))
    np.testing.assert_array_equal(a, data.batch_indices(100, 10, seed=7, epoch=3))
    assert not np.array_equal(a, data.batch_indices(100, 10, seed=7, epoch=4))
    assert not np.array_equal(a, data.batch_indices(100, 10, seed=8, epoch=3))
    plain = data.batch_indices(7, 2, seed=0, shuffle=False, drop_remainder=False)
    assert plain.tolist() == [[0, 1], [2, 3], [4, 5], [6, -1]]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 1000),
)
def test_batch_indices_each_sample_once(n, batch_size, seed, epoch):
    rows = data.batch_indices(n, batch_size, seed=seed, epoch=epoch, drop_remainder=False)
    assert rows.shape == (-(-n // batch_size), batch_size)
    assert sorted(rows[rows >= 0].tolist()) == list(range(n))
    assert (rows.ravel()[n:] == -1).all()
    if n >= batch_size:
        kept = data.batch_indices(n, batch_size, seed=seed, epoch=epoch)
        assert kept.shape == (n // batch_size, batch_size)
        assert len(set(kept.ravel().tolist())) == kept.size and kept.min() >= 0


def test_batch_indices_bad_arguments():
    with pytest.raises(ValueError, match=r"batch_size=0 but a positive int"):
        data.batch_indices(10, 0, seed=0)
    with pytest.raises(ValueError, match=r"n=5 samples make no batch of batch_size=8"):
        data.batch_indices(5, 8, seed=0)
    with pytest.raises(ValueError, match=r"seed=-1 .* must both be >= 0"):
        data.batch_indices(5, 2, seed=-1)


def test_iterate_batches_fixed_shape_mask_and_padding():
    split = data.Split(_id_split(10).images + 1, np.arange(10, dtype=np.int32) % 3 + 1)
    batches = list(data.iterate_batches(split, 4, seed=5, epoch=2, drop_remainder=False))
    assert len(batches) == 3
    rows = data.batch_indices(10, 4, seed=5, epoch=2, drop_remainder=False)
    for batch, idx in zip(batches, rows, strict=True):
        assert batch.images.shape == (4, 1, 1, 1) and batch.images.dtype == np.float32
        assert batch.labels.shape == (4,) and batch.labels.dtype == np.int32
        assert batch.mask.shape == (4,) and batch.mask.dtype == np.float32
        real = idx >= 0
        np.testing.assert_array_equal(batch.mask, real.astype(np.float32))
        np.testing.assert_array_equal(batch.images.ravel()[real], idx[real] + 1)
        np.testing.assert_array_equal(batch.labels[real], split.labels[idx[real]])
        assert (batch.images[~real] == 0).all() and (batch.labels[~real] == 0).all()
    assert sum(b.mask.sum() for b in batches) == 10
    seen = np.concatenate([b.images.ravel()[b.mask > 0] for b in batches]) - 1
    assert sorted(seen.astype(int).tolist()) == list(range(10))

    full = list(data.iterate_batches(split, 4, seed=5, epoch=2))
    assert len(full) == 2 and all(b.mask.all() for b in full)


def test_iterate_batches_validates_eagerly():
    with pytest.raises(ValueError, match=r"batch_size=0"):
        data.iterate_batches(_id_split(10), 0)  # no next() needed
    with pytest.raises(ValueError, match=r"10 images but 9 labels"):
        data.iterate_batches(data.Split(np.zeros((10, 1, 1, 1)), np.zeros(9)), 2)
