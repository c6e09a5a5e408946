"""The dSprites factor grid: index <-> classes <-> values, validation and orientation symmetry."""

from __future__ import annotations

import numpy as np
import pytest

from dsvsa.factors import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    FACTOR_VALUES,
    NUM_IMAGES,
    SHAPE_NAMES,
    classes_to_index,
    classes_to_values,
    equivalent_orientations,
    factor_index,
    index_to_classes,
    same_factor_value,
    validate_classes,
    values_to_classes,
)


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    """(737280, 5) classes of the whole grid, in index order."""
    return index_to_classes(np.arange(NUM_IMAGES))


def test_grid_constants():
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert SHAPE_NAMES == ("square", "ellipse", "heart")
    assert NUM_IMAGES == 737_280 == int(np.prod(FACTOR_SIZES))
    assert [len(v) for v in FACTOR_VALUES] == list(FACTOR_SIZES)


def test_factor_values():
    shape, scale, orientation, pos_x, pos_y = FACTOR_VALUES
    np.testing.assert_array_equal(shape, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(scale, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert orientation[0] == 0.0 and orientation[-1] == 2 * np.pi
    np.testing.assert_allclose(np.diff(orientation), 2 * np.pi / 39)
    for pos in (pos_x, pos_y):
        assert pos[0] == 0.0 and pos[-1] == 1.0
        np.testing.assert_allclose(np.diff(pos), 1 / 31)


def test_index_formula_and_order(grid):
    # pos_y varies fastest, shape slowest: the grid in index order is sorted lexicographically
    shape, scale, orient, x, y = grid.T
    np.testing.assert_array_equal(
        (((shape * 6 + scale) * 40 + orient) * 32 + x) * 32 + y, np.arange(NUM_IMAGES)
    )
    np.testing.assert_array_equal(grid[:3], [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]])
    np.testing.assert_array_equal(grid[32], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(grid[-1], [2, 5, 39, 31, 31])
    assert np.all(np.diff(np.lexsort(grid.T[::-1])) == 1)
    assert grid.min(axis=0).tolist() == [0] * 5
    assert (grid.max(axis=0) + 1).tolist() == list(FACTOR_SIZES)


def test_index_round_trip(grid):
    np.testing.assert_array_equal(classes_to_index(grid), np.arange(NUM_IMAGES))
    assert classes_to_index([2, 5, 39, 31, 31]).tolist() == [NUM_IMAGES - 1]
    assert index_to_classes(1025).tolist() == [[0, 0, 1, 0, 1]]


def test_values_round_trip(grid):
    values = classes_to_values(grid)
    assert values.shape == (NUM_IMAGES, 5) and values.dtype == np.float64
    every = grid[::13]  # the nearest-value search is slow on the whole grid
    np.testing.assert_array_equal(values_to_classes(values[::13]), every)
    np.testing.assert_allclose(classes_to_values([1, 5, 39, 31, 0]), [[2.0, 1.0, 2 * np.pi, 1, 0]])
    # nearest grid value wins
    assert values_to_classes([3.0, 0.74, 0.1, 0.49, 0.51]).tolist() == [[2, 2, 1, 15, 16]]


@pytest.mark.parametrize(
    ("row", "name", "bad"),
    [
        ([3, 0, 0, 0, 0], "shape", 3),
        ([-1, 0, 0, 0, 0], "shape", -1),
        ([0, 6, 0, 0, 0], "scale", 6),
        ([0, 0, 40, 0, 0], "orientation", 40),
        ([0, 0, 0, 32, 0], "pos_x", 32),
        ([0, 0, 0, 0, -3], "pos_y", -3),
    ],
)
def test_validate_names_the_factor(row, name, bad):
    with pytest.raises(ValueError, match=rf"^{name} class must be in 0\.\.\d+, got {bad}$"):
        validate_classes(row)
    with pytest.raises(ValueError, match=name):
        classes_to_index([[0, 0, 0, 0, 0], row])


def test_validate_shapes_and_types():
    out = validate_classes(np.array([1, 2, 3, 4, 5], dtype=np.int16))
    assert out.shape == (1, 5) and out.dtype == np.int64
    assert validate_classes([[0.0, 1.0, 2.0, 3.0, 4.0]]).tolist() == [[0, 1, 2, 3, 4]]
    assert validate_classes(np.zeros((0, 5), int)).shape == (0, 5)
    with pytest.raises(ValueError, match="integer"):
        validate_classes([0, 0.5, 0, 0, 0])
    for bad_shape in ([0, 0, 0, 0], np.zeros((2, 6)), np.zeros((2, 5, 1))):
        with pytest.raises(ValueError, match="shape"):
            validate_classes(bad_shape)
    with pytest.raises(ValueError, match="index"):
        index_to_classes([NUM_IMAGES])
    with pytest.raises(ValueError, match="pos_x"):
        values_to_classes([1.0, 0.5, 0.0, 1.5, 0.0])


def test_factor_index():
    assert [factor_index(n) for n in FACTOR_NAMES] == [0, 1, 2, 3, 4]
    assert factor_index(np.int64(3)) == 3
    for bad in ("colour", 5, -1, True):
        with pytest.raises(ValueError):
            factor_index(bad)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [(0, [0, 10, 19, 20, 29, 39]), (1, [0, 19, 20, 39]), (2, [0, 39])],
)
def test_equivalent_orientations_of_zero(shape, expected):
    # square period pi/2 = 9.75 class steps, ellipse pi = 19.5 steps, heart 2 pi = 39 steps
    mask = equivalent_orientations([shape], [0])
    assert mask.shape == (1, 40) and mask.dtype == bool
    assert np.flatnonzero(mask[0]).tolist() == expected


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_equivalent_orientations_structure(shape):
    orient = np.arange(40)
    mask = equivalent_orientations(np.full(40, shape), orient)
    assert mask[orient, orient].all()
    np.testing.assert_array_equal(mask, mask.T)  # a relation between angles: symmetric
    assert mask[0, 39] and mask[39, 0]  # 0 and 2 pi are the same angle
    if shape == 2:
        assert mask.sum() == 40 + 2  # a heart only has the 0 / 2 pi coincidence
    else:
        # away from the 0 / 39 seam: theta + k * period, to the nearest half class step
        expected = [2, 12, 22, 31, 32] if shape == 0 else [12, 31, 32]
        assert np.flatnonzero(mask[12]).tolist() == expected


def test_same_factor_value():
    a = np.array([[0, 1, 0, 3, 4], [1, 1, 0, 3, 4], [2, 1, 0, 3, 4]])
    b = a.copy()
    b[:, 2] = [10, 20, 39]  # square quarter turn, ellipse half turn, heart full turn
    assert same_factor_value(a, b, "orientation").tolist() == [True, True, True]
    b[:, 2] = [5, 5, 5]
    assert same_factor_value(a, b, 2).tolist() == [False, False, False]
    assert same_factor_value(a, b, "pos_x").tolist() == [True, True, True]
    b[1, 3] = 4
    assert same_factor_value(a, b, "pos_x").tolist() == [True, False, True]
