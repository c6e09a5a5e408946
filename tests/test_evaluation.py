"""Evaluation metrics: an oracle scores perfectly, the no-change baseline sits where it should,
symmetry-aware scoring forgives exactly the ambiguous angles, and the CLI writes its outputs."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsvsa import evaluation as ev
from dsvsa.factors import FACTOR_NAMES, equivalent_orientations, validate_classes
from dsvsa.readout import load_readout

render_module = importlib.import_module("dsvsa.render")


class OracleModel:
    """Test double of DSpritesVSA that encodes and decodes exactly.

    ``latent`` looks each image up in a registry of rendered images (image bytes -> factors) and
    returns, per slot, a fixed random bipolar code of the factor's class; ``object_vector`` and
    ``scene_vector`` bind as the real model does. ``decode`` is a perfect decoder for vectors
    built from the latest ``object_vector`` call: each object, the plain sum of each group of
    objects and each bound scene is remembered with the objects it holds, and decoding renders
    them (a LookupError for any other vector). With ``canonical=True`` the encoder forgets what
    pixels cannot show: a square's or ellipse's angle becomes the smallest equivalent class.
    """

    def __init__(self, registry: dict[bytes, np.ndarray], dim: int = 1024, canonical=False):
        g = torch.Generator().manual_seed(1)

        def bipolar(*shape):
            return torch.randint(0, 2, shape, generator=g).float() * 2 - 1

        self.registry = registry
        self.canonical = canonical
        self.codebooks = [bipolar(size, dim) for size in (3, 6, 40, 32, 32)]
        vectors = bipolar(7, dim)
        self.item_memory = SimpleNamespace(
            vectors=vectors, feature_roles=vectors[:5], object_roles=vectors[5:]
        )
        self.config = SimpleNamespace(bind_objects=True, num_object_roles=2, latent_dim=dim)
        self.training = False
        self.known_vectors = torch.zeros(0, dim)
        self.known_objects: list[np.ndarray] = []

    def eval(self):
        return self

    def latent(self, images) -> torch.Tensor:
        imgs = np.asarray(images, dtype=np.uint8).reshape(-1, 64, 64)
        unknown = [i for i, img in enumerate(imgs) if img.tobytes() not in self.registry]
        if unknown:
            raise LookupError(f"{len(unknown)} images were not rendered while drawing the data")
        factors = np.stack([self.registry[img.tobytes()] for img in imgs])
        if self.canonical:
            eq = equivalent_orientations(factors[:, 0], factors[:, 2])
            factors[:, 2] = eq.argmax(axis=1)  # smallest equivalent class
        return torch.stack([self.codebooks[k][factors[:, k]] for k in range(5)], dim=1)

    def _remember(self, vectors: torch.Tensor, objects: list[np.ndarray]) -> None:
        self.known_vectors = torch.cat([self.known_vectors, vectors.reshape(-1, vectors.shape[-1])])
        self.known_objects += objects

    def _lookup(self, v: torch.Tensor) -> list[np.ndarray] | None:
        """The objects behind each row of v, or None when some row is unknown."""
        sims = F.normalize(v, dim=-1) @ F.normalize(self.known_vectors, dim=-1).T
        best, index = sims.max(dim=-1)
        if float(best.min()) < 0.9999:
            return None
        return [self.known_objects[i] for i in index.tolist()]

    def object_vector(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, 5, z.shape[-1])
        factors = np.stack(
            [(flat[:, k] @ self.codebooks[k].T).argmax(1).numpy() for k in range(5)], axis=1
        )
        v = (flat * self.item_memory.feature_roles).sum(1)
        self.known_vectors, self.known_objects = v, [f[None] for f in factors]
        if z.ndim == 4:  # (S, M, 5, D): remember each group's plain sum too
            S, M = z.shape[:2]
            self._remember(v.view(S, M, -1).sum(1), [g for g in factors.reshape(S, M, 5)])
        return v.reshape(*z.shape[:-2], z.shape[-1])

    def scene_vector(self, objects: torch.Tensor) -> torch.Tensor:
        S, M = objects.shape[:2]
        if M > 2:
            raise ValueError("a bound scene holds at most 2 objects")
        scene = (objects * self.item_memory.object_roles[:M]).sum(-2)
        parts = self._lookup(objects.reshape(S * M, -1))
        if parts is not None:  # objects of an older call: fine for queries, not decodable
            self._remember(scene, [np.concatenate(parts[i * M : (i + 1) * M]) for i in range(S)])
        return scene

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        objects = self._lookup(v)
        if objects is None:
            raise LookupError("decode got a vector not built from the latest objects")
        images = np.stack([render_module.render_scene(objs) for objs in objects])
        return torch.from_numpy(images).float()[:, None] * 40.0 - 20.0

    def query(self, scene_vec, j, feature, prototypes) -> torch.Tensor:
        k = FACTOR_NAMES.index(feature) if isinstance(feature, str) else int(feature)
        u = scene_vec if j is None else scene_vec * self.item_memory.object_roles[j]
        u = u * self.item_memory.feature_roles[k]
        sims = (
            torch.nn.functional.normalize(u, dim=-1)
            @ torch.nn.functional.normalize(prototypes, dim=-1).T
        )
        return sims.argmax(-1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches on a shared CPU: one thread is faster than two fighting for cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def readout():
    return load_readout()


@pytest.fixture(scope="module")
def held_and_registry():
    """Held-out draws made while every render is recorded for the oracle's encoder."""
    registry: dict[bytes, np.ndarray] = {}
    original = render_module.render
    mp = pytest.MonkeyPatch()

    def recording(classes, packed: bool = False):
        out = original(classes, packed)
        if not packed:
            for f, img in zip(validate_classes(classes), out, strict=True):
                registry.setdefault(img.tobytes(), f.copy())
        return out

    mp.setattr(render_module, "render", recording)
    try:
        held = ev.sample_held_out(num=120, seed=3, num_scenes=40, prototypes_per_value=2)
    finally:
        mp.undo()
    return held, registry


