"""Training: config validation, the four stages, the launcher (1 and 2 processes), resume, Hub push.

Tiny models (a few thousand parameters) and a handful of steps keep every run to seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dsvsa.training import (
    STAGE_STEPS,
    STAGES,
    ConfigError,
    Objective,
    TrainConfig,
    classification_loss,
    exchange_targets,
    make_source,
    random_slot_masks,
    slot_contrast,
    step_rng,
    to_tensors,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = ROOT / "training" / "train.py"

TINY_MODEL = {
    "latent_dim": 32,
    "enc_channels": [4, 4, 8, 8],
    "dec_channels": [8, 8, 4, 4],
    "enc_hidden": 16,
    "dec_hidden": 16,
    "num_object_roles": 5,
}


def _load_train_script():
    spec = importlib.util.spec_from_file_location("dsvsa_train_script", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_script = _load_train_script()


def tiny_config(tmp_path: Path, name: str = "cfg", **values) -> Path:
    cfg = {
        "model": dict(TINY_MODEL),
        "stages": {"paired": 1.0},
        "batch_size": 4,
        "max_steps": 4,
        "log_interval": 1,
        "eval_interval": 2,
        "eval_batches": 1,
        "checkpoint_interval": 2,
        "eval_at_end": False,
        "warmup_steps": 1,
        "scene_max_objects": 3,
        "output_dir": str(tmp_path / f"run_{name}"),
    }
    cfg.update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    rc = train_script.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# ---- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, key",
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"lr": "fast"}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"image_loss": "l1"}, "image_loss"),
        ({"stages": {"pairs": 1.0}}, "stages"),
        ({"stages": {}}, "stages"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"eval_at_end": "yes"}, "eval_at_end"),
        ({"model": {"latent_dim": 0}}, "model"),
        ({"model": {"width": 3}}, "model.width"),
        ({"holdout": "nowhere"}, "holdout"),
        ({"exchange_min_slots": 4, "exchange_max_slots": 2}, "exchange_min_slots"),
        ({"stages": {"codebook": 1.0}}, "stages"),  # needs a codebook model
        ({"classify_coef": 1.0}, "classify_coef"),
        ({"codebook_scene_batch": -1}, "codebook_scene_batch"),
    ],
)
def test_config_rejects_wrong_keys_and_values(values, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig.from_dict({"model": dict(TINY_MODEL), **values})


def test_config_rejects_non_json_values(tmp_path):
    path = tmp_path / "date.yaml"
    path.write_text("seed: 2024-01-01\n")  # YAML reads a date, which JSON cannot hold
    with pytest.raises(ConfigError, match="'seed'.*not JSON"):
        TrainConfig.from_file(path)


def test_config_round_trips_through_json_and_overrides(tmp_path):
    cfg = TrainConfig.from_file(
        tiny_config(tmp_path), {"kl_coef": 1, "model.latent_dim": 16, "stages.exchange": 2}
    )
    assert cfg.kl_coef == 1.0 and isinstance(cfg.kl_coef, float)
    assert cfg.model["latent_dim"] == 16
    assert cfg.stages == {"paired": 1.0, "exchange": 2.0}
    resolved = cfg.to_dict()
    assert resolved["model"]["bind_features"] is True  # model defaults filled in
    again = TrainConfig.from_dict(json.loads(json.dumps(resolved)))
    assert again.to_dict() == resolved

    args, overrides = train_script.parse_args(
        [
            "--config",
            "x.yaml",
            "--set",
            "lr=0.01",
            "--kl-coef",
            "0.5",
            "--max-steps",
            "7",
            "--holdout=square_right",
        ]  # fmt: skip
    )
    assert overrides == {"lr": 0.01, "kl_coef": 0.5, "max_steps": 7, "holdout": "square_right"}


def test_shipped_configs_are_valid():
    paths = sorted((ROOT / "training" / "configs").rglob("*.yaml"))
    rows = sorted(p.name for p in (ROOT / "training" / "configs" / "table").glob("row*.yaml"))
    assert len(rows) == 16 and rows[0].startswith("row01_pd_mse_sum_kl1_cos0")
    assert rows[-1].startswith("row16_psd_bce_sum_kl0.01_cos1")
    for path in paths:
        TrainConfig.from_file(path)
    row15 = TrainConfig.from_file(ROOT / "training/configs/table/row15_pd_bce_sum_kl0.01_cos2.yaml")
    assert (row15.image_loss, row15.reduction, row15.kl_coef, row15.cos_coef) == (
        "bce",
        "sum",
        0.01,
        2.0,
    )


# ---- stages -----------------------------------------------------------------------------------


def test_exchange_targets_take_the_masked_slots_from_the_donor():
    a = np.array([[0, 1, 0, 3, 4], [2, 5, 10, 31, 0]])
    b = np.array([[2, 0, 5, 9, 9], [0, 2, 7, 1, 1]])
    mask = np.array([[True, False, False, False, True], [False, False, True, False, False]])
    t = exchange_targets(a, b, mask, symmetric=False)[:, 0]
    assert t.tolist() == [[2, 1, 0, 3, 9], [2, 5, 7, 31, 0]]
    # symmetric: the first candidate is the exact target; row 1 takes its angle from a square
    # donor, so every pi/2 turn of it is also right
    ts = exchange_targets(a, b, mask, symmetric=True)
    assert (ts[:, 0] == t).all()
    assert {int(o) for o in ts[1, :, 2]} >= {7, 17}  # 7 + ~9.75 classes (pi/2), rounded
    assert (ts[0, :, 2] == 0).sum() >= 1 and set(ts[0, :, 0]) == {2}


def test_random_slot_masks_sizes():
    masks = random_slot_masks(np.random.default_rng(0), 2000, 1, 5)
    sizes = masks.sum(1)
    assert sizes.min() == 1 and sizes.max() == 5
    assert abs(masks.mean(0) - masks.mean()).max() < 0.05  # every slot equally often


CODEBOOK_MODEL = {**TINY_MODEL, "slot_bottleneck": "codebook"}


@pytest.mark.parametrize(
    "stage, model_config",
    [(s, TINY_MODEL) for s in STAGES if s != "codebook"] + [(s, CODEBOOK_MODEL) for s in STAGES],
)
def test_stage_step(stage, model_config):
    from dsvsa.model import DSpritesVSA

    torch.manual_seed(0)
    codebook = model_config is CODEBOOK_MODEL
    cfg = TrainConfig(
        model=dict(model_config), stages={stage: 1.0}, batch_size=3, slot_contrast_coef=0.5,
        scene_max_objects=3, classify_coef=2.0 if codebook else 0.0, codebook_scene_batch=2,
    )  # fmt: skip
    model = DSpritesVSA(cfg.model_config())
    source = make_source(cfg)
    batch = to_tensors(source.batch(stage, step_rng(0, 0, 0, 0), 3))
    again = to_tensors(source.batch(stage, step_rng(0, 0, 0, 0), 3))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # same rng, same batch

    out = STAGE_STEPS[stage](model, batch, cfg)
    assert {"loss", "recon", "kld", "cos", "contrast", "classify"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    total = out["recon"] + 0.01 * out["kld"] + 1.0 * out["cos"] + 0.5 * out["contrast"]
    total = total + 2.0 * out["classify"]
    assert torch.allclose(out["loss"], total)
    if codebook:
        # an untrained classifier is near chance: about log 3 + log 6 + log 40 + 2 log 32 nats
        assert 8.0 < out["classify"].item() < 25.0
        assert 0.0 <= out["kld"].item() < 17.0  # categorical KL from uniform, at most ~17 nats
    else:
        assert float(out["classify"]) == 0.0
    assert out["recon"] > 100  # nats per image of an untrained decoder
    out["loss"].backward()
    assert model.encoder.fc2.weight.grad.abs().sum() > 0
    assert model.decoder.fc1.weight.grad.abs().sum() > 0

    # eval mode: no sampling, the same loss twice
    model.eval()
    with torch.no_grad():
        first = STAGE_STEPS[stage](model, batch, cfg)["loss"]
        assert torch.equal(first, STAGE_STEPS[stage](model, batch, cfg)["loss"])


def test_codebook_stage_teacher_forces_the_decoder_and_classifies():
    from dsvsa.model import DSpritesVSA

    torch.manual_seed(0)
    cfg = TrainConfig(
        model=dict(CODEBOOK_MODEL), stages={"codebook": 1.0}, batch_size=4, kl_coef=0.0,
        classify_coef=0.0, scene_min_objects=1, scene_max_objects=2, codebook_scene_batch=3,
    )  # fmt: skip
    model = DSpritesVSA(cfg.model_config())
    batch = to_tensors(make_source(cfg).batch("codebook", step_rng(0, 0, 0, 4), 4))
    assert batch["scene_factors"].shape == (3, 2, 5) and batch["scene_mask"][:, 0].all()
    out = STAGE_STEPS["codebook"](model, batch, cfg)

    # recon is the loss of decoding the true classes' codes, singles and bound scenes together
    from dsvsa.losses import image_loss

    codes = model.code_slots(batch["scene_factors"])  # (3, 2, 5, D)
    objects = model.object_vector(codes) * batch["scene_mask"][..., None]
    v = torch.cat(
        [model.object_vector(model.code_slots(batch["factors"])), model.scene_vector(objects)]
    )
    expected = image_loss(model.decode(v), torch.cat([batch["image"], batch["scene"]]))
    assert torch.allclose(out["recon"], expected)

    # without the classification term and the direct path the encoder gets no gradient
    out["loss"].backward()
    assert model.encoder.fc2.weight.grad is None or not model.encoder.fc2.weight.grad.any()
    assert model.decoder.fc1.weight.grad.abs().sum() > 0


def test_classification_loss_counts_symmetric_orientations():
    logits = torch.full((2, 113), -20.0)
    factors = torch.tensor([[0, 1, 3, 4, 5], [2, 1, 3, 4, 5]])  # a square and a heart at class 3
    offsets = torch.tensor([0, 3, 9, 49, 81])
    logits.scatter_(1, factors + offsets, 20.0)  # all the mass on the true classes
    exact = classification_loss(logits, factors)
    assert float(exact) < 1e-6
    # move the orientation mass a quarter turn (about 9.75 classes) away: fine for the square only
    turned = logits.clone()
    turned[:, 9 + 3], turned[:, 9 + 13] = -20.0, 20.0
    square = classification_loss(turned[:1], factors[:1])
    heart = classification_loss(turned[1:], factors[1:])
    assert float(square) < 1e-6 and float(heart) > 30.0
    # with weight w on the exact class the turned square costs w times the exact-class loss
    half = classification_loss(turned[:1], factors[:1], exact_orientation=0.5)
    assert 15.0 < float(half) < 25.0
    assert float(classification_loss(logits, factors, exact_orientation=1.0)) < 1e-6


def test_objective_mixes_stages_with_weights():
    from dsvsa.model import DSpritesVSA

    cfg = TrainConfig(model=dict(TINY_MODEL), stages={"paired": 1.0, "exchange": 0.5})
    model = DSpritesVSA(cfg.model_config()).eval()
    source = make_source(cfg)
    batches = {
        stage: to_tensors(source.batch(stage, step_rng(0, 0, 0, i), 2))
        for i, stage in enumerate(("paired", "exchange"))
    }
    with torch.no_grad():
        out = Objective(model, cfg)(batches)
        paired = STAGE_STEPS["paired"](model, batches["paired"], cfg)["loss"]
        exchange = STAGE_STEPS["exchange"](model, batches["exchange"], cfg)["loss"]
    assert torch.allclose(out["loss"], paired + 0.5 * exchange)
    assert torch.allclose(out["exchange/loss"], exchange)


def test_slot_contrast_prefers_slots_that_agree_with_the_labels():
    factors = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 1, 1], [1, 0, 2, 2, 2], [1, 1, 3, 3, 3]])
    good = torch.zeros(4, 5, 8)
    for k in range(5):
        for i in range(4):
            good[i, k, int(factors[i, k]) % 8] = 1.0  # slot k one-hot in its factor's value
    noise = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(0))
    assert slot_contrast(good, factors, 0.1) < slot_contrast(noise, factors, 0.1)


# ---- runs (in process) --------------------------------------------------------------------------


def test_resume_replays_the_uninterrupted_run(tmp_path, capsys):
    config = tiny_config(tmp_path, stages={"paired": 1.0, "exchange": 1.0}, max_steps=6)
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_main(["--config", config, "--output-dir", full], capsys)[0] == 0
    rc, _ = run_main(["--config", config, "--output-dir", split, "--stop-at", "3"], capsys)
    assert rc == 0 and not (split / "model.safetensors").exists()
    assert [p.name for p in train_script.checkpoint_dirs(split)] == ["step_2", "step_3"]
    assert run_main(["--config", config, "--output-dir", split, "--resume"], capsys)[0] == 0

    a, b = read_losses(full), read_losses(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a == b  # identical losses, lr and parts at every step
    assert a[0]["loss"] != a[-1]["loss"]
    # keep_checkpoints = 2
    assert [p.name for p in train_script.checkpoint_dirs(full)] == ["step_4", "step_6"]

    # a used output dir is refused without --resume / --overwrite, nothing touched
    before = (full / "losses.jsonl").read_bytes()
    rc, err = run_main(["--config", config, "--output-dir", full], capsys)
    assert rc == 2 and "--resume" in err and (full / "losses.jsonl").read_bytes() == before

    # corrupt or truncated checkpoint files: a clear error naming the file, nothing written
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        broken = tmp_path / f"broken_{name}"
        shutil.copytree(split, broken)
        target = broken / "checkpoints" / "step_6" / name
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
        stamp = (broken / "losses.jsonl").read_bytes()
        rc, err = run_main(
            ["--config", config, "--output-dir", broken, "--resume", "--max-steps", "8"], capsys
        )
        assert rc == 2 and str(target) in err, err
        assert (broken / "losses.jsonl").read_bytes() == stamp

    # a resumed run must keep the config it was trained with
    rc, err = run_main(
        ["--config", config, "--output-dir", split, "--resume", "--set", "kl_coef=0.5"], capsys
    )
    assert rc == 2 and "'kl_coef'" in err

    # weights whose shapes do not match the checkpoint's config: the file and tensor are named
    wrong = tmp_path / "wrong_shapes"
    shutil.copytree(split, wrong)
    state = wrong / "checkpoints" / "step_6" / "trainer_state.json"
    saved = json.loads(state.read_text())
    saved["config"]["model"]["enc_hidden"] = 24
    state.write_text(json.dumps(saved))
    rc, err = run_main(
        ["--config", config, "--output-dir", wrong, "--resume", "--set", "model.enc_hidden=24"],
        capsys,
    )
    assert rc == 2 and "model.safetensors" in err and "encoder.fc1" in err, err


def _signal_at(monkeypatch, step: int, *signals: int) -> None:
    """Send ``signals`` to this process once the losses of ``step`` are written."""
    import signal as _signal

    original = train_script.append_jsonl

    def append(path, record):
        original(path, record)
        if path.name == "losses.jsonl" and record["step"] == step:
            for sig in signals or (_signal.SIGTERM,):
                os.kill(os.getpid(), sig)

    monkeypatch.setattr(train_script, "append_jsonl", append)


def test_signal_checkpoints_the_last_step_and_resume_replays_the_run(tmp_path, capsys, monkeypatch):
    import signal

    config = tiny_config(
        tmp_path, max_steps=5, checkpoint_interval=100, eval_interval=0, log_with=None
    )
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_main(["--config", config, "--output-dir", full], capsys)[0] == 0

    with monkeypatch.context() as m:
        _signal_at(m, 2, signal.SIGTERM)
        rc, err = run_main(["--config", config, "--output-dir", split], capsys)
    assert rc == 0 and "Traceback" not in err, err
    line = next(x for x in err.splitlines() if x.startswith("train.py: stopped"))
    assert "stopped (SIGTERM) after step 2 of 5" in line and "checkpoints/step_2" in line
    assert line.endswith(f"train.py --config {config} --output-dir {split} --resume"), line
    assert [p.name for p in train_script.checkpoint_dirs(split)] == ["step_2"]
    assert not (split / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back

    # a changed config lists exactly the keys that differ
    rc, err = run_main(
        ["--config", config, "--output-dir", split, "--resume", "--set", "kl_coef=0.5"]
        + ["--set", "model.enc_hidden=24"],
        capsys,
    )
    assert rc == 2 and "'kl_coef' is 0.5 here" in err and "'model.enc_hidden' is 24 here" in err
    assert "latent_dim" not in err and "batch_size" not in err, err

    assert run_main(["--config", config, "--output-dir", split, "--resume"], capsys)[0] == 0
    assert read_losses(split) == read_losses(full)  # the same run as without the signal

    # a second signal stops at once, without a checkpoint, and says so in one line (one that
    # follows at once is the same interruption passed on by a launcher, and is ignored)
    again = tmp_path / "again"
    with monkeypatch.context() as m:
        m.setattr(train_script.StopRequests, "REPEAT_S", 0.0)
        _signal_at(m, 3, signal.SIGINT, signal.SIGINT)
        rc, err = run_main(["--config", config, "--output-dir", again], capsys)
    assert rc == 130 and "Traceback" not in err and "train.py: interrupted" in err, err
    assert train_script.checkpoint_dirs(again) == []
    forwarded = tmp_path / "forwarded"
    with monkeypatch.context() as m:
        _signal_at(m, 2, signal.SIGINT, signal.SIGINT)
        rc, err = run_main(["--config", config, "--output-dir", forwarded], capsys)
    assert rc == 0 and "stopped (SIGINT) after step 2 of 5" in err, err
    assert [p.name for p in train_script.checkpoint_dirs(forwarded)] == ["step_2"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_without_checkpoint_and_bad_step_counts(tmp_path, capsys):
    config = tiny_config(tmp_path)
    rc, err = run_main(["--config", config, "--output-dir", tmp_path / "none", "--resume"], capsys)
    assert rc == 2 and "no run to resume" in err and "without --resume" in err, err
    used = tmp_path / "used"
    used.mkdir()
    (used / "losses.jsonl").write_text("")
    rc, err = run_main(["--config", config, "--output-dir", used, "--resume"], capsys)
    assert rc == 2 and "no checkpoint found" in err and "--overwrite" in err, err

    for option in ("--max-steps", "--stop-at"):
        with pytest.raises(SystemExit) as exit_info:
            train_script.main(["--config", str(config), option, "0"])
        assert exit_info.value.code == 2
        assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "kl_coeff=0.1"], "--set kl_coeff=0.1: unknown training config key 'kl_coeff'"),
        (["--kl-coeff", "0.1"], "--kl-coeff 0.1: unknown training config key 'kl_coeff'"),
        (["--set", "model.latent=8"], "--set model.latent=8: unknown model config key 'latent'"),
        (["--set", "lr=abc"], "(set on the command line by --set lr=abc)"),
    ],
)
def test_override_errors_name_the_command_line(tmp_path, capsys, argv, message):
    rc, err = run_main(["--config", tiny_config(tmp_path), *argv], capsys)
    assert rc == 2 and message in err, err
    if "kl_coeff" in message:
        assert "(from the command line; did you mean 'kl_coef'?)" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("unknown_key=1", "unknown training config key 'unknown_key'"),
        ("lr=abc", "'lr' must be a number > 0"),
        ("model.latent_dim=[1, 2]", "'model'"),
        ("stages={paired: -1}", "'stages'"),
    ],
)
def test_bad_config_is_rejected_before_training(tmp_path, capsys, override, message):
    config = tiny_config(tmp_path)
    run = tmp_path / "used"
    run.mkdir()
    (run / "losses.jsonl").write_text("an earlier run\n")
    rc, err = run_main(
        ["--config", config, "--output-dir", run, "--overwrite", "--set", override], capsys
    )
    assert rc == 2 and message in err, err
    assert sorted(p.name for p in run.iterdir()) == ["losses.jsonl"]
    assert (run / "losses.jsonl").read_text() == "an earlier run\n"


@pytest.fixture(scope="module")
def paired_folder(tmp_path_factory):
    from dsvsa.export import build_config

    folder = tmp_path_factory.mktemp("data") / "dsprites-vsa"
    build_config(folder, "paired", 12, 4, seed=0, progress=False)
    return folder


def test_training_from_a_dataset_folder(tmp_path, capsys, paired_folder):
    config = tiny_config(
        tmp_path, stages={"paired": 1.0, "exchange": 1.0}, data=str(paired_folder), max_steps=3
    )
    rc, err = run_main(["--config", config, "--set", "log_with=null"], capsys)
    assert rc == 0, err
    run = Path(TrainConfig.from_file(config).output_dir)
    assert len(read_losses(run)) == 3
    assert json.loads((run / "training_config.json").read_text())["data"] == str(paired_folder)


def test_dataset_lacking_columns_is_a_clear_error(tmp_path, capsys, paired_folder):
    config = tiny_config(
        tmp_path,
        stages={"scenes": 1.0},
        data=str(paired_folder),
        data_configs={"scenes": "paired"},
    )
    rc, err = run_main(["--config", config], capsys)
    assert rc == 2
    assert "lacks the column(s) scene, objects, factors, num_objects" in err and "'scenes'" in err
    assert not Path(TrainConfig.from_file(config).output_dir).exists()


# ---- the launcher ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], argv: list[str], env: dict, timeout: int = 240):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, str(TRAIN_PY)]
    cmd += [str(a) for a in argv]
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_launch_cpu_smoke_run_of_every_stage(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dsvsa.model import DSpritesVSA

    config = tiny_config(
        tmp_path,
        model=dict(TINY_MODEL, slot_bottleneck="codebook"),  # every stage, the codebook's too
        classify_coef=1.0,
        codebook_scene_batch=2,
        stages={s: 1.0 for s in STAGES},
        stage_batch_size={"scenes": 2},
        max_steps=3,
        eval_at_end=True,
        eval_num=8,
    )
    run = tmp_path / "smoke"
    launch(["--cpu", "--num_processes", "1"], ["--config", config, "--output-dir", run], os.environ)

    for name in ("config.json", "model.safetensors", "training_config.json", "README.md"):
        assert (run / name).is_file(), name
    model = DSpritesVSA.from_pretrained(run, strict=True)
    assert model.config.latent_dim == 32 and not model.training
    resolved = TrainConfig.from_file(run / "training_config.json")
    assert resolved.to_dict() == json.loads((run / "training_config.json").read_text())

    card = (run / "README.md").read_text()
    # the command as typed (python -m accelerate.commands.launch is `accelerate launch`), with
    # the absolute script path made relative to the working directory
    assert "accelerate launch --cpu --num_processes 1 training/train.py --config" in card
    # the model as configured, in plain words (no internal jargon)
    words = " ".join(card.replace("**", "").split())
    assert "bound (multiplied element-wise) to a fixed random role vector" in words
    assert "codebook bottleneck" in words and "DESIGN" not in card
    assert '"latent_dim": 32' in card
    assert "{{" not in card

    events = list((run / "tensorboard").rglob("events.out.tfevents*"))
    tags = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for tag in ("train/recon", "train/kld", "train/cos", "train/loss", "eval/recon"):
        assert tag in tags, sorted(tags)
    for stage in STAGES:
        assert f"train/{stage}/loss" in tags
    assert [r["step"] for r in read_losses(run)] == [1, 2, 3]


def test_two_process_gloo_run_pushes_model_and_dataset(tmp_path, hub, hub_env, hub_repo):
    from datasets import load_dataset

    from dsvsa.model import DSpritesVSA

    model_repo, data_repo = hub_repo("vsa-model"), hub_repo("vsa-data")
    config = tiny_config(
        tmp_path,
        stages={"paired": 1.0, "exchange": 1.0},
        max_steps=2,
        dataset_train_size=6,
        dataset_test_size=2,
    )
    run = tmp_path / "two"
    launcher = ["--config_file", str(ROOT / "training" / "accelerate_cpu2.yaml")]
    launcher += ["--main_process_port", str(_free_port())]
    argv = ["--config", config, "--output-dir", run]
    argv += ["--push-to-hub", model_repo, "--push-dataset-to-hub", data_repo]
    proc = launch(launcher, argv, {**os.environ, **hub_env})
    assert "2 process(es)" in proc.stderr
    state = json.loads((run / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2

    # the model repo holds the run's files and loads back
    files = hub.files(model_repo)
    for name in ("config.json", "model.safetensors", "README.md", "training_config.json"):
        assert name in files, sorted(files)
    assert not any(name.startswith("checkpoints/") for name in files)
    card = files["README.md"].decode()
    launcher = "accelerate launch --config_file training/accelerate_cpu2.yaml --main_process_port"
    assert launcher in card
    assert " training/train.py --config " in card
    assert f"datasets:\n- {data_repo}" in card
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert len(hub.commits(model_repo)) >= 1
    loaded = DSpritesVSA.from_pretrained(model_repo, strict=True)
    local = DSpritesVSA.from_pretrained(run, strict=True)
    x = torch.zeros(1, 1, 64, 64)
    x[..., 20:30, 20:30] = 1
    assert torch.equal(loaded(x)[0], local(x)[0])

    # the dataset repo holds the config the stages read and loads with datasets
    data_files = hub.files(data_repo, repo_type="dataset")
    assert any(name.startswith("paired/") and name.endswith(".parquet") for name in data_files)
    ds = load_dataset(data_repo, "paired")
    assert (len(ds["train"]), len(ds["test"])) == (6, 2)

    # and a run trains from that Hub dataset
    again = tiny_config(tmp_path, "hub_data", data=data_repo, max_steps=1, log_with=None)
    assert train_script.main(["--config", str(again)]) == 0
    assert len(read_losses(Path(TrainConfig.from_file(again).output_dir))) == 1


def test_ctrl_c_in_a_launched_run_checkpoints_and_resume_continues(tmp_path):
    """SIGINT to the training process of `accelerate launch`: checkpoint, one line, exit 0."""
    import signal
    import time

    config = tiny_config(tmp_path, max_steps=2000, checkpoint_interval=1000, eval_interval=0)
    run = tmp_path / "launched"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    cmd += [str(TRAIN_PY), "--config", str(config), "--output-dir", str(run), "--set"]
    cmd += ["log_with=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        losses = run / "losses.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if losses.exists() and len(losses.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        if not children.exists():
            pytest.skip("cannot find the training process under the launcher (no /proc)")
        os.kill(int(children.read_text().split()[0]), signal.SIGINT)  # what Ctrl-C sends it
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    stopped = [x for x in err.splitlines() if x.startswith("train.py: stopped (SIGINT)")]
    assert len(stopped) == 1, err[-3000:]
    (saved,) = train_script.checkpoint_dirs(run)
    step = int(saved.name[5:])
    assert [r["step"] for r in read_losses(run)] == list(range(1, step + 1))
    assert "accelerate launch --cpu --num_processes 1 training/train.py" in stopped[0]
    assert stopped[0].endswith("--resume")

    before = read_losses(run)
    argv = ["--config", config, "--output-dir", run, "--resume", "--max-steps", step + 2]
    assert train_script.main([str(a) for a in argv + ["--set", "log_with=null"]]) == 0
    after = read_losses(run)
    assert [r["step"] for r in after] == list(range(1, step + 3)) and after[:step] == before
