"""The renderer: fidelity to the original dSprites images, exactness, shapes, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from dsvsa.factors import NUM_IMAGES, equivalent_orientations, index_to_classes
from dsvsa.render import (
    build_tables,
    render,
    render_direct,
    render_naive,
    render_scene,
    snapped_polygon,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dsprites"
REFERENCE_FILE = REFERENCE / "real_dsprites_64834.npz"


def random_classes(n: int, seed: int) -> np.ndarray:
    return index_to_classes(np.random.default_rng(seed).integers(0, NUM_IMAGES, n))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return inter / union


@pytest.mark.skipif(not REFERENCE_FILE.exists(), reason="reference dSprites images not present")
def test_fidelity_to_original_images():
    data = np.load(REFERENCE_FILE)
    classes, packed = data["classes"], data["imgs"]
    diff = render(classes, packed=True) ^ packed  # (N, 64, 8) packed bits
    wrong = np.unpackbits(diff.reshape(len(diff), -1), axis=1).sum(axis=1)

    # measured: 64,825 of 64,834 images bit-exact, 9 wrong pixels in all
    assert (wrong == 0).mean() >= 0.9998
    assert wrong.mean() <= 0.0005
    assert wrong.max() <= 1
    for shape in range(3):
        assert (wrong[classes[:, 0] == shape] == 0).mean() >= 0.9995
    target = np.unpackbits(packed[:2000], axis=-1)
    np.testing.assert_array_equal(
        render(classes[:2000])[wrong[:2000] == 0], target[wrong[:2000] == 0]
    )


def test_fast_path_equals_definition():
    classes = random_classes(240, seed=3)
    # add the extremes: smallest / largest of each shape in the corners, all angles
    corners = [[s, k, o, x, y] for s in range(3) for k in (0, 5) for o in (0, 7, 39)
               for x, y in ((0, 0), (31, 31))]  # fmt: skip
    classes = np.concatenate([classes, corners])
    np.testing.assert_array_equal(render(classes), render_direct(classes))


def test_shapes_and_dtypes():
    one = render([2, 5, 0, 16, 16])
    assert one.shape == (1, 64, 64) and one.dtype == np.uint8
    assert set(np.unique(one)) == {0, 1}
    batch = render(np.array([[0, 0, 0, 0, 0], [1, 2, 3, 4, 5]], dtype=np.int16))
    assert batch.shape == (2, 64, 64) and batch.dtype == np.uint8
    assert render(np.zeros((0, 5), int)).shape == (0, 64, 64)
    packed = render(random_classes(50, seed=4), packed=True)
    assert packed.shape == (50, 64, 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(packed, axis=-1), render(random_classes(50, 4)))
    assert build_tables() == 0.0  # already built by the calls above


@pytest.mark.parametrize(
    ("row", "name"),
    [
        ([3, 0, 0, 0, 0], "shape"),
        ([0, 6, 0, 0, 0], "scale"),
        ([0, 0, -1, 0, 0], "orientation"),
        ([0, 0, 0, 32, 0], "pos_x"),
        ([0, 0, 0, 0, 99], "pos_y"),
    ],
)
def test_out_of_range_raises(row, name):
    with pytest.raises(ValueError, match=name):
        render(row)
    with pytest.raises(ValueError, match=name):
        render_scene([[0, 0, 0, 0, 0], row])
    with pytest.raises(ValueError, match=name):
        render_naive(row)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        render([0, 0, 0, 0])
    with pytest.raises(ValueError):
        render([0, 0.5, 0, 0, 0])
    with pytest.raises(ValueError, match="at least one"):
        render_scene(np.zeros((0, 5), int))


def test_deterministic():
    classes = random_classes(512, seed=1234)
    first, second = render(classes), render(classes.copy())
    np.testing.assert_array_equal(first, second)
    digest = hashlib.sha256(first.tobytes()).hexdigest()
    assert digest == "6f95fc607bb3409c993232bc000a57e0d0cf7f2a76cc04fc8af3e28387aa7949"
    stride = hashlib.sha256(render(index_to_classes(np.arange(0, NUM_IMAGES, 97))).tobytes())
    assert stride.hexdigest() == "9e92f513fa15eeb7db6a499fae2c56b7580830ab54e76443c25bc7604d8296e9"


def test_geometry():
    # unit square at angle 0 in the middle: 19 x 19 pixels (half-side 9.6 px around 32.0)
    square = render([0, 5, 0, 16, 16])[0]
    rows, cols = np.nonzero(square)
    assert square.sum() == 19 * 19
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (23, 41, 23, 41)
    # area grows with scale for every shape
    for shape in range(3):
        areas = render([[shape, k, 0, 16, 16] for k in range(6)]).sum(axis=(1, 2))
        assert np.all(np.diff(areas) > 0)
    # ellipse: major axis horizontal at angle 0, vertical at a quarter turn (class ~9.75)
    flat, upright = render([[1, 5, 0, 16, 16], [1, 5, 10, 16, 16]])
    assert np.ptp(np.nonzero(flat)[1]) > 1.5 * np.ptp(np.nonzero(flat)[0])
    assert np.ptp(np.nonzero(upright)[0]) > 1.5 * np.ptp(np.nonzero(upright)[1])
    # heart lobes up at angle 0, and rotation is counter-clockwise on screen: lobes go left
    up, left = render([[2, 5, 0, 16, 16], [2, 5, 10, 16, 16]])
    assert np.nonzero(up)[0].mean() < 31.5 - 1.0
    assert np.nonzero(left)[1].mean() < 31.5 - 1.0
    # pos_y = 0 is the top, pos_x = 0 the left
    top_left = render([1, 0, 0, 0, 0])[0]
    rows, cols = np.nonzero(top_left)
    assert abs(rows.mean() - 15.5) < 0.5 and abs(cols.mean() - 15.5) < 0.5


def test_polygons():
    square, ellipse, heart = snapped_polygon([[0, 5, 0, 16, 16], [1, 0, 0, 0, 0], [2, 0, 0, 0, 0]])
    assert len(square) == 4 and len(ellipse) == 100 and len(heart) == 150
    # 1/256 px units: the unit square spans its centre +- 9.6 px
    centre = 16 + 32 * 16 / 31
    assert square[:, 0].min() == round((centre - 9.6) * 256)
    assert square[:, 1].max() == round((centre + 9.6) * 256)


def test_orientation_zero_equals_full_turn():
    base = np.array([[s, k, 0, x, y] for s in range(3) for k in range(6)
                     for x in range(32) for y in range(32)])  # fmt: skip
    turned = base.copy()
    turned[:, 2] = 39
    np.testing.assert_array_equal(render(base), render(turned))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def test_identical_renders_differ_only_in_orientation():
    # hash every image of the grid to 64 bits (in chunks); equal images share a key
    salt = np.arange(64, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    keys = np.empty(NUM_IMAGES, np.uint64)
    for start in range(0, NUM_IMAGES, 65536):
        chunk = index_to_classes(np.arange(start, min(start + 65536, NUM_IMAGES)))
        rows = render(chunk, packed=True).reshape(len(chunk), 64, 8).view(np.uint64)[..., 0]
        keys[start : start + len(chunk)] = _mix(rows ^ salt).sum(axis=1, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    ca, cb = index_to_classes(order[:-1][same]), index_to_classes(order[1:][same])
    equal = (render(ca) == render(cb)).all(axis=(1, 2))
    assert (~equal).sum() <= 2  # chance collisions of the 64-bit keys
    ca, cb = ca[equal], cb[equal]
    assert np.all(ca[:, [0, 1, 3, 4]] == cb[:, [0, 1, 3, 4]])

    # about 3 % of the grid has a twin: 0 / 2 pi everywhere, plus symmetric shapes
    assert 20_000 < len(ca) < 23_000
    equivalent = equivalent_orientations(ca[:, 0], ca[:, 2])[np.arange(len(ca)), cb[:, 2]]
    # the few twins outside the equivalence are small squares whose angles lie within one class
    # step of each other modulo a quarter turn (e.g. 175.4 and 184.6 degrees)
    odd_a, odd_b = ca[~equivalent], cb[~equivalent]
    assert len(odd_a) < 100
    assert np.all(odd_a[:, 0] == 0) and np.all(odd_a[:, 1] <= 2)
    steps = np.mod(odd_a[:, 2] - odd_b[:, 2], 9.75)
    assert np.all(np.minimum(steps, 9.75 - steps) <= 1.0)


def test_render_scene_is_union():
    classes = random_classes(4, seed=9)
    scene = render_scene(classes)
    assert scene.shape == (64, 64) and scene.dtype == np.uint8
    np.testing.assert_array_equal(scene, render(classes).max(axis=0))
    np.testing.assert_array_equal(render_scene(classes[:1]), render(classes[:1])[0])


def test_naive_renderer_agrees_coarsely():
    classes = random_classes(200, seed=11)
    naive = render_naive(classes)
    assert naive.shape == (200, 64, 64) and naive.dtype == np.uint8
    scores = iou(render(classes), naive)
    assert scores.mean() > 0.9
    assert scores.min() > 0.8