@pytest.fixture(scope="module")
def oracle_metrics(held_and_registry, readout):
    held, registry = held_and_registry
    return ev.evaluate(OracleModel(registry), data=held, readout=readout)


def test_iou_and_targets():
    a = np.zeros((2, 64, 64), np.uint8)
    b = a.copy()
    a[0, :4, :4], b[0, :2, :4] = 1, 1  # 8 of 16
    np.testing.assert_allclose(ev.iou(a, b), [0.5, 1.0])

    fa = np.array([[0, 2, 10, 5, 6], [2, 1, 3, 7, 8]])
    fb = np.array([[2, 4, 20, 9, 9], [1, 0, 1, 30, 31]])
    target, cand = ev.exchange_targets(fa, fb, 2)
    assert target[:, 2].tolist() == [20, 1]
    assert cand[0].sum() == 1 and cand[0, 20]  # a heart donor fixes its angle
    assert cand[1, 1] and cand[1].sum() >= 2  # an ellipse donor: theta and theta + pi
    target, cand = ev.exchange_targets(fa, fb, 0)
    assert target[:, 0].tolist() == [2, 1]
    assert cand[0, 10] and cand[0].sum() >= 4  # square recipient: every pi/2
    assert cand[1].sum() == 1  # heart recipient
    target, cand = ev.exchange_targets(fa, fb, 3)
    assert target[:, 3].tolist() == [9, 30] and cand.sum() == 2


