"""Tests of loading the user's own image folders (jaxcnn.image_folder, through jaxcnn.data.load and
jaxcnn.data.info): tiny PNG and JPEG files written here with Pillow, their pixels checked against
the arrays written (PNG is lossless), the split against scikit-learn's own feasibility rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcnn import data
from jaxcnn.errors import DataError, DatasetNotFoundError
from jaxcnn.image_folder import SPLIT_SEED

RNG = np.random.default_rng(0)


def _save(path: Path, pixels: np.ndarray, **kw) -> np.ndarray:
    """Write ``pixels`` (uint8 (H, W) grey, (H, W, 3) RGB, ...) as an image file; return them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kw)
    return pixels


def _grey(h: int = 6, w: int = 6) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _rgb(h: int = 6, w: int = 6) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(root: Path, counts: dict[str, int], make=_grey, suffix=".png") -> dict[str, list]:
    """``counts[c]`` images in ``root/c/``; returns each class's (file name, pixels), by name."""
    written = {}
    for c, n in counts.items():
        written[c] = [(f"img{i:02d}{suffix}", _save(root / c / f"img{i:02d}{suffix}", make()))
                      for i in range(n)]
    return written


def _as_float(pixels: np.ndarray) -> np.ndarray:
    """The expected values, computed in float64 and independently of the loader."""
    x = pixels.astype(np.float64) / 255.0
    return x[..., None] if x.ndim == 2 else x


def _index_of(images: np.ndarray, pixels: np.ndarray) -> int:
    """The one row of ``images`` (N, H, W, C) float32 holding ``pixels`` (uint8) / 255, to float32
    precision; fails if there is none."""
    want = _as_float(pixels)
    close = [i for i, img in enumerate(images)
             if img.shape == want.shape and np.allclose(img, want, rtol=1e-6, atol=0)]
    assert len(close) == 1, f"{len(close)} images hold the pixels written"
    return close[0]


# ---------------------------------------------------------------------------------------------
# The flat layout: values, labels, order, the split


def test_grey_png_values_labels_and_classes(tmp_path):
    # Written out of order: class names must come out sorted, label i = the i-th name.
    written = _folder(tmp_path, {"dog": 5, "bird": 5, "cat": 10})
    splits = data.load(tmp_path)
    (x, y), (xt, yt) = splits
    assert splits.class_names == ("bird", "cat", "dog")
    assert x.dtype == xt.dtype == np.float32 and y.dtype == yt.dtype == np.int32
    assert x.shape == (16, 6, 6, 1) and xt.shape == (4, 6, 6, 1)
    # Every image appears once, under its own class's label, with exactly the pixels written.
    images, labels = np.concatenate([x, xt]), np.r_[y, yt]
    rows = {(c, name): _index_of(images, px) for c in written for name, px in written[c]}
    assert sorted(rows.values()) == list(range(20))
    assert all(labels[i] == splits.class_names.index(c) for (c, _), i in rows.items())
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Each split keeps the file order: class by class, then by file name.
    order = sorted(rows, key=lambda key: rows[key])
    train_keys, test_keys = order[:16], order[16:]
    assert train_keys == sorted(train_keys) and test_keys == sorted(test_keys)


def test_split_is_stratified_and_the_same_on_every_call(tmp_path):
    _folder(tmp_path, {"a": 20, "b": 10, "c": 5})
    first = data.load(str(tmp_path))
    second = data.load(tmp_path)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    # 0.2 of each class in test: 4 of a, 2 of b, 1 of c.
    assert np.bincount(first.test.labels).tolist() == [4, 2, 1]
    assert np.bincount(first.train.labels).tolist() == [16, 8, 4]
    # No image in both splits (the pixels are random, so distinct images have distinct bytes).
    train = {img.tobytes() for img in first.train.images}
    assert not train & {img.tobytes() for img in first.test.images}
    bigger = data.load(tmp_path, test_fraction=0.4)
    assert np.bincount(bigger.test.labels).tolist() == [8, 4, 2]
    assert isinstance(SPLIT_SEED, int)


