"""DSpritesVSA: config validation, shapes, latent algebra, save -> load in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dsvsa.model import CheckpointError, DSpritesVSA, DSpritesVSAConfig
from dsvsa.vsa import bind, bundle

TINY = {
    "latent_dim": 64,
    "enc_channels": [4, 4, 8, 8],
    "enc_hidden": 16,
    "dec_hidden": 16,
    "dec_channels": [8, 8, 4, 4],
}


def tiny_config(**overrides) -> DSpritesVSAConfig:
    return DSpritesVSAConfig.from_dict({**TINY, **overrides})


@pytest.fixture(scope="module")
def model() -> DSpritesVSA:
    torch.manual_seed(0)
    return DSpritesVSA(tiny_config()).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((3, 64, 64)) > 0.9).astype(np.uint8)


# ---- config ------------------------------------------------------------------------------


def test_config_defaults_and_json_round_trip():
    cfg = DSpritesVSAConfig()
    assert cfg.latent_dim == 1024 and cfg.num_features == 5
    text = json.dumps(cfg.to_dict())
    assert DSpritesVSAConfig.from_dict(json.loads(text)) == cfg
    # tuples from Python callers are stored as lists, as JSON would give them back
    assert DSpritesVSAConfig(enc_channels=(8, 8, 8, 8)).enc_channels == [8, 8, 8, 8]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config key.*'latent_size'"):
        DSpritesVSAConfig.from_dict({"latent_size": 12})


@pytest.mark.parametrize(
    "field, value",
    [
        ("latent_dim", Path("1024")),
        ("latent_dim", np.int64(1024)),
        ("latent_dim", 10.0),
        ("latent_dim", True),
        ("bind_features", 1),
        ("activation", "gelu"),
        ("norm", "layer"),
        ("item_memory_kind", "ternary"),
        ("enc_channels", [32, 32, 64]),
        ("dec_channels", [64, 64, 32, torch.tensor(2)]),
        ("output_bias", float("nan")),
        ("output_bias", "low"),
        ("num_features", 4),
        ("image_size", 128),
        ("latent_dim", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DSpritesVSAConfig(**{field: value})


def test_presets_parameter_counts():
    assert 3_000_000 < DSpritesVSA().num_parameters() < 4_000_000
    with torch.device("meta"):  # no memory for 129M parameters
        wide = DSpritesVSA(DSpritesVSAConfig.preset("wide"))
    assert wide.encoder.fc1.in_features == 2048 and wide.encoder.fc2.out_features == 10240
    assert (wide.decoder.fc1.in_features, wide.decoder.fc2.in_features) == (1024, 1024)
    assert wide.decoder.fc2.out_features == 2048
    assert 120_000_000 < wide.num_parameters() < 135_000_000


# ---- shapes and algebra ------------------------------------------------------------------


def test_forward_encode_decode_shapes(model, images):
    mu, logvar = model(torch.zeros(2, 1, 64, 64))
    assert mu.shape == logvar.shape == (2, 5, 64)
    mu, logvar = model.encode(images)
    assert mu.shape == (3, 5, 64) and mu.requires_grad
    assert model.latent(images).shape == (3, 5, 64)
    assert not model.latent(images).requires_grad
    logits = model.decode(model.object_vector(mu))
    assert logits.shape == (3, 1, 64, 64)
    assert model.decode(torch.zeros(64)).shape == (1, 1, 64, 64)
    z = model.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert z.shape == mu.shape and not torch.equal(z, mu)


def test_initial_output_bias_matches_pixel_density():
    m = DSpritesVSA(tiny_config())
    assert float(m.decoder.deconvs[-1].bias.detach()) == pytest.approx(-3.115)
    z = torch.zeros(1, 64)
    p = torch.sigmoid(m.decode(z)).mean().detach()
    assert 0.01 < float(p) < 0.2


def test_object_and_scene_vectors_bind_per_config(model):
    z = torch.randn(4, 5, 64)
    roles = model.item_memory.feature_roles
    assert torch.allclose(model.object_vector(z), (z * roles).sum(1))
    plain = DSpritesVSA(tiny_config(bind_features=False, bind_objects=False))
    assert torch.allclose(plain.object_vector(z), z.sum(1))
    objs = torch.randn(4, 2, 64)
    obj_roles = model.item_memory.object_roles
    assert torch.allclose(model.scene_vector(objs), bundle(bind(objs, obj_roles), dim=1))
    assert torch.allclose(plain.scene_vector(objs), objs.sum(1))
    with pytest.raises(ValueError, match="num_object_roles"):
        model.scene_vector(torch.randn(1, 3, 64))
    with pytest.raises(ValueError):
        model.object_vector(torch.randn(2, 4, 64))


def test_reconstruct_transfer_mix_compose_edit(model, images):
    recon = model.reconstruct(images)
    assert recon.shape == (3, 64, 64) and recon.dtype == np.uint8
    assert set(np.unique(recon)) <= {0, 1}
    a, b = images[:2], images[1:]
    # taking every slot from b gives b's reconstruction, no slot change gives a's
    everything = model.transfer(a, b, ["shape", "scale", "orientation", "pos_x", "pos_y"])
    assert np.array_equal(everything, model.reconstruct(b))
    assert np.array_equal(model.transfer(a, a, "shape"), model.reconstruct(a))
    assert np.array_equal(model.transfer(a, b, 3), model.transfer(a, b, "pos_x"))
    assert model.transfer(a, images[0], "scale").shape == (2, 64, 64)  # donor broadcast
    same = model.mix([images[0]] * 5)
    assert same.shape == (64, 64) and np.array_equal(same, model.reconstruct(images[0])[0])
    scene = model.compose(images[:2])
    assert scene.shape == (64, 64) and scene.dtype == np.uint8
    assert np.array_equal(model.edit(images[:2], 1, "scale", images[1]), scene)
    assert model.edit(images[:2], 0, "shape", images[2]).shape == (64, 64)
    with pytest.raises(ValueError, match="unknown factor"):
        model.transfer(a, b, "colour")
    with pytest.raises(ValueError, match="object index"):
        model.edit(images[:2], 2, "shape", images[2])
    with pytest.raises(ValueError, match="5 source images"):
        model.mix(images)


def test_query_recovers_slots_from_a_bound_scene():
    m = DSpritesVSA(tiny_config(latent_dim=1024))
    g = torch.Generator().manual_seed(3)
    protos = torch.randn(5, 6, 1024, generator=g)  # 6 values per feature
    values = torch.randint(0, 6, (20, 2, 5), generator=g)
    slots = protos[torch.arange(5), values]  # (20, 2, 5, 1024)
    scenes = m.scene_vector(m.object_vector(slots))  # (20, 1024)
    for j in range(2):
        for k, name in enumerate(["shape", "scale", "orientation", "pos_x", "pos_y"]):
            idx = m.query(scenes, j, name, protos[k])
            assert idx.shape == (20,)
            assert (idx == values[:, j, k]).float().mean() >= 0.95
    assert m.query(scenes[0], 0, 0, protos[0]).shape == ()


def test_inference_helpers_are_deterministic_and_restore_mode(images):
    m = DSpritesVSA(tiny_config(norm="batch"))
    m.train()
    before = m.encoder.convs[1].running_mean.clone()
    z1, z2 = m.latent(images), m.latent(images[:1])
    assert m.training  # mode restored
    assert torch.equal(m.encoder.convs[1].running_mean, before)  # eval-mode BN, stats untouched
    assert torch.allclose(z1[:1], z2, atol=1e-5)  # independent of batch companions
    assert torch.equal(m.latent(images), z1)  # the posterior mean: same input, same output


def test_bad_images_are_rejected(model):
    with pytest.raises(ValueError, match="64x64"):
        model.reconstruct(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        model.latent(np.full((64, 64), np.nan, np.float32))


# ---- codebook bottleneck -----------------------------------------------------------------


def codebook_model(**overrides) -> DSpritesVSA:
    torch.manual_seed(0)
    return DSpritesVSA(tiny_config(slot_bottleneck="codebook", **overrides))


def test_codebook_config_validation_and_backward_compatibility():
    old = {k: v for k, v in DSpritesVSAConfig().to_dict().items() if not k.startswith("codebook")}
    del old["slot_bottleneck"]
    assert DSpritesVSAConfig.from_dict(old).slot_bottleneck == "none"  # older config.json files
    assert DSpritesVSAConfig(codebook_temperature=2).codebook_temperature == 2.0
    with pytest.raises(ValueError, match="slot_bottleneck"):
        DSpritesVSAConfig(slot_bottleneck="vq")
    with pytest.raises(ValueError, match="codebook_temperature"):
        DSpritesVSAConfig(codebook_temperature=0.0)
    with pytest.raises(ValueError, match="codebook_inference"):
        DSpritesVSAConfig(codebook_inference="sample")
    with pytest.raises(ValueError, match="codebook_seed.*item_memory_seed"):
        DSpritesVSAConfig(slot_bottleneck="codebook", codebook_seed=0, item_memory_seed=0)
    assert DSpritesVSA(tiny_config()).codebook is None
    with pytest.raises(ValueError, match="no codebook"):
        DSpritesVSA(tiny_config()).feature_logits(torch.zeros(1, 1, 64, 64))


def test_codebook_shapes_slots_and_codes(images):
    m = codebook_model()
    assert m.encoder.fc2.out_features == 3 + 6 + 40 + 32 + 32
    book = m.codebook.vectors
    assert book.shape == (113, 64) and set(book.unique().tolist()) == {-1.0, 1.0}
    assert [m.prototypes(k).shape[0] for k in range(5)] == [3, 6, 40, 32, 32]
    assert torch.equal(m.prototypes("scale"), book[3:9])
    x = torch.from_numpy(images).float()[:, None]

    # training mode: slot k is the softmax mixture of factor k's codes
    m.train()
    logits = m.feature_logits(x)
    mu, logvar = m(x)
    assert mu.shape == logvar.shape == (3, 5, 64) and mu.requires_grad
    orient = torch.softmax(logits[:, 9:49] / m.config.codebook_temperature, -1) @ book[9:49]
    assert torch.allclose(mu[:, 2], orient, atol=1e-5)
    assert torch.all(logvar == -30.0)

    # eval mode (argmax): every slot is exactly the code of the predicted class
    m.eval()
    classes = m.classify(images)
    assert classes.shape == (3, 5) and classes.dtype == np.int64
    assert np.all(classes < np.array([3, 6, 40, 32, 32]))
    z = m.latent(images)
    assert torch.equal(z, m.code_slots(torch.from_numpy(classes)))
    assert torch.equal(m.code_slots(torch.tensor([0, 5, 0, 31, 2]))[4], book[81 + 2])
    soft = DSpritesVSA(
        DSpritesVSAConfig.from_dict({**m.config.to_dict(), "codebook_inference": "softmax"})
    )
    soft.load_state_dict(m.state_dict())
    assert torch.allclose(soft.eval().latent(images), mu, atol=1e-5)

    # query with the codebook rows as prototypes reads a bound scene back exactly
    big = DSpritesVSA(tiny_config(latent_dim=1024, slot_bottleneck="codebook"))
    values = torch.tensor([[2, 1, 33, 7, 30], [0, 4, 5, 19, 0]])
    scene = big.scene_vector(big.object_vector(big.code_slots(values)))
    for j in range(2):
        got = [int(big.query(scene, j, k, big.prototypes(k))) for k in range(5)]
        assert got == values[j].tolist()


def test_codebook_is_persisted_and_bit_identical_after_load(tmp_path, images):
    m = codebook_model(codebook_seed=7).eval()
    # a stored codebook must win over a fresh draw from the seed
    with torch.no_grad():
        m.codebook.vectors.mul_(-1.0)
    m.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert torch.equal(state["codebook.vectors"], m.codebook.vectors)
    loaded = DSpritesVSA.from_pretrained(tmp_path, strict=True)
    assert loaded.config == m.config and loaded.config.slot_bottleneck == "codebook"
    assert torch.equal(loaded.codebook.vectors, m.codebook.vectors)
    assert torch.equal(loaded.codebook.vectors, -codebook_model(codebook_seed=7).codebook.vectors)
    assert np.array_equal(loaded.reconstruct(images), m.reconstruct(images))
    assert torch.equal(loaded.latent(images), m.latent(images))
    # a seed gives the same codebook in every process; another seed another one
    assert torch.equal(codebook_model(codebook_seed=7).codebook.vectors, -m.codebook.vectors)
    assert not torch.equal(codebook_model(codebook_seed=8).codebook.vectors, -m.codebook.vectors)
    del state["codebook.vectors"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="codebook.vectors"):
        DSpritesVSA.from_pretrained(tmp_path, strict=True)


# ---- saving and loading ------------------------------------------------------------------


def _probe() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return (torch.rand(4, 1, 64, 64, generator=g) > 0.9).float()


CHILD = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import save_file
    torch.manual_seed(987654)  # a different global seed than the parent
    torch.set_num_threads(int(sys.argv[3]))
    from dsvsa.model import DSpritesVSA
    m = DSpritesVSA.from_pretrained(sys.argv[1], strict=True)
    x = (torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(11)) > 0.9).float()
    mu, logvar = m(x)
    out = {"memory": m.item_memory.vectors, "mu": mu, "logvar": logvar,
           "logits": m.decode(m.object_vector(mu)), "training": torch.tensor(m.training)}
    save_file({k: v.detach().contiguous() for k, v in out.items()}, sys.argv[2])
    """
)