def test_oracle_scores_perfectly(oracle_metrics):
    m = oracle_metrics
    assert m["recon_iou"] == 1.0 and m["recon_bce"] < 1e-3
    for key in ("exchange_iou", "exchange_iou_strict", "pair_swap_iou", "scene_edit_iou"):
        assert all(v == 1.0 for v in m[key].values()), (key, m[key])
    assert all(v == 1.0 for v in m["composition_iou"].values()), m["composition_iou"]
    assert all(v == 1.0 for v in m["composition_iou_sum"].values())
    assert m["composition_mode"] == {"1": "bound", "2": "bound", "3": "sum", "4": "sum", "5": "sum"}
    assert all(v == 1.0 for v in m["query_accuracy"].values()), m["query_accuracy"]
    assert all(v == 1.0 for v in m["query_accuracy_object"].values())
    # the readout is right about exact images almost always, and the matrix is the identity
    assert min(m["readout_exchange_accuracy"].values()) >= 0.93, m["readout_exchange_accuracy"]
    assert min(m["readout_swapped_accuracy"].values()) >= 0.97, m["readout_swapped_accuracy"]
    matrix = np.array(m["exchange_matrix"])
    assert np.diag(matrix).min() >= 0.95, matrix
    assert (matrix - np.diag(np.diag(matrix))).max() <= 0.06, matrix


def test_no_change_baseline(oracle_metrics):
    m = oracle_metrics
    base = m["exchange_iou_baseline"]
    # small sprites moved elsewhere hardly overlap; shape/scale/orientation keep much overlap
    assert base["pos_x"] < 0.35 and base["pos_y"] < 0.35, base
    assert 0.55 < base["shape"] < 0.9 and 0.5 < base["scale"] < 0.9, base
    assert 0.45 < base["orientation"] < 0.85, base
    assert all(m["pair_swap_iou_baseline"][k] < 1.0 for k in FACTOR_NAMES)
    # returning a unchanged is right only when b happens to share the swapped value
    acc = m["readout_exchange_accuracy_baseline"]
    assert acc["shape"] < 0.5 and acc["pos_x"] < 0.1 and acc["scale"] < 0.3, acc
    baseline_matrix = np.array(m["exchange_matrix_baseline"])
    assert baseline_matrix.max() <= 0.06
    # chance level of a query: 1/3 for shape, more than 1/40 for orientation (symmetries)
    chance = m["query_accuracy_chance"]
    assert chance["shape"] == pytest.approx(1 / 3) and chance["orientation"] > 1 / 40


def test_symmetry_aware_scoring_forgives_only_ambiguous_angles(held_and_registry, readout):
    """An encoder that cannot see a square's angle beyond pi/2 (or an ellipse's beyond pi) is
    perfect under symmetry-aware scoring for shape and orientation exchange; scored against the
    single target it loses what DESIGN.md measured (~0.89 shape, ~0.87 orientation)."""
    held, registry = held_and_registry
    m = ev.evaluate(OracleModel(registry, canonical=True), data=held, readout=readout)
    assert m["exchange_iou"]["shape"] == 1.0
    assert m["exchange_iou"]["orientation"] == 1.0
    assert 0.82 < m["exchange_iou_strict"]["shape"] < 0.95, m["exchange_iou_strict"]
    assert 0.82 < m["exchange_iou_strict"]["orientation"] < 0.95, m["exchange_iou_strict"]
    assert m["readout_exchange_accuracy"]["orientation"] >= 0.93
    # reconstructions of rotated squares lose their angle: not exact any more
    assert m["recon_iou"] < 1.0


def test_outputs_markdown_and_flat_keys(oracle_metrics, held_and_registry, readout, tmp_path):
    held, registry = held_and_registry
    m = ev.evaluate(OracleModel(registry), data=held, readout=readout, out_dir=tmp_path)
    saved = json.loads((tmp_path / ev.METRICS_FILE).read_text())
    assert saved["exchange_iou"] == m["exchange_iou"]
    assert saved["figures"] == ev.FIGURES
    from PIL import Image

    for name in ev.FIGURES.values():
        with Image.open(tmp_path / name) as img:
            assert img.width > 100 and img.height > 100
    table = ev.metrics_markdown(m)
    assert "| exchange IoU, unrelated donor: shape | 1.000 |" in table
    assert "no-change baseline" in table and "composition IoU, 5 objects (sum)" in table
    flat = ev.flatten_metrics(m)
    assert flat["eval/exchange_iou/shape"] == 1.0
    assert "eval/exchange_matrix/shape/shape" in flat
    assert all(isinstance(v, float) for v in flat.values())


