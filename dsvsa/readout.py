"""Factor readout: a small CNN that reads the five dSprites factors off a 64x64 image.

The evaluation uses it to say *what* a decoded image shows (which shape, scale, angle, position),
beside pixel IoU against a rendered target. It is trained on exact renders only, with a fixed seed
and one CPU thread, so ``scripts/train_readout.py`` regenerates the shipped weights
(``dsvsa/assets/readout.safetensors`` + ``readout.json``) bit for bit.

Orientation is learned and scored modulo the shape's symmetry: a square looks the same every pi/2
and an ellipse every pi, so the orientation loss is the log-probability of the whole set of
equivalent classes (:func:`dsvsa.factors.equivalent_orientations`) and a prediction counts as
right when it falls anywhere in that set.

Example:
    >>> from dsvsa.readout import load_readout
    >>> from dsvsa.render import render
    >>> readout = load_readout()
    >>> readout.predict(render([[2, 5, 0, 16, 16]])).shape
    (1, 5)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dsvsa.factors import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    NUM_FACTORS,
    equivalent_orientations,
    validate_classes,
)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "readout.safetensors"
CONFIG_NAME = "readout.json"
ORIENTATION = FACTOR_NAMES.index("orientation")
# sprite centre in px = POSITION_OFFSET + POSITION_SPAN * value, value in [0, 1]
POSITION_OFFSET = 16.0
POSITION_SPAN = 32.0


@dataclass
class ReadoutConfig:
    """Architecture and training recipe of the factor readout (JSON values only).

    Args:
        width: channels of the three convolutions.
        hidden: width of the hidden linear layer before the heads.
        crop: side of the window cut around the sprite's centroid.
        position_range: the position heads pick the class among ``+-position_range`` around the
            class that the centroid suggests.
        seed: seed of the factor sampler and of torch's initialisation.
        steps: optimiser steps.
        batch_size: fresh exact renders per step.
        lr: peak learning rate (AdamW, linear warm-up then cosine decay).
        weight_decay: AdamW weight decay.
    """

    width: int = 48
    hidden: int = 128
    crop: int = 32
    position_range: int = 3
    seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("width", "hidden", "crop", "position_range", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"readout config {name} must be a positive integer, got {value!r}")
        if self.crop % 8:
            raise ValueError(f"readout config crop must be a multiple of 8, got {self.crop}")
        if not self.lr > 0:
            raise ValueError(f"readout config lr must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReadoutConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown readout config keys: {', '.join(unknown)}")
        return cls(**data)


def _position_class(centre: torch.Tensor) -> torch.Tensor:
    """Continuous position class of a sprite centred at ``centre`` px (pixel-centre units)."""
    return (centre - POSITION_OFFSET) * (FACTOR_SIZES[3] - 1) / POSITION_SPAN


class FactorReadout(nn.Module):
    """Centroid crop, a small CNN and one head per factor.

    A ``crop`` x ``crop`` window is cut around the centroid of the lit pixels (integer shift, no
    resampling), so shape, scale and orientation are read from a centred sprite. The position
    heads classify the offset (in classes, within ``+-position_range``) from the class that the
    centroid suggests; the fractional part of that suggestion is an input, and the CNN sees how
    the sprite sits in the window (a heart's centroid is not its centre).

    Input (B, 1, 64, 64) in {0, 1}. Output: logits (B, 3 + 6 + 40 + 2 (2 R + 1)) and the two
    base position classes (B,) each.
    """

    def __init__(self, config: ReadoutConfig | None = None) -> None:
        super().__init__()
        self.config = config or ReadoutConfig()
        w, side = self.config.width, self.config.crop // 8  # 2x unshuffle, then two stride 2
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(4, w, 3, padding=1, bias=False),
                nn.Conv2d(w, w, 3, stride=2, padding=1, bias=False),
                nn.Conv2d(w, w, 3, stride=2, padding=1, bias=False),
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm2d(w) for _ in self.convs])
        self.fc = nn.Linear(w * side * side + 2, self.config.hidden)
        self.sizes = [
            *FACTOR_SIZES[:3],
            2 * self.config.position_range + 1,
            2 * self.config.position_range + 1,
        ]
        self.head = nn.Linear(self.config.hidden, sum(self.sizes))

    def crop(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, 64, 64) -> (window (B, 1, C, C), centroid x (B,), centroid y (B,)) in px."""
        img = x[:, 0]
        B, H, W = img.shape
        C = self.config.crop
        grid = torch.arange(W, dtype=img.dtype, device=img.device) + 0.5  # pixel centres
        total = img.sum((1, 2))
        lit = total > 0
        cx = torch.where(lit, (img.sum(1) * grid).sum(1) / total.clamp(min=1), W / 2)
        cy = torch.where(lit, (img.sum(2) * grid).sum(1) / total.clamp(min=1), H / 2)
        x0 = torch.round(cx).long() - C // 2
        y0 = torch.round(cy).long() - C // 2
        padded = F.pad(img, (C, C, C, C))
        offsets = torch.arange(C, device=img.device) + C
        rows = (y0[:, None] + offsets)[:, :, None]
        cols = (x0[:, None] + offsets)[:, None, :]
        window = padded[torch.arange(B, device=img.device)[:, None, None], rows, cols]
        return window[:, None], cx, cy

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, 64, 64) float -> (logits (B, 49 + 2 (2R + 1)), base_x (B,), base_y (B,))."""
        window, cx, cy = self.crop(x)
        qx, qy = _position_class(cx), _position_class(cy)
        base_x, base_y = torch.round(qx), torch.round(qy)
        h = F.pixel_unshuffle(window, 2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(norm(conv(h)))
        h = torch.cat([h.flatten(1), (qx - base_x)[:, None], (qy - base_y)[:, None]], dim=1)
        logits = self.head(F.relu(self.fc(h)))
        return logits, base_x.long(), base_y.long()

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """(B, total) -> five logit blocks: shape, scale, orientation, pos_x offset, pos_y offset."""
        return list(torch.split(logits, self.sizes, dim=1))

    def classes(
        self, logits: torch.Tensor, base_x: torch.Tensor, base_y: torch.Tensor
    ) -> torch.Tensor:
        """Predicted (B, 5) classes from :meth:`forward`'s outputs."""
        R = self.config.position_range
        shape, scale, orient, dx, dy = self.split_logits(logits)
        last = FACTOR_SIZES[3] - 1
        pos_x = (base_x + dx.argmax(1) - R).clamp(0, last)
        pos_y = (base_y + dy.argmax(1) - R).clamp(0, last)
        return torch.stack([shape.argmax(1), scale.argmax(1), orient.argmax(1), pos_x, pos_y], 1)

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 512) -> np.ndarray:
        """Predicted class of each factor.

        Args:
            images: anything :func:`dsvsa.images.to_batch` accepts (64x64, one or a batch).
            batch_size: images per forward pass.

        Returns:
            (B, 5) int64 class indices (shape, scale, orientation, pos_x, pos_y).
        """
        from dsvsa.images import to_batch

        x = to_batch(images)
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(x), batch_size):
            out.append(self.classes(*self(x[start : start + batch_size].to(device))))
        return torch.cat(out).cpu().numpy().astype(np.int64)

    def loss(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Sum of the five heads' cross-entropies; orientation over the set of equivalent angles.

        Args:
            x: (B, 1, 64, 64) exact renders.
            classes: (B, 5) int64 their classes.
        Returns:
            (loss, per-factor losses as floats).
        """
        logits, base_x, base_y = self(x)
        shape, scale, orient, dx, dy = self.split_logits(logits)
        R = self.config.position_range
        mask = equivalent_orientations(classes[:, 0].cpu().numpy(), classes[:, 2].cpu().numpy())
        mask = torch.from_numpy(mask).to(orient.device)
        log_p = orient.log_softmax(1)
        losses = [
            F.cross_entropy(shape, classes[:, 0]),
            F.cross_entropy(scale, classes[:, 1]),
            -torch.logsumexp(log_p.masked_fill(~mask, -math.inf), dim=1).mean(),
            F.cross_entropy(dx, (classes[:, 3] - base_x + R).clamp(0, 2 * R)),
            F.cross_entropy(dy, (classes[:, 4] - base_y + R).clamp(0, 2 * R)),
        ]
        return torch.stack(losses).sum(), [float(v.detach()) for v in losses]


def factor_correct(pred, true) -> np.ndarray:
    """(N, 5) bool: which predicted classes are right, orientation modulo the true shape's symmetry.

    Args:
        pred: (N, 5) predicted classes.
        true: (N, 5) true classes (the true shape decides the symmetry).
    """
    pred = validate_classes(pred)
    true = validate_classes(true)
    ok = pred == true
    mask = equivalent_orientations(true[:, 0], true[:, ORIENTATION])
    ok[:, ORIENTATION] = mask[np.arange(len(true)), pred[:, ORIENTATION]]
    return ok


def train_readout(
    config: ReadoutConfig | None = None, log_every: int = 100, num_threads: int | None = 1
) -> FactorReadout:
    """Train a readout on fresh exact renders, deterministically for a given config.

    Args:
        config: recipe; defaults to :class:`ReadoutConfig`.
        log_every: steps between log lines.
        num_threads: torch CPU threads during training (1 keeps results bit-reproducible);
            None leaves the setting alone.
    Returns:
        the trained readout in eval mode.
    """
    from dsvsa.render import render
    from dsvsa.sampling import sample_factors

    config = config or ReadoutConfig()
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = FactorReadout(config)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(1, config.steps // 20)

        def lr_at(step: int) -> float:
            if step < warmup:
                return config.lr * (step + 1) / warmup
            progress = (step - warmup) / max(1, config.steps - warmup)
            return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

        model.train()
        start = time.perf_counter()
        for step in range(config.steps):
            # fresh exact renders every step
            classes = sample_factors(rng, config.batch_size)
            x = torch.from_numpy(render(classes)).float()[:, None]
            y = torch.from_numpy(classes)

            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss, parts = model.loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            if log_every and (step % log_every == 0 or step == config.steps - 1):
                detail = " ".join(f"{n}={v:.3f}" for n, v in zip(FACTOR_NAMES, parts, strict=True))
                logger.info(
                    "readout step %d/%d loss %.3f (%s) %.0fs",
                    step,
                    config.steps,
                    float(loss.detach()),
                    detail,
                    time.perf_counter() - start,
                )
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous_threads)
    return model.eval()


def readout_accuracy(
    readout: FactorReadout, num: int = 2000, seed: int = 12345
) -> dict[str, float]:
    """Accuracy per factor on fresh exact renders (orientation modulo symmetry), and all five."""
    from dsvsa.render import render
    from dsvsa.sampling import sample_factors

    classes = sample_factors(np.random.default_rng(seed), num)
    ok = factor_correct(readout.predict(render(classes)), classes)
    out = {name: float(ok[:, k].mean()) for k, name in enumerate(FACTOR_NAMES)}
    out["all"] = float(ok.all(axis=1).mean())
    return out


def save_readout(readout: FactorReadout, directory: str | Path) -> Path:
    """Write ``readout.safetensors`` (float16 weights) and ``readout.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in readout.state_dict().items()
    }
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(readout.config), indent=2) + "\n")
    return directory / WEIGHTS_NAME


def load_readout(directory: str | Path | None = None) -> FactorReadout:
    """Load a readout (strict, safetensors only) from ``directory`` or the package's assets.

    Raises:
        FileNotFoundError: no readout files there.
        ValueError: the weights do not match the config.
    """
    if directory is None:
        base = resources.files("dsvsa") / "assets"
        weights, config_file = base / WEIGHTS_NAME, base / CONFIG_NAME
    else:
        weights, config_file = Path(directory) / WEIGHTS_NAME, Path(directory) / CONFIG_NAME
    if not (weights.is_file() and config_file.is_file()):
        raise FileNotFoundError(
            f"no factor readout at {weights}; run scripts/train_readout.py to create it"
        )
    config = ReadoutConfig.from_dict(json.loads(config_file.read_text()))
    readout = FactorReadout(config)
    state = {
        k: v.to(torch.float32) if v.is_floating_point() else v
        for k, v in load_file(str(weights)).items()
    }
    try:
        readout.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"readout weights in {weights} do not match {config_file}: {err}") from err
    return readout.eval()


__all__ = [
    "FactorReadout",
    "ReadoutConfig",
    "NUM_FACTORS",
    "factor_correct",
    "load_readout",
    "readout_accuracy",
    "save_readout",
    "train_readout",
]
