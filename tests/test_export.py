"""Export: parquet shards + card that load back exactly, locally and through the loopback Hub."""

from __future__ import annotations

import io

import numpy as np
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image

from dsvsa import export
from dsvsa.cli import main
from dsvsa.export import (
    build_config,
    decode_png,
    encode_png,
    iter_split_chunks,
    load_split,
    push_config,
    table_to_arrays,
)
from dsvsa.factors import FACTOR_NAMES
from dsvsa.sampling import HOLDOUTS


@pytest.fixture
def small_shards(monkeypatch):
    """Shards and sampling chunks small enough that tiny splits span several of each."""
    monkeypatch.setattr(export, "ROWS_PER_SHARD", 250)
    monkeypatch.setattr(export, "ROW_GROUP_SIZE", 64)
    monkeypatch.setattr(export, "CHUNK_SIZE", {"paired": 100, "scenes": 60, "paired_scenes": 80})


def expected(config, split, n, seed, holdout=None):
    """What build_config stores for a split, straight from the samplers."""
    chunks = [batch for _, batch in iter_split_chunks(config, split, n, seed, holdout)]
    if config == "scenes":
        out = []
        for b in chunks:
            for i, m in enumerate(b["num_objects"].tolist()):
                out.append((b["scene"][i], b["objects"][i, :m], b["factors"][i, :m], m))
        return out
    return {key: np.concatenate([b[key] for b in chunks]) for key in chunks[0]}


def assert_same(config, got, want):
    if config == "scenes":
        assert len(got) == len(want)
        for g, (scene, objects, factors, m) in zip(got, want, strict=True):
            assert g["num_objects"] == m
            np.testing.assert_array_equal(g["scene"], scene)
            np.testing.assert_array_equal(g["objects"], objects)
            np.testing.assert_array_equal(g["factors"], factors)
        return
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def rows_to_arrays(config, rows):
    """Examples as decoded by `datasets` (PIL images, lists) -> sampler arrays."""
    rows = list(rows)
    if config == "scenes":
        return [
            {
                "scene": np.asarray(r["scene"]) >= 128,
                "objects": np.stack([np.asarray(o) >= 128 for o in r["objects"]]),
                "factors": np.asarray(r["factors"]),
                "num_objects": r["num_objects"],
            }
            for r in rows
        ]
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], Image.Image):
            assert {v.mode for v in values} == {"L"}
            out[key] = np.stack([np.asarray(v) for v in values])
            assert set(np.unique(out[key]).tolist()) <= {0, 255}
            out[key] = (out[key] >= 128).astype(np.uint8)
        else:
            out[key] = np.asarray(values, dtype=np.int64)
    return out


def test_png_round_trip_is_exact_and_mode_l():
    images = np.random.default_rng(0).integers(0, 2, (5, 64, 64), dtype=np.uint8)
    files = encode_png(images)
    with Image.open(io.BytesIO(files[0])) as img:
        assert img.mode == "L" and img.size == (64, 64)
        assert set(np.unique(np.asarray(img)).tolist()) == {0, 255}
    np.testing.assert_array_equal(decode_png(files), images)
    # PNGs written by other tools (other modes, filters, chunking) decode the same way
    others = []
    for img, mode in zip(images, ("L", "1", "RGB", "LA", "P"), strict=True):
        buf = io.BytesIO()
        Image.fromarray(img * 255, mode="L").convert(mode).save(buf, format="PNG")
        others.append(buf.getvalue())
    np.testing.assert_array_equal(decode_png(others), images)
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((2, 32, 32), np.uint8))


def test_paired_export_loads_back_exactly(tmp_path, small_shards):
    out = tmp_path / "ds"
    build_config(out, "paired", 600, 130, seed=3, progress=False)
    assert sorted(p.name for p in (out / "paired").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]
    ds = load_dataset(str(out), "paired")
    assert ds["train"].num_rows == 600 and ds["test"].num_rows == 130
    features = ds["train"].features
    assert features["changed"].names == list(FACTOR_NAMES)
    assert type(features["image_a"]).__name__ == "Image"
    for split, n in (("train", 600), ("test", 130)):
        want = expected("paired", split, n, seed=3)
        assert_same("paired", rows_to_arrays("paired", ds[split]), want)
        assert_same("paired", load_split(out, "paired", split), want)
    # train and test are different draws
    train, test = expected("paired", "train", 130, 3), expected("paired", "test", 130, 3)
    assert not np.array_equal(train["factors_a"], test["factors_a"])