def test_evaluate_is_deterministic():
    a = ev.sample_held_out(num=8, seed=5, num_scenes=2, prototypes_per_value=1)
    b = ev.sample_held_out(num=8, seed=5, num_scenes=2, prototypes_per_value=1)
    c = ev.sample_held_out(num=8, seed=6, num_scenes=2, prototypes_per_value=1)
    assert np.array_equal(a.factors, b.factors) and np.array_equal(
        a.scenes[5]["scene"], b.scenes[5]["scene"]
    )
    assert not np.array_equal(a.factors, c.factors)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from dsvsa.model import DSpritesVSA, DSpritesVSAConfig

    torch.manual_seed(0)
    model = DSpritesVSA(
        DSpritesVSAConfig(
            latent_dim=64,
            enc_channels=[4, 4, 8, 8],
            enc_hidden=32,
            dec_hidden=32,
            dec_channels=[8, 8, 4, 4],
        )
    )
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    return path


def test_untrained_model_returns_every_metric(tiny_model_dir, readout):
    from dsvsa.model import DSpritesVSA

    model = DSpritesVSA.from_pretrained(tiny_model_dir)
    m = ev.evaluate(model, num=16, seed=1, readout=readout)
    for key in (
        "recon_bce",
        "recon_iou",
        "exchange_iou",
        "exchange_iou_baseline",
        "readout_exchange_accuracy",
        "exchange_matrix",
        "pair_swap_iou",
        "scene_edit_iou",
        "composition_iou",
        "query_accuracy",
        "query_accuracy_chance",
        "readout_accuracy",
    ):
        assert key in m, key
    assert set(m["exchange_iou"]) == set(FACTOR_NAMES)
    assert set(m["composition_iou"]) == {"1", "2", "3", "4", "5"}
    assert 0.0 <= m["recon_iou"] <= 1.0 and m["recon_bce"] > 100  # untrained: far from exact
    assert not model.training


def test_cli_writes_metrics_and_figures(tiny_model_dir, tmp_path, capsys):
    from dsvsa.cli import main

    out = tmp_path / "eval"
    args = ["evaluate", str(tiny_model_dir), "--out", str(out), "--num", "12", "--seed", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| exchange IoU, unrelated donor: shape |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num"] == 12 and metrics["seed"] == 2
    assert all((out / name).is_file() for name in ev.FIGURES.values())


def test_cli_console_script_reports_a_missing_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dsvsa.cli", "evaluate", str(tmp_path / "nothing"), "--num", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "dsvsa evaluate: error:" in proc.stderr and "nothing" in proc.stderr


def test_dataset_folder_is_used(tmp_path, tiny_model_dir, readout):
    export = pytest.importorskip("dsvsa.export")
    out = tmp_path / "data"
    for config in ("paired", "scenes"):
        export.build_config(out, config, 4, 30, seed=0)
    held = ev.load_held_out(out, num=10, seed=0, prototypes_per_value=1)
    assert str(out) in held.source
    # the scenes config has 2-5 objects: single-object scenes come from the sampler, and say so
    assert len(held.notes) == 1 and "[1]-object" in held.notes[0], held.notes
    assert len(held.factors) == 10
    # donors are other rows of the split: never the recipient itself
    assert not np.all(held.factors == held.donor_factors)
    assert sum(len(p["factors_a"]) for p in held.pairs.values()) == 30
    assert sum(len(s["factors"]) for s in held.scenes.values()) <= 30


def test_cli_evaluates_hub_model_on_hub_dataset(tiny_model_dir, hub, hub_repo, tmp_path, capsys):
    """MODEL and --data given as Hub ids (the loopback Hub): the same code path as the real Hub."""
    from dsvsa.cli import main
    from dsvsa.export import build_config, push_config
    from dsvsa.model import DSpritesVSA

    model_repo, data_repo = hub_repo("eval-model"), hub_repo("eval-data")
    DSpritesVSA.from_pretrained(tiny_model_dir).push_to_hub(model_repo)
    folder = tmp_path / "data"
    for config in ("paired", "scenes"):
        build_config(folder, config, 4, 20, seed=1, progress=False)
        push_config(folder, config, data_repo)
    out = tmp_path / "eval"
    args = ["evaluate", model_repo, "--data", data_repo, "--num", "10", "--out", str(out)]
    assert main(args) == 0
    assert f"on {data_repo} (test split)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num"] == 10 and data_repo in metrics["data"]


