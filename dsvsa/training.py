"""Training: the run config, the data each stage needs, and one loss function per stage.

Stages (each ``(model, batch, cfg) -> dict`` of loss tensors with ``loss`` the total and ``recon``,
``kld``, ``cos``, ``contrast`` its unweighted parts):

- ``paired``: two images differing in one factor; reconstruct both directly and crosswise after
  swapping the changed slot. Cosine term: +1 for the unchanged slots, -1 for the swapped one.
- ``scenes``: a scene of 2-5 objects reconstructed from the (bound) sum of its objects' latents,
  each object encoded from its own image.
- ``paired_scenes``: two objects per scene, one changes one factor; the changed slot is swapped
  inside the changed object and both scenes are reconstructed directly and crosswise.
- ``exchange``: an image a and an unrelated donor b; a random subset of a's slots is replaced by
  b's and the result is scored against the exact render of a's factors with that subset from b
  (symmetry-aware: a square or ellipse leaves its angle ambiguous, the best matching target
  counts). The complementary exchange into b and direct reconstructions of a and b are added.
- ``codebook`` (models with ``slot_bottleneck: codebook``): the encoder classifies single objects
  (the ``classify`` term on its per-feature logits, from the true factors), and the decoder draws
  from the codes of the true classes (teacher forcing): single objects, and bound scenes of
  ``scene_min_objects``..``scene_max_objects`` objects. Because every slot is a code of its own
  factor's value, an exchange from any donor is a change of that code, which the decoder has
  learnt for every factor combination.

For codebook models every stage adds ``classify_coef`` times the classification loss of the
images it encodes (orientation: the log of the summed probability of the symmetry-equivalent
classes), and ``kld`` is the KL divergence of the per-feature distributions from uniform ones.

A config may mix stages with weights; one step then runs every stage on its own batch and adds
the weighted losses. Loss scales: "recon" is the image loss per reconstructed image (``sum``:
nats summed over pixels; ``mean``: averaged over pixels), "kld" per encoded image.

Example:
    >>> cfg = TrainConfig(model={"latent_dim": 64}, stages={"paired": 1.0}, batch_size=4)
    >>> source = make_source(cfg)
    >>> batch = source.batch("paired", step_rng(cfg.seed, 0, 0, 0), 4)
    >>> batch["image_a"].shape, batch["changed"].shape
    ((4, 64, 64), (4,))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsvsa.factors import FACTOR_NAMES, FACTOR_SIZES, NUM_FACTORS, equivalent_orientations

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("paired", "scenes", "paired_scenes", "exchange", "codebook")

# dataset config each stage reads when the data is a dataset folder or Hub id
DEFAULT_DATA_CONFIGS: dict[str, str] = {
    "paired": "paired",
    "scenes": "scenes",
    "paired_scenes": "paired_scenes",
    "exchange": "paired",
    "codebook": "paired",
}


# ---------------------------------------------------------------------------------------------
# config


class ConfigError(ValueError):
    """A training config key or value is wrong; the message names the key."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class TrainConfig:
    """Everything a training run depends on; JSON-only, dumped as ``training_config.json``.

    A run can be repeated from that file alone:
    ``accelerate launch training/train.py --config runs/x/training_config.json``.
    """

    # model: the fields of dsvsa.DSpritesVSAConfig (missing ones take its defaults)
    model: dict = field(default_factory=dict)
    # stage name -> weight of its loss; one step runs every listed stage
    stages: dict = field(default_factory=lambda: {"paired": 1.0})
    # per-stage batch size (default batch_size), e.g. {"scenes": 16}
    stage_batch_size: dict = field(default_factory=dict)

    # losses
    image_loss: str = "bce"  # bce | mse
    reduction: str = "sum"  # sum | mean
    kl_coef: float = 0.01
    cos_coef: float = 1.0
    slot_contrast_coef: float = 0.0  # supervised contrast per slot on the true factor values
    slot_contrast_temperature: float = 0.1
    symmetric_targets: bool = True  # exchange: score against the best symmetry-equivalent target
    exchange_min_slots: int = 1
    exchange_max_slots: int = 5
    exchange_direct_weight: float = 1.0  # weight of the direct reconstructions in "exchange"
    scene_min_objects: int = 2
    scene_max_objects: int = 5
    # codebook models (model.slot_bottleneck: codebook)
    classify_coef: float = 0.0  # classification of the encoder's per-feature logits
    # orientation target: weight of the exact class against any symmetry-equivalent one (0..1)
    classify_exact_orientation: float = 0.0
    codebook_scene_batch: int = 32  # teacher-forced bound scenes per step in "codebook"
    codebook_direct_weight: float = 0.0  # "codebook": also reconstruct through the encoder

    # optimisation (nanoGPT-style schedule: linear warmup, then cosine decay to min_lr)
    batch_size: int = 64  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # 0 disables
    seed: int = 0

    # data: "sampler" (rendered on the fly) or a dataset folder / Hub id
    data: str = "sampler"
    data_configs: dict = field(default_factory=dict)  # stage -> dataset config (overrides)
    holdout: str | None = None  # a name in dsvsa.sampling.HOLDOUTS
    # size of the dataset --push-dataset-to-hub generates for a sampler run
    dataset_train_size: int = 2000
    dataset_test_size: int = 200

    # bookkeeping
    output_dir: str = "runs/train"
    log_interval: int = 10
    eval_interval: int = 200  # 0 disables
    eval_batches: int = 2
    checkpoint_interval: int = 500  # 0 disables
    keep_checkpoints: int = 2
    eval_at_end: bool = True
    eval_num: int = 200  # held-out examples per metric in the final evaluation
    log_with: str | None = "tensorboard"
    mixed_precision: str = "no"  # no | bf16 | fp16

    def __post_init__(self) -> None:
        self.validate()

    # each check: key -> (predicate, what the value must be)
    _CHECKS = {
        "model": (lambda v: isinstance(v, dict), "a mapping of DSpritesVSAConfig fields"),
        "stages": (
            lambda v: (
                isinstance(v, dict)
                and len(v) > 0
                and all(k in STAGES and _is_number(w) and w > 0 for k, w in v.items())
            ),
            f"a non-empty mapping of stage -> positive weight, stages {', '.join(STAGES)}",
        ),
        "stage_batch_size": (
            lambda v: (
                isinstance(v, dict)
                and all(k in STAGES and _is_int(n) and n > 0 for k, n in v.items())
            ),
            "a mapping of stage -> positive integer",
        ),
        "image_loss": (lambda v: v in ("bce", "mse"), "'bce' or 'mse'"),
        "reduction": (lambda v: v in ("sum", "mean"), "'sum' or 'mean'"),
        "kl_coef": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "cos_coef": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "slot_contrast_coef": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "slot_contrast_temperature": (lambda v: _is_number(v) and v > 0, "a number > 0"),
        "symmetric_targets": (lambda v: isinstance(v, bool), "true or false"),
        "exchange_min_slots": (lambda v: _is_int(v) and 1 <= v <= 5, "an integer in 1..5"),
        "exchange_max_slots": (lambda v: _is_int(v) and 1 <= v <= 5, "an integer in 1..5"),
        "exchange_direct_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "scene_min_objects": (lambda v: _is_int(v) and 1 <= v <= 5, "an integer in 1..5"),
        "scene_max_objects": (lambda v: _is_int(v) and 1 <= v <= 5, "an integer in 1..5"),
        "classify_coef": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "classify_exact_orientation": (
            lambda v: _is_number(v) and 0 <= v <= 1,
            "a number in [0, 1]",
        ),
        "codebook_scene_batch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "codebook_direct_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "gradient_accumulation_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "max_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
        "min_lr": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "lr_schedule": (lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
        "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "beta1": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "beta2": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "grad_clip": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "data": (lambda v: isinstance(v, str) and v != "", "'sampler' or a dataset folder/Hub id"),
        "data_configs": (
            lambda v: (
                isinstance(v, dict)
                and all(k in STAGES and isinstance(c, str) for k, c in v.items())
            ),
            "a mapping of stage -> dataset config name",
        ),
        "holdout": (lambda v: v is None or isinstance(v, str), "null or a hold-out name"),
        "dataset_train_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "dataset_test_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "output_dir": (lambda v: isinstance(v, str) and v != "", "a folder path"),
        "log_interval": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "eval_interval": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "eval_batches": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "checkpoint_interval": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "keep_checkpoints": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "eval_at_end": (lambda v: isinstance(v, bool), "true or false"),
        "eval_num": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "log_with": (lambda v: v in (None, "tensorboard"), "null or 'tensorboard'"),
        "mixed_precision": (lambda v: v in ("no", "bf16", "fp16"), "'no', 'bf16' or 'fp16'"),
    }

    def validate(self) -> None:
        """Raise ConfigError naming the first key whose value is wrong."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"training config key {f.name!r}: value {value!r} is not JSON "
                    "(use numbers, strings, booleans, null, lists and mappings)"
                ) from None
            check, expected = self._CHECKS[f.name]
            if not check(value):
                raise ConfigError(
                    f"training config key {f.name!r} must be {expected}, got {value!r}"
                )
        # ints given where floats are expected are fine; store them as floats
        for f in dataclasses.fields(self):
            if f.type == "float" and _is_int(getattr(self, f.name)):
                setattr(self, f.name, float(getattr(self, f.name)))
        self.stages = {k: float(w) for k, w in self.stages.items()}
        if self.exchange_min_slots > self.exchange_max_slots:
            raise ConfigError(
                "training config key 'exchange_min_slots' must not exceed 'exchange_max_slots'"
            )
        if self.scene_min_objects > self.scene_max_objects:
            raise ConfigError(
                "training config key 'scene_min_objects' must not exceed 'scene_max_objects'"
            )
        if self.min_lr > self.lr:
            raise ConfigError("training config key 'min_lr' must not exceed 'lr'")
        if self.holdout is not None:
            from dsvsa.sampling import HOLDOUTS

            if self.holdout not in HOLDOUTS:
                raise ConfigError(
                    f"training config key 'holdout' must be null or one of "
                    f"{', '.join(sorted(HOLDOUTS))}, got {self.holdout!r}"
                )
        model = self.model_config()  # validates the nested model config
        codebook = model.slot_bottleneck == "codebook"
        if "codebook" in self.stages and not codebook:
            raise ConfigError(
                "training config key 'stages': the 'codebook' stage needs a codebook model "
                "(set model.slot_bottleneck: codebook)"
            )
        if self.classify_coef > 0 and not codebook:
            raise ConfigError(
                "training config key 'classify_coef' needs a codebook model (set "
                "model.slot_bottleneck: codebook, or classify_coef: 0)"
            )
        if "codebook" in self.stages and self.data != "sampler":
            # its teacher-forced scenes come from the sampler's non-overlapping placement
            raise ConfigError(
                "training config key 'data': the 'codebook' stage draws its objects and scenes "
                "from the sampler (data: sampler); training it from a dataset is not supported"
            )
        scene_stage = "scenes" in self.stages or (
            "codebook" in self.stages and self.codebook_scene_batch > 0
        )
        if scene_stage and model.bind_objects:
            if self.scene_max_objects > model.num_object_roles:
                raise ConfigError(
                    f"training config key 'scene_max_objects' ({self.scene_max_objects}) exceeds "
                    f"'model.num_object_roles' ({model.num_object_roles}); a bound scene needs "
                    "one object role per object (raise num_object_roles or set "
                    "model.bind_objects: false)"
                )

    def model_config(self):
        """The nested model config as a ``DSpritesVSAConfig`` (ConfigError naming the field)."""
        from dsvsa.model import DSpritesVSAConfig

        known = {f.name for f in dataclasses.fields(DSpritesVSAConfig)}
        for key in self.model:
            if key not in known:
                raise ConfigError(
                    f"training config key 'model.{key}' is not a DSpritesVSAConfig field "
                    f"(known: {', '.join(sorted(known))})"
                )
        try:
            return DSpritesVSAConfig(**self.model)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"training config key 'model': {err}") from None

    def to_dict(self) -> dict:
        """The resolved config, including the model config with its defaults filled in."""
        out = dataclasses.asdict(self)
        out["model"] = dataclasses.asdict(self.model_config())
        return out

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys with a message naming them."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: a training config must be a mapping of keys to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ConfigError(
                f"{source}: unknown training config key {unknown[0]!r} "
                f"(known keys: {', '.join(sorted(known))})"
            )
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:
        """Read a YAML (or JSON) config file, apply ``overrides`` (dotted keys) and validate."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a training config must be a mapping of keys to values")
        for key, value in (overrides or {}).items():
            set_dotted(values, key, value)
        return cls.from_dict(values, source=str(path))