def test_scene_configs_load_back_exactly(tmp_path, small_shards):
    out = tmp_path / "ds"
    build_config(out, "scenes", 300, 40, seed=1, progress=False)
    build_config(out, "paired_scenes", 300, 40, seed=1, progress=False)
    for config in ("scenes", "paired_scenes"):
        ds = load_dataset(str(out), config)
        for split, n in (("train", 300), ("test", 40)):
            want = expected(config, split, n, seed=1)
            assert_same(config, rows_to_arrays(config, ds[split]), want)
            assert_same(config, load_split(out, config, split), want)
    columns = load_dataset(str(out), "paired_scenes", split="test").column_names
    assert columns == [
        "scene_a", "scene_b", "object_a", "object_b", "other",
        "factors_a", "factors_b", "factors_other", "changed",
    ]  # fmt: skip
    assert load_dataset(str(out), "scenes", split="test").column_names == [
        "scene", "objects", "factors", "num_objects",
    ]  # fmt: skip


def test_export_is_deterministic_by_seed(tmp_path, small_shards):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        build_config(tmp_path / name, "paired", 300, 10, seed=seed, progress=False)
    read = {
        n: (tmp_path / n / "paired" / "train-00000-of-00002.parquet").read_bytes() for n in "abc"
    }
    assert read["a"] == read["b"] and read["a"] != read["c"]


