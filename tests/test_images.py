"""Image conversions: accepted inputs, clear errors, exact round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsvsa.images import (
    from_pil,
    logits_to_binary,
    logits_to_probs,
    probs_to_binary,
    to_batch,
    to_display,
    to_pil,
)


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    return (rng.random((64, 64)) > 0.7).astype(np.uint8)


def test_to_batch_accepts_arrays_tensors_and_pil(img):
    expected = torch.from_numpy(img.astype(np.float32))[None, None]
    inputs = [
        img,
        img.astype(bool),
        img.astype(np.float32),
        img * np.uint8(255),
        img[None],
        img[None, None],
        torch.from_numpy(img),
        torch.from_numpy(img).float()[None, None],
        Image.fromarray(img * 255, mode="L"),
        Image.fromarray(img * 255, mode="L").convert("1"),
        [img],
    ]
    for x in inputs:
        batch = to_batch(x)
        assert batch.dtype == torch.float32 and batch.shape == (1, 1, 64, 64)
        assert torch.equal(batch, expected), type(x)


def test_to_batch_batches_and_lists(img):
    stack = np.stack([img, 1 - img, img])
    assert to_batch(stack).shape == (3, 1, 64, 64)
    pil = [Image.fromarray(x * 255, mode="L") for x in stack]
    assert torch.equal(to_batch(pil), to_batch(stack))
    assert torch.equal(to_batch(list(stack)), to_batch(stack))


def test_to_batch_thresholds_grey_values():
    grey = np.resize(np.array([0.2, 0.5, 0.9, 0.0], dtype=np.float32), (64, 64))
    assert to_batch(grey)[0, 0, 0, :4].tolist() == [0.0, 1.0, 1.0, 0.0]
    grey8 = np.resize(np.array([10, 127, 128, 255], dtype=np.uint8), (64, 64))
    assert to_batch(grey8)[0, 0, 0, :4].tolist() == [0.0, 0.0, 1.0, 1.0]
    rgba = Image.new("RGBA", (64, 64), (255, 255, 255, 0))  # transparent white -> black
    assert to_batch(rgba).sum() == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((32, 32), np.uint8), "64x64"),
        (np.zeros((64, 64, 3), np.uint8), "channel"),
        (np.zeros((2, 3, 64, 64), np.uint8), "channel"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.full((64, 64), 2.0, np.float32), r"\[0, 1\]"),
        (-np.ones((64, 64), np.int64), "non-negative"),
        (np.zeros((1, 1, 1, 64, 64)), "shape"),
        (np.zeros((0, 64, 64), np.uint8), "empty"),
        ([], "empty"),
        ("image.png", "cannot read"),
        (Image.new("L", (28, 28)), "64x64"),
    ],
)
def test_to_batch_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        to_batch(bad)


def test_logits_to_probs_and_binary():
    logits = torch.tensor([[[[-2.0, 0.0, 1e-3, 5.0]]]])
    assert torch.allclose(logits_to_probs(logits), torch.sigmoid(logits))
    assert np.allclose(logits_to_probs(logits.numpy()), torch.sigmoid(logits).numpy())
    binary = logits_to_binary(logits)
    assert binary.dtype == np.uint8 and binary.shape == (1, 1, 4)  # channel axis dropped
    assert binary.tolist() == [[[0, 0, 1, 1]]]  # logit 0 is probability 0.5: not "on"
    assert np.array_equal(probs_to_binary(logits_to_probs(logits)), binary)


def test_pil_round_trip_is_exact(img):
    pil = to_pil(img)
    assert pil.mode == "L" and set(np.unique(np.asarray(pil))) == {0, 255}
    assert np.array_equal(from_pil(pil), img)
    assert np.array_equal(from_pil(to_pil(torch.from_numpy(img)[None, None])), img)
    with pytest.raises(ValueError, match="one image"):
        to_pil(np.zeros((2, 64, 64), np.uint8))


def test_to_display(img):
    out = to_display(img, scale=3)
    assert out.shape == (192, 192) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255}
    assert np.array_equal(out[::3, ::3], img * 255)
    assert to_display(np.stack([img, img]), scale=2).shape == (2, 128, 128)
    assert to_display(np.array([[0.0, 0.5, 1.0]]), scale=1).tolist() == [[0, 128, 255]]
    with pytest.raises(ValueError, match="scale"):
        to_display(img, scale=0)