def set_dotted(values: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "model.latent_dim", 64)`` sets ``d["model"]["latent_dim"] = 64``."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"training config key {part!r} is not a mapping; cannot set {key!r}")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"kl_coef=0.1"`` -> ``("kl_coef", 0.1)``; the value is read as a YAML scalar/flow value."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for ``step``: linear warmup then cosine decay to ``min_lr`` (nanoGPT)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant" or cfg.max_steps <= cfg.warmup_steps:
        return cfg.lr
    ratio = min(1.0, (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


# ---------------------------------------------------------------------------------------------
# randomness: every batch's generator derives from (seed, step, process, stage), so a resumed run
# replays exactly the batches and noise of an uninterrupted one


def step_rng(seed: int, step: int, process: int, stage: int, micro: int = 0) -> np.random.Generator:
    """numpy Generator for one (step, process, stage, micro-batch) of a run."""
    return np.random.default_rng([seed, 0, step, process, stage, micro])


def step_torch_seed(seed: int, step: int, process: int) -> int:
    """Seed for torch's global generator at one step of one process (reparameterisation noise)."""
    return int(np.random.SeedSequence([seed, 1, step, process]).generate_state(1)[0])


def eval_rng(seed: int, stage: int, batch: int) -> np.random.Generator:
    """numpy Generator for a fixed held-out evaluation batch."""
    return np.random.default_rng([seed, 2, stage, batch])


# ---------------------------------------------------------------------------------------------
# data: numpy batches from the sampler or a dataset, then tensors


def _orientation_candidates() -> np.ndarray:
    """(3, 40, K) orientation classes equivalent to each (shape, orientation), padded with itself."""
    table = np.stack(
        [equivalent_orientations(np.full(40, s), np.arange(40)) for s in range(3)]
    )  # (3, 40, 40)
    k = int(table.sum(-1).max())
    out = np.empty((3, 40, k), dtype=np.int64)
    for s in range(3):
        for o in range(40):
            classes = np.flatnonzero(table[s, o])
            # own class first, then the others, padded by repeating the own class
            classes = np.concatenate([[o], classes[classes != o]])
            out[s, o] = np.concatenate([classes, np.full(k - len(classes), o)])
    return out


_ORIENTATION_CANDIDATES = _orientation_candidates()


def exchange_targets(
    factors_a: np.ndarray, factors_b: np.ndarray, mask: np.ndarray, symmetric: bool
) -> np.ndarray:
    """Factors of every acceptable target for a's latent with the slots in ``mask`` from b.

    Args:
        factors_a, factors_b: (B, 5) class indices.
        mask: (B, 5) bool, True where the slot comes from b.
        symmetric: include the orientations equivalent under the symmetry of the image that
            supplies the orientation slot (a square fixes its angle only modulo pi/2).
    Returns:
        (B, K, 5) int64 target factors; K = 1 when ``symmetric`` is False.
    """
    target = np.where(mask, factors_b, factors_a)  # (B, 5)
    if not symmetric:
        return target[:, None]
    source = np.where(mask[:, 2:3], factors_b, factors_a)  # image giving the orientation
    orients = _ORIENTATION_CANDIDATES[source[:, 0], source[:, 2]]  # (B, K)
    out = np.repeat(target[:, None], orients.shape[1], axis=1)
    out[:, :, 2] = orients
    return out


def random_slot_masks(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """(n, 5) bool: each row a random set of ``lo..hi`` slots (size uniform, then slots)."""
    sizes = rng.integers(lo, hi + 1, size=n)
    order = np.argsort(rng.random((n, NUM_FACTORS)), axis=1)
    ranks = np.argsort(order, axis=1)
    return ranks < sizes[:, None]


class SamplerSource:
    """Batches rendered on the fly by ``dsvsa.sampling`` (exact, unlimited)."""

    name = "sampler"

    def __init__(self, cfg: TrainConfig):
        from dsvsa.sampling import HOLDOUTS

        self.cfg = cfg
        self.holdout = HOLDOUTS[cfg.holdout] if cfg.holdout else None

    def batch(self, stage: str, rng: np.random.Generator, n: int, split: str = "train") -> dict:
        from dsvsa import sampling

        cfg = self.cfg
        if stage == "paired":
            out = sampling.sample_pairs(rng, n, holdout=self.holdout, split=split)
            return {k: out[k] for k in ("image_a", "image_b", "factors_a", "factors_b", "changed")}
        if stage == "scenes":
            out = sampling.sample_scene_arrays(
                rng,
                n,
                min_objects=cfg.scene_min_objects,
                max_objects=cfg.scene_max_objects,
                holdout=self.holdout,
                split=split,
            )
            mask = np.arange(out["objects"].shape[1])[None] < out["num_objects"][:, None]
            factors = np.where(mask[..., None], out["factors"], 0)
            return {
                "scene": out["scene"],
                "objects": out["objects"],
                "factors": factors,
                "mask": mask,
            }
        if stage == "paired_scenes":
            out = sampling.sample_paired_scenes(rng, n, holdout=self.holdout, split=split)
            keys = ("scene_a", "scene_b", "object_a", "object_b", "other")
            keys += ("factors_a", "factors_b", "factors_other", "changed")
            return {k: out[k] for k in keys}
        if stage == "exchange":
            factors_a = sampling.sample_factors(rng, n, holdout=self.holdout, split=split)
            factors_b = sampling.sample_factors(rng, n, holdout=self.holdout, split=split)
            return exchange_batch(rng, factors_a, factors_b, cfg)
        if stage == "codebook":
            return self.codebook_batch(rng, n, split)
        raise ValueError(f"unknown stage {stage!r}")

    def codebook_batch(self, rng: np.random.Generator, n: int, split: str) -> dict:
        """n single objects plus ``codebook_scene_batch`` scenes (numpy; see codebook_step)."""
        from dsvsa import sampling
        from dsvsa.render import render

        cfg = self.cfg
        factors = sampling.sample_factors(rng, n, holdout=self.holdout, split=split)
        batch = {"image": render(factors), "factors": factors}
        if cfg.codebook_scene_batch:
            out = sampling.sample_scene_arrays(
                rng,
                cfg.codebook_scene_batch,
                min_objects=cfg.scene_min_objects,
                max_objects=cfg.scene_max_objects,
                holdout=self.holdout,
                split=split,
            )
            mask = np.arange(out["factors"].shape[1])[None] < out["num_objects"][:, None]
            batch["scene"] = out["scene"]
            batch["scene_factors"] = np.where(mask[..., None], out["factors"], 0)
            batch["scene_mask"] = mask
        return batch


def exchange_batch(
    rng: np.random.Generator,
    factors_a: np.ndarray,
    factors_b: np.ndarray,
    cfg: TrainConfig,
    image_a: np.ndarray | None = None,
    image_b: np.ndarray | None = None,
) -> dict:
    """Images, slot masks and rendered targets of one exchange batch (numpy)."""
    from dsvsa.render import render

    n = len(factors_a)
    mask = random_slot_masks(rng, n, cfg.exchange_min_slots, cfg.exchange_max_slots)
    t_ab = exchange_targets(factors_a, factors_b, mask, cfg.symmetric_targets)  # (B, K, 5)
    t_ba = exchange_targets(factors_b, factors_a, ~mask, cfg.symmetric_targets)
    k = t_ab.shape[1]
    # render every distinct target once
    flat = np.concatenate([t_ab.reshape(-1, 5), t_ba.reshape(-1, 5)])
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    images = render(uniq)[inverse.reshape(-1)]
    return {
        "image_a": render(factors_a) if image_a is None else image_a,
        "image_b": render(factors_b) if image_b is None else image_b,
        "factors_a": factors_a,
        "factors_b": factors_b,
        "mask": mask,
        "target_ab": images[: n * k].reshape(n, k, 64, 64),
        "target_ba": images[n * k :].reshape(n, k, 64, 64),
    }


def pad_scenes(scenes: list[dict], max_objects: int) -> dict:
    """List of scene dicts (variable object counts) -> padded arrays plus an object mask."""
    n = len(scenes)
    m = max(max_objects, max(int(s["num_objects"]) for s in scenes))
    objects = np.zeros((n, m, 64, 64), dtype=np.uint8)
    factors = np.zeros((n, m, NUM_FACTORS), dtype=np.int64)
    mask = np.zeros((n, m), dtype=bool)
    for i, s in enumerate(scenes):
        j = int(s["num_objects"])
        objects[i, :j] = np.asarray(s["objects"])[:j]
        factors[i, :j] = np.asarray(s["factors"])[:j]
        mask[i, :j] = True
    scene = np.stack([np.asarray(s["scene"], dtype=np.uint8) for s in scenes])
    return {"scene": scene, "objects": objects, "factors": factors, "mask": mask}


# columns each stage needs in a dataset config
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "paired": ("image_a", "image_b", "factors_a", "factors_b", "changed"),
    "scenes": ("scene", "objects", "factors", "num_objects"),
    "paired_scenes": (
        "scene_a",
        "scene_b",
        "object_a",
        "object_b",
        "other",
        "factors_a",
        "factors_b",
        "factors_other",
        "changed",
    ),
    "exchange": ("factors_a",),
    "codebook": ("factors_a",),
}


def data_config(cfg: TrainConfig, stage: str) -> str:
    """The dataset config a stage reads (``data_configs`` overrides the default)."""
    return cfg.data_configs.get(stage, DEFAULT_DATA_CONFIGS[stage])


class DatasetSource:
    """Batches read from a dataset folder or Hub repository (one config per stage).

    Rows are visited in a fresh permutation every epoch; the position of each (step, process)
    in that sequence is fixed, so a resumed run reads the same rows as an uninterrupted one.
    """

    def __init__(self, cfg: TrainConfig, num_processes: int = 1):
        self.cfg = cfg
        self.name = cfg.data
        self.num_processes = num_processes
        self.datasets: dict[str, dict[str, Any]] = {}
        self.configs: dict[str, str] = {}
        self._perms: dict[tuple, np.ndarray] = {}
        for stage in cfg.stages:
            self.configs[stage] = data_config(cfg, stage)
            ds = load_stage_dataset(cfg.data, self.configs[stage], stage)
            self.datasets[stage] = {k: v.with_format("arrow") for k, v in ds.items()}

    def _rows(self, stage: str, split: str, step: int, process: int, n: int) -> list[int]:
        size = len(self.datasets[stage][split])
        pos = (step * self.num_processes + process) * n + np.arange(n)
        epochs, offsets = pos // size, pos % size
        rows = np.empty(n, dtype=np.int64)
        for epoch in np.unique(epochs):
            key = (stage, split, int(epoch))
            if key not in self._perms:
                if len(self._perms) > 8:
                    self._perms.clear()
                seed = [self.cfg.seed, 3, STAGES.index(stage), int(epoch), split == "test"]
                self._perms[key] = np.random.default_rng(seed).permutation(size)
            sel = epochs == epoch
            rows[sel] = self._perms[key][offsets[sel]]
        return rows.tolist()

    def batch(
        self,
        stage: str,
        rng: np.random.Generator,
        n: int,
        split: str = "train",
        step: int = 0,
        process: int = 0,
    ) -> dict:
        """Rows of position ``step`` for ``process``, as the sampler's numpy arrays."""
        from dsvsa.export import table_to_arrays

        ds = self.datasets[stage][split]
        config = self.configs[stage]
        rows = table_to_arrays(config, ds[self._rows(stage, split, step, process, n)])
        if stage == "exchange":
            # recipients are this batch's rows, donors the rows of another (unrelated) position
            donors = ds[self._rows(stage, split, step + 7919, process, n)]
            factors_b = table_to_arrays(config, donors)["factors_a"]
            return exchange_batch(rng, rows["factors_a"], factors_b, self.cfg)
        if stage == "scenes":
            return pad_scenes(rows, self.cfg.scene_max_objects)
        return {k: rows[k] for k in REQUIRED_COLUMNS[stage]}


def load_stage_dataset(data: str, config: str, stage: str) -> dict[str, Any]:
    """Load the train and test splits of one dataset config and check the stage's columns.

    Raises:
        ValueError: naming the dataset, config and missing columns.
    """
    import datasets

    try:
        dsd = datasets.load_dataset(data, config)
    except Exception as err:  # datasets raises many types; say which source failed
        raise ValueError(f"cannot load dataset {data!r} config {config!r}: {err}") from err
    missing_split = [s for s in ("train", "test") if s not in dsd]
    if missing_split:
        raise ValueError(
            f"dataset {data!r} config {config!r} has no {missing_split[0]!r} split "
            f"(found: {', '.join(dsd)})"
        )
    needed = REQUIRED_COLUMNS[stage]
    for split in ("train", "test"):
        columns = dsd[split].column_names
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ValueError(
                f"dataset {data!r} config {config!r} split {split!r} lacks the column(s) "
                f"{', '.join(missing)} needed by the {stage!r} stage "
                f"(it has: {', '.join(columns)})"
            )
        if len(dsd[split]) == 0:
            raise ValueError(f"dataset {data!r} config {config!r} split {split!r} is empty")
    return {"train": dsd["train"], "test": dsd["test"]}


def make_source(cfg: TrainConfig, num_processes: int = 1) -> SamplerSource | DatasetSource:
    """The data source a config names: the sampler or a dataset folder / Hub id."""
    if cfg.data == "sampler":
        return SamplerSource(cfg)
    return DatasetSource(cfg, num_processes=num_processes)


def to_tensors(batch: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """numpy batch -> tensors: images float (..., 1, 64, 64), labels int64, masks bool."""
    out = {}
    for key, value in batch.items():
        arr = np.asarray(value)
        if arr.dtype == np.bool_:
            out[key] = torch.from_numpy(arr).to(device)
        elif arr.ndim >= 2 and arr.shape[-2:] == (64, 64):
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            out[key] = t.unsqueeze(-3).to(device)
        else:
            out[key] = torch.from_numpy(arr.astype(np.int64)).to(device)
    return out


# ---------------------------------------------------------------------------------------------
# loss helpers


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    """z = mu + sigma * eps in training (noise from torch's global generator), else mu."""
    if not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar.clamp(-30.0, 20.0))


def per_image_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: str, reduction: str
) -> torch.Tensor:
    """(B, ...) image loss per image: summed ("sum") or averaged ("mean") over its pixels.

    Matches ``dsvsa.losses.image_loss`` averaged over the batch; used where a per-image value is
    needed (the best of several symmetry-equivalent targets).
    """
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    else:
        loss = (torch.sigmoid(logits) - target) ** 2
    loss = loss.flatten(-3)
    return loss.sum(-1) if reduction == "sum" else loss.mean(-1)


def best_target_loss(
    logits: torch.Tensor, targets: torch.Tensor, kind: str, reduction: str
) -> torch.Tensor:
    """Mean over the batch of the loss against the best of K targets: (B,1,H,W), (B,K,1,H,W)."""
    losses = per_image_loss(logits.unsqueeze(1).expand_as(targets), targets, kind, reduction)
    return losses.min(dim=1).values.mean()


def same_value_matrix(fa: torch.Tensor, fb: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) bool: whether sample i of ``fa`` and j of ``fb`` (class rows) agree on factor k.

    Orientation is compared modulo the symmetry of the more symmetric of the two shapes (a
    square's slot cannot tell 0 from pi/2).
    """
    if k != 2:
        return fa[:, None, k] == fb[None, :, k]
    table = _orientation_table(fa.device)  # (3, 40, 40)
    shape = torch.minimum(fa[:, None, 0], fb[None, :, 0])
    return table[shape, fa[:, None, 2], fb[None, :, 2]]


_TABLE_CACHE: dict[str, torch.Tensor] = {}


def _orientation_table(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _TABLE_CACHE:
        table = np.stack([equivalent_orientations(np.full(40, s), np.arange(40)) for s in range(3)])
        _TABLE_CACHE[key] = torch.from_numpy(table).to(device)
    return _TABLE_CACHE[key]


def slot_contrast(mu: torch.Tensor, factors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss per slot on the true labels, averaged over slots.

    For slot k, samples that share factor k's value (orientation modulo symmetry) are positives
    of each other, all other samples negatives.

    Args:
        mu: (N, 5, D) posterior means.
        factors: (N, 5) class indices.
    """
    n = mu.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=mu.device)
    losses = []
    for k in range(NUM_FACTORS):
        e = F.normalize(mu[:, k], dim=-1)
        sim = (e @ e.T / temperature).masked_fill(eye, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        pos = same_value_matrix(factors, factors, k) & ~eye
        count = pos.sum(1)
        has = count > 0
        if not has.any():
            continue
        mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / count[has]
        losses.append(-mean_pos.mean())
    if not losses:
        return mu.new_zeros(())
    return torch.stack(losses).mean()


def cosine_by_labels(
    z_a: torch.Tensor, z_b: torch.Tensor, same: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Cosine-embedding loss per slot: 1 - cos where ``same``, max(0, cos) elsewhere.

    Args:
        z_a, z_b: (B, 5, D); same: (B, 5) bool.
        reduction: "sum" (over slots, mean over the batch) or "mean" (over all).
    """
    cos = F.cosine_similarity(z_a, z_b, dim=-1)
    values = torch.where(same, 1.0 - cos, cos.clamp(min=0.0))  # (B, 5)
    return values.sum(1).mean() if reduction == "sum" else values.mean()


def _combine(cfg: TrainConfig, recon, kld, cos, contrast, classify=None) -> dict[str, torch.Tensor]:
    if classify is None:
        classify = recon.new_zeros(())
    loss = recon + cfg.kl_coef * kld + cfg.cos_coef * cos + cfg.slot_contrast_coef * contrast
    loss = loss + cfg.classify_coef * classify
    return {
        "loss": loss,
        "recon": recon,
        "kld": kld,
        "cos": cos,
        "contrast": contrast,
        "classify": classify,
    }


def _encode(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(mu, logvar, logits): logits (B, 113) for a codebook model, else None."""
    if getattr(model, "codebook", None) is None:
        mu, logvar = model(x)
        return mu, logvar, None
    logits = model.feature_logits(x)
    mu, logvar = model.slots_from_logits(logits)
    return mu, logvar, logits


def _kld(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    cfg: TrainConfig,
    logits: torch.Tensor | None = None,
    model=None,
) -> torch.Tensor:
    """Gaussian KL per encoded image; for a codebook model the categorical KL from uniform."""
    from dsvsa.losses import kl_divergence

    if logits is not None:
        return codebook_kl(logits, model.config.codebook_temperature)
    return kl_divergence(mu, logvar, reduction=cfg.reduction)


def codebook_kl(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sum over factors of KL(softmax(logits_k / T) || uniform), mean over images: (B, 113)."""
    logits = logits.float()
    total = logits.new_zeros(())
    for lk in torch.split(logits, list(FACTOR_SIZES), dim=-1):
        logp = F.log_softmax(lk / temperature, dim=-1)
        total = total + (logp.exp() * logp).sum(-1).mean() + math.log(lk.shape[-1])
    return total


def classification_loss(
    logits: torch.Tensor,
    factors: torch.Tensor,
    temperature: float = 1.0,
    exact_orientation: float = 0.0,
) -> torch.Tensor:
    """Negative log-likelihood of the true classes, summed over factors, mean over images.

    Args:
        logits: (B, 113) per-feature logits of a codebook model.
        factors: (B, 5) int64 true classes.
        temperature: softmax temperature of the codebook slots.
        exact_orientation: weight w of the exact orientation class. The orientation term is
            ``(1 - w) * set + w * exact``: "set" counts every class that looks the same for the
            object's shape (a square at theta is a square at theta + pi/2 within half a class
            step; the log of their summed probability), "exact" only the true class (0 and 2 pi,
            classes 0 and 39, count as one). The exact term makes the most likely class the
            object's own one where the image tells them apart: a render of another equivalent
            class is rotated by up to half a class step.
    """
    logits = logits.float()  # bf16 under autocast; the loss in float32
    parts = torch.split(logits, list(FACTOR_SIZES), dim=-1)
    total = logits.new_zeros(())
    for k, lk in enumerate(parts):
        logp = F.log_softmax(lk / temperature, dim=-1)
        if k == 2:
            allowed = _orientation_table(logits.device)[factors[:, 0], factors[:, 2]]  # (B, 40)
            nll = -torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), dim=-1)
            if exact_orientation > 0:
                own = F.one_hot(factors[:, 2], lk.shape[-1]).bool()
                own[:, [0, -1]] |= own[:, [-1, 0]]  # 0 and 2 pi are the same angle
                exact = -torch.logsumexp(logp.masked_fill(~own, float("-inf")), dim=-1)
                nll = (1.0 - exact_orientation) * nll + exact_orientation * exact
        else:
            nll = -logp.gather(-1, factors[:, k : k + 1]).squeeze(-1)
        total = total + nll.mean()
    return total


def _classify(
    model, logits: torch.Tensor | None, factors: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor | None:
    if logits is None or cfg.classify_coef == 0:
        return None
    temperature = model.config.codebook_temperature
    return classification_loss(logits, factors, temperature, cfg.classify_exact_orientation)


def _image(logits: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    from dsvsa.losses import image_loss

    return image_loss(logits, target, kind=cfg.image_loss, reduction=cfg.reduction)


def _contrast(mu: torch.Tensor, factors: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.slot_contrast_coef == 0:
        return mu.new_zeros(())
    return slot_contrast(mu, factors, cfg.slot_contrast_temperature)


def _swap(z_a: torch.Tensor, z_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """z_a with the slots in ``mask`` (B, 5) taken from z_b; z: (B, 5, D)."""
    return torch.where(mask.unsqueeze(-1), z_b, z_a)


def _changed_mask(changed: torch.Tensor) -> torch.Tensor:
    return F.one_hot(changed, NUM_FACTORS).bool()


# ---------------------------------------------------------------------------------------------
# stages


def paired_step(model, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Pair differing in one factor: direct and crosswise reconstruction after the slot swap."""
    x_a, x_b = batch["image_a"], batch["image_b"]  # (B, 1, 64, 64)
    B = x_a.shape[0]

    # encode both images in one pass
    mu, logvar, logits = _encode(model, torch.cat([x_a, x_b]))  # (2B, 5, D)
    z = reparameterize(mu, logvar, model.training)
    z_a, z_b = z[:B], z[B:]

    # swap the changed slot: a's latent with b's changed slot should draw b, and vice versa
    swap = _changed_mask(batch["changed"])  # (B, 5)
    v = model.object_vector(torch.cat([z_a, z_b, _swap(z_a, z_b, swap), _swap(z_b, z_a, swap)]))
    image_logits = model.decode(v)  # (4B, 1, 64, 64)
    targets = torch.cat([x_a, x_b, x_b, x_a])
    recon = _image(image_logits, targets, cfg)

    kld = _kld(mu, logvar, cfg, logits, model)
    if cfg.cos_coef > 0:
        from dsvsa.losses import cosine_embedding

        cos = cosine_embedding(mu[:B], mu[B:], batch["changed"], reduction=cfg.reduction)
    else:
        cos = mu.new_zeros(())
    factors = torch.cat([batch["factors_a"], batch["factors_b"]])
    classify = _classify(model, logits, factors, cfg)
    return _combine(cfg, recon, kld, cos, _contrast(mu, factors, cfg), classify)


def scenes_step(model, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Scene reconstructed from the (bound) sum of its objects' latents."""
    objects, mask = batch["objects"], batch["mask"]  # (B, M, 1, 64, 64), (B, M)
    B, M = mask.shape

    # encode only the real objects
    mu, logvar, logits = _encode(model, objects[mask])  # (N, 5, D), N = mask.sum()
    z = reparameterize(mu, logvar, model.training)
    obj = model.object_vector(z)  # (N, D)

    # padded (B, M, D) with zeros for missing objects, then the scene vector
    slots = obj.new_zeros(B, M, obj.shape[-1])
    slots[mask] = obj
    recon = _image(model.decode(model.scene_vector(slots)), batch["scene"], cfg)

    kld = _kld(mu, logvar, cfg, logits, model)
    cos = mu.new_zeros(())
    factors = batch["factors"][mask]
    classify = _classify(model, logits, factors, cfg)
    return _combine(cfg, recon, kld, cos, _contrast(mu, factors, cfg), classify)


def paired_scenes_step(
    model, batch: dict[str, torch.Tensor], cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """Two-object scenes; one object changes one factor, its slot is swapped inside that object."""
    B = batch["object_a"].shape[0]

    # encode changed object (a, b) and the other object in one pass
    x = torch.cat([batch["object_a"], batch["object_b"], batch["other"]])
    mu, logvar, logits = _encode(model, x)  # (3B, 5, D)
    z = reparameterize(mu, logvar, model.training)
    z_a, z_b, z_o = z[:B], z[B : 2 * B], z[2 * B :]

    # object vectors: a, b, a with b's changed slot (draws b), b with a's (draws a), other
    swap = _changed_mask(batch["changed"])
    obj = model.object_vector(
        torch.cat([z_a, z_b, _swap(z_a, z_b, swap), _swap(z_b, z_a, swap), z_o])
    ).view(5, B, -1)

    # the changed object takes object role 0 or 1 at random, the other object the remaining one
    first = torch.rand(B, device=obj.device) < 0.5 if model.training else torch.ones(B).bool()
    first = first.to(obj.device)[:, None]
    scenes = []
    for o in obj[:4]:
        pair = torch.stack([torch.where(first, o, obj[4]), torch.where(first, obj[4], o)], dim=1)
        scenes.append(model.scene_vector(pair))  # (B, D)
    image_logits = model.decode(torch.cat(scenes))
    s_a, s_b = batch["scene_a"], batch["scene_b"]
    recon = _image(image_logits, torch.cat([s_a, s_b, s_b, s_a]), cfg)

    kld = _kld(mu, logvar, cfg, logits, model)
    if cfg.cos_coef > 0:
        from dsvsa.losses import cosine_embedding

        cos = cosine_embedding(mu[:B], mu[B : 2 * B], batch["changed"], reduction=cfg.reduction)
    else:
        cos = mu.new_zeros(())
    factors = torch.cat([batch["factors_a"], batch["factors_b"], batch["factors_other"]])
    classify = _classify(model, logits, factors, cfg)
    return _combine(cfg, recon, kld, cos, _contrast(mu, factors, cfg), classify)


def exchange_step(
    model, batch: dict[str, torch.Tensor], cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """Unrelated donor b: a random subset of a's slots from b, scored against the exact render."""
    x_a, x_b = batch["image_a"], batch["image_b"]
    B = x_a.shape[0]

    # encode both images
    mu, logvar, logits = _encode(model, torch.cat([x_a, x_b]))  # (2B, 5, D)
    z = reparameterize(mu, logvar, model.training)
    z_a, z_b = z[:B], z[B:]

    # a <- b on the mask, b <- a on its complement, plus both direct reconstructions
    mask = batch["mask"]  # (B, 5) bool
    v = model.object_vector(torch.cat([_swap(z_a, z_b, mask), _swap(z_b, z_a, ~mask), z_a, z_b]))
    out = model.decode(v)  # (4B, 1, 64, 64)
    kind, red = cfg.image_loss, cfg.reduction
    exchanged = 0.5 * (
        best_target_loss(out[:B], batch["target_ab"], kind, red)
        + best_target_loss(out[B : 2 * B], batch["target_ba"], kind, red)
    )
    direct = _image(out[2 * B :], torch.cat([x_a, x_b]), cfg)
    w = cfg.exchange_direct_weight
    recon = (exchanged + w * direct) / (1.0 + w)

    kld = _kld(mu, logvar, cfg, logits, model)
    factors_a, factors_b = batch["factors_a"], batch["factors_b"]
    if cfg.cos_coef > 0:
        same = torch.stack(
            [same_value_matrix(factors_a, factors_b, k).diagonal() for k in range(NUM_FACTORS)],
            dim=1,
        )
        cos = cosine_by_labels(mu[:B], mu[B:], same, cfg.reduction)
    else:
        cos = mu.new_zeros(())
    factors = torch.cat([factors_a, factors_b])
    classify = _classify(model, logits, factors, cfg)
    return _combine(cfg, recon, kld, cos, _contrast(mu, factors, cfg), classify)


def codebook_step(
    model, batch: dict[str, torch.Tensor], cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """Codebook models: classify single objects; decode the true classes' codes (teacher forcing).

    ``recon`` is the image loss of the teacher-forced single objects and scenes (one mean over all
    of them), mixed with the reconstruction through the encoder's own slots when
    ``codebook_direct_weight`` > 0.
    """
    x, factors = batch["image"], batch["factors"]  # (B, 1, 64, 64), (B, 5)
    B = x.shape[0]

    # encoder: per-feature logits of the single objects
    mu, logvar, logits = _encode(model, x)

    # decoder from the codes of the true classes: single objects, then bound scenes
    vectors = [model.object_vector(model.code_slots(factors))]  # (B, D)
    targets = [x]
    if "scene" in batch:
        mask = batch["scene_mask"]  # (S, M)
        objects = model.object_vector(model.code_slots(batch["scene_factors"]))  # (S, M, D)
        objects = objects * mask.unsqueeze(-1).to(objects.dtype)  # missing objects add nothing
        vectors.append(model.scene_vector(objects))
        targets.append(batch["scene"])
    w = cfg.codebook_direct_weight
    if w > 0:
        vectors.append(model.object_vector(reparameterize(mu, logvar, model.training)))
    out = model.decode(torch.cat(vectors))
    teacher = _image(out[: len(out) - (B if w > 0 else 0)], torch.cat(targets), cfg)
    recon = teacher
    if w > 0:
        recon = (teacher + w * _image(out[-B:], x, cfg)) / (1.0 + w)

    kld = _kld(mu, logvar, cfg, logits, model)
    cos = mu.new_zeros(())
    classify = _classify(model, logits, factors, cfg)
    return _combine(cfg, recon, kld, cos, _contrast(mu, factors, cfg), classify)


STAGE_STEPS = {
    "paired": paired_step,
    "scenes": scenes_step,
    "paired_scenes": paired_scenes_step,
    "exchange": exchange_step,
    "codebook": codebook_step,
}


class Objective(nn.Module):
    """The model plus the weighted stages of a config; one ``forward`` is one training loss.

    Wrapping the stages in one module keeps every model call inside a single forward pass, which
    is what DistributedDataParallel needs to synchronise gradients.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """batches: stage -> tensor batch. Returns the weighted parts and per-stage totals."""
        out: dict[str, torch.Tensor] = {}
        for stage, weight in self.cfg.stages.items():
            parts = STAGE_STEPS[stage](self.model, batches[stage], self.cfg)
            for key, value in parts.items():
                out[key] = out.get(key, 0.0) + weight * value
            if len(self.cfg.stages) > 1:
                out[f"{stage}/loss"] = parts["loss"]
                out[f"{stage}/recon"] = parts["recon"]
        return out


# ---------------------------------------------------------------------------------------------
# quick held-out metrics logged during training (the full evaluation is dsvsa.evaluation)


@torch.no_grad()
def quick_metrics(
    model, cfg: TrainConfig, n: int = 64, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Recon BCE/IoU and single-slot unrelated-donor exchange IoU on a fixed held-out batch."""
    from dsvsa import sampling
    from dsvsa.render import render

    holdout = None
    if cfg.holdout:
        holdout = sampling.HOLDOUTS[cfg.holdout]
    rng = eval_rng(cfg.seed, 99, 0)
    fa = sampling.sample_factors(rng, n, holdout=holdout, split="test")
    fb = sampling.sample_factors(rng, n, holdout=holdout, split="test")
    x_a = to_tensors({"x": render(fa)}, device)["x"]
    x_b = to_tensors({"x": render(fb)}, device)["x"]
    was_training = model.training
    model.eval()
    mu_a, _ = model(x_a)
    mu_b, _ = model(x_b)
    logits = model.decode(model.object_vector(mu_a))
    out = {
        "recon_bce": per_image_loss(logits, x_a, "bce", "sum").mean().item(),
        "recon_iou": _iou(logits, x_a),
    }
    for k, name in enumerate(FACTOR_NAMES):
        mask = np.zeros((n, NUM_FACTORS), dtype=bool)
        mask[:, k] = True
        targets = exchange_targets(fa, fb, mask, symmetric=True)  # (n, K, 5)
        flat = render(targets.reshape(-1, 5)).reshape(n, -1, 64, 64)
        t = to_tensors({"t": flat}, device)["t"]  # (n, K, 1, 64, 64)
        m = torch.from_numpy(mask).to(mu_a.device)
        logits = model.decode(model.object_vector(_swap(mu_a, mu_b, m)))
        ious = torch.stack([_iou_each(logits, t[:, j]) for j in range(t.shape[1])], dim=1)
        out[f"exchange_iou/{name}"] = ious.max(dim=1).values.mean().item()
    model.train(was_training)
    return out


def _iou_each(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = logits > 0
    truth = target > 0.5
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    return _iou_each(logits, target).mean().item()