def test_save_then_load_in_fresh_process_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    m = DSpritesVSA(tiny_config(item_memory_seed=4)).eval()
    # a stored item memory must win over a fresh draw from the seed
    with torch.no_grad():
        m.item_memory.vectors.mul_(-1.0)
    m.save_pretrained(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert "item_memory.vectors" in load_file(tmp_path / "model" / "model.safetensors")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert DSpritesVSAConfig.from_dict(config) == m.config

    with torch.no_grad():
        mu, logvar = m(_probe())
        logits = m.decode(m.object_vector(mu))
    out = tmp_path / "child.safetensors"
    cmd = [sys.executable, "-c", CHILD, str(tmp_path / "model"), str(out)]
    subprocess.run(cmd + [str(torch.get_num_threads())], check=True, timeout=120)
    got = load_file(out)
    assert not bool(got["training"])
    assert torch.equal(got["memory"], m.item_memory.vectors)
    assert torch.equal(got["memory"], -DSpritesVSA(m.config).item_memory.vectors)
    assert torch.equal(got["mu"], mu) and torch.equal(got["logvar"], logvar)
    assert torch.equal(got["logits"], logits)


def test_from_pretrained_in_process_eval_and_overrides(tmp_path):
    m = DSpritesVSA(tiny_config())
    m.train().save_pretrained(tmp_path)
    loaded = DSpritesVSA.from_pretrained(tmp_path)
    assert not loaded.training and loaded.config == m.config
    assert not DSpritesVSA.from_pretrained(tmp_path, channels_last=False).config.channels_last
    with pytest.raises(ValueError, match="unknown model config key"):
        DSpritesVSA.from_pretrained(tmp_path, latent_size=3)


def _saved(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    DSpritesVSA(tiny_config()).save_pretrained(folder)
    return folder


def test_truncated_or_corrupt_weights_give_clear_errors(tmp_path):
    folder = _saved(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt or truncated"):
        DSpritesVSA.from_pretrained(folder)
    weights.write_bytes(b"\x80\x04\x95 not a safetensors file, maybe a pickle")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        DSpritesVSA.from_pretrained(folder)
    weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="never pickled"):
        DSpritesVSA.from_pretrained(folder)


def test_weights_not_matching_config_give_clear_errors(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "enc_hidden": 24}))
    with pytest.raises(CheckpointError, match="do not match config.json.*encoder.fc1.*enc_hidden"):
        DSpritesVSA.from_pretrained(folder)

    folder = _saved(tmp_path / "b")
    state = load_file(folder / "model.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="extra.weight"):
        DSpritesVSA.from_pretrained(folder, strict=True)
    assert not DSpritesVSA.from_pretrained(folder, strict=False).training
    del state["item_memory.vectors"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="item_memory.vectors"):
        DSpritesVSA.from_pretrained(folder, strict=True)


def test_bad_config_json_gives_clear_errors(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden": 3}))
    with pytest.raises(CheckpointError, match="config.json.*'hidden'"):
        DSpritesVSA.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "latent_dim": "64"}))
    with pytest.raises(CheckpointError, match="config.json.*latent_dim"):
        DSpritesVSA.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        DSpritesVSA.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found"):
        DSpritesVSA.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="neither an existing model folder"):
        DSpritesVSA.from_pretrained(tmp_path / "no" / "such" / "folder")