@pytest.mark.parametrize("counts,fraction", [
    ({"a": 2, "b": 2}, 0.2),        # 1 test image for 2 classes
    ({"a": 2, "b": 2}, 0.5),        # 2 test, 2 train: just enough
    ({"a": 3, "b": 2, "c": 2}, 0.3),
    ({"a": 3, "b": 2, "c": 2}, 0.45),
    ({"a": 2, "b": 2, "c": 2}, 0.9),  # 6 test, 0 train
    ({"a": 8, "b": 2}, 0.05),
    ({"a": 8, "b": 2}, 0.2),
])
def test_split_feasibility_matches_scikit_learn(tmp_path, counts, fraction):
    from sklearn.model_selection import train_test_split

    _folder(tmp_path, counts, make=lambda: _grey(2, 2))
    labels = np.repeat(np.arange(len(counts)), list(counts.values()))
    try:
        train_test_split(labels, test_size=fraction, stratify=labels, random_state=0)
        feasible = True
    except ValueError:
        feasible = False
    if feasible:
        (x, y), (xt, yt) = data.load(tmp_path, test_fraction=fraction)
        assert len(y) + len(yt) == len(labels)
        share = np.bincount(yt, minlength=len(counts)) - fraction * np.array(list(counts.values()))
        assert np.all(np.abs(share) <= 1)  # stratified: each class's share, to one image
    else:
        with pytest.raises(DataError, match="a stratified split needs at least as many test "
                                            "and as many train images as classes"):
            data.load(tmp_path, test_fraction=fraction)


def test_rgb_rgba_and_palette_become_rgb(tmp_path):
    rgb = _save(tmp_path / "a" / "rgb.png", _rgb())
    rgba = _rgb(6, 6)
    _save(tmp_path / "a" / "rgba.png", np.dstack([rgba, np.full((6, 6), 7, np.uint8)]))
    palette = Image.new("P", (6, 6))
    colours = [(10, 20, 30), (200, 100, 50), (0, 255, 128)]
    palette.putpalette([v for c in colours for v in c])
    index = RNG.integers(0, 3, (6, 6), dtype=np.uint8)
    palette.putdata(index.ravel().tolist())
    (tmp_path / "b").mkdir()
    palette.save(tmp_path / "b" / "p.png")
    _save(tmp_path / "b" / "q.png", _rgb())
    splits = data.load(tmp_path / "a" / "..", test_fraction=0.5)
    images = np.concatenate([splits.train.images, splits.test.images])
    assert images.shape == (4, 6, 6, 3)
    _index_of(images, rgb)
    _index_of(images, rgba)  # alpha dropped, colour kept
    _index_of(images, np.array(colours, np.uint8)[index])  # the palette looked up


def test_mixed_grey_and_rgb_all_become_rgb(tmp_path):
    grey = _save(tmp_path / "a" / "0.png", _grey())
    _save(tmp_path / "a" / "1.png", _rgb())
    _save(tmp_path / "b" / "0.png", _rgb())
    _save(tmp_path / "b" / "1.png", _grey())
    splits = data.load(tmp_path, test_fraction=0.5)
    images = np.concatenate([splits.train.images, splits.test.images])
    assert images.shape == (4, 6, 6, 3)
    _index_of(images, np.dstack([grey] * 3))  # the grey image, its value in every channel
    assert data.info(tmp_path).image_shape == (6, 6, 3)


def test_bilevel_grey_alpha_and_16_bit_stay_one_channel(tmp_path):
    bits = RNG.integers(0, 2, (6, 6)).astype(bool)
    _save(tmp_path / "a" / "bits.png", bits)
    la = _grey()
    _save(tmp_path / "a" / "la.png", np.dstack([la, np.zeros((6, 6), np.uint8)]))
    wide = RNG.integers(0, 65536, (6, 6), dtype=np.uint16)
    _save(tmp_path / "b" / "wide.png", wide)
    _save(tmp_path / "b" / "x.png", _grey())
    with Image.open(tmp_path / "b" / "wide.png") as img:
        assert img.mode.startswith("I")
    splits = data.load(tmp_path, test_fraction=0.5)
    images = np.concatenate([splits.train.images, splits.test.images])
    assert images.shape == (4, 6, 6, 1)
    _index_of(images, bits.astype(np.uint8) * 255)
    _index_of(images, la)  # alpha dropped
    # 16-bit grey is scaled by 1/65535, not clipped at 255 (as Pillow's conversion to L would).
    close = [img for img in images
             if np.allclose(img[..., 0], wide / 65535.0, rtol=1e-6, atol=0)]
    assert len(close) == 1


