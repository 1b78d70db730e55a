"""Tests for jaxcnn.visualize: sizes against the documented formulas, pixels against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxcnn.visualize import (
    annotated_grid,
    confusion_matrix,
    confusion_matrix_image,
    feature_map_grid,
    filter_grid,
    grid_size,
    misclassified,
)


def _in_unit_range(image: np.ndarray) -> bool:
    return image.dtype == np.float32 and bool(np.all((image >= 0) & (image <= 1)))


# ----------------------------------------------------------------------------------------------
# Grid layout.


@pytest.mark.parametrize("n", range(1, 60))
def test_grid_size_is_near_square(n: int) -> None:
    rows, cols, height, width = grid_size(n, 3, 5, pad=2)
    assert cols == math.ceil(math.sqrt(n))  # float sqrt is exact enough for these n
    assert (rows - 1) * cols < n <= rows * cols  # no empty row
    assert (height, width) == (rows * 3 + (rows - 1) * 2, cols * 5 + (cols - 1) * 2)


@pytest.mark.parametrize(
    ("shape", "pad", "expected"),
    [
        ((3, 3, 1, 8), 1, (11, 11, 1)),  # 8 grey tiles: 3 x 3 grid
        ((3, 3, 1, 10), 1, (11, 15, 1)),  # 10 tiles: 3 rows x 4 cols
        ((5, 5, 3, 16), 1, (23, 23, 3)),  # 16 RGB tiles: 4 x 4
        ((7, 7, 3, 64), 1, (63, 63, 3)),  # 8 x 8
        ((3, 3, 3, 1), 1, (3, 3, 3)),  # one tile, no separator
        ((3, 3, 8, 4), 2, (18, 38, 1)),  # 4 filters (rows) x 8 input channels (cols)
        ((2, 4, 2, 3), 0, (6, 8, 1)),  # rows = 3 filters, cols = 2 channels, no pad
        ((1, 1, 16, 32), 1, (63, 31, 1)),  # 1 x 1 kernels
    ],
)
def test_filter_grid_size(shape: tuple, pad: int, expected: tuple) -> None:
    rng = np.random.default_rng(0)
    grid = filter_grid(rng.normal(size=shape), pad=pad)
    assert grid.shape == expected
    assert _in_unit_range(grid)


def test_filter_grid_grey_tiles_normalised_and_placed() -> None:
    kh, kw, c_in, c_out = 2, 2, 2, 3
    base = np.array([[0.0, 1.0], [2.0, 3.0]])
    w = np.zeros((kh, kw, c_in, c_out))
    for o in range(c_out):
        for i in range(c_in):
            w[:, :, i, o] = base * (o + 1) - 10 * i  # any affine map of `base`
    w[:, :, 1, 2] = 7.0  # a constant tile
    grid = filter_grid(w, pad=1, pad_value=0.25)
    assert grid.shape == (3 * 2 + 2, 2 * 2 + 1, 1)
    expected_tile = base / 3.0
    for o in range(c_out):
        for i in range(c_in):
            tile = grid[o * 3 : o * 3 + 2, i * 3 : i * 3 + 2, 0]
            want = np.full((2, 2), 0.5) if (o, i) == (2, 1) else expected_tile
            np.testing.assert_allclose(tile, want, rtol=0, atol=1e-7)
    assert np.all(grid[2::3, :, 0] == 0.25) and np.all(grid[:, 2, 0] == 0.25)  # separators


def test_filter_grid_rgb_tile_normalised_over_its_three_channels() -> None:
    w = np.zeros((1, 2, 3, 2))
    w[0, 0, :, 0] = [0.0, 1.0, 2.0]
    w[0, 1, :, 0] = [3.0, 4.0, 8.0]  # tile 0: min 0, max 8, shared by the channels
    w[..., 1] = -1.0  # tile 1: constant
    grid = filter_grid(w, pad=1)
    assert grid.shape == (1, 5, 3)  # 2 tiles in one row: cols = ceil(sqrt(2)) = 2
    np.testing.assert_allclose(grid[0, 0], [0.0, 0.125, 0.25], atol=1e-7)
    np.testing.assert_allclose(grid[0, 1], [0.375, 0.5, 1.0], atol=1e-7)
    np.testing.assert_allclose(grid[0, 2], [1.0, 1.0, 1.0])  # white separator
    np.testing.assert_allclose(grid[0, 3:], 0.5)


def test_filter_grid_single_input_channel_uses_near_square_layout() -> None:
    w = np.arange(4 * 5, dtype=float).reshape(2, 2, 1, 5)  # 5 filters of 2 x 2
    grid = filter_grid(w, pad=1)
    assert grid.shape == (2 * 2 + 1, 3 * 2 + 2, 1)  # 2 rows x 3 cols
    np.testing.assert_allclose(grid[3:, 6:, 0], 1.0)  # the unused 6th cell is pad_value


def test_non_finite_values_become_zero() -> None:
    w = np.array([1.0, np.nan, 3.0, 2.0]).reshape(2, 2, 1, 1)
    np.testing.assert_allclose(filter_grid(w)[..., 0], [[0.0, 0.0], [1.0, 0.5]])
    all_nan = np.full((2, 2, 1, 1), np.inf)
    np.testing.assert_array_equal(filter_grid(all_nan), 0.0)


def test_filter_grid_rejects_wrong_rank() -> None:
    with pytest.raises(
        ValueError, match=r"HWIO kernels \(kh, kw, c_in, c_out\), got shape \(3, 3\)"
    ):
        filter_grid(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="pad must be an int >= 0, got -1"):
        filter_grid(np.zeros((3, 3, 1, 1)), pad=-1)


# ----------------------------------------------------------------------------------------------
# Feature maps.


@pytest.mark.parametrize(
    ("shape", "pad", "max_channels", "expected"),
    [
        ((2, 8, 8, 6), 1, None, (2, 17, 26, 1)),  # 6 maps: 2 rows x 3 cols
        ((1, 4, 5, 1), 1, None, (1, 4, 5, 1)),  # one map, no separator
        ((3, 4, 4, 32), 0, None, (3, 24, 24, 1)),  # 32 maps: 6 cols, ceil(32 / 6) = 6 rows
        ((1, 3, 5, 10), 1, None, (1, 11, 23, 1)),  # 10 maps: 4 cols x 3 rows
        ((3, 4, 4, 32), 1, 4, (3, 9, 9, 1)),  # the first 4 maps: 2 x 2
        ((1, 6, 3, 2), 2, 9, (1, 6, 8, 1)),  # max_channels above C keeps C
    ],
)
def test_feature_map_grid_size(shape: tuple, pad: int, max_channels, expected: tuple) -> None:
    x = np.random.default_rng(1).normal(size=shape)
    grid = feature_map_grid(x, pad=pad, max_channels=max_channels)
    assert grid.shape == expected and _in_unit_range(grid)


def test_feature_map_grid_normalises_each_map_of_each_sample() -> None:
    x = np.zeros((2, 2, 2, 3))
    ramp = np.array([[0.0, 1.0], [2.0, 4.0]])
    for n in range(2):
        for c in range(3):
            x[n, :, :, c] = ramp * (10 * n + c + 1) + 100 * c
    x[1, :, :, 2] = -3.0  # constant map
    grid = feature_map_grid(x, pad=1, pad_value=0.0)
    assert grid.shape == (2, 5, 5, 1)  # 3 maps: 2 x 2 grid of 2 x 2
    cells = [(0, 0), (0, 3), (3, 0)]
    for n in range(2):
        for c, (r, k) in enumerate(cells):
            want = np.full((2, 2), 0.5) if (n, c) == (1, 2) else ramp / 4.0
            np.testing.assert_allclose(grid[n, r : r + 2, k : k + 2, 0], want, atol=1e-7)
        np.testing.assert_array_equal(grid[n, 3:, 3:, 0], 0.0)  # unused 4th cell


def test_feature_map_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W, C\), got shape \(8, 8, 3\)"):
        feature_map_grid(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="max_channels must be None or an int >= 1, got 0"):
        feature_map_grid(np.zeros((1, 8, 8, 3)), max_channels=0)


# ----------------------------------------------------------------------------------------------
# Confusion matrix.


def test_confusion_matrix_equals_hand_count() -> None:
    rng = np.random.default_rng(2)
    k = 7
    labels = rng.integers(0, k, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, k, 500))
    expected = np.zeros((k, k), dtype=int)
    for t, p in zip(labels, preds, strict=True):
        expected[t, p] += 1
    cm = confusion_matrix(labels, preds, k)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 500 and np.trace(cm) == np.sum(labels == preds)


def test_confusion_matrix_counts_unseen_classes_as_zero() -> None:
    cm = confusion_matrix(np.array([0, 0, 2], np.uint8), np.array([2, 0, 2], np.int32), 4)
    assert cm.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    ("labels", "preds", "k", "message"),
    [
        ([0, 3], [0, 1], 3, r"labels has values in \[0, 3\]; .* \[0, 2\] for num_classes=3"),
        ([0, 1], [-1, 1], 3, r"preds has values in \[-1, 1\]"),
        ([0, 1, 2], [0, 1], 3, r"labels has shape \(3,\) but preds has shape \(2,\)"),
        ([[0, 1]], [[0, 1]], 3, r"labels must be a 1-D integer array .* shape \(1, 2\)"),
        ([0.0, 1.0], [0, 1], 3, "labels must be a 1-D integer array of class indices, got float"),
        ([0], [0], 0, "num_classes must be an int >= 1, got 0"),
    ],
)
def test_confusion_matrix_rejects_bad_input(labels, preds, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(labels), np.array(preds), k)


def test_confusion_matrix_image_colours_and_size() -> None:
    cm = np.array([[5, 0, 0], [0, 0, 0], [1, 1, 2]])
    image = confusion_matrix_image(cm, cell=20)
    assert image.shape == (60, 60, 3) and _in_unit_range(image)
    dark = np.array([8, 48, 107]) / 255.0

    def corner(t: int, p: int) -> np.ndarray:  # a pixel of cell (t, p) away from its text
        return image[t * 20 + 1, p * 20 + 1]

    np.testing.assert_allclose(corner(0, 0), dark, atol=1 / 255)  # row fraction 1
    np.testing.assert_allclose(corner(0, 1), 1.0)  # fraction 0: white
    np.testing.assert_allclose(corner(1, 1), 1.0)  # an empty row stays white
    np.testing.assert_allclose(corner(2, 2), 1 - 0.5 * (1 - dark), atol=1 / 255)  # 2 / 4
    cell_00 = image[:20, :20].reshape(-1, 3)
    assert np.any(np.abs(cell_00 - dark).max(axis=1) > 0.3)  # the count is drawn (in white)


def test_confusion_matrix_image_with_class_names() -> None:
    cm = np.eye(4, dtype=int) * 3
    names = ["cat", "dog", "a much longer name", "x"]
    plain = confusion_matrix_image(cm, cell=24)
    named = confusion_matrix_image(cm, class_names=names, cell=24)
    assert plain.shape == (96, 96, 3)
    assert named.shape[0] == 14 + 96 and named.shape[2] == 3
    assert named.shape[1] > 96 + 60  # room for the longest name on the left
    left = named.shape[1] - 96
    np.testing.assert_allclose(named[14:, left:], plain)  # the matrix itself is unchanged
    assert np.any(named[14 : 14 + 24, :left] < 0.5)  # a name was written left of row 0
    with pytest.raises(ValueError, match="class_names has 2 names; cm needs 4"):
        confusion_matrix_image(cm, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"square \(K, K\) matrix, got shape \(2, 3\)"):
        confusion_matrix_image(np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------------
# Annotated grids.


@pytest.mark.parametrize(
    ("shape", "max_images", "expected"),
    [
        # 28 x 28: s = ceil(64 / 28) = 3 -> tiles (84 + 14) x 84; 5 tiles -> 2 rows x 3 cols
        ((5, 28, 28, 1), 64, (2 * 98 + 2, 3 * 84 + 2 * 2, 3)),
        # 8 x 8: s = 8 -> tiles (64 + 14) x 64; 4 tiles -> 2 x 2
        ((4, 8, 8, 3), 64, (2 * 78 + 2, 2 * 64 + 2, 3)),
        # (N, H, W) grey; only the first 10 of 100: 3 rows x 4 cols of (32 * 2 + 14) x 64
        ((100, 32, 32), 10, (3 * 78 + 2 * 2, 4 * 64 + 3 * 2, 3)),
        # big images are not scaled: 1 tile of (70 + 14) x 100
        ((1, 70, 100, 3), 64, (84, 100, 3)),
    ],
)
def test_annotated_grid_size(shape: tuple, max_images: int, expected: tuple) -> None:
    rng = np.random.default_rng(3)
    n = shape[0]
    grid = annotated_grid(
        rng.random(shape), rng.integers(0, 10, n), rng.integers(0, 10, n), max_images=max_images
    )
    assert grid.shape == expected and _in_unit_range(grid)


def test_annotated_grid_pixels_and_text_colour() -> None:
    images = np.zeros((2, 8, 8, 1), np.uint8)
    images[0, 2, 3] = 255
    images[1] = 51
    grid = annotated_grid(images, np.array([1, 4]), np.array([1, 7]), pad=2)
    assert grid.shape == (78, 64 * 2 + 2, 3)  # s = 8, one row of two tiles
    tile0, tile1 = grid[:64, :64], grid[:64, 66:]
    expected0 = np.zeros((64, 64))
    expected0[16:24, 24:32] = 1.0  # pixel (2, 3) upscaled 8x
    for ch in range(3):  # grey is repeated into RGB
        np.testing.assert_array_equal(tile0[..., ch], expected0)
    np.testing.assert_allclose(tile1, 0.2)  # uint8 51 / 255, not re-normalised
    band0, band1 = grid[64:, :64], grid[64:, 66:]
    green = (band0[..., 1] > 0.5) & (band0[..., 0] < 0.5)  # right: "1/1" in green
    red = (band1[..., 0] > 0.5) & (band1[..., 1] < 0.5)  # wrong: "7/4" in red
    assert green.any() and not ((band0[..., 0] > 0.5) & (band0[..., 1] < 0.5)).any()
    assert red.any() and not ((band1[..., 1] > 0.5) & (band1[..., 0] < 0.5)).any()


def test_annotated_grid_widens_tiles_for_long_names() -> None:
    names = ["T-shirt/top", "Ankle boot"]
    images = np.random.default_rng(4).random((3, 28, 28, 1))
    grid = annotated_grid(images, np.array([0, 1, 0]), np.array([1, 0, 0]), class_names=names)
    # "Ankle boot/T-shirt/top" is wider than 84 px, so s > 3; the grid is 2 x 2 of equal tiles.
    tile_w = (grid.shape[1] - 2) // 2
    assert tile_w % 28 == 0 and tile_w // 28 > 3
    assert grid.shape[0] == 2 * (tile_w + 14) + 2
    with pytest.raises(ValueError, match="class index 1 has no name; class_names has 1 entries"):
        annotated_grid(images, np.array([0, 1, 0]), np.array([0, 0, 0]), class_names=["a"])


def test_annotated_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"N >= 1, got shape \(0, 8, 8, 1\)"):
        annotated_grid(np.zeros((0, 8, 8, 1)), np.zeros(0, int), np.zeros(0, int))
    with pytest.raises(ValueError, match="images has 2 samples, true_labels 3 and pred_labels 2"):
        annotated_grid(np.zeros((2, 8, 8, 1)), np.zeros(3, int), np.zeros(2, int))


def test_misclassified_selects_the_wrong_ones_in_order() -> None:
    images = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 1))
    x, t, p = misclassified(images, np.array([0, 1, 2, 3, 4]), np.array([0, 2, 2, 0, 1]))
    assert x[:, 0, 0, 0].tolist() == [1.0, 3.0, 4.0]
    assert t.tolist() == [1, 3, 4] and p.tolist() == [2, 0, 1]
    none = misclassified(images, np.zeros(5, int), np.zeros(5, int))
    assert [a.shape[0] for a in none] == [0, 0, 0]


def test_numpy_integers_are_accepted_as_sizes_and_bools_are_not() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 1, 4))
    maps = rng.random((2, 5, 5, 3))
    labels, preds = np.array([0, 1, 2, 1]), np.array([0, 2, 2, 1])
    images = rng.random((4, 6, 6, 1))
    cm = confusion_matrix(labels, preds, 3)
    for i in (np.int64, np.int32, np.uint8, np.int8):  # small types: no overflow either
        np.testing.assert_array_equal(filter_grid(w, pad=i(2)), filter_grid(w, pad=2))
        np.testing.assert_array_equal(feature_map_grid(maps, max_channels=i(2)),
                                      feature_map_grid(maps, max_channels=2))
        np.testing.assert_array_equal(confusion_matrix(labels, preds, i(3)), cm)
        np.testing.assert_array_equal(confusion_matrix_image(cm, cell=i(100)),
                                      confusion_matrix_image(cm, cell=100))
        np.testing.assert_array_equal(filter_grid(w, pad=i(100)), filter_grid(w, pad=100))
        np.testing.assert_array_equal(
            annotated_grid(images, labels, preds, max_images=i(3), min_size=i(120)),
            annotated_grid(images, labels, preds, max_images=3, min_size=120))
    with pytest.raises(ValueError, match="pad"):
        filter_grid(w, pad=True)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(labels, preds, np.bool_(True))
