"""Samplers for the three derived datasets: pairs, scenes and paired scenes.

Every sampler takes a ``numpy.random.Generator`` and is vectorised over the batch; images come
from :func:`dsvsa.render.render` as uint8 {0, 1} of shape (64, 64).

* **pairs** -- (a, b, changed): b equals a except in the factor ``changed``, and the two renders
  always differ. Orientation changes skip every angle that looks the same for a's shape (a square
  repeats every pi/2, an ellipse every pi, and classes 0 and 39 are both 0 = 2 pi); every pair is
  also checked on the rendered pixels and redrawn if the two images are identical.
* **scenes** -- 2 to 5 objects of the same colour, no two sharing a pixel (checked on the renders),
  with the per-object images and factors.
* **paired scenes** -- two objects; one of them (the *changed* object) changes one factor as in a
  pair, the other stays. Neither scene has overlapping objects.

Compositional split: a :class:`HoldOut` names a set of factor combinations (e.g. squares in the
right half). With a holdout, split ``"train"`` never contains a held-out combination in any image
or object of an example, and split ``"test"`` is made of held-out combinations: for pairs image a
is held out (b is a with one factor changed, which may leave the held-out set), for scenes the
first object is held out (the others are unrestricted), for paired scenes the changed object
before its change (``factors_a``) is held out (the other object is unrestricted). Without a
holdout the split argument changes nothing: train and test are independent draws when the caller
uses different generators (``dsvsa.export`` derives one per split from the seed).

Example:
    >>> import numpy as np
    >>> from dsvsa.sampling import sample_pairs
    >>> batch = sample_pairs(np.random.default_rng(0), 4, feature="orientation")
    >>> batch["image_a"].shape, batch["changed"].tolist()
    ((4, 64, 64), [2, 2, 2, 2])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dsvsa.factors import (
    FACTOR_SIZES,
    IMAGE_SIZE,
    NUM_FACTORS,
    NUM_IMAGES,
    equivalent_orientations,
    factor_index,
    index_to_classes,
    validate_classes,
)

SPLITS = ("train", "test")
MAX_OBJECTS = 5

# bounded retries: a request that cannot be met raises instead of looping forever
_MAX_PAIR_ROUNDS = 50  # redraws of pairs whose renders came out identical
_MAX_OBJECT_TRIES = 40  # placements of one object before its scene is restarted
_MAX_SCENE_ROUNDS = 25  # restarts of scenes in which an object could not be placed


@dataclass(frozen=True)
class HoldOut:
    """A set of factor combinations kept out of the train split (compositional generalisation).

    Args:
        name: short identifier, as used by ``dsvsa generate --holdout NAME``.
        description: one sentence for the dataset card.
        predicate: vectorised test, (N, 5) int64 class indices -> (N,) bool, True = held out.
    """

    name: str
    description: str
    predicate: Callable[[np.ndarray], np.ndarray]

    def __call__(self, classes) -> np.ndarray:
        """(N,) bool: which rows of ``classes`` (N, 5) are held out."""
        arr = validate_classes(classes)
        held = np.asarray(self.predicate(arr), dtype=bool).reshape(-1)
        if held.shape[0] != arr.shape[0]:
            raise ValueError(f"holdout {self.name!r} predicate must return one bool per row")
        return held

    def grid_mask(self) -> np.ndarray:
        """(737280,) bool over the whole factor grid, True where held out (cached)."""
        return _grid_mask(self)


HOLDOUTS: dict[str, HoldOut] = {
    h.name: h
    for h in (
        HoldOut(
            "square_right",
            "squares whose centre lies in the right half of the image (pos_x > 0.5)",
            lambda c: (c[:, 0] == 0) & (c[:, 3] >= FACTOR_SIZES[3] // 2),
        ),
        HoldOut(
            "heart_large",
            "hearts at the two largest scales (scale >= 0.9)",
            lambda c: (c[:, 0] == 2) & (c[:, 1] >= 4),
        ),
    )
}


def resolve_holdout(holdout: str | HoldOut | None) -> HoldOut | None:
    """Look a holdout up by name (``HOLDOUTS``); a HoldOut or None passes through."""
    if holdout is None or isinstance(holdout, HoldOut):
        return holdout
    if isinstance(holdout, str) and holdout in HOLDOUTS:
        return HOLDOUTS[holdout]
    raise ValueError(f"unknown holdout {holdout!r}; expected one of {', '.join(HOLDOUTS)}")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of examples must be a non-negative integer, got {n!r}")
    return int(n)


@functools.lru_cache(maxsize=16)
def _grid_mask(holdout: HoldOut) -> np.ndarray:
    mask = holdout(index_to_classes(np.arange(NUM_IMAGES)))
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=32)
def _pool(holdout: HoldOut, held: bool) -> np.ndarray:
    """Flat grid indices that are (held=True) or are not (held=False) held out."""
    mask = _grid_mask(holdout)
    pool = np.flatnonzero(mask if held else ~mask)
    if pool.size == 0:
        side = "held-out" if held else "non-held-out"
        raise ValueError(f"holdout {holdout.name!r} leaves no {side} factor combination")
    pool.setflags(write=False)
    return pool


def _render(classes: np.ndarray) -> np.ndarray:
    from dsvsa.render import render

    if len(classes) == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return render(classes)


def sample_factors(
    rng: np.random.Generator,
    n: int,
    holdout: str | HoldOut | None = None,
    split: str = "train",
) -> np.ndarray:
    """Draw ``n`` factor combinations uniformly from the grid (or from one side of a holdout).

    Args:
        rng: numpy Generator.
        n: number of rows.
        holdout: None, a HoldOut or a name in ``HOLDOUTS``.
        split: "train" draws outside the held-out set, "test" inside it (ignored without holdout).
    Returns:
        (n, 5) int64 class indices.
    """
    n = _check_count(n)
    _check_split(split)
    hold = resolve_holdout(holdout)
    if hold is None:
        return index_to_classes(rng.integers(0, NUM_IMAGES, n))
    pool = _pool(hold, split == "test")
    return index_to_classes(pool[rng.integers(0, len(pool), n)])


def _change_one(
    rng: np.random.Generator, a: np.ndarray, changed: np.ndarray, avoid: HoldOut | None
) -> tuple[np.ndarray, np.ndarray]:
    """b = a with factor ``changed`` set to a uniformly drawn value that looks different.

    ``avoid``: b must not be held out by it. Returns (b (n, 5), ok (n,) bool); rows with no
    admissible value (possible only with ``avoid``) have ok False.
    """
    b = a.copy()
    ok = np.ones(len(a), dtype=bool)
    for k in range(NUM_FACTORS):
        rows = np.flatnonzero(changed == k)
        if rows.size == 0:
            continue
        size = FACTOR_SIZES[k]
        own = a[rows]
        if k == 2:
            valid = ~equivalent_orientations(own[:, 0], own[:, 2])
        else:
            valid = np.arange(size)[None] != own[:, k : k + 1]
        if avoid is not None:
            cand = np.repeat(own[:, None, :], size, axis=1)
            cand[:, :, k] = np.arange(size)
            valid &= ~avoid(cand.reshape(-1, NUM_FACTORS)).reshape(len(rows), size)
        pick = np.where(valid, rng.random((len(rows), size)), -1.0).argmax(axis=1)
        b[rows, k] = pick
        ok[rows] = valid.any(axis=1)
    return b, ok


def _differ(img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
    """(N,) bool: whether two (N, 64, 64) uint8 stacks differ in at least one pixel."""
    n = len(img_a)
    words_a = np.ascontiguousarray(img_a).reshape(n, IMAGE_SIZE * IMAGE_SIZE).view(np.uint64)
    words_b = np.ascontiguousarray(img_b).reshape(n, IMAGE_SIZE * IMAGE_SIZE).view(np.uint64)
    return (words_a != words_b).any(axis=1)


def _pair_arrays(
    rng: np.random.Generator,
    changed: np.ndarray,
    hold: HoldOut | None,
    split: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs for the given changed factors: (factors_a, factors_b, image_a, image_b)."""
    avoid = hold if (hold is not None and split == "train") else None
    fa = sample_factors(rng, len(changed), hold, split)
    fb, ok = _change_one(rng, fa, changed, avoid)
    ia, ib = _render(fa), _render(fb)
    # the decisive check: the two renders must differ in at least one pixel
    todo = np.flatnonzero(~(ok & _differ(ia, ib)))
    for _ in range(_MAX_PAIR_ROUNDS):
        if todo.size == 0:
            break
        a = sample_factors(rng, len(todo), hold, split)
        b, ok = _change_one(rng, a, changed[todo], avoid)
        img_a, img_b = _render(a), _render(b)
        ok &= _differ(img_a, img_b)
        done = todo[ok]
        fa[done], fb[done], ia[done], ib[done] = a[ok], b[ok], img_a[ok], img_b[ok]
        todo = todo[~ok]
    if todo.size:
        raise RuntimeError(
            f"could not draw {todo.size} pairs whose two images differ after {_MAX_PAIR_ROUNDS} "
            "rounds; the holdout leaves too few admissible changes"
        )
    return fa, fb, ia, ib


