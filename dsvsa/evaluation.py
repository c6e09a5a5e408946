"""Held-out evaluation of a model against exact renders: the metrics of the design notes.

    dsvsa evaluate MODEL --data DIR_OR_REPO [--out DIR] [--num N] [--seed S]

Every score compares a decoded image (logits > 0) with the ground-truth render of the factors it
should show. The renderer is exact for any factor combination, so exchanges are scored for
*unrelated* donors (all five factors independent), not only inside training-style pairs.

Metrics (each edit metric also reported for the no-change baseline: return the unedited image):

* ``recon_bce``: BCE summed over the 64x64 pixels, mean over images (nats per image);
  ``recon_iou``: IoU of the reconstruction with the input render.
* ``exchange_iou[f]``: a's latent with slot f taken from an unrelated donor b, scored against the
  render of a's factors with f set to b's value, symmetry-aware: for an orientation exchange the
  donor's angle is only defined modulo its shape's period (square pi/2, ellipse pi), for a shape
  exchange the recipient's angle is; the score is the best IoU over every orientation class within
  half a class step of theta + k * period. ``exchange_iou_strict`` scores the single target.
* ``pair_swap_iou[f]``: the same swap inside pairs that differ only in f (the weaker score).
* ``readout_exchange_accuracy[f]``: the factor readout (:mod:`dsvsa.readout`) sees b's value for f
  and a's for the other four (orientation modulo symmetry); ``readout_swapped_accuracy[f]`` asks
  only for b's value of f. ``exchange_matrix[s][k]``: over swaps
  of slot s whose target visibly differs from a in factor s, the fraction where the readout sees
  factor k changed from a's value; the ideal is the identity.
* ``scene_edit_iou[f]``: in a two-object scene, object j's slot f from an unrelated donor; the
  edited scene decoded and scored against the rendered edited scene (symmetry-aware as above).
* ``composition_iou[n]``: n = 1..5 non-overlapping objects, each encoded from its own image;
  the scene vector is ``model.scene_vector`` (objects bound to object roles) when the model binds
  objects and has a role for each, otherwise the plain sum of the object vectors (the scene
  stage's form; ``composition_mode`` says which). ``composition_iou_sum`` is always the plain sum.
* ``query_accuracy[f]``: from the bound scene vector of two objects, unbind object j and feature
  f (``model.query``) and take the nearest prototype, prototypes being the mean slot-f posterior
  means of exact renders with each value; orientation right modulo symmetry. Beside it the chance
  level; ``query_accuracy_object`` queries the object vector itself (no object unbinding).

Held-out data: a dataset folder or Hub id (its ``test`` split, see :func:`dsvsa.export.load_split`)
or, by default, fresh draws from the samplers with a generator seeded by ``(seed, EVAL_SALT)``, a
stream no training run draws from.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dsvsa.factors import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    NUM_FACTORS,
    equivalent_orientations,
)

logger = logging.getLogger(__name__)

EVAL_SALT = 0x5EED_E7A1  # mixed into the seed: evaluation draws never repeat a training stream
MAX_OBJECTS = 5
METRICS_FILE = "metrics.json"
FIGURES: dict[str, str] = {
    "reconstructions": "reconstructions.png",
    "swap_grid": "swap_grid.png",
    "exchange_matrix": "exchange_matrix.png",
    "composition": "composition.png",
}
# the metric groups of a report and the held-out data each one reads (see ``HeldOut.parts``)
DATA_GROUPS: dict[str, str] = {
    "singles": "reconstruction, exchange, readout",
    "pairs": "swaps inside pairs",
    "scenes": "composition",
    "scene2": "scene edits, queries",
    "prototypes": "query prototypes",
}
SHAPE, ORIENTATION = 0, 2
NUM_ORIENTATIONS = FACTOR_SIZES[ORIENTATION]

# _EQUIV[s, o] = (40,) bool mask of the orientation classes that look like o for shape s
_EQUIV = np.stack(
    [
        equivalent_orientations(np.full(NUM_ORIENTATIONS, s), np.arange(NUM_ORIENTATIONS))
        for s in range(FACTOR_SIZES[SHAPE])
    ]
)


def _render(classes: np.ndarray) -> np.ndarray:
    from dsvsa.render import render

    if len(classes) == 0:
        return np.zeros((0, 64, 64), dtype=np.uint8)
    return render(classes)


# ---- scoring primitives --------------------------------------------------------------------


def iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) intersection over union of binary images (N, 64, 64); 1.0 when both are empty."""
    p = np.asarray(pred).astype(bool).reshape(len(pred), -1)
    t = np.asarray(target).astype(bool).reshape(len(target), -1)
    inter = (p & t).sum(1)
    union = (p | t).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def orientation_closure(candidates: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """(N, 40) bool: every class that looks like one of ``candidates`` for the given shapes."""
    eq = _EQUIV[np.asarray(shape, dtype=np.int64)]  # (N, 40, 40)
    return (candidates[:, :, None] & eq).any(axis=1)


def exchange_targets(
    factors_a: np.ndarray, factors_b: np.ndarray, feature: int
) -> tuple[np.ndarray, np.ndarray]:
    """Target of giving a the value of b for ``feature``, with its equally right orientations.

    Returns:
        target (N, 5) = a with factor ``feature`` from b, and candidates (N, 40) bool: the
        orientation classes the target may take. For an orientation exchange these are the
        classes equivalent to b's angle under b's shape (the donor's image fixes it only modulo
        that symmetry); for a shape exchange those equivalent to a's angle under a's shape;
        otherwise the target's own class only.
    """
    target = factors_a.copy()
    target[:, feature] = factors_b[:, feature]
    if feature == ORIENTATION:
        candidates = _EQUIV[factors_b[:, SHAPE], factors_b[:, ORIENTATION]]
    elif feature == SHAPE:
        candidates = _EQUIV[factors_a[:, SHAPE], factors_a[:, ORIENTATION]]
    else:
        candidates = np.eye(NUM_ORIENTATIONS, dtype=bool)[target[:, ORIENTATION]]
    return target, candidates


def best_iou(
    pred: np.ndarray,
    target: np.ndarray,
    candidates: np.ndarray,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of ``pred`` over the target rendered at each candidate orientation.

    Args:
        pred: (N, 64, 64) binary images.
        target: (N, 5) target factors (orientation column ignored).
        candidates: (N, 40) bool, at least one True per row.
        background: optional (N, 64, 64) images added (OR) to every render, e.g. the other
            objects of a scene.
    Returns:
        (scores (N,), best target images (N, 64, 64) uint8).
    """
    n = len(pred)
    best = np.full(n, -1.0)
    best_img = np.zeros((n, 64, 64), dtype=np.uint8)
    for c in np.flatnonzero(candidates.any(axis=0)):
        rows = np.flatnonzero(candidates[:, c])
        factors = target[rows].copy()
        factors[:, ORIENTATION] = c
        imgs = _render(factors)
        if background is not None:
            imgs = imgs | background[rows]
        score = iou(pred[rows], imgs)
        better = score > best[rows]
        best[rows[better]] = score[better]
        best_img[rows[better]] = imgs[better]
    return best, best_img


def readout_hits(pred: np.ndarray, target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(N, 5) bool: readout classes that agree with the target (orientation: any candidate,
    modulo the target shape's symmetry)."""
    hits = pred == target
    closure = orientation_closure(candidates, target[:, SHAPE])
    hits[:, ORIENTATION] = closure[np.arange(len(pred)), pred[:, ORIENTATION]]
    return hits


def exchange_changes(
    pred: np.ndarray, factors_a: np.ndarray, factors_b: np.ndarray, feature: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which factors the readout sees changed from a after swapping slot ``feature``.

    Returns:
        changed (N, 5) bool (readout disagrees with a's value; orientation modulo the symmetry of
        the shape the result should have), informative (N,) bool (the true target differs
        visibly from a in ``feature``: rows used for the matrix).
    """
    result_shape = factors_b[:, SHAPE] if feature == SHAPE else factors_a[:, SHAPE]
    own = _EQUIV[factors_a[:, SHAPE], factors_a[:, ORIENTATION]]
    same = pred == factors_a
    closure = orientation_closure(own, result_shape)
    same[:, ORIENTATION] = closure[np.arange(len(pred)), pred[:, ORIENTATION]]
    if feature == ORIENTATION:
        _, candidates = exchange_targets(factors_a, factors_b, feature)
        overlap = orientation_closure(candidates, factors_a[:, SHAPE]) & own
        informative = ~overlap.any(axis=1)
    else:
        informative = factors_a[:, feature] != factors_b[:, feature]
    return ~same, informative


# ---- held-out data -------------------------------------------------------------------------


@dataclass
class HeldOut:
    """Everything an evaluation scores, drawn once: singles, donors, pairs and scenes.

    Attributes:
        factors, images: (N, 5), (N, 64, 64) held-out single objects (the recipients a).
        donor_factors, donor_images: (N, 5), (N, 64, 64) unrelated donors b.
        pairs: per feature position, dict(factors_a, factors_b, image_a, image_b) of pairs that
            differ only in that feature.
        scenes: per number of objects n, dict(factors (S, n, 5), objects (S, n, 64, 64),
            scene (S, 64, 64)).
        edit_object: (S2,) which object of each two-object scene the edit metric changes.
        prototype_factors, prototype_images: (P, 5), (P, 64, 64) exact renders whose mean
            slot latents are the query prototypes.
        source: where the data came from (for the report).
        notes: what the report should add (parts drawn from the sampler instead of a dataset).
        parts: the source of each metric group, keys of ``DATA_GROUPS`` (dataset, config and
            split, or the sampler).
    """

    factors: np.ndarray
    images: np.ndarray
    donor_factors: np.ndarray
    donor_images: np.ndarray
    pairs: dict[int, dict[str, np.ndarray]]
    scenes: dict[int, dict[str, np.ndarray]]
    edit_object: np.ndarray
    prototype_factors: np.ndarray
    prototype_images: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)


def _generators(seed: int, count: int) -> list[np.random.Generator]:
    sequences = np.random.SeedSequence([int(seed), EVAL_SALT]).spawn(count)
    return [np.random.default_rng(s) for s in sequences]


def _prototype_factors(rng: np.random.Generator, per_value: int) -> np.ndarray:
    """(113 * per_value, 5): for every factor k and value v, random objects with factor k = v."""
    from dsvsa.sampling import sample_factors

    rows = []
    for k, size in enumerate(FACTOR_SIZES):
        f = sample_factors(rng, size * per_value)
        f[:, k] = np.repeat(np.arange(size), per_value)
        rows.append(f)
    return np.concatenate(rows)


def _stack_scenes(scenes: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {
        "factors": np.stack([s["factors"] for s in scenes]).astype(np.int64),
        "objects": np.stack([s["objects"] for s in scenes]).astype(np.uint8),
        "scene": np.stack([s["scene"] for s in scenes]).astype(np.uint8),
    }


def sample_held_out(
    num: int = 1000,
    seed: int = 0,
    holdout: str | None = None,
    num_scenes: int | None = None,
    prototypes_per_value: int = 16,
) -> HeldOut:
    """Draw the evaluation's data from the samplers (split "test"), deterministically.

    Args:
        num: single objects, donors and pairs per feature.
        seed: evaluation seed (mixed with ``EVAL_SALT``).
        holdout: compositional split name; recipients, pairs and first scene objects are then
            held-out combinations. Donors are always drawn from the whole grid.
        num_scenes: scenes per number of objects (default ``max(num // 2, 1)``).
        prototypes_per_value: exact renders averaged into each query prototype.
    """
    from dsvsa.sampling import sample_factors, sample_pairs, sample_scenes

    num_scenes = max(num // 2, 1) if num_scenes is None else num_scenes
    g_single, g_donor, g_pairs, g_scenes, g_edit, g_proto = _generators(seed, 6)
    factors = sample_factors(g_single, num, holdout, "test")
    donors = sample_factors(g_donor, num)
    pairs = {}
    for k in range(NUM_FACTORS):
        batch = sample_pairs(g_pairs, num, feature=k, holdout=holdout, split="test")
        pairs[k] = {name: batch[name] for name in ("factors_a", "factors_b", "image_a", "image_b")}
    scenes = {}
    for n in range(1, MAX_OBJECTS + 1 if num_scenes else 1):
        drawn = sample_scenes(g_scenes, num_scenes, n, n, holdout=holdout, split="test")
        scenes[n] = _stack_scenes(drawn)
    source = "sampler (split test" + (f", holdout {holdout})" if holdout else ")")
    described = f"{source}, seed {seed}"
    prototype_factors = _prototype_factors(g_proto, prototypes_per_value)
    return HeldOut(
        factors=factors,
        images=_render(factors),
        donor_factors=donors,
        donor_images=_render(donors),
        pairs=pairs,
        scenes=scenes,
        edit_object=g_edit.integers(0, 2, num_scenes),
        prototype_factors=prototype_factors,
        prototype_images=_render(prototype_factors),
        source=described,
        parts={
            "singles": f"{described} (donors from the whole grid)",
            "pairs": described,
            "scenes": described,
            "scene2": described,
            "prototypes": f"exact renders, {prototypes_per_value} per factor value",
        },
    )


def load_held_out(
    data: str | Path, num: int = 1000, seed: int = 0, prototypes_per_value: int = 16
) -> HeldOut:
    """Held-out data from a dataset folder or Hub id: the ``test`` splits of its configs.

    Singles and pairs come from the ``paired`` config (recipients are ``image_a``; each donor is
    the ``image_a`` of another row, so its factors are independent of the recipient's), scenes
    from the ``scenes`` config grouped by their number of objects. A dataset without ``paired``
    or without ``scenes`` lends its ``paired_scenes`` config instead where it can: the changed
    object before and after its change as singles and pairs, ``scene_a`` (that object and the
    other one) as the two-object scenes. What no config of the dataset provides is drawn from the
    sampler; ``notes`` says so and ``parts`` names the source of each metric group.

    Raises:
        FileNotFoundError: no such dataset folder or Hub repository, or the dataset has none of
            the paired, scenes and paired_scenes test splits.
        dsvsa.model.HubUnreachableError: a Hub id, the Hub cannot be reached and the dataset is
            not in the local cache.
    """
    from dsvsa.export import check_dataset_source, load_split

    check_dataset_source(data)  # a missing folder or unknown repo fails here, before any work
    notes: list[str] = []
    g_pick, g_donor, g_edit = _generators(seed + 1, 3)
    loaded: dict[str, Any] = {}
    errors = []
    for config in ("paired", "scenes", "paired_scenes"):
        if config == "paired_scenes" and {"paired", "scenes"} <= set(loaded):
            break  # nothing left for it to lend
        try:
            loaded[config] = load_split(data, config, "test")
        except (FileNotFoundError, ValueError, KeyError) as err:
            errors.append(f"{config}: {' '.join(str(err).split())}")
    if not loaded:
        raise FileNotFoundError(
            f"no paired, scenes or paired_scenes test split could be loaded from {data}: "
            + "; ".join(errors)
        )
    lender = loaded.get("paired_scenes")
    has_singles = "paired" in loaded or lender is not None
    has_scenes = "scenes" in loaded
    # the sampler fills in whatever the dataset lacks (and always draws the prototypes)
    held = sample_held_out(
        0 if has_singles else num,
        seed,
        num_scenes=0 if has_scenes else max(num // 2, 1),
        prototypes_per_value=prototypes_per_value,
    )
    sampler = held.source

    def where(config: str, what: str = "") -> str:
        return f"{data}, config {config}, split test" + (f" ({what})" if what else "")

    if "paired" in loaded or lender is not None:
        if "paired" in loaded:
            p = loaded["paired"]
            fa, fb, ia, ib = p["factors_a"], p["factors_b"], p["image_a"], p["image_b"]
            changed, config = p["changed"], "paired"
            held.parts["singles"] = where("paired", "image_a; donors: image_a of other rows")
            held.parts["pairs"] = where("paired")
        else:
            fa, fb, ia, ib = (lender[k] for k in ("factors_a", "factors_b", "object_a", "object_b"))
            changed, config = lender["changed"], "paired_scenes"
            held.parts["singles"] = where(
                "paired_scenes", "object_a; donors: object_a of other rows"
            )
            held.parts["pairs"] = where("paired_scenes", "object_a and object_b")
            notes.append(
                f"no paired test split in {data}: single objects and pairs come from its "
                "paired_scenes config (the changed object before and after the change)"
            )
        if len(fa) < 2:
            raise ValueError(
                f"the {config} test split of {data} has {len(fa)} rows; need 2 or more"
            )
        rows = g_pick.permutation(len(fa))[:num]
        donor_rows = (rows + 1 + g_donor.integers(0, len(fa) - 1, len(rows))) % len(fa)
        held.factors, held.images = fa[rows], ia[rows]
        held.donor_factors, held.donor_images = fa[donor_rows], ia[donor_rows]
        for k in range(NUM_FACTORS):
            sel = np.flatnonzero(changed == k)[:num]
            held.pairs[k] = {
                "factors_a": fa[sel],
                "factors_b": fb[sel],
                "image_a": ia[sel],
                "image_b": ib[sel],
            }
    else:
        notes.append(
            f"no paired test split in {data}; single objects and pairs are drawn from the sampler"
        )

    num_scenes = max(num // 2, 1)
    if has_scenes:
        by_count: dict[int, list] = {}
        for scene in loaded["scenes"]:
            by_count.setdefault(int(scene["num_objects"]), []).append(scene)
        present = sorted(by_count)
        missing = [n for n in range(1, MAX_OBJECTS + 1) if n not in by_count]
        scene_source = where("scenes", f"{present[0]}-{present[-1]} objects" if present else "")
        if missing:
            from dsvsa.sampling import sample_scenes

            g_scenes = _generators(seed + 2, 1)[0]
            notes.append(f"no {missing}-object scenes in {data}; drawn from the sampler")
            for n in missing:
                by_count[n] = sample_scenes(g_scenes, num_scenes, n, n, split="test")
            counts = ", ".join(map(str, missing))
            scene_source += f"; {sampler} for {counts} object(s)"
        held.scenes = {n: _stack_scenes(by_count[n][:num_scenes]) for n in sorted(by_count)}
        held.parts["scenes"] = scene_source
        held.parts["scene2"] = (
            where("scenes", "2-object scenes") if 2 not in missing else held.parts["scene2"]
        )
    elif lender is not None:
        rows = g_pick.permutation(len(lender["factors_a"]))[:num_scenes]
        held.scenes[2] = {
            "factors": np.stack([lender["factors_a"], lender["factors_other"]], axis=1)[rows],
            "objects": np.stack([lender["object_a"], lender["other"]], axis=1)[rows],
            "scene": lender["scene_a"][rows],
        }
        held.parts["scene2"] = where("paired_scenes", "scene_a = object_a with other")
        held.parts["scenes"] = (
            f"{where('paired_scenes', 'scene_a, 2 objects')}; {sampler} for 1, 3, 4, 5 objects"
        )
        notes.append(
            f"no scenes test split in {data}: two-object scenes come from its paired_scenes "
            "config, scenes of 1, 3, 4 and 5 objects from the sampler"
        )
    else:
        notes.append(f"no scenes test split in {data}; scenes are drawn from the sampler")
    held.edit_object = g_edit.integers(0, 2, len(held.scenes[2]["factors"]))
    held.source = f"{data} (test split), seed {seed}"
    held.notes = notes
    return held


# ---- running the model ---------------------------------------------------------------------


class _Runner:
    """Batched calls into the model's public API, no gradients, on the model's device."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        config = getattr(model, "config", None)
        self.bind_objects = bool(getattr(config, "bind_objects", False))
        self.num_object_roles = int(getattr(config, "num_object_roles", 0))

    def latent(self, images: np.ndarray) -> torch.Tensor:
        """(N, 64, 64) -> (N, 5, D) posterior means."""
        parts = [
            self.model.latent(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(parts)

    def decode(
        self, v: torch.Tensor, target: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, D) vectors -> (binary (N, 64, 64) uint8, BCE per image (N,) when target given)."""
        from dsvsa.images import logits_to_binary

        binary, bce = [], []
        for i in range(0, len(v), self.batch_size):
            logits = self.model.decode(v[i : i + self.batch_size]).float()
            binary.append(logits_to_binary(logits))
            if target is not None:
                t = torch.from_numpy(target[i : i + self.batch_size]).to(logits)[:, None]
                per_pixel = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
                bce.append(per_pixel.flatten(1).sum(1).cpu().numpy())
        return np.concatenate(binary), (np.concatenate(bce) if target is not None else None)

    def scene(self, objects: torch.Tensor, bound: bool) -> torch.Tensor:
        """(S, M, D) object vectors -> (S, D): model.scene_vector if ``bound`` else plain sum."""
        if bound:
            return self.model.scene_vector(objects)
        return objects.sum(dim=1)

    def can_bind(self, m: int) -> bool:
        return self.bind_objects and m <= self.num_object_roles


def _per_feature(values: list[float]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(FACTOR_NAMES, values, strict=True)}


# ---- the evaluation ------------------------------------------------------------------------


def evaluate(
    model: Any,
    data: str | Path | HeldOut | None = None,
    num: int = 1000,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    holdout: str | None = None,
    readout: Any = None,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Measure a model on held-out data; optionally write ``metrics.json`` and the figures.

    Args:
        model: a :class:`dsvsa.DSpritesVSA` (or an object with its ``latent``, ``object_vector``,
            ``scene_vector``, ``decode`` and ``query`` methods and a ``config``).
        data: dataset folder or Hub id, an already drawn :class:`HeldOut`, or None for fresh
            sampler draws.
        num: held-out examples per metric (single objects, donors, pairs per feature); scenes
            per number of objects are ``num // 2``.
        seed: evaluation seed.
        out_dir: if given, folder for ``metrics.json`` and the PNG figures (names in ``FIGURES``).
        holdout: compositional split for sampler draws (ignored for a dataset).
        readout: a factor readout (default: the packaged one, :func:`dsvsa.readout.load_readout`).
        batch_size: images per model call.

    Returns:
        dict of metrics (see the module docstring); per-feature metrics are dicts keyed by factor
        name, ``exchange_matrix`` is a 5x5 list (rows: slot swapped, columns: factor changed).

    Example:
        >>> from dsvsa import DSpritesVSA
        >>> model = DSpritesVSA.from_pretrained("models/default")  # doctest: +SKIP
        >>> metrics = evaluate(model, num=200)  # doctest: +SKIP
        >>> round(metrics["exchange_iou"]["shape"], 2)  # doctest: +SKIP
    """
    from dsvsa.readout import factor_correct, load_readout

    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be >= 1 (held-out examples per metric), got {num!r}")
    start = time.perf_counter()
    if isinstance(data, HeldOut):
        held = data
    elif data is None:
        held = sample_held_out(num, seed, holdout)
    else:
        held = load_held_out(data, num, seed)
    readout = readout if readout is not None else load_readout()
    run = _Runner(model, batch_size)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    examples: dict[str, Any] = {}
    try:
        with torch.no_grad():
            metrics = _measure(run, held, readout, examples)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()

    base_pred = readout.predict(held.images)
    metrics["readout_accuracy"] = _per_feature(
        factor_correct(base_pred, held.factors).mean(axis=0).tolist()
    )
    notes = list(held.notes)
    if not run.can_bind(2):
        notes.append("objects are not bound to object roles: no query_accuracy from scenes")
    metrics = {
        "num": int(len(held.factors)),
        "seed": int(seed),
        "data": held.source,
        "data_sources": {DATA_GROUPS.get(k, k): v for k, v in held.parts.items()},
        "notes": notes,
        **metrics,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if out_dir is not None:
        write_outputs(metrics, examples, out_dir)
    return metrics


def _measure(run: _Runner, held: HeldOut, readout: Any, examples: dict[str, Any]) -> dict:
    """All metrics; fills ``examples`` with images for the figures."""
    m = run.model
    fa, ia = held.factors, held.images
    fb, ib = held.donor_factors, held.donor_images
    out: dict[str, Any] = {}

    # reconstruction
    za = run.latent(ia)
    recon, bce = run.decode(m.object_vector(za), target=ia)
    out["recon_bce"] = float(bce.mean())
    out["recon_iou"] = float(iou(recon, ia).mean())
    from dsvsa.readout import factor_correct

    recon_pred = readout.predict(recon)
    out["readout_recon_accuracy"] = float(factor_correct(recon_pred, fa).all(axis=1).mean())
    examples["reconstructions"] = (ia[:10], recon[:10])

    # exchange from unrelated donors
    zb = run.latent(ib)
    base_pred = readout.predict(ia)
    sym, strict, base, acc, acc_base, swapped, swapped_base = [], [], [], [], [], [], []
    matrix = np.full((NUM_FACTORS, NUM_FACTORS), np.nan)
    matrix_base = np.full((NUM_FACTORS, NUM_FACTORS), np.nan)
    informative_rows = []
    swap_examples = []
    for f in range(NUM_FACTORS):
        z = za.clone()
        z[:, f] = zb[:, f]
        result, _ = run.decode(m.object_vector(z))
        target, candidates = exchange_targets(fa, fb, f)
        score, target_img = best_iou(result, target, candidates)
        sym.append(score.mean())
        strict.append(iou(result, _render(target)).mean())
        base.append(best_iou(ia, target, candidates)[0].mean())

        pred = readout.predict(result)
        hits = readout_hits(pred, target, candidates)
        hits_base = readout_hits(base_pred, target, candidates)
        acc.append(hits.all(axis=1).mean())
        acc_base.append(hits_base.all(axis=1).mean())
        swapped.append(hits[:, f].mean())
        swapped_base.append(hits_base[:, f].mean())
        changed, informative = exchange_changes(pred, fa, fb, f)
        changed_base, _ = exchange_changes(base_pred, fa, fb, f)
        informative_rows.append(int(informative.sum()))
        if informative.any():
            matrix[f] = changed[informative].mean(axis=0)
            matrix_base[f] = changed_base[informative].mean(axis=0)
        swap_examples.append((ia[:3], ib[:3], result[:3], target_img[:3]))
    examples["swap_grid"] = swap_examples
    out["exchange_iou"] = _per_feature(sym)
    out["exchange_iou_baseline"] = _per_feature(base)
    out["exchange_iou_strict"] = _per_feature(strict)
    out["readout_exchange_accuracy"] = _per_feature(acc)
    out["readout_exchange_accuracy_baseline"] = _per_feature(acc_base)
    out["readout_swapped_accuracy"] = _per_feature(swapped)
    out["readout_swapped_accuracy_baseline"] = _per_feature(swapped_base)
    out["exchange_matrix"] = _nan_to_none(matrix)
    out["exchange_matrix_baseline"] = _nan_to_none(matrix_base)
    out["exchange_matrix_rows"] = dict(zip(FACTOR_NAMES, informative_rows, strict=True))
    examples["exchange_matrix"] = matrix

    # swaps inside pairs that differ only in the swapped feature
    pair, pair_base = [], []
    for f in range(NUM_FACTORS):
        p = held.pairs[f]
        if len(p["factors_a"]) == 0:
            pair.append(math.nan)
            pair_base.append(math.nan)
            continue
        z = run.latent(p["image_a"])
        z[:, f] = run.latent(p["image_b"])[:, f]
        result, _ = run.decode(m.object_vector(z))
        target, candidates = exchange_targets(p["factors_a"], p["factors_b"], f)
        pair.append(best_iou(result, target, candidates)[0].mean())
        pair_base.append(best_iou(p["image_a"], target, candidates)[0].mean())
    out["pair_swap_iou"] = _per_feature(pair)
    out["pair_swap_iou_baseline"] = _per_feature(pair_base)

    # composition of 1..5 objects
    comp, comp_sum, modes, comp_examples = {}, {}, {}, []
    object_vectors: dict[int, torch.Tensor] = {}
    for n, sc in sorted(held.scenes.items()):
        S = len(sc["factors"])
        z = run.latent(sc["objects"].reshape(S * n, 64, 64)).view(S, n, NUM_FACTORS, -1)
        objs = m.object_vector(z)  # (S, n, D)
        object_vectors[n] = objs
        summed, _ = run.decode(run.scene(objs, bound=False))
        comp_sum[str(n)] = float(iou(summed, sc["scene"]).mean())
        if run.can_bind(n):
            decoded, _ = run.decode(run.scene(objs, bound=True))
            comp[str(n)] = float(iou(decoded, sc["scene"]).mean())
            modes[str(n)] = "bound"
        else:
            decoded = summed
            comp[str(n)] = comp_sum[str(n)]
            modes[str(n)] = "sum"
        comp_examples.append((sc["scene"][:4], decoded[:4]))
    out["composition_iou"] = comp
    out["composition_mode"] = modes
    out["composition_iou_sum"] = comp_sum
    examples["composition"] = comp_examples

    # edits inside two-object scenes, and queries
    out.update(_scene_edits(run, held, zb, object_vectors.get(2)))
    out.update(_queries(run, held, object_vectors.get(2)))
    return out


def _scene_edits(run: _Runner, held: HeldOut, zb: torch.Tensor, objs2: Any) -> dict[str, Any]:
    """Edit object j of a two-object scene with slot f from an unrelated donor."""
    if objs2 is None or 2 not in held.scenes:
        return {}
    m = run.model
    sc = held.scenes[2]
    S = len(sc["factors"])
    rows = np.arange(S)
    j = held.edit_object[:S]
    donors = np.arange(S) % len(held.donor_factors)
    z = run.latent(sc["objects"].reshape(S * 2, 64, 64)).view(S, 2, NUM_FACTORS, -1)
    edited_f = sc["factors"][rows, j]
    other_img = sc["objects"][rows, 1 - j]
    scores, baseline = [], []
    for f in range(NUM_FACTORS):
        zz = z.clone()
        zz[torch.from_numpy(rows), torch.from_numpy(j), f] = zb[torch.from_numpy(donors), f]
        scene_vec = run.scene(m.object_vector(zz), bound=run.can_bind(2))
        result, _ = run.decode(scene_vec)
        target, candidates = exchange_targets(edited_f, held.donor_factors[donors], f)
        scores.append(best_iou(result, target, candidates, background=other_img)[0].mean())
        baseline.append(best_iou(sc["scene"], target, candidates, background=other_img)[0].mean())
    return {
        "scene_edit_iou": _per_feature(scores),
        "scene_edit_iou_baseline": _per_feature(baseline),
        "scene_edit_mode": "bound" if run.can_bind(2) else "sum",
    }


def _queries(run: _Runner, held: HeldOut, objs2: Any) -> dict[str, Any]:
    """Query accuracy from two-object scene vectors (and from object vectors) with prototypes."""
    if objs2 is None:
        return {}
    m = run.model
    factors = held.scenes[2]["factors"]  # (S, 2, 5)
    pf = held.prototype_factors
    zp = run.latent(held.prototype_images)  # (P, 5, D)
    prototypes = []
    for k, size in enumerate(FACTOR_SIZES):
        mean = torch.stack([zp[pf[:, k] == v, k].mean(0) for v in range(size)])  # (V, D)
        prototypes.append(mean)

    def right(k: int, obj: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if k == ORIENTATION:
            return _EQUIV[obj[:, SHAPE], obj[:, ORIENTATION]][np.arange(len(obj)), idx]
        return idx == obj[:, k]

    scene_vec = run.scene(objs2, bound=True) if run.can_bind(2) else None
    acc, acc_object, chance = [], [], []
    for k in range(NUM_FACTORS):
        hits, hits_object, level = [], [], []
        for j in range(2):
            obj = factors[:, j]
            if scene_vec is not None:
                idx = m.query(scene_vec, j, FACTOR_NAMES[k], prototypes[k]).cpu().numpy()
                hits.append(right(k, obj, idx))
            idx = m.query(objs2[:, j], None, FACTOR_NAMES[k], prototypes[k]).cpu().numpy()
            hits_object.append(right(k, obj, idx))
            if k == ORIENTATION:
                level.append(_EQUIV[obj[:, SHAPE], obj[:, ORIENTATION]].sum(1) / NUM_ORIENTATIONS)
            else:
                level.append(np.full(len(obj), 1.0 / FACTOR_SIZES[k]))
        acc.append(np.concatenate(hits).mean() if hits else math.nan)
        acc_object.append(np.concatenate(hits_object).mean())
        chance.append(np.concatenate(level).mean())
    out = {
        "query_accuracy": _per_feature(acc),
        "query_accuracy_chance": _per_feature(chance),
        "query_accuracy_object": _per_feature(acc_object),
    }
    for key in out:
        vals = [v for v in out[key].values() if not math.isnan(v)]
        out[key]["mean"] = float(np.mean(vals)) if vals else math.nan
    return out


def _nan_to_none(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]


# ---- outputs -------------------------------------------------------------------------------


def flatten_metrics(metrics: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Scalar metrics as tracker keys, e.g. ``eval/exchange_iou/shape``; NaN and text dropped."""
    flat: dict[str, float] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isnan(float(value)):
                flat[key] = float(value)

    for name, value in metrics.items():
        if name in ("num", "seed", "seconds", "exchange_matrix_rows"):
            continue
        if name.startswith("exchange_matrix"):
            for s, row in zip(FACTOR_NAMES, value, strict=True):
                for k, v in zip(FACTOR_NAMES, row, strict=True):
                    if v is not None:
                        flat[f"{prefix}/{name}/{s}/{k}"] = float(v)
            continue
        visit(f"{prefix}/{name}", value)
    return flat


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """The metrics as Markdown tables (model beside the no-change baseline), for cards and CLI."""
    lines = [
        "| metric | model | no-change baseline |",
        "|---|---|---|",
        f"| recon BCE (nats/image) | {_fmt(metrics['recon_bce'], 1)} | – |",
        f"| recon IoU | {_fmt(metrics['recon_iou'])} | – |",
        f"| readout accuracy of reconstructions (all 5 factors) | "
        f"{_fmt(metrics['readout_recon_accuracy'])} | – |",
    ]

    def block(title: str, key: str, base_key: str | None) -> None:
        if key not in metrics:
            return
        for name in FACTOR_NAMES:
            base = metrics[base_key][name] if base_key else None
            lines.append(f"| {title}: {name} | {_fmt(metrics[key][name])} | {_fmt(base)} |")

    block("exchange IoU, unrelated donor", "exchange_iou", "exchange_iou_baseline")
    block(
        "readout exchange accuracy",
        "readout_exchange_accuracy",
        "readout_exchange_accuracy_baseline",
    )
    block("swap IoU inside pairs", "pair_swap_iou", "pair_swap_iou_baseline")
    block("scene edit IoU (2 objects)", "scene_edit_iou", "scene_edit_iou_baseline")
    for n, value in metrics["composition_iou"].items():
        mode = metrics["composition_mode"][n]
        lines.append(
            f"| composition IoU, {n} object{'s' if n != '1' else ''} ({mode}) | {_fmt(value)} | – |"
        )
    if "query_accuracy" in metrics:
        for name in (*FACTOR_NAMES, "mean"):
            lines.append(
                f"| query accuracy (chance in baseline column): {name} | "
                f"{_fmt(metrics['query_accuracy'][name])} | "
                f"{_fmt(metrics['query_accuracy_chance'][name])} |"
            )
    lines += [
        "",
        "Exchange matrix: rows = slot swapped, columns = factor the readout sees "
        "changed (ideal: identity).",
        "",
        "| slot swapped | " + " | ".join(FACTOR_NAMES) + " |",
        "|---" * (NUM_FACTORS + 1) + "|",
    ]
    for s, row in zip(FACTOR_NAMES, metrics["exchange_matrix"], strict=True):
        lines.append(f"| {s} | " + " | ".join(_fmt(v, 2) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(metrics: dict[str, Any], examples: dict[str, Any], out_dir: str | Path) -> None:
    """Write ``metrics.json`` and the figures (``FIGURES``) into ``out_dir``."""
    from dsvsa.figures import heatmap, image_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics, "figures": dict(FIGURES)}
    text = json.dumps(_json_ready(metrics), indent=2, allow_nan=False)
    (out / METRICS_FILE).write_text(text + "\n")

    inputs, recons = examples["reconstructions"]
    image_grid([list(inputs), list(recons)], row_labels=["input", "reconstruction"]).save(
        out / FIGURES["reconstructions"]
    )
    rows = [
        [img for ex in zip(*group, strict=True) for img in ex] for group in examples["swap_grid"]
    ]
    n_ex = len(examples["swap_grid"][0][0])
    image_grid(
        rows,
        row_labels=list(FACTOR_NAMES),
        col_labels=["a", "b", "result", "target"] * n_ex,
        group=4,
    ).save(out / FIGURES["swap_grid"])
    heatmap(
        examples["exchange_matrix"],
        row_labels=list(FACTOR_NAMES),
        col_labels=list(FACTOR_NAMES),
        title="fraction of swaps in which the readout sees each factor change",
        row_title="slot swapped",
        col_title="factor changed",
    ).save(out / FIGURES["exchange_matrix"])
    comp_rows = [
        [img for pair in zip(scene, dec, strict=True) for img in pair]
        for scene, dec in examples["composition"]
    ]
    n_comp = len(examples["composition"][0][0])
    image_grid(
        comp_rows,
        row_labels=[f"{n} object{'s' if n > 1 else ''}" for n in range(1, len(comp_rows) + 1)],
        col_labels=["scene", "decoded"] * n_comp,
        group=2,
    ).save(out / FIGURES["composition"])
    logger.info("wrote %s and %d figures to %s", METRICS_FILE, len(FIGURES), out)


def _json_ready(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN written as null."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def report_header(model: str, metrics: dict[str, Any]) -> str:
    """The lines printed above the metric table: model, data of each metric group, notes."""
    lines = [f"dsvsa evaluate {model} on {metrics['data']} ({metrics['num']} examples)", ""]
    sources = metrics.get("data_sources") or {}
    if sources:
        lines.append("data behind each metric group:")
        width = max(len(group) for group in sources)
        lines += [f"  {group:<{width}}  {source}" for group, source in sources.items()]
        lines.append("")
    for note in metrics.get("notes") or []:
        lines.append(f"note: {note}")
    if metrics.get("notes"):
        lines.append("")
    return "\n".join(lines)


def evaluate_command(args: Any) -> int:
    """``dsvsa evaluate MODEL [--data DIR_OR_REPO] [--out DIR] [--num N] [--seed S]``."""
    from dsvsa.model import DSpritesVSA

    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; expected a folder for metrics and figures")
    model = DSpritesVSA.from_pretrained(args.model)
    if args.data is not None:
        from dsvsa.export import check_dataset_source

        check_dataset_source(args.data)  # fail before the readout and the draws
        import datasets

        datasets.disable_progress_bars()  # a test split loads in a second: no bars for it
    metrics = evaluate(model, data=args.data, num=args.num, seed=args.seed, out_dir=args.out)
    print(report_header(args.model, metrics))
    print(metrics_markdown(metrics))
    if args.out:
        print(f"metrics.json and {len(FIGURES)} figures written to {args.out}")
    else:
        print("nothing written (pass --out DIR to save metrics.json and the figures)")
    return 0


__all__ = [
    "EVAL_SALT",
    "FIGURES",
    "HeldOut",
    "DATA_GROUPS",
    "METRICS_FILE",
    "best_iou",
    "evaluate",
    "evaluate_command",
    "exchange_targets",
    "flatten_metrics",
    "iou",
    "load_held_out",
    "metrics_markdown",
    "orientation_closure",
    "readout_hits",
    "report_header",
    "sample_held_out",
    "write_outputs",
]
