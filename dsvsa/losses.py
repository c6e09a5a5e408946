"""Training losses: image reconstruction, KL to the prior, per-slot cosine embedding.

Reductions follow one rule everywhere: ``"sum"`` sums over everything but the batch axis (pixels,
latent dims, slots) and averages over the batch, so an image loss is in nats per image;
``"mean"`` averages over all elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_LOSSES = ("bce", "mse")
REDUCTIONS = ("sum", "mean")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, ...) elementwise values -> scalar by the module's reduction rule."""
    if reduction == "sum":
        return values.reshape(values.shape[0], -1).sum(dim=1).mean()
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def image_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: str = "bce", reduction: str = "sum"
) -> torch.Tensor:
    """Reconstruction loss of decoder logits against a binary target image.

    Args:
        logits: (B, 1, 64, 64) decoder output.
        target: (B, 1, 64, 64) or (B, 64, 64) float {0, 1} target.
        kind: ``"bce"`` (binary cross-entropy with logits) or ``"mse"`` (squared error of the
            sigmoid probabilities).
        reduction: ``"sum"`` (over pixels, mean over the batch) or ``"mean"`` (over all).

    Returns:
        scalar loss.

    Example:
        >>> logits = torch.zeros(2, 1, 64, 64)
        >>> round(float(image_loss(logits, torch.ones(2, 1, 64, 64))), 1)  # 4096 * log 2
        2839.1
    """
    target = target.to(logits.dtype).reshape(logits.shape)
    if kind == "bce":
        values = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "mse":
        values = (torch.sigmoid(logits) - target).square()
    else:
        raise ValueError(f"image loss kind must be one of {IMAGE_LOSSES}, got {kind!r}")
    return _reduce(values, reduction)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL divergence of the diagonal Gaussian posterior from N(0, I).

    Args:
        mu: (B, 5, D) posterior means.
        logvar: (B, 5, D) posterior log-variances.
        reduction: ``"sum"`` (over slots and dims, mean over the batch) or ``"mean"``.

    Returns:
        scalar KL in nats.

    Example:
        >>> float(kl_divergence(torch.zeros(3, 5, 8), torch.zeros(3, 5, 8)))
        0.0
    """
    values = -0.5 * (1.0 + logvar - mu.square() - logvar.exp())
    return _reduce(values, reduction)


def cosine_embedding(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    changed: torch.Tensor,
    reduction: str = "sum",
    margin: float = 0.0,
) -> torch.Tensor:
    """Per-slot cosine-embedding loss between the latents of the two images of a pair.

    Slots the pair shares (target +1) cost ``1 - cos``; the slot of the changed feature (target -1)
    costs ``max(0, cos - margin)``.

    Args:
        z_a: (B, 5, D) latents of the first images.
        z_b: (B, 5, D) latents of the second images.
        changed: (B,) int64 position of the changed factor per pair; -1 marks a pair with no
            change (every slot +1).
        reduction: ``"sum"`` (over the slots, mean over the batch) or ``"mean"`` (over all slots).
        margin: the margin of the -1 term.

    Returns:
        scalar loss.

    Example:
        >>> z = torch.randn(4, 5, 16)
        >>> round(float(cosine_embedding(z, z, torch.full((4,), -1))), 6)
        0.0
    """
    if z_a.shape != z_b.shape or z_a.ndim != 3:
        raise ValueError(f"z_a and z_b must share a (B, K, D) shape, got {z_a.shape}, {z_b.shape}")
    num_slots = z_a.shape[1]
    changed = torch.as_tensor(changed, device=z_a.device).long().reshape(-1)
    if changed.shape[0] != z_a.shape[0]:
        raise ValueError(f"changed must have {z_a.shape[0]} entries, got {changed.shape[0]}")
    if changed.numel() and (changed.min() < -1 or changed.max() >= num_slots):
        raise ValueError(f"changed must lie in -1..{num_slots - 1}")
    cos = F.cosine_similarity(z_a, z_b, dim=-1)  # (B, K)
    slots = torch.arange(num_slots, device=z_a.device)
    is_changed = slots[None] == changed[:, None]  # (B, K)
    values = torch.where(is_changed, (cos - margin).clamp_min(0.0), 1.0 - cos)
    return _reduce(values, reduction)