def _changed_features(rng: np.random.Generator, n: int, feature: str | int | None) -> np.ndarray:
    if feature is None:
        return rng.integers(0, NUM_FACTORS, n)
    return np.full(n, factor_index(feature), dtype=np.int64)


def sample_pairs(
    rng: np.random.Generator,
    n: int,
    feature: str | int | None = None,
    holdout: str | HoldOut | None = None,
    split: str = "train",
) -> dict[str, np.ndarray]:
    """Pairs of images that differ in exactly one factor.

    Args:
        rng: numpy Generator.
        n: number of pairs.
        feature: the factor to change (name or position); None draws it uniformly per pair.
        holdout: compositional split (see the module docstring); None for none.
        split: "train" or "test".
    Returns:
        dict with ``factors_a``, ``factors_b`` (n, 5) int64, ``changed`` (n,) int64 factor
        position, ``image_a``, ``image_b`` (n, 64, 64) uint8 {0, 1}. Per row, b equals a except
        in ``changed`` and the two images differ in at least one pixel.
    """
    n = _check_count(n)
    _check_split(split)
    hold = resolve_holdout(holdout)
    changed = _changed_features(rng, n, feature)
    fa, fb, ia, ib = _pair_arrays(rng, changed, hold, split)
    return {"factors_a": fa, "factors_b": fb, "changed": changed, "image_a": ia, "image_b": ib}