def test_push_to_hub_and_load_from_repo(hub, hub_repo, images):
    m = DSpritesVSA(tiny_config())
    repo_id = hub_repo("vsa-model")
    m.push_to_hub(repo_id, token=hub.token)
    stored = hub.files(repo_id)
    assert {"config.json", "model.safetensors", "README.md"} <= set(stored)
    assert "library_name: dsvsa" in stored["README.md"].decode()
    loaded = DSpritesVSA.from_pretrained(repo_id, strict=True)
    assert not loaded.training
    assert np.array_equal(loaded.reconstruct(images), m.reconstruct(images))
    with pytest.raises(Exception, match="RepositoryNotFound|not found|404"):
        DSpritesVSA.from_pretrained(hub_repo("missing"))


# ---- where a model comes from: folder, Hub, cache ------------------------------------------------


@pytest.mark.parametrize("name", ["./nope", "runs/a/b", "/no/such/model", "~/nope"])
def test_path_like_name_that_does_not_exist_never_asks_the_hub(name, hub, monkeypatch):
    import dsvsa.model as model_module

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked about a path")

    monkeypatch.setattr(model_module, "probe_hub", no_hub)
    monkeypatch.setattr(model_module, "hf_hub_download", no_hub)
    before = len(hub.requests)
    with pytest.raises(CheckpointError, match=f"^no such model folder: {name} "):
        DSpritesVSA.from_pretrained(name)
    assert len(hub.requests) == before


