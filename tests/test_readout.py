"""Factor readout: accuracy on fresh exact renders and real dSprites images, determinism of its
training, strict safetensors loading."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dsvsa.factors import equivalent_orientations
from dsvsa.readout import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FactorReadout,
    ReadoutConfig,
    factor_correct,
    load_readout,
    readout_accuracy,
    save_readout,
    train_readout,
)
from dsvsa.render import render

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dsprites"
ASSETS = Path(__file__).resolve().parents[1] / "dsvsa" / "assets"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches on a shared CPU: one thread is faster than two fighting for cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def readout() -> FactorReadout:
    return load_readout()


def test_shipped_readout_is_small_and_matches_the_default_recipe():
    weights = ASSETS / WEIGHTS_NAME
    assert weights.stat().st_size < 400_000
    # scripts/train_readout.py without arguments regenerates exactly this file
    assert json.loads((ASSETS / CONFIG_NAME).read_text()) == asdict(ReadoutConfig())
    assert all(t.dtype in (torch.float16, torch.int64) for t in load_file(weights).values())


def test_accuracy_on_fresh_renders(readout):
    # measured on 5,000 renders: shape 1.000, scale 1.000, orientation 0.998, pos_x 0.991,
    # pos_y 0.991 (orientation modulo the shape's symmetry)
    acc = readout_accuracy(readout, num=2000, seed=2024)
    assert acc["shape"] >= 0.995 and acc["scale"] >= 0.995, acc
    assert acc["orientation"] >= 0.985, acc
    assert acc["pos_x"] >= 0.98 and acc["pos_y"] >= 0.98, acc


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference dSprites images not available")
def test_accuracy_on_real_dsprites_images(readout):
    data = np.load(REFERENCE / "real_dsprites_64834.npz")
    rows = np.random.default_rng(0).choice(len(data["classes"]), 2000, replace=False)
    images = np.unpackbits(data["imgs"][rows], axis=-1)
    classes = data["classes"][rows].astype(np.int64)
    ok = factor_correct(readout.predict(images), classes).mean(axis=0)
    assert ok[:2].min() >= 0.995 and ok[2] >= 0.985 and ok[3:].min() >= 0.98, ok


def test_orientation_is_read_modulo_symmetry(readout):
    # a square at class 0 and at class 10 (about pi/2 later) look alike: either answer counts
    square = np.array([[0, 5, 0, 16, 16], [0, 5, 10, 16, 16], [2, 5, 10, 16, 16]])
    pred = readout.predict(render(square))
    assert equivalent_orientations(square[:2, 0], square[:2, 2])[[0, 1], pred[:2, 2]].all()
    assert factor_correct(pred, square).all()


def test_predict_accepts_image_like_input(readout):
    img = render([[1, 3, 7, 20, 9]])[0]
    assert readout.predict(img).tolist() == readout.predict(img[None, None] * 255).tolist()
    assert readout.predict(np.zeros((2, 64, 64), np.uint8)).shape == (2, 5)  # empty: no crash


def test_training_is_deterministic():
    config = ReadoutConfig(steps=12, batch_size=8, width=8, hidden=16)
    a = train_readout(config, log_every=0).state_dict()
    b = train_readout(config, log_every=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_readout(ReadoutConfig(**{**asdict(config), "seed": 1}), log_every=0).state_dict()
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_save_load_round_trip_and_strictness(tmp_path):
    model = FactorReadout(ReadoutConfig(width=8, hidden=16)).eval()
    save_readout(model, tmp_path)
    loaded = load_readout(tmp_path)
    for key, value in model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected), key
    x = torch.from_numpy(render([[0, 1, 2, 3, 4], [2, 5, 30, 31, 0]])).float()
    assert np.array_equal(loaded.predict(x), loaded.predict(x))

    state = load_file(tmp_path / WEIGHTS_NAME)
    state["extra"] = torch.zeros(1)
    save_file(state, tmp_path / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="do not match"):
        load_readout(tmp_path)

    (tmp_path / CONFIG_NAME).write_text(json.dumps({"width": 8, "depth": 3}))
    with pytest.raises(ValueError, match="unknown readout config keys: depth"):
        load_readout(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_readout(tmp_path / "missing")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="width"):
        ReadoutConfig(width=0)
    with pytest.raises(ValueError, match="crop"):
        ReadoutConfig(crop=30)