def _object_side(hold: HoldOut | None, split: str, first: bool) -> tuple[HoldOut | None, str]:
    """(holdout, split) for one object of a scene: in test only the first is held out."""
    if hold is None or split == "train" or first:
        return hold, split
    return None, "train"


def _check_object_range(min_objects: int, max_objects: int) -> None:
    if max_objects > MAX_OBJECTS:
        raise ValueError(
            f"a scene holds at most {MAX_OBJECTS} objects, got max_objects={max_objects}"
        )
    if min_objects < 1 or min_objects > max_objects:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects, got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )


def sample_scene_arrays(
    rng: np.random.Generator,
    n: int,
    min_objects: int = 2,
    max_objects: int = 5,
    holdout: str | HoldOut | None = None,
    split: str = "train",
) -> dict[str, np.ndarray]:
    """Scenes as padded arrays (the vectorised form behind :func:`sample_scenes`).

    Returns:
        dict with ``scene`` (n, 64, 64) uint8, ``objects`` (n, max_objects, 64, 64) uint8 (zero
        beyond ``num_objects``), ``factors`` (n, max_objects, 5) int64 (-1 beyond it) and
        ``num_objects`` (n,) int64.
    """
    n = _check_count(n)
    _check_object_range(min_objects, max_objects)
    _check_split(split)
    hold = resolve_holdout(holdout)
    counts = rng.integers(min_objects, max_objects + 1, n)
    factors = np.full((n, max_objects, NUM_FACTORS), -1, dtype=np.int64)
    objects = np.zeros((n, max_objects, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)

    pending = np.arange(n)
    for _ in range(_MAX_SCENE_ROUNDS):
        if pending.size == 0:
            break
        union = np.zeros((len(pending), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        failed = np.zeros(len(pending), dtype=bool)
        for j in range(max_objects):
            todo = np.flatnonzero((counts[pending] > j) & ~failed)  # positions within pending
            obj_hold, obj_split = _object_side(hold, split, first=j == 0)
            for _ in range(_MAX_OBJECT_TRIES):
                if todo.size == 0:
                    break
                f = sample_factors(rng, len(todo), obj_hold, obj_split)
                img = _render(f)
                ok = ~(img.astype(bool) & union[todo]).reshape(len(todo), -1).any(axis=1)
                placed = todo[ok]
                rows = pending[placed]
                factors[rows, j] = f[ok]
                objects[rows, j] = img[ok]
                union[placed] |= img[ok].astype(bool)
                todo = todo[~ok]
            failed[todo] = True
        # scenes in which some object found no free place start again from scratch
        restart = pending[failed]
        factors[restart] = -1
        objects[restart] = 0
        pending = restart
    if pending.size:
        raise RuntimeError(
            f"could not place {min_objects}-{max_objects} non-overlapping objects in "
            f"{pending.size} of {n} scenes after {_MAX_SCENE_ROUNDS} "
            f"restarts of {_MAX_OBJECT_TRIES} tries per object; ask for fewer objects or use "
            "another holdout"
        )
    return {
        "scene": objects.max(axis=1) if n else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
        "objects": objects,
        "factors": factors,
        "num_objects": counts.astype(np.int64),
    }


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    min_objects: int = 2,
    max_objects: int = 5,
    holdout: str | HoldOut | None = None,
    split: str = "train",
) -> list[dict[str, np.ndarray | int]]:
    """Scenes of ``min_objects`` .. ``max_objects`` same-colour objects, no two sharing a pixel.

    The number of objects is uniform in that range. Each object is drawn uniformly from the grid
    (or per the holdout rule) and redrawn while it touches a pixel of an earlier object; a scene in
    which an object cannot be placed is restarted, a bounded number of times.

    Args:
        rng: numpy Generator.
        n: number of scenes.
        min_objects, max_objects: range of objects per scene (at most 5).
        holdout: compositional split (see the module docstring); None for none.
        split: "train" or "test".
    Returns:
        list of n dicts: ``scene`` (64, 64) uint8 {0, 1} (union of the objects), ``objects``
        (m, 64, 64) uint8, ``factors`` (m, 5) int64, ``num_objects`` m.
    Raises:
        ValueError: more than 5 objects or an empty range.
        RuntimeError: the objects could not be placed without overlap.
    """
    arrays = sample_scene_arrays(rng, n, min_objects, max_objects, holdout, split)
    out = []
    for i, m in enumerate(arrays["num_objects"].tolist()):
        out.append(
            {
                "scene": arrays["scene"][i],
                "objects": arrays["objects"][i, :m],
                "factors": arrays["factors"][i, :m],
                "num_objects": m,
            }
        )
    return out


def sample_paired_scenes(
    rng: np.random.Generator,
    n: int,
    holdout: str | HoldOut | None = None,
    split: str = "train",
    *,
    feature: str | int | None = None,
) -> dict[str, np.ndarray]:
    """Two-object scenes before and after one object changes one factor.

    Args:
        rng: numpy Generator.
        n: number of examples.
        holdout: compositional split (see the module docstring); None for none.
        split: "train" or "test".
        feature: the factor to change (name or position); None draws it uniformly.
    Returns:
        dict with ``scene_a``, ``scene_b``, ``object_a`` (changed object before), ``object_b``
        (after), ``other`` (the unchanged object), all (n, 64, 64) uint8 {0, 1};
        ``factors_a``, ``factors_b``, ``factors_other`` (n, 5) int64; ``changed`` (n,) int64.
        ``other`` shares no pixel with ``object_a`` nor with ``object_b``, and scene_a != scene_b.
    """
    n = _check_count(n)
    _check_split(split)
    hold = resolve_holdout(holdout)
    changed = _changed_features(rng, n, feature)
    other_hold, other_split = _object_side(hold, split, first=False)

    out = {
        name: np.zeros((n, NUM_FACTORS), dtype=np.int64)
        for name in ("factors_a", "factors_b", "factors_other")
    }
    for name in ("object_a", "object_b", "other"):
        out[name] = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    todo = np.arange(n)
    for _ in range(_MAX_SCENE_ROUNDS):
        if todo.size == 0:
            break
        fa, fb, ia, ib = _pair_arrays(rng, changed[todo], hold, split)
        both = (ia | ib).astype(bool)
        left = np.arange(len(todo))  # positions within todo still without a free "other"
        for _ in range(_MAX_OBJECT_TRIES):
            if left.size == 0:
                break
            fo = sample_factors(rng, len(left), other_hold, other_split)
            io = _render(fo)
            ok = ~(io.astype(bool) & both[left]).reshape(len(left), -1).any(axis=1)
            pos = left[ok]
            rows = todo[pos]
            out["factors_a"][rows], out["factors_b"][rows] = fa[pos], fb[pos]
            out["object_a"][rows], out["object_b"][rows] = ia[pos], ib[pos]
            out["factors_other"][rows], out["other"][rows] = fo[ok], io[ok]
            left = left[~ok]
        todo = todo[left]
    if todo.size:
        raise RuntimeError(
            f"could not place the second object without overlap in {todo.size} of {n} paired "
            f"scenes after {_MAX_SCENE_ROUNDS} rounds"
        )
    out["scene_a"] = out["object_a"] | out["other"]
    out["scene_b"] = out["object_b"] | out["other"]
    out["changed"] = changed
    return out
