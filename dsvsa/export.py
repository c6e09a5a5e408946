"""Build the derived dSprites datasets as a Hub-style dataset folder, and push them.

One folder holds several configs (``paired``, ``scenes``, ``paired_scenes``), each with a train and
a test split written as parquet shards, plus a dataset card (README.md) whose YAML lists every
config present::

    DIR/README.md
    DIR/paired/train-00000-of-00002.parquet   (at most 50,000 rows per shard)
    DIR/paired/test-00000-of-00001.parquet
    DIR/samples/paired.png                   (the sample picture shown by the card)

The same folder loads with ``datasets.load_dataset(DIR, "paired")`` and, once pushed, with
``datasets.load_dataset("org/name", "paired")``. Images are mode-L PNG with values {0, 255};
:func:`load_split` turns a split back into the sampler's uint8 {0, 1} arrays.

Writing is atomic: the new folder is assembled beside the old one and swapped in by a rename, so
an interrupted or failed run leaves the previous folder as it was.

    dsvsa generate --config paired --train 100000 --test 10000 --seed 0 --out data/dsprites-vsa
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dsvsa.factors import FACTOR_NAMES, IMAGE_SIZE, NUM_FACTORS
from dsvsa.sampling import (
    HoldOut,
    resolve_holdout,
    sample_paired_scenes,
    sample_pairs,
    sample_scene_arrays,
)

logger = logging.getLogger(__name__)

CONFIGS: tuple[str, ...] = ("paired", "scenes", "paired_scenes")
SPLITS: tuple[str, ...] = ("train", "test")
ROWS_PER_SHARD = 50_000
ROW_GROUP_SIZE = 1_000
# examples sampled at once; part of what fixes the data for a given seed, so keep constant
CHUNK_SIZE = {"paired": 5_000, "scenes": 2_000, "paired_scenes": 5_000}
TEMPLATE_PATH = Path(__file__).parent / "templates" / "dataset_card.md"
CARD_KEY = "dsvsa"  # card metadata key holding how each config was generated

IMAGE_COLUMNS = {
    "paired": ("image_a", "image_b"),
    "scenes": ("scene",),
    "paired_scenes": ("scene_a", "scene_b", "object_a", "object_b", "other"),
}

DESCRIPTIONS = {
    "paired": (
        "Pairs of single-object images that differ in exactly one factor. `image_b` is `image_a` "
        "with factor `changed` set to another value that looks different."
    ),
    "scenes": (
        "Scenes of 2 to 5 same-colour objects (the number uniform in that range), no two "
        "sharing a pixel, with each object's own image and factors. Each object is drawn "
        "uniformly from the grid and redrawn while it overlaps an earlier one, so crowded scenes "
        "lean towards smaller objects and fewer squares (in 5-object scenes the mean scale class "
        "is about 1.9 instead of 2.5)."
    ),
    "paired_scenes": (
        "Two-object scenes before (`scene_a`) and after (`scene_b`) one object changes one "
        "factor. `object_a` / `object_b` are the changed object before / after, `other` the "
        "object that stays; `other` shares no pixel with either."
    ),
}

COLUMN_DOCS = {
    "paired": [
        ("image_a", "Image (64×64, L)", "first image"),
        ("image_b", "Image (64×64, L)", "second image, `image_a` with one factor changed"),
        ("factors_a", "list of 5 int", "class indices of `image_a` (factor order below)"),
        ("factors_b", "list of 5 int", "class indices of `image_b`"),
        ("changed", "ClassLabel", "the factor that differs: " + ", ".join(FACTOR_NAMES)),
    ],
    "scenes": [
        ("scene", "Image (64×64, L)", "union of the objects"),
        ("objects", "list of Image", "each object alone, in the order of `factors`"),
        ("factors", "list of lists of 5 int", "class indices of each object"),
        ("num_objects", "int", "number of objects, 2-5"),
    ],
    "paired_scenes": [
        ("scene_a", "Image (64×64, L)", "`object_a` together with `other`"),
        ("scene_b", "Image (64×64, L)", "`object_b` together with `other`"),
        ("object_a", "Image (64×64, L)", "the changed object before the change"),
        ("object_b", "Image (64×64, L)", "the changed object after the change"),
        ("other", "Image (64×64, L)", "the object that does not change"),
        ("factors_a", "list of 5 int", "class indices of `object_a`"),
        ("factors_b", "list of 5 int", "class indices of `object_b`"),
        ("factors_other", "list of 5 int", "class indices of `other`"),
        ("changed", "ClassLabel", "the factor that differs between `object_a` and `object_b`"),
    ],
}

SPLIT_RULES = {
    "paired": "image a is held out; image b (a with one factor changed) may lie outside the set",
    "scenes": "the first object is held out; the other objects are unrestricted",
    "paired_scenes": (
        "the changed object before its change (`factors_a`) is held out; the other object is "
        "unrestricted"
    ),
}


# ---------------------------------------------------------------------------------------------
# features and PNG coding


def features_for(config: str):
    """The ``datasets.Features`` of a config."""
    from datasets import ClassLabel, Features, Image, List, Value

    _check_config(config)
    factors = List(Value("int64"), length=NUM_FACTORS)
    if config == "paired":
        return Features(
            {
                "image_a": Image(),
                "image_b": Image(),
                "factors_a": factors,
                "factors_b": factors,
                "changed": ClassLabel(names=list(FACTOR_NAMES)),
            }
        )
    if config == "scenes":
        return Features(
            {
                "scene": Image(),
                "objects": List(Image()),
                "factors": List(factors),
                "num_objects": Value("int64"),
            }
        )
    columns: dict[str, Any] = {name: Image() for name in IMAGE_COLUMNS["paired_scenes"]}
    for name in ("factors_a", "factors_b", "factors_other"):
        columns[name] = factors
    columns["changed"] = ClassLabel(names=list(FACTOR_NAMES))
    return Features(columns)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


_PNG_HEAD = b"\x89PNG\r\n\x1a\n" + _png_chunk(
    b"IHDR", struct.pack(">IIBBBBB", IMAGE_SIZE, IMAGE_SIZE, 8, 0, 0, 0, 0)
)
_PNG_TAIL = _png_chunk(b"IEND", b"")


def encode_png(images: np.ndarray) -> list[bytes]:
    """(N, 64, 64) {0, 1} -> N mode-L (8-bit greyscale) PNG files with values {0, 255}."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must have shape (N, 64, 64), got {images.shape}")
    # each row starts with filter byte 0 (none)
    raw = np.zeros((len(images), IMAGE_SIZE, IMAGE_SIZE + 1), dtype=np.uint8)
    raw[:, :, 1:] = (images != 0) * np.uint8(255)
    return [_PNG_HEAD + _png_chunk(b"IDAT", _deflate(r.tobytes())) + _PNG_TAIL for r in raw]


