"""The dSprites factor grid: names, sizes, values and index <-> classes <-> values conversions.

Order follows the original dSprites file (colour dropped): shape, scale, orientation, pos_x, pos_y,
with pos_y varying fastest. ``index = (((shape*6 + scale)*40 + orientation)*32 + x)*32 + y``.
"""

from __future__ import annotations

import numpy as np

FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
NUM_FACTORS = len(FACTOR_NAMES)
NUM_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SIZE = 64

# values of each factor, index = class
FACTOR_VALUES: tuple[np.ndarray, ...] = (
    np.arange(3, dtype=np.float64) + 1.0,  # shape: 1, 2, 3 as in the original file
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2.0 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)

# rotational symmetry period of each shape (square, ellipse, heart)
SYMMETRY_PERIOD: tuple[float, ...] = (np.pi / 2, np.pi, 2 * np.pi)
ORIENTATION_STEP = 2.0 * np.pi / (FACTOR_SIZES[2] - 1)

_STRIDES = np.array(
    [int(np.prod(FACTOR_SIZES[i + 1 :])) for i in range(NUM_FACTORS)], dtype=np.int64
)


def factor_index(feature: str | int) -> int:
    """Position of a factor given its name or position; ValueError for anything else."""
    if isinstance(feature, (int, np.integer)) and not isinstance(feature, bool):
        if 0 <= int(feature) < NUM_FACTORS:
            return int(feature)
        raise ValueError(f"factor position must be in 0..{NUM_FACTORS - 1}, got {feature}")
    if isinstance(feature, str) and feature in FACTOR_NAMES:
        return FACTOR_NAMES.index(feature)
    raise ValueError(f"unknown factor {feature!r}; expected one of {', '.join(FACTOR_NAMES)}")


def validate_classes(classes) -> np.ndarray:
    """Return classes as an (N, 5) int64 array, raising ValueError naming any out-of-range factor."""
    arr = np.asarray(classes)
    if arr.ndim == 1 and arr.shape[0] == NUM_FACTORS:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != NUM_FACTORS:
        raise ValueError(f"classes must have shape (N, {NUM_FACTORS}), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError("classes must be integer class indices")
    arr = arr.astype(np.int64, copy=False)
    for k, (name, size) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES)):
        col = arr[:, k]
        if col.size and (col.min() < 0 or col.max() >= size):
            bad = col[(col < 0) | (col >= size)][0]
            raise ValueError(f"{name} class must be in 0..{size - 1}, got {bad}")
    return arr


def classes_to_index(classes) -> np.ndarray:
    """(N, 5) class indices -> (N,) flat indices into the 737,280-image grid."""
    return validate_classes(classes) @ _STRIDES


def index_to_classes(index) -> np.ndarray:
    """(N,) flat grid indices -> (N, 5) int64 class indices."""
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= NUM_IMAGES):
        raise ValueError(f"index must be in 0..{NUM_IMAGES - 1}")
    sizes = np.array(FACTOR_SIZES, dtype=np.int64)
    return (idx[:, None] // _STRIDES[None]) % sizes[None]


def classes_to_values(classes) -> np.ndarray:
    """(N, 5) class indices -> (N, 5) float64 factor values."""
    arr = validate_classes(classes)
    return np.stack([FACTOR_VALUES[k][arr[:, k]] for k in range(NUM_FACTORS)], axis=1)


def values_to_classes(values) -> np.ndarray:
    """(N, 5) factor values -> (N, 5) class indices of the nearest grid value of each factor."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 1:
        vals = vals[None]
    if vals.ndim != 2 or vals.shape[1] != NUM_FACTORS:
        raise ValueError(f"values must have shape (N, {NUM_FACTORS}), got {vals.shape}")
    out = np.empty(vals.shape, dtype=np.int64)
    for k in range(NUM_FACTORS):
        grid = FACTOR_VALUES[k]
        lo, hi = grid[0], grid[-1]
        col = vals[:, k]
        if np.any(col < lo - 1e-9) or np.any(col > hi + 1e-9):
            raise ValueError(f"{FACTOR_NAMES[k]} value must be in [{lo:g}, {hi:g}]")
        out[:, k] = np.abs(col[:, None] - grid[None]).argmin(axis=1)
    return out


def equivalent_orientations(shape, orientation) -> np.ndarray:
    """Orientation classes that look the same as ``orientation`` for ``shape``.

    A class o' counts when its angle lies within half a class step of theta + k * period for the
    shape's symmetry period (square pi/2, ellipse pi, heart 2 pi; 0 and 2 pi coincide).

    Args:
        shape: (N,) shape classes.
        orientation: (N,) orientation classes.
    Returns:
        (N, 40) bool mask, True at every equivalent orientation class (always at the own class).
    """
    shape = np.asarray(shape, dtype=np.int64).reshape(-1)
    orientation = np.asarray(orientation, dtype=np.int64).reshape(-1)
    theta = FACTOR_VALUES[2][orientation]  # (N,)
    period = np.asarray(SYMMETRY_PERIOD)[shape]  # (N,)
    grid = FACTOR_VALUES[2][None]  # (1, 40)
    diff = np.mod(grid - theta[:, None], period[:, None])
    dist = np.minimum(diff, period[:, None] - diff)
    return dist <= ORIENTATION_STEP / 2 + 1e-9


def same_factor_value(classes_a, classes_b, feature: str | int) -> np.ndarray:
    """(N,) bool: whether a and b agree on ``feature``, orientation compared modulo a's symmetry.

    For orientation, the shape of ``classes_a`` decides the symmetry (the two should share it).
    """
    a = validate_classes(classes_a)
    b = validate_classes(classes_b)
    k = factor_index(feature)
    if k != 2:
        return a[:, k] == b[:, k]
    mask = equivalent_orientations(a[:, 0], a[:, 2])
    return mask[np.arange(len(b)), b[:, 2]]
