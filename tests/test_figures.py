"""Figures drawn from a run's files."""

import json

import numpy as np
from PIL import Image

from dsvsa.figures import training_curves


def test_training_curves_draws_each_logged_loss(tmp_path):
    losses = tmp_path / "losses.jsonl"
    rows = [{"step": s, "recon": 900.0 / s, "classify": 10.0 / s, "kld": 0.0} for s in range(1, 301)]
    losses.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = training_curves(losses, tmp_path / "curves.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (360, 640, 3)
    # the recon (blue) and classify (red) curves are drawn; the all-zero kld is left out
    assert ((img == (31, 119, 180)).all(-1)).sum() > 100
    assert ((img == (214, 39, 40)).all(-1)).sum() > 100
    assert ((img == (44, 160, 44)).all(-1)).sum() == 0


def test_training_curves_without_rows_writes_nothing(tmp_path):
    losses = tmp_path / "losses.jsonl"
    losses.write_text("")
    assert training_curves(losses, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