def test_jpeg_extensions_any_case_and_what_is_skipped(tmp_path):
    flat = np.full((8, 8, 3), (40, 120, 200), np.uint8)
    _save(tmp_path / "a" / "one.JPG", flat, quality=100)
    _save(tmp_path / "a" / "two.jpeg", flat, quality=100)
    _save(tmp_path / "a" / "three.PNG", flat)
    _save(tmp_path / "b" / "four.Jpeg", flat, quality=100)
    _save(tmp_path / "b" / "five.png", flat)
    # Not images, hidden, or deeper: none of them is read (the bad bytes would raise).
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "a" / "._one.JPG").write_bytes(b"AppleDouble junk")
    (tmp_path / "a" / "deeper").mkdir()
    (tmp_path / "a" / "deeper" / "x.png").write_bytes(b"junk")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "y.png").write_bytes(b"junk")
    (tmp_path / "readme.png").write_bytes(b"files beside the class folders are no class")
    splits = data.load(tmp_path, test_fraction=0.4)
    assert splits.class_names == ("a", "b")
    assert len(splits.train.labels) + len(splits.test.labels) == 5
    images = np.concatenate([splits.train.images, splits.test.images])
    np.testing.assert_allclose(images, np.broadcast_to(_as_float(flat), images.shape),
                               atol=3 / 255)


def test_grey_jpeg_is_one_channel(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2}, make=lambda: np.full((8, 8), 90, np.uint8),
            suffix=".jpg")
    (x, _), (xt, _) = data.load(tmp_path, test_fraction=0.5)
    assert x.shape == (2, 8, 8, 1) and xt.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(x, 90 / 255, atol=2 / 255)


# ---------------------------------------------------------------------------------------------
# train/ and test/


def test_train_test_layout_is_used_as_given(tmp_path):
    train = _folder(tmp_path / "train", {"b": 3, "a": 2})
    test = _folder(tmp_path / "test", {"b": 1, "a": 2})
    _save(tmp_path / "val" / "c" / "z.png", _grey())  # neither train nor test: ignored
    splits = data.load(tmp_path, test_fraction=0.9)  # unused with this layout
    (x, y), (xt, yt) = splits
    assert splits.class_names == ("a", "b")
    assert y.tolist() == [0, 0, 1, 1, 1] and yt.tolist() == [0, 0, 1]
    np.testing.assert_allclose(x, np.stack([_as_float(p) for c in ("a", "b")
                                            for _, p in train[c]]), rtol=1e-6, atol=0)
    np.testing.assert_allclose(xt, np.stack([_as_float(p) for c in ("a", "b")
                                             for _, p in test[c]]), rtol=1e-6, atol=0)
    assert data.info(tmp_path) == data.DatasetInfo(str(tmp_path), (6, 6, 1), 2, ("a", "b"))


def test_train_test_with_different_classes(tmp_path):
    _folder(tmp_path / "train", {"a": 1, "b": 1, "c": 1})
    _folder(tmp_path / "test", {"a": 1, "b": 1, "d": 1})
    with pytest.raises(DataError, match=re.escape(
            f"image folder {tmp_path} has train/ and test/ with different class folders (only "
            f"in train/: ['c']; only in test/: ['d']); give both the same classes.")):
        data.load(tmp_path)


def test_a_lone_train_folder_is_a_class_and_the_error_says_so(tmp_path):
    _folder(tmp_path / "train", {"a": 2, "b": 2})
    _folder(tmp_path, {"other": 2})
    with pytest.raises(DataError, match=re.escape(
            f"class folder {tmp_path / 'train'} holds no .png, .jpg or .jpeg files (a train/ "
            f"folder is read as a split only beside a test/ folder)")):
        data.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# Sizes


def test_image_size_resizes_height_and_width(tmp_path):
    # A horizontal ramp: resizing with (H, W) swapped would change the values along a row.
    ramp = np.tile(np.linspace(0, 255, 8).astype(np.uint8), (6, 1))
    _save(tmp_path / "a" / "ramp.png", ramp)
    _save(tmp_path / "a" / "big.png", np.full((10, 4), 77, np.uint8))
    _save(tmp_path / "b" / "c.png", np.full((6, 8), 200, np.uint8))
    _save(tmp_path / "b" / "d.png", np.full((6, 8), 10, np.uint8))
    with pytest.raises(DataError, match=re.escape(
            f"image file {tmp_path / 'a' / 'ramp.png'} is 6x8 (HxW) but "
            f"{tmp_path / 'a' / 'big.png'} is 10x4; pass image_size=(H, W)")):
        data.load(tmp_path)
    splits = data.load(tmp_path, image_size=(5, 7), test_fraction=0.5)
    images = np.concatenate([splits.train.images, splits.test.images])
    assert images.shape == (4, 5, 7, 1)
    # A flat image stays flat; the ramp is what Pillow's bilinear resize to width 7 gives.
    assert any(np.all(img == np.float32(77) / np.float32(255)) for img in images)
    _index_of(images, np.asarray(Image.fromarray(ramp).resize((7, 5), Image.Resampling.BILINEAR)))
    square = data.load(tmp_path, image_size=3, test_fraction=0.5)
    assert square.train.images.shape[1:] == (3, 3, 1)
    assert data.info(tmp_path, image_size=(5, 7)).image_shape == (5, 7, 1)