# ---- expected failures and what the report says -------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_expected_failures_are_one_line(tiny_model_dir, tmp_path, hub, hub_repo, capsys):
    from dsvsa.cli import main

    model = str(tiny_model_dir)
    cases = [
        (["evaluate", str(tmp_path / "no" / "model")], "no such model folder: "),
        (["evaluate", "./nope"], "no such model folder: ./nope"),
        (["evaluate", hub_repo("missing-model")], "not found on the Hub"),
        (["evaluate", model, "--data", "./nope"], "no such dataset folder: ./nope"),
        (["evaluate", model, "--data", str(tmp_path / "nodata")], "no such dataset folder"),
        (["evaluate", model, "--data", hub_repo("missing-data")], "dataset repository"),
    ]
    for argv, message in cases:
        assert main(argv + ["--num", "4"]) == 2, argv
        line = _one_line_error(capsys)
        assert line.startswith("dsvsa evaluate: error: ") and message in line, (argv, line)
    assert not (tmp_path / "nodata").exists()

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", model, "--num", "0"])
    assert exit_info.value.code == 2
    assert "argument --num: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num must be >= 1"):
        ev.evaluate(None, num=0)


def test_cli_dataset_id_with_hub_unreachable_fails_fast(tiny_model_dir, unreachable_hub):
    import time

    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dsvsa.cli", "evaluate", str(tiny_model_dir), "--data", "data/nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env=unreachable_hub.env,
    )
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "dsvsa evaluate: error: could not reach the Hub for dataset data/nope and it is not in "
        "the local cache"
    ), lines
    assert seconds < 20, seconds  # not the half minute of retries of a plain load_dataset


def test_paired_scenes_only_dataset_lends_singles_pairs_and_two_object_scenes(
    tmp_path, tiny_model_dir, readout, capsys
):
    from dsvsa.cli import main
    from dsvsa.export import build_config

    out = tmp_path / "data"
    build_config(out, "paired_scenes", 4, 30, seed=0, progress=False)
    held = ev.load_held_out(out, num=10, seed=0, prototypes_per_value=1)
    assert len(held.factors) == 10 and sum(len(p["factors_a"]) for p in held.pairs.values()) == 30
    assert held.scenes[2]["objects"].shape == (5, 2, 64, 64)
    assert all(n in held.scenes for n in range(1, 6))
    assert "config paired_scenes" in held.parts["singles"]
    assert "config paired_scenes" in held.parts["scene2"]
    assert "sampler" in held.parts["scenes"] and "sampler" not in held.parts["pairs"]
    assert any("paired_scenes" in note for note in held.notes), held.notes
    # the scene objects are the dataset's own: their union is the stored scene
    sc = held.scenes[2]
    assert np.array_equal(sc["objects"].max(axis=1), sc["scene"])

    assert main(["evaluate", str(tiny_model_dir), "--data", str(out), "--num", "6"]) == 0
    printed = capsys.readouterr().out
    assert "data behind each metric group:" in printed
    assert "reconstruction, exchange, readout" in printed and "config paired_scenes" in printed
    assert "note: no paired test split" in printed
    assert "nothing written (pass --out DIR" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
