"""Samplers: one-factor pairs that really differ, non-overlapping scenes, holdout splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dsvsa.factors import FACTOR_NAMES, equivalent_orientations
from dsvsa.render import render, render_scene
from dsvsa.sampling import (
    HOLDOUTS,
    HoldOut,
    resolve_holdout,
    sample_factors,
    sample_paired_scenes,
    sample_pairs,
    sample_scene_arrays,
    sample_scenes,
)


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def _assert_one_factor_changed(fa: np.ndarray, fb: np.ndarray, changed: np.ndarray) -> None:
    rows = np.arange(len(fa))
    same = fa == fb
    assert not same[rows, changed].any(), "the changed factor kept its value"
    same[rows, changed] = True
    assert same.all(), "a factor other than `changed` differs"
    orient = changed == 2
    equiv = equivalent_orientations(fa[orient, 0], fa[orient, 2])
    assert not equiv[np.arange(orient.sum()), fb[orient, 2]].any(), "equivalent orientation"


@pytest.mark.parametrize("feature", range(5))
def test_pairs_change_exactly_one_factor_and_always_differ(feature):
    n = 10_000
    batch = sample_pairs(np.random.default_rng(feature), n, feature=feature)
    assert batch["image_a"].shape == (n, 64, 64) and batch["image_a"].dtype == np.uint8
    assert (batch["changed"] == feature).all()
    _assert_one_factor_changed(batch["factors_a"], batch["factors_b"], batch["changed"])
    identical = (_flat(batch["image_a"]) == _flat(batch["image_b"])).all(axis=1)
    assert identical.sum() == 0
    # the images are the renders of the factors
    np.testing.assert_array_equal(batch["image_a"][:500], render(batch["factors_a"][:500]))
    np.testing.assert_array_equal(batch["image_b"][:500], render(batch["factors_b"][:500]))


def test_orientation_pairs_skip_symmetric_angles_of_squares_and_ellipses():
    batch = sample_pairs(np.random.default_rng(7), 6000, feature="orientation")
    fa, fb = batch["factors_a"], batch["factors_b"]
    for shape, period_classes in ((0, 39 / 4), (1, 39 / 2)):
        rows = fa[:, 0] == shape
        assert rows.sum() > 1000
        # distance of the angle change to the nearest multiple of the symmetry period
        delta = np.mod(fb[rows, 2] - fa[rows, 2], period_classes)
        dist = np.minimum(delta, period_classes - delta)
        assert dist.min() > 0.5
    # 0 and 2 pi (classes 0 and 39) are never a pair
    ends = {0, 39}
    assert not any(
        {a, b} == ends for a, b in zip(fa[:, 2].tolist(), fb[:, 2].tolist(), strict=True)
    )


def test_feature_names_uniform_draw_and_bad_feature():
    rng = np.random.default_rng(0)
    by_name = sample_pairs(rng, 50, feature="pos_x")
    assert (by_name["changed"] == FACTOR_NAMES.index("pos_x")).all()
    drawn = sample_pairs(rng, 5000)
    counts = np.bincount(drawn["changed"], minlength=5)
    assert counts.min() > 850 and counts.max() < 1150
    _assert_one_factor_changed(drawn["factors_a"], drawn["factors_b"], drawn["changed"])
    with pytest.raises(ValueError, match="unknown factor"):
        sample_pairs(rng, 3, feature="colour")
    with pytest.raises(ValueError, match="split"):
        sample_pairs(rng, 3, split="validation")
    with pytest.raises(ValueError, match="non-negative"):
        sample_pairs(rng, -1)
    empty = sample_pairs(rng, 0)
    assert empty["image_a"].shape == (0, 64, 64)


def test_samplers_are_deterministic_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        pairs = sample_pairs(rng, 300)
        scenes = sample_scene_arrays(rng, 100)
        paired = sample_paired_scenes(rng, 100)
        return pairs, scenes, paired

    first, again, other = draw(3), draw(3), draw(4)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["factors_a"], other[0]["factors_a"])
    assert not np.array_equal(first[1]["scene"], other[1]["scene"])


def test_scenes_have_no_shared_pixels_and_keep_objects():
    n = 2000
    arrays = sample_scene_arrays(np.random.default_rng(1), n)
    counts = arrays["num_objects"]
    assert counts.min() == 2 and counts.max() == 5
    assert set(np.bincount(counts)[2:].tolist()) and np.bincount(counts)[2:].min() > 400
    stacked = arrays["objects"].astype(np.int32).sum(axis=1)  # (n, 64, 64)
    assert stacked.max() == 1, "two objects share a pixel"
    np.testing.assert_array_equal(arrays["scene"], np.minimum(stacked, 1))
    # every object is the render of its factors, padding is empty
    keep = np.arange(5)[None] < counts[:, None]
    np.testing.assert_array_equal(arrays["objects"][keep], render(arrays["factors"][keep]))
    assert (arrays["objects"][~keep] == 0).all() and (arrays["factors"][~keep] == -1).all()
    assert (_flat(arrays["objects"][keep]).sum(axis=1) > 0).all()

    scenes = sample_scenes(np.random.default_rng(2), 20, min_objects=3, max_objects=4)
    for scene in scenes:
        m = scene["num_objects"]
        assert 3 <= m <= 4 and scene["objects"].shape == (m, 64, 64)
        assert scene["factors"].shape == (m, 5)
        np.testing.assert_array_equal(scene["scene"], render_scene(scene["factors"]))


def test_scene_requests_that_cannot_be_met():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at most 5 objects"):
        sample_scenes(rng, 1, min_objects=6, max_objects=6)
    with pytest.raises(ValueError, match="at most 5 objects"):
        sample_scenes(rng, 1, max_objects=6)
    with pytest.raises(ValueError, match="min_objects"):
        sample_scenes(rng, 1, min_objects=4, max_objects=3)
    # only one position is allowed: a second object can never be placed
    one_spot = HoldOut(
        "one_spot", "all but one position", lambda c: (c[:, 3] != 0) | (c[:, 4] != 0)
    )
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="non-overlapping"):
        sample_scenes(rng, 3, min_objects=2, max_objects=2, holdout=one_spot)
    assert time.perf_counter() - start < 20


def test_paired_scenes_change_one_object_without_overlap():
    n = 3000
    batch = sample_paired_scenes(np.random.default_rng(5), n)
    _assert_one_factor_changed(batch["factors_a"], batch["factors_b"], batch["changed"])
    other = batch["other"].astype(bool)
    assert not (other & batch["object_a"].astype(bool)).any()
    assert not (other & batch["object_b"].astype(bool)).any()
    np.testing.assert_array_equal(batch["scene_a"], batch["object_a"] | batch["other"])
    np.testing.assert_array_equal(batch["scene_b"], batch["object_b"] | batch["other"])
    assert not (_flat(batch["scene_a"]) == _flat(batch["scene_b"])).all(axis=1).any()
    np.testing.assert_array_equal(batch["object_a"][:300], render(batch["factors_a"][:300]))
    np.testing.assert_array_equal(batch["object_b"][:300], render(batch["factors_b"][:300]))
    np.testing.assert_array_equal(batch["other"][:300], render(batch["factors_other"][:300]))
    assert np.bincount(batch["changed"], minlength=5).min() > 450


def test_holdout_registry():
    assert {"square_right", "heart_large"} <= set(HOLDOUTS)
    square_right = resolve_holdout("square_right")
    classes = np.array([[0, 0, 0, 16, 0], [0, 0, 0, 15, 0], [1, 0, 0, 31, 0], [2, 5, 0, 0, 0]])
    assert square_right(classes).tolist() == [True, False, False, False]
    assert HOLDOUTS["heart_large"](classes).tolist() == [False, False, False, True]
    assert resolve_holdout(None) is None and resolve_holdout(square_right) is square_right
    with pytest.raises(ValueError, match="unknown holdout"):
        resolve_holdout("circles")


@pytest.mark.parametrize("name", ["square_right", "heart_large"])
def test_holdout_splits_exclude_and_consist_of_held_out_combinations(name):
    hold = HOLDOUTS[name]
    rng = np.random.default_rng(11)
    assert not hold(sample_factors(rng, 20_000, hold, "train")).any()
    assert hold(sample_factors(rng, 2000, hold, "test")).all()

    train = sample_pairs(rng, 5000, holdout=name, split="train")
    assert not hold(train["factors_a"]).any() and not hold(train["factors_b"]).any()
    _assert_one_factor_changed(train["factors_a"], train["factors_b"], train["changed"])
    test = sample_pairs(rng, 2000, holdout=name, split="test")
    assert hold(test["factors_a"]).all()
    assert not (_flat(test["image_a"]) == _flat(test["image_b"])).all(axis=1).any()

    scenes = sample_scene_arrays(rng, 500, holdout=name, split="train")
    keep = np.arange(5)[None] < scenes["num_objects"][:, None]
    assert not hold(scenes["factors"][keep]).any()
    scenes = sample_scene_arrays(rng, 300, holdout=name, split="test")
    assert hold(scenes["factors"][:, 0]).all()
    assert scenes["objects"].astype(np.int32).sum(axis=1).max() == 1

    paired = sample_paired_scenes(rng, 1000, holdout=name, split="train")
    for key in ("factors_a", "factors_b", "factors_other"):
        assert not hold(paired[key]).any()
    paired = sample_paired_scenes(rng, 500, holdout=name, split="test")
    assert hold(paired["factors_a"]).all()


def test_sampling_speed_100k_pairs():
    render(np.zeros((1, 5), np.int64))  # the renderer's one-time tables are not timed
    start = time.perf_counter()
    batch = sample_pairs(np.random.default_rng(0), 100_000)
    elapsed = time.perf_counter() - start
    assert batch["image_a"].shape == (100_000, 64, 64)
    assert elapsed < 30, f"100k pairs took {elapsed:.1f} s"