def _deflate(data: bytes) -> bytes:
    # run-length matching only: 3x faster than the default on these two-level images
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return packer.compress(data) + packer.flush()


def _decode_own_png(raw: bytes) -> np.ndarray | None:
    """Fast path for files laid out as ``encode_png`` writes them; None for any other PNG."""
    start = len(_PNG_HEAD)
    if not raw.startswith(_PNG_HEAD) or raw[start + 4 : start + 8] != b"IDAT":
        return None
    size = int.from_bytes(raw[start : start + 4], "big")
    if raw[start + 12 + size :] != _PNG_TAIL:
        return None
    try:
        rows = zlib.decompress(raw[start + 8 : start + 8 + size])
    except zlib.error:
        return None
    if len(rows) != IMAGE_SIZE * (IMAGE_SIZE + 1):
        return None
    rows = np.frombuffer(rows, dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE + 1)
    if rows[:, 0].any():  # a row filter other than "none"
        return None
    return rows[:, 1:]


def decode_png(data: list[bytes]) -> np.ndarray:
    """PNG files (any mode) -> (N, 64, 64) uint8 {0, 1}, thresholded at 128."""
    from PIL import Image

    out = np.zeros((len(data), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, raw in enumerate(data):
        arr = _decode_own_png(raw)
        if arr is None:
            with Image.open(io.BytesIO(raw)) as img:
                arr = np.asarray(img.convert("L"))
        if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected a 64x64 image, got {arr.shape}")
        out[i] = arr >= 128
    return out


# ---------------------------------------------------------------------------------------------
# sampling and arrow tables


def _check_config(config: str) -> str:
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(CONFIGS)}")
    return config


def split_rng(seed: int, config: str, split: str) -> np.random.Generator:
    """The generator of one split: independent streams per (seed, config, split)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), CONFIGS.index(config), SPLITS.index(split)])


def sample_chunk(
    rng: np.random.Generator, config: str, n: int, holdout: HoldOut | None, split: str
) -> dict[str, np.ndarray]:
    """n examples of a config as arrays (scenes padded; see ``sample_scene_arrays``)."""
    if config == "paired":
        return sample_pairs(rng, n, holdout=holdout, split=split)
    if config == "scenes":
        return sample_scene_arrays(rng, n, holdout=holdout, split=split)
    return sample_paired_scenes(rng, n, holdout=holdout, split=split)


def _image_array(images: np.ndarray):
    import pyarrow as pa

    data = pa.array(encode_png(images), type=pa.binary())
    return pa.StructArray.from_arrays(
        [data, pa.nulls(len(data), type=pa.string())], names=["bytes", "path"]
    )


def _factor_array(factors: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(factors, dtype=np.int64).reshape(-1), type=pa.int64())
    return pa.FixedSizeListArray.from_arrays(flat, NUM_FACTORS)


def chunk_table(config: str, batch: dict[str, np.ndarray], schema):
    """Arrow table of a sampled chunk, in the column order and types of ``features_for``."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    if config == "scenes":
        counts = batch["num_objects"]
        keep = np.arange(batch["objects"].shape[1])[None] < counts[:, None]  # (n, max_m)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        columns["scene"] = _image_array(batch["scene"])
        columns["objects"] = pa.ListArray.from_arrays(offsets, _image_array(batch["objects"][keep]))
        columns["factors"] = pa.ListArray.from_arrays(
            offsets, _factor_array(batch["factors"][keep])
        )
        columns["num_objects"] = pa.array(counts, type=pa.int64())
    else:
        for name in IMAGE_COLUMNS[config]:
            columns[name] = _image_array(batch[name])
        for name in schema.names:
            if name.startswith("factors"):
                columns[name] = _factor_array(batch[name])
        columns["changed"] = pa.array(batch["changed"], type=pa.int64())
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


# ---------------------------------------------------------------------------------------------
# writing one config


def _write_split(
    folder: Path,
    config: str,
    split: str,
    n: int,
    seed: int,
    holdout: HoldOut | None,
    progress: bool,
) -> tuple[dict[str, int], dict[str, np.ndarray] | None]:
    """Write the shards of one split; returns (sizes, first sampled chunk for the picture)."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    schema = features_for(config).arrow_schema
    num_shards = max(1, -(-n // ROWS_PER_SHARD))
    sizes = {"num_examples": n, "num_bytes": 0, "download_size": 0}
    first = None
    writer, path = None, None
    with tqdm(total=n, desc=f"{config}/{split}", unit="ex", disable=not progress) as bar:
        for shard, batch in iter_split_chunks(config, split, n, seed, holdout):
            if first is None:
                first = batch
            name = f"{split}-{shard:05d}-of-{num_shards:05d}.parquet"
            if path is None or path.name != name:
                if writer is not None:
                    writer.close()
                    sizes["download_size"] += path.stat().st_size
                path = folder / name
                writer = pq.ParquetWriter(path, schema, compression="zstd")
            table = chunk_table(config, batch, schema)
            writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
            sizes["num_bytes"] += table.nbytes
            bar.update(table.num_rows)
        if writer is not None:
            writer.close()
            sizes["download_size"] += path.stat().st_size
    return sizes, first


def iter_split_chunks(
    config: str, split: str, n: int, seed: int, holdout: str | HoldOut | None = None
):
    """Yield (shard index, sampled chunk) in the order the split's files are written.

    This is exactly the data ``build_config`` stores for the split: the split's generator is
    drawn from in chunks of ``CHUNK_SIZE[config]`` that never cross a shard boundary.
    """
    _check_config(config)
    hold = resolve_holdout(holdout)
    rng = split_rng(seed, config, split)
    num_shards = max(1, -(-n // ROWS_PER_SHARD))
    for shard in range(num_shards):
        rows = min(ROWS_PER_SHARD, n - shard * ROWS_PER_SHARD)
        done = 0
        while done < rows:
            k = min(CHUNK_SIZE[config], rows - done)
            yield shard, sample_chunk(rng, config, k, hold, split)
            done += k


def _sample_picture(config: str, batch: dict[str, np.ndarray], path: Path) -> str:
    """Write a PNG grid of a few examples; returns its caption."""
    from PIL import Image

    if config == "scenes":
        m = batch["objects"].shape[1]
        picks = []
        for count in range(2, m + 1):
            hits = np.flatnonzero(batch["num_objects"] == count)
            if hits.size:
                picks.append(int(hits[0]))
        rows = [[batch["scene"][i], *batch["objects"][i]] for i in picks]
        counts = ", ".join(str(int(batch["num_objects"][i])) for i in picks)
        caption = (
            "Each row: the scene, then its objects one by one (blank tiles pad rows with fewer "
            f"objects); rows with {counts} objects."
        )
    else:
        picks, names = [], []
        for k, name in enumerate(FACTOR_NAMES):
            hits = np.flatnonzero(batch["changed"] == k)
            if hits.size:
                picks.append(int(hits[0]))
                names.append(name)
        cols = IMAGE_COLUMNS[config]
        rows = [[batch[c][i] for c in cols] for i in picks]
        shown = ", ".join(f"`{c}`" for c in cols)
        caption = f"Columns: {shown}. Rows top to bottom change: {', '.join(names)}."
    scale, gap = 2, 4
    tile = IMAGE_SIZE * scale
    width = max(len(r) for r in rows) if rows else 1
    grid = np.full((gap + len(rows) * (tile + gap), gap + width * (tile + gap)), 96, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = gap + r * (tile + gap), gap + c * (tile + gap)
            big = np.kron(img, np.ones((scale, scale), dtype=np.uint8)) * 255
            grid[y : y + tile, x : x + tile] = big
    Image.fromarray(grid, mode="L").save(path)
    return caption


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_config(
    out: str | os.PathLike,
    config: str,
    num_train: int,
    num_test: int,
    seed: int = 0,
    holdout: str | HoldOut | None = None,
    command: str | None = None,
    progress: bool = True,
) -> Path:
    """Write (or replace) one config in a dataset folder, keeping the folder's other configs.

    Args:
        out: dataset folder; created if missing.
        config: "paired", "scenes" or "paired_scenes".
        num_train, num_test: examples per split (train at least 1; a test of 0 is left out).
        seed: non-negative integer; the same seed gives the same files' data.
        holdout: compositional split (a name in ``dsvsa.sampling.HOLDOUTS``) or None.
        command: the command line recorded in the card (default: the equivalent ``dsvsa
            generate`` call).
        progress: show tqdm progress bars.
    Returns:
        the folder's path.
    Example:
        >>> from datasets import load_dataset
        >>> build_config("dsprites-vsa", "paired", 1000, 100, seed=0)  # doctest: +SKIP
        >>> load_dataset("dsprites-vsa", "paired")["train"][0]["changed"]  # doctest: +SKIP
    """
    _check_config(config)
    for name, n in (("train", num_train), ("test", num_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"number of {name} examples must be a non-negative integer, got {n!r}")
    if num_train < 1:
        raise ValueError("the train split needs at least one example")
    split_rng(seed, config, "train")  # validates the seed before any work
    hold = resolve_holdout(holdout)
    out = Path(out).resolve()
    check_output_folder(out)
    if command is None:
        command = generate_command_line(config, num_train, num_test, seed, hold, out.name)

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if out.exists():
            shutil.copytree(out, tmp)
        else:
            tmp.mkdir()
        folder = tmp / config
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()

        splits = {}
        first = None
        for split, n in (("train", num_train), ("test", num_test)):
            if n == 0:
                continue
            sizes, batch = _write_split(folder, config, split, n, seed, hold, progress)
            splits[split] = sizes
            if first is None:
                first = batch
        (tmp / "samples").mkdir(exist_ok=True)
        caption = _sample_picture(config, first, tmp / "samples" / f"{config}.png")

        entry = _card_entry(config, splits, seed, hold, command, caption)
        entries = read_card_entries(tmp / "README.md")
        entries[config] = entry
        render_card(entries).save(tmp / "README.md")
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote config %r to %s in %.1f s (%s train, %s test examples, %.1f MB on disk)",
        config,
        out,
        time.perf_counter() - start,
        num_train,
        num_test,
        _folder_bytes(out / config) / 1e6,
    )
    return out


MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "training_config.json")


def is_dataset_card(readme: str | os.PathLike) -> bool:
    """True when ``readme`` is a dataset card written by this package (its YAML has ``dsvsa``)."""
    from huggingface_hub import DatasetCard

    try:
        if not Path(readme).read_text(encoding="utf-8").startswith("---"):
            return False  # no YAML metadata block at all
        data = DatasetCard.load(Path(readme)).data.to_dict()
    except Exception:  # no or broken YAML front matter, unreadable file
        return False
    return isinstance(data.get(CARD_KEY), dict)


def check_output_folder(out: Path) -> None:
    """Refuse a folder that is not (yet) a dsvsa dataset folder, before anything is written.

    Raises:
        ValueError: ``out`` is a file, holds a model (``config.json``, ``model.safetensors``...),
            holds a README.md that is not a dsvsa dataset card, or holds other files without one.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    model_files = [name for name in MODEL_FILES if (out / name).exists()]
    if model_files:
        raise ValueError(
            f"{out} holds a model ({', '.join(model_files)}), not a dataset; nothing was written: "
            "choose another folder for the dataset"
        )
    readme = out / "README.md"
    if not readme.is_file():
        raise ValueError(
            f"{out} is neither empty nor a dataset folder (it has no README.md); nothing was "
            "written: choose an empty or new folder"
        )
    if not is_dataset_card(readme):
        raise ValueError(
            f"{readme} is not a dsvsa dataset card (it would be overwritten); nothing was "
            "written: choose an empty or new folder"
        )


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames (the old folder survives until the last step)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def generate_command_line(
    config: str, num_train: int, num_test: int, seed: int, holdout: HoldOut | None, out: str
) -> str:
    """The ``dsvsa generate`` call that writes this config."""
    line = f"dsvsa generate --config {config} --train {num_train} --test {num_test} --seed {seed}"
    if holdout is not None:
        line += f" --holdout {holdout.name}"
    return line + f" --out {out}"


# ---------------------------------------------------------------------------------------------
# dataset card


def _card_entry(
    config: str,
    splits: dict[str, dict[str, int]],
    seed: int,
    holdout: HoldOut | None,
    command: str,
    caption: str,
) -> dict[str, Any]:
    """Everything the card says about one config: YAML config + dataset_info + generation."""
    from datasets import DatasetInfo, SplitDict, SplitInfo

    split_dict = SplitDict()
    for name, sizes in splits.items():
        split_dict.add(
            SplitInfo(name=name, num_bytes=sizes["num_bytes"], num_examples=sizes["num_examples"])
        )
    info = DatasetInfo(
        features=features_for(config),
        splits=split_dict,
        download_size=sum(s["download_size"] for s in splits.values()),
        dataset_size=sum(s["num_bytes"] for s in splits.values()),
    )
    info_yaml = {"config_name": config, **info._to_yaml_dict()}
    from dsvsa import __version__

    return {
        "config": {
            "config_name": config,
            "data_files": [{"split": s, "path": f"{config}/{s}-*"} for s in splits],
        },
        "dataset_info": info_yaml,
        "generation": {
            "command": command,
            "seed": int(seed),
            "num_train": int(splits["train"]["num_examples"]),
            "num_test": int(splits.get("test", {}).get("num_examples", 0)),
            "holdout": None if holdout is None else holdout.name,
            "holdout_description": None if holdout is None else holdout.description,
            "sample_caption": caption,
            "dsvsa_version": __version__,
        },
    }


def _card_data_entries(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    configs = data.get("configs") or []
    infos = data.get("dataset_info") or []
    if isinstance(infos, dict):
        infos = [infos]
    generation = data.get(CARD_KEY) or {}
    entries: dict[str, dict[str, Any]] = {}
    for item in configs:
        name = item.get("config_name", "default")
        entries[name] = {"config": item, "dataset_info": None, "generation": generation.get(name)}
    for info in infos:
        name = info.get("config_name", "default")
        if name in entries:
            entries[name]["dataset_info"] = info
    return entries


def read_card_entries(readme: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per-config card entries of an existing README.md (empty when there is none)."""
    from huggingface_hub import DatasetCard

    path = Path(readme)
    if not path.is_file():
        return {}
    card = DatasetCard.load(path)
    return _card_data_entries(card.data.to_dict())


def _sorted_names(entries: dict[str, Any]) -> list[str]:
    order = {name: i for i, name in enumerate(CONFIGS)}
    return sorted(entries, key=lambda name: (order.get(name, len(order)), name))


def render_card(entries: dict[str, dict[str, Any]], repo_id: str | None = None):
    """A ``huggingface_hub.DatasetCard`` listing every config of ``entries``."""
    from huggingface_hub import DatasetCard, DatasetCardData

    names = _sorted_names(entries)
    infos = [entries[n]["dataset_info"] for n in names if entries[n].get("dataset_info")]
    generation = {n: entries[n]["generation"] for n in names if entries[n].get("generation")}
    card_data = DatasetCardData(
        license="apache-2.0",
        pretty_name="dSprites-VSA",
        task_categories=["image-to-image"],
        tags=["dsprites", "disentanglement", "vector-symbolic-architectures", "synthetic"],
        size_categories=[_size_category(generation)],
        configs=[entries[n]["config"] for n in names],
        dataset_info=infos if len(infos) != 1 else infos[0],
        **{CARD_KEY: generation},
    )
    sections = []
    for name in names:
        gen = entries[name].get("generation")
        if gen is None:
            sections.append({"name": name, "foreign": True})
            continue
        sections.append(
            {
                "name": name,
                "foreign": False,
                "description": DESCRIPTIONS.get(name, ""),
                "columns": COLUMN_DOCS.get(name, []),
                "split_rule": SPLIT_RULES.get(name, ""),
                **gen,
            }
        )
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        sections=sections,
        repo_id=repo_id or "ORG/NAME",
        factors=_factor_rows(),
    )


def _size_category(generation: dict[str, Any]) -> str:
    total = sum(g.get("num_train", 0) + g.get("num_test", 0) for g in generation.values())
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if total < bound:
            return label
    return "100K<n<1M" if total < 1_000_000 else "1M<n<10M"


def _factor_rows() -> list[tuple[int, str, int, str]]:
    return [
        (0, "shape", 3, "square, ellipse, heart"),
        (1, "scale", 6, "0.5 … 1.0 in steps of 0.1"),
        (2, "orientation", 40, "0 … 2π in 39 equal steps (classes 0 and 39 are the same angle)"),
        (3, "pos_x", 32, "0 … 1 in 31 steps; centre at 16 + 32·x pixels from the left"),
        (4, "pos_y", 32, "0 … 1 in 31 steps; centre at 16 + 32·y pixels from the top"),
    ]


# ---------------------------------------------------------------------------------------------
# Hub push


def push_config(
    folder: str | os.PathLike,
    config: str,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload one config of a local dataset folder to a Hub dataset repository.

    Creates the repository if needed, replaces that config's shards and sample picture in one
    commit, and rewrites README.md so that it lists the configs already on the Hub as well. Other
    configs' files on the Hub are left untouched.

    Returns:
        the commit's URL.
    Raises:
        RuntimeError: the Hub could not be reached or refused the upload (the local folder is
            unaffected).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HTTPError

    _check_config(config)
    folder = Path(folder)
    files = sorted((folder / config).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards of config {config!r} in {folder}")
    local = read_card_entries(folder / "README.md")
    if config not in local:
        raise FileNotFoundError(f"{folder / 'README.md'} does not describe config {config!r}")

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        remote_files = set(api.list_repo_files(repo_id, repo_type="dataset"))
        entries: dict[str, dict[str, Any]] = {}
        if "README.md" in remote_files:
            readme = api.hf_hub_download(repo_id, "README.md", repo_type="dataset")
            entries = read_card_entries(readme)
        entries[config] = local[config]
        card = render_card(entries, repo_id=repo_id)

        uploads = {f"{config}/{p.name}": p for p in files}
        picture = folder / "samples" / f"{config}.png"
        if picture.is_file():
            uploads[f"samples/{config}.png"] = picture
        ops: list[Any] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
            for name, path in uploads.items()
        ]
        ops.append(CommitOperationAdd("README.md", str(card).encode("utf-8")))
        # shards of an earlier push of this config that the new one does not overwrite
        ops += [
            CommitOperationDelete(name)
            for name in sorted(remote_files)
            if name.startswith(f"{config}/") and name not in uploads
        ]
        info = api.create_commit(
            repo_id,
            ops,
            commit_message=f"Add config {config}",
            repo_type="dataset",
        )
    except (OSError, HTTPError) as err:
        raise RuntimeError(
            f"push of config {config!r} to {repo_id} failed ({type(err).__name__}: {err}); the "
            f"local dataset in {folder} is complete and loadable"
        ) from err
    logger.info("pushed config %r to %s (%s)", config, repo_id, info.commit_url)
    return info.commit_url


# ---------------------------------------------------------------------------------------------
# loading back


def load_split(
    path_or_repo: str | os.PathLike, config: str, split: str = "train", **load_kwargs: Any
) -> dict[str, np.ndarray] | list[dict[str, Any]]:
    """Load one split of a dataset folder or Hub repository back into the sampler's arrays.

    Args:
        path_or_repo: a local dataset folder or a Hub id "org/name".
        config: "paired", "scenes" or "paired_scenes".
        split: "train" or "test".
        **load_kwargs: passed to ``datasets.load_dataset`` (e.g. ``revision``, ``cache_dir``).
    Returns:
        paired and paired_scenes: dict of arrays as returned by ``sample_pairs`` /
        ``sample_paired_scenes`` (images uint8 {0, 1}, factors (N, 5) int64, changed (N,) int64);
        scenes: a list of dicts as returned by ``sample_scenes``.
    """
    from datasets import load_dataset

    _check_config(config)
    source = str(path_or_repo)
    offline_reason = check_dataset_source(source, revision=load_kwargs.get("revision"))
    if offline_reason is None:
        ds = load_dataset(source, config, split=split, **load_kwargs)
    else:
        from dsvsa.model import HubUnreachableError

        try:
            with _hub_offline():
                ds = load_dataset(source, config, split=split, **load_kwargs)
        except (ConnectionError, FileNotFoundError) as err:
            raise HubUnreachableError(
                f"could not reach the Hub for dataset {source} and it is not in the local "
                f"cache ({offline_reason}; no dataset folder of that name here either)"
            ) from err
    table = ds.with_format("arrow")[:]
    return table_to_arrays(config, table)


def check_dataset_source(
    path_or_repo: str | os.PathLike, revision: str | None = None
) -> str | None:
    """Fail fast on a dataset that cannot exist; probe the Hub once for a repo id.

    Returns:
        None for a local folder or a repo the Hub answers for, else why the Hub cannot be used
        (then only the local cache can serve it).

    Raises:
        FileNotFoundError: a path-like name (``./x``, ``/x``, ``a/b/c``) that is no folder, or a
            repo id the Hub says does not exist.
    """
    from dsvsa.model import looks_like_local_path, probe_hub

    source = str(path_or_repo)
    if Path(source).is_dir():
        return None
    if Path(source).exists():
        raise FileNotFoundError(f"{source} is a file; expected a dataset folder or a Hub id")
    if looks_like_local_path(source):
        raise FileNotFoundError(f"no such dataset folder: {source}")
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except ValueError as err:
        raise FileNotFoundError(
            f"{source!r} is neither a dataset folder nor a valid Hub id ({err})"
        ) from None
    return probe_hub(source, "dataset", revision=revision)


@contextlib.contextmanager
def _hub_offline():
    """``datasets`` and ``huggingface_hub`` in offline mode for the block: only the local cache
    is read, at once, instead of retrying an unreachable Hub for half a minute."""
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _png_column(column) -> np.ndarray:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return decode_png(column.field("bytes").to_pylist())


def _factor_column(column) -> np.ndarray:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.int64).reshape(len(column), NUM_FACTORS)


def table_to_arrays(config: str, table) -> dict[str, np.ndarray] | list[dict[str, Any]]:
    """A pyarrow table of a config (as stored) -> the sampler's arrays (see ``load_split``)."""
    import pyarrow as pa

    if config == "scenes":
        scenes = _png_column(table.column("scene"))
        objects = table.column("objects").combine_chunks()
        flat = _png_column(objects.flatten())
        offsets = objects.offsets.to_numpy()
        factors = table.column("factors").combine_chunks()
        flat_factors = _factor_column(factors.flatten())
        counts = table.column("num_objects").to_numpy()
        return [
            {
                "scene": scenes[i],
                "objects": flat[offsets[i] : offsets[i + 1]],
                "factors": flat_factors[offsets[i] : offsets[i + 1]],
                "num_objects": int(counts[i]),
            }
            for i in range(table.num_rows)
        ]
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name)
        if name in IMAGE_COLUMNS[config]:
            out[name] = _png_column(column)
        elif name.startswith("factors"):
            out[name] = _factor_column(column)
        else:
            out[name] = np.asarray(pa.chunked_array(column).to_numpy(), dtype=np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# command line


def generate_command(args) -> int:
    """``dsvsa generate``: write a config into ``--out`` and optionally push it."""
    hold = resolve_holdout(args.holdout)
    out = Path(args.out)
    build_config(out, args.config, args.train, args.test, seed=args.seed, holdout=hold)
    logger.info("load it with: datasets.load_dataset(%r, %r)", str(out), args.config)
    if args.push_to_hub:
        url = push_config(out, args.config, args.push_to_hub, private=args.private)
        logger.info("pushed: %s", url)
    return 0