def test_adding_a_config_keeps_the_others_and_the_card_lists_all(tmp_path, small_shards):
    out = tmp_path / "ds"
    build_config(out, "paired", 200, 20, seed=0, progress=False)
    build_config(out, "scenes", 100, 20, seed=0, holdout="square_right", progress=False)
    first_paired = (out / "paired" / "train-00000-of-00001.parquet").read_bytes()
    # replacing a config keeps the other one byte for byte
    scenes_file = (out / "scenes" / "train-00000-of-00001.parquet").read_bytes()
    build_config(out, "paired", 300, 20, seed=9, progress=False)
    assert (out / "scenes" / "train-00000-of-00001.parquet").read_bytes() == scenes_file
    assert not (out / "paired" / "train-00000-of-00001.parquet").exists()
    assert (out / "paired" / "train-00000-of-00002.parquet").read_bytes() != first_paired

    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert [c["config_name"] for c in data["configs"]] == ["paired", "scenes"]
    assert data["configs"][1]["data_files"] == [
        {"split": "train", "path": "scenes/train-*"},
        {"split": "test", "path": "scenes/test-*"},
    ]
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["paired"]["splits"]} == {
        "train": 300,
        "test": 20,
    }
    text = card.text
    for phrase in ("## Factors", "Symmetry rule", "square_right", "--seed 9", "seed 0"):
        assert phrase in text
    for config in ("paired", "scenes"):
        assert f"](samples/{config}.png)" in text
        with Image.open(out / "samples" / f"{config}.png") as img:
            assert img.mode == "L" and img.width > 128
    assert load_dataset(str(out), "scenes", split="train").num_rows == 100
    assert load_dataset(str(out), "paired", split="train").num_rows == 300
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_run_leaves_the_previous_folder_intact(tmp_path, small_shards, monkeypatch):
    out = tmp_path / "ds"
    build_config(out, "paired", 200, 20, seed=0, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # an interrupted run
        return real(*args, **kwargs)

    real = export.sample_chunk
    monkeypatch.setattr(export, "sample_chunk", broken)
    with pytest.raises(KeyboardInterrupt):
        build_config(out, "paired", 400, 20, seed=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        build_config(out, "scenes", 400, 20, seed=1, progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert load_dataset(str(out), "paired", split="train").num_rows == 200


def test_holdout_export(tmp_path, small_shards):
    out = tmp_path / "ds"
    build_config(out, "paired", 300, 100, seed=2, holdout="heart_large", progress=False)
    hold = HOLDOUTS["heart_large"]
    train, test = load_split(out, "paired", "train"), load_split(out, "paired", "test")
    assert not hold(train["factors_a"]).any() and not hold(train["factors_b"]).any()
    assert hold(test["factors_a"]).all()
    card = DatasetCard.load(out / "README.md")
    assert card.data.to_dict()["dsvsa"]["paired"]["holdout"] == "heart_large"
    assert "hearts at the two largest scales" in card.text


def test_cli_generate_and_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["generate", "--config", "paired", "--train", "40", "--test", "8", "--out", str(out)]
    assert main(argv + ["--seed", "4"]) == 0
    assert load_dataset(str(out), "paired", split="test").num_rows == 8
    assert main(argv + ["--holdout", "circles"]) == 2
    assert "unknown holdout" in capsys.readouterr().err
    assert main(argv + ["--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a dataset")
    assert main(argv[:-1] + [str(tmp_path / "other")]) == 2
    assert "neither empty nor a dataset folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "files, message",
    [
        ({"README.md": "# My project\n\nNotes.\n"}, "is not a dsvsa dataset card"),
        ({"README.md": "---\nlicense: mit\n---\n# A model\n"}, "is not a dsvsa dataset card"),
        ({"config.json": "{}", "README.md": "# model"}, "holds a model (config.json)"),
        ({"model.safetensors": "", "data.txt": "x"}, "holds a model (model.safetensors)"),
    ],
)
def test_cli_generate_refuses_folders_it_did_not_write(tmp_path, capsys, files, message):
    out = tmp_path / "target"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    argv = ["generate", "--config", "paired", "--train", "4", "--test", "2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was written" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_text() for p in out.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no partial folder left


def test_cli_generate_extends_its_own_dataset_folder(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["generate", "--train", "4", "--test", "2", "--out", str(out), "--config"]
    assert main(argv + ["paired"]) == 0
    assert main(argv + ["scenes"]) == 0  # a dsvsa card: the folder is extended
    assert {"paired", "scenes"} <= {p.name for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--config", "paired", "--train", "0", "--test", "2", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "argument --train: must be >= 1, got 0" in capsys.readouterr().err


def _table(config, split, files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(p for p in files if p.startswith(f"{config}/{split}-"))
    return pa.concat_tables([pq.read_table(io.BytesIO(files[p])) for p in parts])


def test_push_two_configs_repush_one_and_load_through_the_hub(
    tmp_path, hub, hub_repo, small_shards
):
    repo = hub_repo("dsprites-vsa")
    unknown, foreign = len(hub.unknown_requests), len(hub.foreign_requests)
    out = tmp_path / "ds"
    build_config(out, "paired", 600, 30, seed=0, progress=False)  # 3 train shards
    push_config(out, "paired", repo)
    build_config(out, "scenes", 80, 20, seed=0, progress=False)
    push_config(out, "scenes", repo)
    scenes_before = {k: v for k, v in hub.files(repo, "dataset").items() if k.startswith("scenes/")}
    # re-push paired with other data and fewer shards: stale shards must go
    build_config(out, "paired", 300, 30, seed=7, progress=False)
    push_config(out, "paired", repo)

    files = hub.files(repo, "dataset")
    assert sorted(p for p in files if p.startswith("paired/")) == [
        "paired/test-00000-of-00001.parquet",
        "paired/train-00000-of-00002.parquet",
        "paired/train-00001-of-00002.parquet",
    ]
    assert {k: v for k, v in files.items() if k.startswith("scenes/")} == scenes_before
    assert {"samples/paired.png", "samples/scenes.png", "README.md"} <= set(files)
    card = DatasetCard(files["README.md"].decode())
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == ["paired", "scenes"]
    assert f'load_dataset("{repo}"' in card.text

    want_paired = expected("paired", "train", 300, seed=7)
    assert_same("paired", table_to_arrays("paired", _table("paired", "train", files)), want_paired)
    ds = load_dataset(repo, "paired", split="train")
    assert_same("paired", rows_to_arrays("paired", ds), want_paired)
    assert_same("paired", load_split(repo, "paired", "train"), want_paired)
    streamed = load_dataset(repo, "paired", split="train", streaming=True)
    assert_same("paired", rows_to_arrays("paired", streamed), want_paired)
    want_scenes = expected("scenes", "test", 20, seed=0)
    assert_same(
        "scenes", rows_to_arrays("scenes", load_dataset(repo, "scenes", split="test")), want_scenes
    )
    streamed = load_dataset(repo, "scenes", split="test", streaming=True)
    assert_same("scenes", rows_to_arrays("scenes", streamed), want_scenes)
    # the command line pushes a third config next to the two
    argv = ["generate", "--config", "paired_scenes", "--train", "30", "--test", "5"]
    assert main(argv + ["--out", str(out), "--push-to-hub", repo]) == 0
    files = hub.files(repo, "dataset")
    card = DatasetCard(files["README.md"].decode()).data.to_dict()
    assert [c["config_name"] for c in card["configs"]] == ["paired", "scenes", "paired_scenes"]
    assert load_dataset(repo, "paired_scenes", split="test").num_rows == 5
    assert hub.unknown_requests[unknown:] == [] and hub.foreign_requests[foreign:] == []


def test_failed_push_is_a_clear_error_and_keeps_the_local_folder(
    tmp_path, hub, hub_repo, unreachable_hub, capsys, no_hf_token
):
    out = tmp_path / "ds"
    build_config(out, "paired", 50, 10, seed=0, progress=False)
    repo = hub_repo("refused")
    with pytest.raises(RuntimeError, match="Connect|refused"):
        push_config(out, "paired", repo, endpoint=unreachable_hub.endpoint, token=hub.token)
    # the commit itself fails: nothing half-written on the Hub
    hub.fail_next(1, status=500, match=r"POST /api/datasets/.*/commit/")
    with pytest.raises(RuntimeError, match="500"):
        push_config(out, "paired", repo, token=hub.token)
    assert set(hub.files(repo, "dataset")) <= {".gitattributes"}
    repo = hub_repo("anonymous")
    # no token: the hub answers 401; the CLI shows one line, no traceback
    argv = ["generate", "--config", "paired", "--train", "50", "--test", "10", "--out", str(out)]
    assert main(argv + ["--push-to-hub", repo]) == 2
    err = capsys.readouterr().err
    assert "push of config 'paired'" in err and "Traceback" not in err
    assert not hub.exists(repo, "dataset")
    assert_same("paired", load_split(out, "paired", "train"), expected("paired", "train", 50, 0))