def test_unreachable_hub_serves_the_cache_or_fails_at_once(
    hub, hub_repo, unreachable_hub, images, monkeypatch
):
    import time

    from huggingface_hub import constants

    from dsvsa.model import HubUnreachableError

    m = DSpritesVSA(tiny_config())
    cached = hub_repo("cached-model")
    m.push_to_hub(cached, token=hub.token)
    DSpritesVSA.from_pretrained(cached)  # downloaded once: now in the cache

    monkeypatch.setattr(constants, "ENDPOINT", unreachable_hub.endpoint)
    start = time.perf_counter()
    loaded = DSpritesVSA.from_pretrained(cached)
    assert np.array_equal(loaded.reconstruct(images), m.reconstruct(images))
    with pytest.raises(HubUnreachableError) as err:
        DSpritesVSA.from_pretrained(hub_repo("never-downloaded"))
    assert time.perf_counter() - start < 5  # one refused connection, no retry loop
    message = str(err.value)
    assert message.startswith("could not reach the Hub for repo dsvsa-tester/never-downloaded")
    assert "not in the local cache" in message and "\n" not in message


def test_missing_hub_repo_is_a_one_line_error(hub, hub_repo):
    with pytest.raises(FileNotFoundError, match="not found on the Hub") as err:
        DSpritesVSA.from_pretrained(hub_repo("missing"))
    assert "\n" not in str(err.value)