@pytest.mark.parametrize("bad", [0, -3, (4,), (4, 0), (4, 5, 6), True, 2.5, "32"])
def test_bad_image_size(tmp_path, bad):
    _folder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=re.escape(f"image_size={bad!r} but a positive int or "
                                                   f"an (H, W) pair of positive ints is needed")):
        data.load(tmp_path, image_size=bad)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True])
def test_bad_test_fraction(tmp_path, bad):
    _folder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=re.escape(f"test_fraction={bad!r} but it must lie "
                                                   f"strictly between 0 and 1")):
        data.load(tmp_path, test_fraction=bad)


# ---------------------------------------------------------------------------------------------
# info


def test_info_reads_headers_not_pixels(tmp_path):
    _folder(tmp_path, {"y": 2, "x": 3}, make=lambda: _rgb(4, 5))
    assert data.info(tmp_path) == data.DatasetInfo(str(tmp_path), (4, 5, 3), 2, ("x", "y"))
    assert data.info(str(tmp_path)).name == str(tmp_path)
    # A file cut short after its header: info (headers only) passes, load (pixels) names it.
    whole = (tmp_path / "x" / "img00.png").read_bytes()
    (tmp_path / "x" / "img00.png").write_bytes(whole[: len(whole) // 2])
    assert data.info(tmp_path).num_classes == 2
    with pytest.raises(DataError, match=re.escape(
            f"image file {tmp_path / 'x' / 'img00.png'} cannot be read (")):
        data.load(tmp_path, test_fraction=0.4)


def test_a_relative_folder_name_is_a_folder(tmp_path, monkeypatch):
    _folder(tmp_path / "pets", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    assert data.load("pets", test_fraction=0.5).class_names == ("a", "b")
    assert data.info("pets").name == "pets"


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("spelled", ["path", "str"])
def test_missing_folder(tmp_path, spelled):
    where = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match=re.escape(
            f"image folder {where} does not exist; pass the path of a folder of class subfolders "
            f"of images (<folder>/<class>/<image>.png) or one of the built-in dataset names "
            f"digits, mnist, fashion_mnist, cifar10.")):
        data.load(where if spelled == "path" else str(where))
    with pytest.raises(FileNotFoundError):  # what a caller would catch anyway
        data.info(where)


def test_a_file_is_not_a_folder(tmp_path):
    _save(tmp_path / "one.png", _grey())
    with pytest.raises(DataError, match=re.escape(
            f"image folder {tmp_path / 'one.png'} is a file, not a folder; pass the path of a "
            f"folder of class subfolders of images")):
        data.load(tmp_path / "one.png")


def test_corrupt_image_names_the_file(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=re.escape(
            f"image file {tmp_path / 'b' / 'broken.jpg'} cannot be read "
            f"(UnidentifiedImageError: ")) as info:
        data.load(tmp_path)
    assert str(info.value).endswith("; replace or delete it.")
    with pytest.raises(DataError, match="broken.jpg cannot be read"):
        data.info(tmp_path)


def test_empty_class_folder(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "labels.csv").write_text("not an image")
    with pytest.raises(DataError, match=re.escape(
            f"class folder {tmp_path / 'c'} holds no .png, .jpg or .jpeg files; add images to it "
            f"or remove it.")):
        data.load(tmp_path)


def test_one_class(tmp_path):
    _folder(tmp_path, {"cats": 3})
    with pytest.raises(DataError, match=re.escape(
            f"image folder {tmp_path} has one class folder (cats) but a classifier needs at "
            f"least two")):
        data.load(tmp_path)


def test_no_class_subfolders(tmp_path):
    _save(tmp_path / "a.png", _grey())
    _save(tmp_path / "b.png", _grey())
    with pytest.raises(DataError, match=re.escape(
            f"image folder {tmp_path} has no class subfolders; lay it out as "
            f"<folder>/<class>/<image>.png, one subfolder of images per class.")):
        data.load(tmp_path)


def test_class_too_small_to_split(tmp_path):
    _folder(tmp_path, {"a": 5, "b": 1, "c": 5})
    with pytest.raises(DataError, match=re.escape(
            f"image folder {tmp_path}: class folder 'b' holds 1 image, too few for a stratified "
            f"test split (every class needs at least 2)")):
        data.load(tmp_path)
