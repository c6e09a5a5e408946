"""Losses: values against hand computations and torch's own functions, reduction semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsvsa.losses import cosine_embedding, image_loss, kl_divergence


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 64, 64, generator=g)
    target = (torch.rand(3, 1, 64, 64, generator=g) > 0.8).float()
    return logits, target


def test_bce_sum_is_nats_per_image(batch):
    logits, target = batch
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 3
    assert torch.allclose(image_loss(logits, target, "bce", "sum"), expected)
    mean = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(image_loss(logits, target, "bce", "mean"), mean)
    # a (B, 64, 64) target is accepted
    assert torch.allclose(image_loss(logits, target[:, 0], "bce", "sum"), expected)
    zero = torch.zeros(2, 1, 64, 64)
    assert math.isclose(float(image_loss(zero, zero)), 4096 * math.log(2), rel_tol=1e-6)


def test_mse_on_probabilities(batch):
    logits, target = batch
    sq = (torch.sigmoid(logits) - target).square()
    assert torch.allclose(image_loss(logits, target, "mse", "sum"), sq.sum() / 3)
    assert torch.allclose(image_loss(logits, target, "mse", "mean"), sq.mean())


def test_image_loss_rejects_unknown_options(batch):
    logits, target = batch
    with pytest.raises(ValueError, match="kind"):
        image_loss(logits, target, kind="l1")
    with pytest.raises(ValueError, match="reduction"):
        image_loss(logits, target, reduction="max")


def test_kl_divergence_values():
    mu = torch.ones(4, 5, 8)
    logvar = torch.zeros(4, 5, 8)
    assert float(kl_divergence(mu, logvar, "sum")) == pytest.approx(0.5 * 5 * 8)
    assert float(kl_divergence(mu, logvar, "mean")) == pytest.approx(0.5)
    assert float(kl_divergence(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))) == 0.0
    # sigma^2 = e: 0.5 * (e - 1 - 1) per element
    lv = torch.ones(1, 5, 2)
    assert float(kl_divergence(torch.zeros(1, 5, 2), lv)) == pytest.approx(10 * 0.5 * (math.e - 2))


def test_cosine_embedding_targets_from_changed_label():
    z = torch.randn(2, 5, 16)
    # identical latents: unchanged slots cost 0, the changed slot (cos 1) costs 1
    changed = torch.tensor([0, 3])
    assert float(cosine_embedding(z, z, changed, "sum")) == pytest.approx(1.0)
    assert float(cosine_embedding(z, z, changed, "mean")) == pytest.approx(1.0 / 5)
    assert float(cosine_embedding(z, z, torch.tensor([-1, -1]))) == pytest.approx(0.0, abs=1e-6)


def test_cosine_embedding_matches_torch(batch):
    g = torch.Generator().manual_seed(2)
    z_a, z_b = torch.randn(6, 5, 32, generator=g), torch.randn(6, 5, 32, generator=g)
    changed = torch.tensor([0, 1, 2, 3, 4, 2])
    y = torch.ones(6, 5)
    y[torch.arange(6), changed] = -1
    ref = F.cosine_embedding_loss(z_a.reshape(-1, 32), z_b.reshape(-1, 32), y.reshape(-1))
    assert torch.allclose(cosine_embedding(z_a, z_b, changed, "mean"), ref)
    assert torch.allclose(cosine_embedding(z_a, z_b, changed, "sum"), ref * 5)
    z_a.requires_grad_(True)
    cosine_embedding(z_a, z_b, changed).backward()
    assert z_a.grad is not None and z_a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="changed"):
        cosine_embedding(z_a, z_b, torch.tensor([5, 0, 0, 0, 0, 0]))
