"""dsvsa Space: feature transfer, composition, attribute mixing and scene editing on dSprites.

    python app.py                                   # http://127.0.0.1:7860
    DSVSA_MODEL=org/name python app.py              # weights from a Hub repo or a local folder
    DSVSA_DATASET=org/name python app.py            # example data from a Hub repo or a folder
    GRADIO_SERVER_PORT=8080 python app.py           # another port

Weights come from ``DSVSA_MODEL`` (default :data:`DEFAULT_MODEL` on the Hub). When they cannot be
loaded -- the Hub is unreachable, the repo or folder is missing, the files are corrupt -- the app
falls back to the weights bundled in ``models/dsvsa-default`` (``DSVSA_FALLBACK_MODEL`` overrides
that folder) within a few seconds, and one log line says which weights it serves. Example data
comes from ``DSVSA_DATASET``, with the built-in samplers as the offline fallback.

Every widget calls a plain handler (:func:`transfer`, :func:`compose`, :func:`mix`, :func:`edit`,
:func:`query`) that takes arrays and returns uint8 {0, 255} greyscale images, so they can be used
and tested without a browser.
"""

# ruff: noqa: E402  (two environment defaults must be set before gradio/huggingface_hub load)
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import functools
import hashlib
import io
import logging
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from dsvsa.factors import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    FACTOR_VALUES,
    SHAPE_NAMES,
    equivalent_orientations,
    same_factor_value,
    validate_classes,
)
from dsvsa.uploads import UploadError, prepare_upload

logger = logging.getLogger("dsvsa.app")

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "dsvsa/dsprites-vsa"  # the Hub repo the training recipe pushes to
DEFAULT_DATASET = "dsvsa/dsprites-vsa"  # the Hub dataset repo of the three derived datasets
BUNDLED_MODEL = ROOT / "models" / "dsvsa-default"
HUB_TIMEOUT = 3.0  # seconds the Hub gets to answer before the app falls back
MAX_FILE_SIZE = "5mb"  # largest upload the server accepts
MAX_FILE_SIZE_BYTES = 5 * 1024 * 1024  # the same limit, for inline (data URL) images
MAX_OBJECTS = 5
NUM_EXAMPLES = 6
EXAMPLE_SEED = 0
PROTOTYPE_CONTEXTS = 16  # random objects averaged into each feature-value prototype
DISPLAY_PX = 256  # on-screen size of the 64x64 images (nearest-neighbour upscaling in CSS)
MODEL_FILES = ["*.json", "*.safetensors", "*.md", "*.yaml", "*.png", "*.jpg", "*.svg"]

FACTOR_INFO = {
    "shape": "0 square, 1 ellipse, 2 heart",
    "scale": "0..5 = size 0.5..1.0",
    "orientation": "0..39 = angle 0..2\u03c0",
    "pos_x": "0..31, left to right",
    "pos_y": "0..31, top to bottom",
}
DEFAULT_OBJECTS = {
    "a": (2, 5, 0, 10, 12),
    "b": (0, 3, 5, 22, 20),
    "1": (1, 4, 10, 8, 8),
    "2": (2, 3, 0, 24, 24),
}
SOURCES = ("other object", "slider value")

CSS = """
.pixelated img {
    image-rendering: pixelated;
    object-fit: contain !important;
    width: 100% !important;
    height: 100% !important;
}
"""


# ---- loading ---------------------------------------------------------------------------------


class WeightsUnavailable(RuntimeError):
    """Weights that cannot be loaded from where they were asked for."""


@dataclass
class Weights:
    model: Any  # dsvsa.DSpritesVSA
    folder: Path  # local folder with config.json, model.safetensors and (maybe) README.md
    description: str  # where the weights came from, for the log and the page
    fallback_reason: str | None = None


@dataclass
class ExampleSet:
    source: str
    transfer: list[list] = field(default_factory=list)  # [*factors_a, *factors_b, feature]
    compose: list[list[list[int]]] = field(default_factory=list)  # tables of object rows
    mix: list[list[int]] = field(default_factory=list)  # 25 slider values (5 sources)
    edit: list[list] = field(default_factory=list)  # [*f1, *f2, object, feature, source, value]


@dataclass
class AppState:
    weights: Weights
    examples: ExampleSet
    prototypes: dict[int, torch.Tensor] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_HUB_DOWN: dict[str, str] = {}  # endpoint -> why it could not be reached (probed once)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _bounded(fn, seconds: float):
    """``fn()`` in a daemon thread, abandoned after ``seconds`` (TimeoutError): the HTTP timeout
    does not cover a name lookup that hangs."""
    box: dict[str, Any] = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _probe(repo_id: str, repo_type: str) -> tuple[str | None, str | None]:
    """Ask the Hub about a repo once, briefly: (commit sha, None) or (None, why not)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    endpoint = _endpoint()
    if constants.HF_HUB_OFFLINE:
        return None, "HF_HUB_OFFLINE is set"
    if endpoint in _HUB_DOWN:
        return None, _HUB_DOWN[endpoint]
    try:
        info = _bounded(
            lambda: HfApi(endpoint=endpoint).repo_info(
                repo_id, repo_type=repo_type, timeout=HUB_TIMEOUT
            ),
            2 * HUB_TIMEOUT,
        )
    except RepositoryNotFoundError:
        return None, f"the Hub at {endpoint} has no {repo_type} repository {repo_id!r}"
    except OfflineModeIsEnabled:
        return None, "HF_HUB_OFFLINE is set"
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        return None, f"the Hub at {endpoint} answered HTTP {status} for {repo_id!r}"
    except Exception as err:  # connection refused, DNS failure, timeout, TLS ...
        reason = f"the Hub at {endpoint} cannot be reached ({type(err).__name__})"
        _HUB_DOWN[endpoint] = reason
        return None, reason
    return info.sha, None


def _model_folder(spec: str) -> tuple[Path, str]:
    """A local folder holding the weights named by ``spec`` (a folder or a Hub repo id)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, f"folder {path}"
    if path.exists() or _looks_like_path(spec):
        raise WeightsUnavailable(f"no model folder at {spec}")

    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except ValueError as err:
        raise WeightsUnavailable(
            f"{spec!r} is neither a folder nor a Hub repo id ({err})"
        ) from None

    sha, reason = _probe(spec, "model")
    if sha is None:
        try:  # a copy downloaded earlier still serves
            cached = snapshot_download(spec, local_files_only=True, allow_patterns=MODEL_FILES)
        except Exception:
            raise WeightsUnavailable(reason) from None
        return Path(cached), f"Hub model {spec} (cached copy; {reason})"
    try:
        # by branch, not by the probed sha: the cache then records "main" for offline starts
        local = Path(snapshot_download(spec, allow_patterns=MODEL_FILES, etag_timeout=HUB_TIMEOUT))
    except Exception as err:
        raise WeightsUnavailable(f"downloading {spec} failed: {err}") from None
    return local, f"Hub model {spec} at revision {local.name[:8]}"


def _load_from(spec: str) -> Weights:
    from dsvsa.model import DSpritesVSA

    folder, description = _model_folder(spec)
    try:
        model = DSpritesVSA.from_pretrained(folder, strict=True)
    except Exception as err:
        raise WeightsUnavailable(f"{description} cannot be loaded: {err}") from None
    return Weights(model=model, folder=folder, description=description)


def load_weights(spec: str | None = None) -> Weights:
    """Load the served weights: ``spec`` / ``DSVSA_MODEL``, else the bundled fallback folder.

    Raises:
        WeightsUnavailable: neither the requested nor the fallback weights can be loaded.
    """
    spec = spec or os.environ.get("DSVSA_MODEL") or DEFAULT_MODEL
    fallback = Path(os.environ.get("DSVSA_FALLBACK_MODEL") or BUNDLED_MODEL)
    start = time.perf_counter()
    try:
        weights = _load_from(spec)
    except WeightsUnavailable as err:
        if Path(spec).expanduser().resolve() == fallback.resolve():
            raise
        logger.warning("Could not load weights %r: %s. Falling back to %s.", spec, err, fallback)
        try:
            weights = _load_from(str(fallback))
        except WeightsUnavailable as err2:
            raise WeightsUnavailable(
                f"no usable weights: {err}; and the fallback failed too: {err2}"
            ) from None
        weights.description = f"bundled {weights.description} (fallback)"
        weights.fallback_reason = str(err)
    n_params = weights.model.num_parameters()
    logger.info(
        "Serving dsvsa weights from %s (%.1fM parameters, loaded in %.1f s)",
        weights.description,
        n_params / 1e6,
        time.perf_counter() - start,
    )
    return weights


def _pair_examples(pa, pb, changed) -> tuple[list[list], list[list[int]]]:
    """Transfer examples (half same-pair, half unrelated donors) and mixer sources from pairs."""
    pa, pb = validate_classes(pa), validate_classes(pb)
    transfer = []
    for i in range(min(NUM_EXAMPLES, len(pa))):
        if i % 2 == 0:  # a pair differing in one feature: the result should be b
            donor, k = pb[i], int(changed[i])
        else:  # an unrelated donor
            donor, k = pa[(i + 1) % len(pa)], i % len(FACTOR_NAMES)
        transfer.append([*pa[i].tolist(), *donor.tolist(), FACTOR_NAMES[k]])
    rows = np.concatenate([pa, pb])
    mix = [
        rows[5 * i : 5 * i + 5].reshape(-1).tolist()
        for i in range(min(NUM_EXAMPLES, len(rows) // 5))
    ]
    return transfer, mix


def _scene_examples(scenes) -> list[list[list[int]]]:
    rows = [validate_classes(s).tolist() for s in scenes]
    return [r for r in rows if 2 <= len(r) <= MAX_OBJECTS][:NUM_EXAMPLES]


def _edit_examples(ea, eb, eo, changed) -> list[list]:
    """Edits of paired scenes: the changed object takes its after-change value from a slider."""
    ea, eb, eo = validate_classes(ea), validate_classes(eb), validate_classes(eo)
    edit = []
    for i in range(min(NUM_EXAMPLES, len(ea))):
        k = int(changed[i])
        tail = [FACTOR_NAMES[k], SOURCES[1], int(eb[i, k])]
        if i % 2 == 0:
            edit.append([*ea[i].tolist(), *eo[i].tolist(), 1, *tail])
        else:
            edit.append([*eo[i].tolist(), *ea[i].tolist(), 2, *tail])
    return edit


def _sampler_examples() -> ExampleSet:
    from dsvsa.sampling import sample_paired_scenes, sample_pairs, sample_scenes

    rng = np.random.default_rng(EXAMPLE_SEED)
    pairs = sample_pairs(rng, 5 * NUM_EXAMPLES)
    scenes = [s["factors"] for s in sample_scenes(rng, NUM_EXAMPLES, 2, MAX_OBJECTS)]
    ps = sample_paired_scenes(rng, NUM_EXAMPLES)
    transfer, mix = _pair_examples(pairs["factors_a"], pairs["factors_b"], pairs["changed"])
    edit = _edit_examples(ps["factors_a"], ps["factors_b"], ps["factors_other"], ps["changed"])
    return ExampleSet("built-in sampler (seed 0)", transfer, _scene_examples(scenes), mix, edit)


def _read_rows(spec: str, config: str, columns: list[str], n: int) -> list[dict]:
    from datasets import load_dataset

    ds = load_dataset(spec, config, split="test", streaming=True)
    return list(ds.select_columns(columns).take(n))


def _dataset_examples(spec: str, where: str) -> ExampleSet:
    """Examples from the test splits of the three configs; the sampler fills in missing ones."""
    examples = _sampler_examples()
    missing = []
    try:
        rows = _read_rows(spec, "paired", ["factors_a", "factors_b", "changed"], 5 * NUM_EXAMPLES)
        examples.transfer, examples.mix = _pair_examples(
            *([r[c] for r in rows] for c in ("factors_a", "factors_b", "changed"))
        )
    except Exception as err:
        missing.append(f"paired ({type(err).__name__})")
    try:
        rows = _read_rows(spec, "scenes", ["factors"], 4 * NUM_EXAMPLES)
        examples.compose = _scene_examples([r["factors"] for r in rows])
    except Exception as err:
        missing.append(f"scenes ({type(err).__name__})")
    try:
        cols = ["factors_a", "factors_b", "factors_other", "changed"]
        rows = _read_rows(spec, "paired_scenes", cols, NUM_EXAMPLES)
        examples.edit = _edit_examples(*([r[c] for r in rows] for c in cols))
    except Exception as err:
        missing.append(f"paired_scenes ({type(err).__name__})")
    if len(missing) == 3:
        raise RuntimeError(f"none of its configs could be read: {', '.join(missing)}")
    examples.source = f"{where} (test splits)"
    if missing:
        examples.source += f"; built-in sampler for {', '.join(missing)}"
    return examples


def load_examples(spec: str | None = None) -> ExampleSet:
    """Example factors from ``spec`` / ``DSVSA_DATASET`` (test splits), else from the samplers."""
    spec = spec or os.environ.get("DSVSA_DATASET") or DEFAULT_DATASET
    path = Path(spec).expanduser()
    reason = None
    if path.is_dir():
        where, spec = f"dataset folder {path}", str(path)
    elif path.exists() or _looks_like_path(spec):
        reason = f"no dataset folder at {spec}"
    else:
        sha, reason = _probe(spec, "dataset")
        where = f"Hub dataset {spec}" + (f" at revision {sha[:8]}" if sha else "")
    if reason is None:
        try:
            examples = _dataset_examples(spec, where)
            logger.info("Examples from %s", examples.source)
            return examples
        except Exception as err:
            reason = f"{where} could not be read ({err})"
    examples = _sampler_examples()
    logger.info("Examples from the %s: %s", examples.source, reason)
    return examples


_STATE: AppState | None = None
_STATE_LOCK = threading.Lock()


def setup(model: str | None = None, dataset: str | None = None) -> AppState:
    """Load weights and examples (once); later handler calls use them."""
    global _STATE
    with _STATE_LOCK:
        _STATE = AppState(weights=load_weights(model), examples=load_examples(dataset))
        return _STATE


def state() -> AppState:
    if _STATE is None:
        return setup()
    return _STATE


# ---- input checking ----------------------------------------------------------------------------


def _fail(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def user_errors(fn):
    """Turn bad input into a gr.Error for the page; keep tracebacks out of page and log."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, UploadError) as err:
            raise _fail(str(err)) from None
        except Exception as err:
            logger.error("%s failed: %s: %s", fn.__name__, type(err).__name__, err)
            raise _fail(f"Something went wrong ({type(err).__name__}); please try again.") from None

    return wrapper


def _feature(feature) -> int:
    if isinstance(feature, str) and feature in FACTOR_NAMES:
        return FACTOR_NAMES.index(feature)
    if isinstance(feature, (int, np.integer)) and not isinstance(feature, bool):
        if 0 <= int(feature) < len(FACTOR_NAMES):
            return int(feature)
    raise _fail(f"Unknown feature {feature!r}: choose one of {', '.join(FACTOR_NAMES)}.")


def _classes(values, label: str) -> np.ndarray:
    """Five slider values -> (5,) int64 class indices, with a message naming the bad one."""
    values = list(values)
    if len(values) != len(FACTOR_NAMES):
        raise _fail(f"{label}: expected 5 factor values, got {len(values)}.")
    out = []
    for name, size, v in zip(FACTOR_NAMES, FACTOR_SIZES, values, strict=True):
        if name == "shape" and isinstance(v, str) and v.strip().lower() in SHAPE_NAMES:
            v = SHAPE_NAMES.index(v.strip().lower())
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise _fail(f"{label}: {name} must be a number, got {v!r}.") from None
        if not np.isfinite(f) or f != round(f) or not 0 <= f < size:
            raise _fail(f"{label}: {name} must be an integer from 0 to {size - 1}, got {v!r}.")
        out.append(int(f))
    return np.asarray(out, dtype=np.int64)


def _render(classes) -> np.ndarray:
    from dsvsa.render import render

    return render(np.asarray(classes, dtype=np.int64).reshape(-1, 5))


def _render_scene(classes) -> np.ndarray:
    from dsvsa.render import render_scene

    return render_scene(np.asarray(classes, dtype=np.int64).reshape(-1, 5))


def resolve_object(image, factors, label: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """One input object: (pixels (64, 64) {0, 1}, its factors if known, notes for the user).

    With no image the object is drawn from the factors. An image that equals the render of the
    factors keeps them as known ground truth; any other image (an upload) has unknown factors.
    """
    classes = _classes(factors, label) if factors is not None else None
    if image is None:
        if classes is None:
            raise _fail(f"{label}: give an image or the five factor values.")
        return _render(classes)[0], classes, [f"{label}: no image given, drawn from its sliders"]
    try:
        pixels, notes = prepare_upload(image)
    except UploadError as err:
        raise _fail(f"{label}: {err}.") from None
    notes = [f"{label}: {n}" for n in notes]
    if classes is not None and np.array_equal(pixels, _render(classes)[0]):
        return pixels, classes, notes
    return pixels, None, notes


def _notify(notes: list[str]) -> None:
    for note in notes:
        if "empty" in note or "overlap" in note or "no image" in note:
            gr.Warning(note)
        else:
            gr.Info(note)


def to_display(pixels: np.ndarray | None) -> np.ndarray | None:
    """{0, 1} -> uint8 {0, 255}: what every image output of the app returns."""
    if pixels is None:
        return None
    return (np.asarray(pixels, dtype=np.uint8) * 255).astype(np.uint8)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two binary images (1.0 when both are empty)."""
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def _best_target(result, classes, j: int, orient_shape: int, orient_class: int):
    """Ground truth for ``result``: the render of ``classes`` (M, 5), scene if M > 1.

    Object ``j``'s orientation was read from an image of shape ``orient_shape``: such an image
    fixes its angle only modulo the shape's symmetry, so every equivalent orientation is an
    equally right target and the best-scoring one is returned. -> (target {0, 1}, IoU)
    """
    classes = np.array(classes, dtype=np.int64).reshape(-1, 5)
    mask = equivalent_orientations([orient_shape], [orient_class])[0]
    candidates = [int(classes[j, 2])] + [int(o) for o in np.flatnonzero(mask)]
    best, best_iou = None, -1.0
    for o in dict.fromkeys(candidates):
        c = classes.copy()
        c[j, 2] = o
        img = _render(c)[0] if len(c) == 1 else _render_scene(c)
        score = iou(result, img)
        if score > best_iou + 1e-12:
            best, best_iou = img, score
    return best, best_iou


def _markdown(lines: list[str], notes: list[str]) -> str:
    text = "\n".join(f"- {line}" for line in lines)
    if notes:
        text += "\n\n**Input notes**\n" + "\n".join(f"- {n}" for n in notes)
    return text


def _factor_text(classes) -> str:
    c = [int(x) for x in classes]
    return f"{SHAPE_NAMES[c[0]]}, scale {c[1]}, orientation {c[2]}, x {c[3]}, y {c[4]}"


# ---- handlers ----------------------------------------------------------------------------------


@user_errors
def transfer(image_a, image_b, feature, factors_a=None, factors_b=None):
    """Give object A the ``feature`` of object B.

    Args:
        image_a, image_b: images (array, PIL or file path) or None to draw from the factors.
        feature: factor name or position.
        factors_a, factors_b: five class indices each (the sliders), or None.
    Returns:
        (result, recon_a, recon_b, target or None, report markdown); images (64, 64) uint8
        {0, 255}.
    """
    k = _feature(feature)
    a, fa, notes_a = resolve_object(image_a, factors_a, "Object A")
    b, fb, notes_b = resolve_object(image_b, factors_b, "Object B")
    notes = notes_a + notes_b
    _notify(notes)

    model = state().weights.model
    result = model.transfer(a[None], b[None], k)[0]
    recon = model.reconstruct(np.stack([a, b]))
    name = FACTOR_NAMES[k]
    lines = [f"A with its **{name}** taken from B."]
    lines.append(f"Reconstruction IoU: A {iou(recon[0], a):.3f}, B {iou(recon[1], b):.3f}.")
    target = None
    if fa is not None and fb is not None:
        t = fa.copy()
        t[k] = fb[k]
        src = fb if k == 2 else fa  # the image the target's orientation is read from
        target, score = _best_target(result, t, 0, int(src[0]), int(src[2]))
        lines.append(
            f"Ground truth ({_factor_text(t)}): IoU **{score:.3f}**; leaving A unchanged "
            f"scores {iou(a, target):.3f}."
        )
        if same_factor_value(fa, fb, k)[0]:
            lines.append(f"A and B already share their {name}: the transfer should change nothing.")
    else:
        lines.append("No ground truth: an uploaded object has no known factors.")
    return (
        to_display(result),
        to_display(recon[0]),
        to_display(recon[1]),
        to_display(target),
        _markdown(lines, notes),
    )


def _table_rows(objects) -> list:
    """Rows of a Dataframe value (list of lists, dict with "data", DataFrame) without blanks."""
    if objects is None:
        return []
    if isinstance(objects, dict):
        objects = objects.get("data") or []
    if hasattr(objects, "values") and hasattr(objects, "columns"):
        objects = objects.values.tolist()
    if isinstance(objects, np.ndarray):
        objects = objects.tolist()
    if not isinstance(objects, (list, tuple)):
        raise _fail("objects must be a table with one row of 5 factor values per object.")
    rows = []
    for row in objects:
        if isinstance(row, np.ndarray):
            row = row.tolist()
        if not isinstance(row, (list, tuple)):
            raise _fail("objects must be a table with one row of 5 factor values per object.")
        if all(v is None or (isinstance(v, str) and not v.strip()) for v in row):
            continue
        rows.append(list(row))
    return rows


def _decode_scene(model, objects: np.ndarray) -> tuple[np.ndarray, str]:
    """(M, 64, 64) objects -> decoded scene and how they were combined."""
    cfg = model.config
    if not cfg.bind_objects or len(objects) <= cfg.num_object_roles:
        how = "bound to object roles and summed" if cfg.bind_objects else "summed"
        return model.compose(objects), how
    # more objects than object roles: the plain sum of object vectors (the scene stage)
    z = model.latent(objects)
    with torch.no_grad():
        v = model.object_vector(z).sum(dim=0, keepdim=True)
        from dsvsa.images import logits_to_binary

        scene = logits_to_binary(model.decode(v))[0]
    how = (
        f"summed without object roles (the model binds at most {cfg.num_object_roles} objects "
        "to roles)"
    )
    return scene, how


def _overlaps(objects: np.ndarray) -> list[str]:
    notes = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            shared = int(np.logical_and(objects[i], objects[j]).sum())
            if shared:
                notes.append(
                    f"objects {i + 1} and {j + 1} overlap ({shared} shared pixels): the model "
                    "learned scenes whose objects never touch"
                )
    return notes


@user_errors
def compose(objects=None, uploads=None):
    """Decode a scene from 2-5 objects.

    Args:
        objects: table rows of five class indices (shape, scale, orientation, pos_x, pos_y).
        uploads: list of object images (arrays, PIL images or file paths), added after the rows.
    Returns:
        (scene, target or None, report markdown); images (64, 64) uint8 {0, 255}.
    """
    rows = _table_rows(objects)
    uploads = [u for u in (uploads or []) if u is not None]
    total = len(rows) + len(uploads)
    if total > MAX_OBJECTS:
        raise _fail(f"A scene holds at most {MAX_OBJECTS} objects; got {total}.")
    if total < 2:
        raise _fail(f"Choose 2 to {MAX_OBJECTS} objects; got {total}.")
    images, classes, notes = [], [], []
    for i, row in enumerate(rows):
        c = _classes(row, f"object {i + 1}")
        classes.append(c)
        images.append(_render(c)[0])
    for i, up in enumerate(uploads):
        label = f"object {len(rows) + i + 1} (upload)"
        pixels, _, up_notes = resolve_object(_file_path(up), None, label)
        images.append(pixels)
        notes += up_notes
    images = np.stack(images)
    overlap = _overlaps(images)
    _notify(notes + overlap)

    model = state().weights.model
    scene, how = _decode_scene(model, images)
    lines = [f"{total} objects encoded, {how}, and decoded."]
    target = None
    if len(classes) == total:
        target = _render_scene(np.stack(classes))
        lines.append(f"Ground truth scene: IoU **{iou(scene, target):.3f}**.")
    else:
        lines.append("No ground truth: uploaded objects have no known factors.")
    lines += overlap
    return to_display(scene), to_display(target), _markdown(lines, notes)


def _file_path(item):
    """gr.File values may be paths, FileData-like dicts or objects with ``.name``/``.path``."""
    if isinstance(item, dict):
        url = item.get("url") or ""
        if not item.get("path") and url.startswith("data:"):  # an inline base64 image
            import base64

            payload = url.split(",", 1)[-1]
            if len(payload) * 3 // 4 > MAX_FILE_SIZE_BYTES:
                raise _fail(f"an inline image is over the {MAX_FILE_SIZE} upload limit.")
            try:
                return base64.b64decode(url.split(",", 1)[1])
            except (IndexError, ValueError):
                raise _fail("an inline image could not be decoded.") from None
        return item.get("path") or item.get("name")
    for attr in ("path", "name"):
        if not isinstance(item, (str, Path, np.ndarray, Image.Image)) and hasattr(item, attr):
            return getattr(item, attr)
    return item


@user_errors
def mix(images, factors):
    """One object whose feature k comes from source k.

    Args:
        images: 5 source images (or None to draw each from its factors), in feature order.
        factors: 5 rows of five class indices (or None for an uploaded source).
    Returns:
        (result, target or None, report markdown).
    """
    images = list(images) if images is not None else [None] * 5
    factors = list(factors) if factors is not None else [None] * 5
    if len(images) != 5 or len(factors) != 5:
        raise _fail("The mixer needs exactly 5 sources, one per feature.")
    pixels, known, notes = [], [], []
    for k, (img, fac) in enumerate(zip(images, factors, strict=True)):
        p, c, n = resolve_object(img, fac, f"{FACTOR_NAMES[k]} source")
        pixels.append(p)
        known.append(c)
        notes += n
    _notify(notes)
    model = state().weights.model
    result = model.mix(np.stack(pixels))
    lines = ["Each feature taken from its own source: " + ", ".join(FACTOR_NAMES) + "."]
    target = None
    if all(c is not None for c in known):
        t = np.array([known[k][k] for k in range(5)], dtype=np.int64)
        src = known[2]  # the orientation source decides how ambiguous the angle is
        target, score = _best_target(result, t, 0, int(src[0]), int(src[2]))
        lines.append(f"Ground truth ({_factor_text(t)}): IoU **{score:.3f}**.")
    else:
        lines.append("No ground truth: an uploaded source has no known factors.")
    return to_display(result), to_display(target), _markdown(lines, notes)


def _scene_inputs(images, factors) -> tuple[np.ndarray, list, list[str]]:
    images = list(images) if images is not None else [None, None]
    factors = list(factors) if factors is not None else [None, None]
    if len(images) != 2 or len(factors) != 2:
        raise _fail("The scene editor works on scenes of exactly 2 objects.")
    pixels, known, notes = [], [], []
    for i in range(2):
        p, c, n = resolve_object(images[i], factors[i], f"object {i + 1}")
        pixels.append(p)
        known.append(c)
        notes += n
    return np.stack(pixels), known, notes


def _object_index(obj) -> int:
    try:
        j = int(obj)
    except (TypeError, ValueError):
        raise _fail(f"object must be 1 or 2, got {obj!r}.") from None
    if j not in (1, 2) or str(obj).strip() not in ("1", "2", "1.0", "2.0"):
        raise _fail(f"object must be 1 or 2, got {obj!r}.")
    return j - 1


_NEUTRAL = np.array([1, 3, 0, 16, 16], dtype=np.int64)  # a mid-sized centred ellipse


@user_errors
def edit(images, factors, obj=1, feature="shape", source=SOURCES[0], value=0):
    """Change feature ``feature`` of object ``obj`` of a 2-object scene in latent space.

    Args:
        images: the scene's 2 object images (or None to draw from the factors).
        factors: 2 rows of five class indices (or None for an upload).
        obj: 1 or 2, the object to edit.
        feature: factor name or position.
        source: "other object" (take the other object's value) or "slider value" (``value``).
        value: class index of the new value when ``source`` is "slider value".
    Returns:
        (edited scene, reconstructed original scene, target or None, report markdown).
    """
    j = _object_index(obj)
    k = _feature(feature)
    if source not in SOURCES:
        raise _fail(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}.")
    pixels, known, notes = _scene_inputs(images, factors)
    other = 1 - j
    name = FACTOR_NAMES[k]
    if source == SOURCES[0]:
        value_img, value_classes = pixels[other], known[other]
        what = f"object {j + 1}'s {name} set to object {other + 1}'s"
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise _fail(f"value must be a number, got {value!r}.") from None
        if not np.isfinite(v) or v != round(v) or not 0 <= v < FACTOR_SIZES[k]:
            raise _fail(
                f"{name} value must be an integer from 0 to {FACTOR_SIZES[k] - 1}, got {value!r}."
            )
        base = known[j] if known[j] is not None else _NEUTRAL
        value_classes = base.copy()
        value_classes[k] = int(v)
        value_img = _render(value_classes)[0]
        what = f"object {j + 1}'s {name} set to class {int(v)}"
    notes += _overlaps(pixels)
    _notify(notes)

    model = state().weights.model
    edited = model.edit(pixels, j, k, value_img[None])
    original, how = _decode_scene(model, pixels)
    lines = [f"Edit: {what} (slot swapped inside the bound scene, then decoded)."]
    target = None
    if known[0] is not None and known[1] is not None and value_classes is not None:
        t = np.stack(known).copy()
        t[j, k] = value_classes[k]
        src = value_classes if k == 2 else known[j]
        target, score = _best_target(edited, t, j, int(src[0]), int(src[2]))
        unchanged = _render_scene(np.stack(known))
        lines.append(
            f"Ground truth: IoU **{score:.3f}**; the unedited scene scores "
            f"{iou(unchanged, target):.3f}."
        )
        if same_factor_value(known[j], value_classes, k)[0]:
            lines.append(f"Object {j + 1} already has that {name}: this edit changes nothing.")
    else:
        lines.append("No ground truth: an uploaded object has no known factors.")
    return to_display(edited), to_display(original), to_display(target), _markdown(lines, notes)


def _prototypes(k: int) -> torch.Tensor:
    """(V, D) mean slot-k latent of random objects for each value of feature k (cached)."""
    st = state()
    with st.lock:
        if k in st.prototypes:
            return st.prototypes[k]
        from dsvsa.sampling import sample_factors

        rng = np.random.default_rng(EXAMPLE_SEED + 1 + k)
        V = FACTOR_SIZES[k]
        classes = sample_factors(rng, V * PROTOTYPE_CONTEXTS)
        classes[:, k] = np.repeat(np.arange(V), PROTOTYPE_CONTEXTS)
        z = st.weights.model.latent(_render(classes))[:, k]  # (V * R, D)
        protos = z.view(V, PROTOTYPE_CONTEXTS, -1).mean(dim=1)
        st.prototypes[k] = protos
        return protos


def _value_text(k: int, c: int) -> str:
    if k == 0:
        return SHAPE_NAMES[c]
    return f"class {c} ({FACTOR_VALUES[k][c]:.3g})"


@user_errors
def query(images, factors, obj=1, feature="shape"):
    """Unbind object ``obj`` and feature ``feature`` from the scene vector; name the nearest value.

    Returns:
        report markdown.
    """
    j = _object_index(obj)
    k = _feature(feature)
    pixels, known, notes = _scene_inputs(images, factors)
    _notify(notes)
    model = state().weights.model
    with torch.no_grad():
        objects = model.object_vector(model.latent(pixels))  # (2, D)
        scene = model.scene_vector(objects)  # (D,)
        jj = j if model.config.bind_objects else None
        found = int(model.query(scene, jj, k, _prototypes(k)))
    name = FACTOR_NAMES[k]
    lines = [
        f"Object {j + 1}'s **{name}** read from the scene vector: **{_value_text(k, found)}**."
    ]
    if jj is None:
        lines.append("This model does not bind objects to roles, so objects cannot be told apart.")
    if known[j] is not None:
        truth = known[j].copy()
        guess = truth.copy()
        guess[k] = found
        ok = bool(same_factor_value(truth, guess, k)[0])
        lines.append(
            f"True value: {_value_text(k, int(truth[k]))} - {'correct' if ok else 'wrong'}."
        )
    return _markdown(lines, notes)


# ---- About ----------------------------------------------------------------------------------

_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HTML_IMAGE = re.compile(r"<img\s[^>]*?src=[\"']([^\"']+)[\"'][^>]*>", re.IGNORECASE)


def _html_alt(tag: str) -> str:
    match = re.search(r"alt=[\"']([^\"']*)[\"']", tag, re.IGNORECASE)
    return match.group(1) if match else ""


def about(weights: Weights) -> tuple[str, list[tuple[str, str]]]:
    """Markdown of the model card (front matter dropped) and its figures found in the folder."""
    head = [f"**Weights:** {weights.description}."]
    if weights.fallback_reason:
        head.append(f"(The requested weights could not be loaded: {weights.fallback_reason}.)")
    cfg = weights.model.config
    head.append(
        f"**Architecture:** 4 conv + 2 linear layers per side, five {cfg.latent_dim}-d slots, "
        f"{weights.model.num_parameters() / 1e6:.2f}M parameters; features bound to roles: "
        f"{cfg.bind_features}; objects bound to roles: {cfg.bind_objects} "
        f"({cfg.num_object_roles} roles)."
    )
    readme = weights.folder / "README.md"
    if not readme.is_file():
        return "\n\n".join(head + ["This model folder has no model card (README.md)."]), []
    text = readme.read_text(encoding="utf-8", errors="replace")
    metrics = ""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            metrics = _card_metrics(text[3:end])
            text = text[end + 4 :]
    figures = []
    base = Path(os.path.abspath(weights.folder))  # not resolved: Hub snapshots are symlinks

    def figure(alt: str, ref: str) -> str:
        path = Path(os.path.normpath(base / ref))
        if not ref.startswith(("http:", "https:", "data:")) and path.is_file():
            if base in path.parents:
                figures.append((str(path), alt or path.stem))
                return f"*(figure: {alt or path.stem}, shown below)*"
        return f"*(figure: {alt or ref})*"

    text = _IMAGE_LINK.sub(lambda m: figure(m.group(1), m.group(2)), text)
    text = _HTML_IMAGE.sub(lambda m: figure(_html_alt(m.group(0)), m.group(1)), text)
    parts = head + ([metrics] if metrics else []) + [text.strip()]
    return "\n\n".join(parts), figures


def _card_metrics(front_matter: str) -> str:
    """A markdown table of the model-index results in a card's YAML, or ''."""
    try:
        import yaml

        data = yaml.safe_load(front_matter) or {}
    except Exception:
        return ""
    rows = []
    for entry in data.get("model-index") or []:
        for result in entry.get("results") or []:
            dataset = (result.get("dataset") or {}).get("name", "")
            for m in result.get("metrics") or []:
                rows.append((m.get("name") or m.get("type", ""), m.get("value"), dataset))
    if not rows:
        return ""
    lines = ["**Measured metrics** (from the model card)", "", "| metric | value | data |"]
    lines.append("|---|---|---|")
    for name, value, dataset in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else value
        lines.append(f"| {name} | {shown} | {dataset} |")
    return "\n".join(lines)


# ---- components --------------------------------------------------------------------------------
#
# Every event runs with preprocess=False: the handlers get the raw values (numbers, strings, the
# uploaded file's cache path) and check them themselves, so that an out-of-range slider value, an
# unknown feature or a file that is not an image gives a message naming the input -- Gradio's own
# checks would also print a traceback to the log. Uploaded files are still moved into (and checked
# against) Gradio's upload cache before the handler sees them.


def _output(label: str, small: bool = False, elem_id: str | None = None) -> gr.Image:
    return gr.Image(
        label=label,
        elem_id=elem_id,
        format="png",
        image_mode="L",
        type="numpy",
        interactive=False,
        height=DISPLAY_PX // 2 if small else DISPLAY_PX,
        elem_classes=["pixelated", "small"] if small else ["pixelated"],
        buttons=["download"],
    )


_PNG_DIR = Path(tempfile.gettempdir()) / "dsvsa-app"
_PNG_MAX_AGE = 15 * 60  # seconds an output file is kept (Gradio copies it into its cache)
_last_prune = [0.0]


def _png_file(pixels: np.ndarray) -> str:
    """Write a {0, 255} image as a PNG named by its content, atomically; return the path.

    Gradio writes returned arrays into its cache under a name derived from their content but
    truncates and rewrites that file on every request, so two requests with the same picture
    can serve a half-written file. A finished file handed over by path is copied atomically.
    """
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buf, "PNG")
    data = buf.getvalue()
    path = _PNG_DIR / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    try:
        os.utime(path)  # reused: fresh again, so the pruning below keeps it
    except FileNotFoundError:
        _PNG_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    now = time.time()
    if now - _last_prune[0] > 60:
        _last_prune[0] = now
        for old in _PNG_DIR.glob("*.png"):
            try:
                if now - old.stat().st_mtime > _PNG_MAX_AGE:
                    old.unlink()
            except OSError:
                pass
    return str(path)


def _as_files(outputs):
    """Replace the image arrays in a handler's outputs by PNG file paths (see _png_file)."""
    if isinstance(outputs, np.ndarray):
        return _png_file(outputs)
    if isinstance(outputs, tuple):
        return tuple(_png_file(o) if isinstance(o, np.ndarray) else o for o in outputs)
    return outputs


def _preview(*values):
    """Render the sliders' object into the panel's image (silently ignores bad values)."""
    try:
        return _png_file(to_display(_render(_classes(values, "sliders"))[0]))
    except gr.Error:
        return gr.skip()


@dataclass
class ObjectPanel:
    """An object input: an image (the sliders' render, or an upload) and five factor sliders."""

    image: gr.Image
    sliders: list[gr.Slider]


def object_panel(
    label: str, suffix: str, default, tag: str, small: bool = False, upload: bool = True
) -> ObjectPanel:
    """Image + sliders. Slider labels end in ``tag`` so every label on the page is unique (the
    examples table keys its columns by label)."""
    default = tuple(int(x) for x in default)
    # no initial value: an API caller who omits the image gets None, so the object follows the
    # sliders (a default picture would be taken as an upload); the page fills it in on load
    image = gr.Image(
        value=None,
        label=label,
        type="filepath",
        format="png",
        sources=["upload", "clipboard"] if upload else None,
        interactive=upload,
        height=DISPLAY_PX // 2 if small else DISPLAY_PX,
        elem_classes=["pixelated", "small"] if small else ["pixelated"],
        elem_id=f"image_{suffix}",
    )
    with gr.Accordion(f"{label}: factors", open=True):
        sliders = [
            gr.Slider(
                minimum=0,
                maximum=size - 1,
                step=1,
                value=default[k],
                label=f"{name} ({tag})",
                info=None if small else FACTOR_INFO[name],
                elem_id=f"{name}_{suffix}",
            )
            for k, (name, size) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES, strict=True))
        ]
        random_btn = gr.Button("Random object", size="sm")
    for s in sliders:
        s.change(
            _preview,
            inputs=sliders,
            outputs=image,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
            preprocess=False,
        )
    from gradio.context import Context

    if Context.root_block is not None:
        Context.root_block.load(
            _preview,
            inputs=sliders,
            outputs=image,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
            preprocess=False,
        )
    random_btn.click(_random_factors, outputs=sliders, api_visibility="private", queue=False)
    return ObjectPanel(image, sliders)


def _random_factors():
    rng = np.random.default_rng()
    return [int(rng.integers(0, size)) for size in FACTOR_SIZES]


def _kwargs(panel: ObjectPanel, suffix: str) -> dict[str, gr.Component]:
    out = {f"image_{suffix}": panel.image}
    out.update({f"{name}_{suffix}": s for name, s in zip(FACTOR_NAMES, panel.sliders, strict=True)})
    return out


_NOT_UPLOADED = "A file must be uploaded to this server before it is used."


def _served_file(item):
    """An image value from an API caller: a path is accepted only inside Gradio's upload cache
    (or this app's own output folder), so that a payload naming any other server file reads
    nothing; whether such a file exists is not revealed."""
    value = _file_path(item)
    if isinstance(value, (str, Path)):
        try:
            path = Path(value).resolve()
        except (OSError, RuntimeError, ValueError):
            raise _fail(_NOT_UPLOADED) from None
        roots = [Path(gr.utils.get_upload_folder()), _PNG_DIR]
        if not any(path.is_relative_to(root.resolve()) for root in roots):
            raise _fail(_NOT_UPLOADED)
        return path
    return value


def _panel_values(kw: dict, suffix: str) -> tuple[Any, list]:
    image = _served_file(kw.get(f"image_{suffix}"))
    return image, [kw[f"{name}_{suffix}"] for name in FACTOR_NAMES]


# The image parameters default to None so that API callers may leave them out (the object is
# then drawn from its sliders): Gradio's API info marks a parameter optional this way.
def _transfer_event(image_a=None, image_b=None, **kw):
    kw.update(image_a=image_a, image_b=image_b)
    image_a, fa = _panel_values(kw, "a")
    image_b, fb = _panel_values(kw, "b")
    return _as_files(transfer(image_a, image_b, kw["feature"], fa, fb))


def _compose_event(objects, uploads=None):
    if isinstance(uploads, dict):  # a single file sent where a list is expected
        uploads = [uploads]
    return _as_files(compose(objects, [_served_file(u) for u in uploads or []]))


def _mix_event(image_1=None, image_2=None, image_3=None, image_4=None, image_5=None, **kw):
    kw.update(image_1=image_1, image_2=image_2, image_3=image_3, image_4=image_4, image_5=image_5)
    values = [_panel_values(kw, str(i + 1)) for i in range(5)]
    return _as_files(mix([v[0] for v in values], [v[1] for v in values]))


def _edit_event(image_1=None, image_2=None, **kw):
    kw.update(image_1=image_1, image_2=image_2)
    v1, v2 = _panel_values(kw, "1"), _panel_values(kw, "2")
    return _as_files(
        edit([v1[0], v2[0]], [v1[1], v2[1]], kw["object"], kw["feature"], kw["source"], kw["value"])
    )


def _query_event(image_1=None, image_2=None, **kw):
    kw.update(image_1=image_1, image_2=image_2)
    v1, v2 = _panel_values(kw, "1"), _panel_values(kw, "2")
    return query([v1[0], v2[0]], [v1[1], v2[1]], kw["object"], kw["feature"])


def _add_object(table, *values):
    rows = _table_rows(table)
    if len(rows) >= MAX_OBJECTS:
        gr.Warning(f"A scene holds at most {MAX_OBJECTS} objects.")
        return gr.skip()
    try:
        row = _classes(values, "new object")
    except gr.Error as err:
        gr.Warning(err.message)
        return gr.skip()
    return rows + [row.tolist()]


def _random_scene():
    from dsvsa.sampling import sample_scenes

    scene = sample_scenes(np.random.default_rng(), 1, 2, MAX_OBJECTS)[0]
    return scene["factors"].tolist()


def _short(classes) -> str:
    c = [int(x) for x in classes]
    return f"{SHAPE_NAMES[c[0]]} s{c[1]} o{c[2]} ({c[3]},{c[4]})"


# ---- layout ---------------------------------------------------------------------------------

INTRO = """# dSprites VSA-VAE

A variational autoencoder whose latent for one dSprites object is **five vectors, one per
feature** (shape, scale, orientation, position x, position y). Objects bind their slots to fixed
role vectors and scenes bind objects to object roles, so swapping, summing and binding latents
edits pictures. Build objects with the factor sliders, pick an example, or upload your own (white
on black works best; uploads are turned into 64x64 black-and-white images, and you are told how).
"""


def _reject_malformed_payloads(demo: gr.Blocks) -> None:
    """Turn API payloads of the wrong type (a string where an image or a table is expected) and
    file paths that were never uploaded into messages: Gradio rejects them before any handler
    runs, and would otherwise log a traceback and answer with a bare "error"."""
    import pydantic
    from gradio.exceptions import InvalidPathError

    checked = demo.preprocess_data

    async def preprocess_data(*args, **kwargs):
        try:
            return await checked(*args, **kwargs)
        except pydantic.ValidationError as err:
            first = err.errors()[0] if err.errors() else {}
            where = f" ({err.title})" if getattr(err, "title", None) else ""
            raise _fail(
                f"An input has the wrong type for this endpoint{where}: {first.get('msg', err)}."
            ) from None
        except InvalidPathError:
            raise _fail(_NOT_UPLOADED) from None

    demo.preprocess_data = preprocess_data


def build_demo(app_state: AppState | None = None) -> gr.Blocks:
    """The Space's gr.Blocks; loads weights and examples first if not done yet."""
    st = app_state or state()
    ex = st.examples
    about_text, figures = about(st.weights)
    raw = {"preprocess": False}

    with gr.Blocks(title="dsvsa: dSprites VSA-VAE") as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"Weights: **{st.weights.description}** · examples: {ex.source}")

        with gr.Tab("Transfer"):
            with gr.Row():
                with gr.Column():
                    pa = object_panel("Object A", "a", DEFAULT_OBJECTS["a"], "A")
                with gr.Column():
                    pb = object_panel("Object B", "b", DEFAULT_OBJECTS["b"], "B")
            with gr.Row():
                t_feature = gr.Dropdown(
                    list(FACTOR_NAMES),
                    value="shape",
                    label="feature to take from B",
                    elem_id="transfer_feature",
                )
                t_run = gr.Button("Transfer", variant="primary", elem_id="transfer_run")
            with gr.Row():
                t_result = _output("Result: A with B's feature", elem_id="transfer_result")
                t_target = _output("Ground truth", elem_id="transfer_target")
                t_recon_a = _output("Reconstruction of A", small=True)
                t_recon_b = _output("Reconstruction of B", small=True)
            t_report = gr.Markdown(elem_id="transfer_report")
            if ex.transfer:
                gr.Examples(
                    ex.transfer,
                    inputs=[*pa.sliders, *pb.sliders, t_feature],
                    label="Examples",
                    elem_id="transfer_examples",
                    example_labels=[
                        f"A {_short(e[:5])} \u2190 {e[10]} of B {_short(e[5:10])}"
                        for e in ex.transfer
                    ],
                    cache_examples=False,
                )
            t_run.click(
                _transfer_event,
                inputs_kwargs={**_kwargs(pa, "a"), **_kwargs(pb, "b"), "feature": t_feature},
                outputs=[t_result, t_recon_a, t_recon_b, t_target, t_report],
                api_name="transfer",
                **raw,
            )

        with gr.Tab("Compose"):
            gr.Markdown(
                "Add 2-5 objects (a row of five factor classes each, or image uploads); the "
                "scene is decoded from the sum of their latents, bound to object roles when the "
                "model has a role for each."
            )
            with gr.Row():
                with gr.Column():
                    builder = object_panel(
                        "New object", "new", DEFAULT_OBJECTS["1"], "new", small=True, upload=False
                    )
                    with gr.Row():
                        c_add = gr.Button("Add to scene", size="sm")
                        c_random = gr.Button("Random scene", size="sm")
                        c_clear = gr.Button("Clear", size="sm")
                with gr.Column():
                    c_table = gr.Dataframe(
                        value=[list(DEFAULT_OBJECTS["1"]), list(DEFAULT_OBJECTS["2"])],
                        headers=list(FACTOR_NAMES),
                        datatype="number",
                        type="array",
                        column_count=5,
                        label="objects (class indices, one row per object)",
                        interactive=True,
                    )
                    c_uploads = gr.File(
                        file_count="multiple", file_types=["image"], label="object uploads"
                    )
                    c_run = gr.Button("Compose", variant="primary")
            with gr.Row():
                c_scene = _output("Decoded scene")
                c_target = _output("Ground truth")
            c_report = gr.Markdown()
            if ex.compose:
                gr.Examples(
                    [[rows] for rows in ex.compose],
                    inputs=[c_table],
                    label="Example scenes",
                    example_labels=[
                        f"{len(r)} objects: " + ", ".join(SHAPE_NAMES[o[0]] for o in r)
                        for r in ex.compose
                    ],
                    cache_examples=False,
                )
            c_add.click(
                _add_object,
                inputs=[c_table, *builder.sliders],
                outputs=c_table,
                api_visibility="private",
                **raw,
            )
            c_random.click(_random_scene, outputs=c_table, api_visibility="private")
            c_clear.click(lambda: [], outputs=c_table, api_visibility="private")
            c_run.click(
                _compose_event,
                inputs=[c_table, c_uploads],
                outputs=[c_scene, c_target, c_report],
                api_name="compose",
                **raw,
            )

        with gr.Tab("Mix"):
            gr.Markdown("Each feature of the new object comes from its own source object.")
            panels = []
            with gr.Row():
                for i, name in enumerate(FACTOR_NAMES):
                    with gr.Column(min_width=150):
                        default = ex.mix[0][5 * i : 5 * i + 5] if ex.mix else DEFAULT_OBJECTS["a"]
                        panels.append(
                            object_panel(
                                f"{name} from", str(i + 1), default, f"source {i + 1}", small=True
                            )
                        )
            m_run = gr.Button("Mix", variant="primary")
            with gr.Row():
                m_result = _output("Mixed object")
                m_target = _output("Ground truth")
            m_report = gr.Markdown()
            if ex.mix:
                gr.Examples(
                    ex.mix,
                    inputs=[s for p in panels for s in p.sliders],
                    label="Example sources",
                    example_labels=[
                        ", ".join(
                            f"{FACTOR_NAMES[k]} of {_short(e[5 * k : 5 * k + 5])}" for k in range(5)
                        )
                        for e in ex.mix
                    ],
                    cache_examples=False,
                )
            mix_inputs = {}
            for i, p in enumerate(panels):
                mix_inputs.update(_kwargs(p, str(i + 1)))
            m_run.click(
                _mix_event,
                inputs_kwargs=mix_inputs,
                outputs=[m_result, m_target, m_report],
                api_name="mix",
                **raw,
            )

        with gr.Tab("Edit"):
            gr.Markdown(
                "A scene of two objects. Change one feature of one object inside the bound scene "
                "vector, or ask the scene vector which value a feature of an object has (unbind "
                "the object role and the feature role, then pick the nearest value prototype)."
            )
            with gr.Row():
                with gr.Column():
                    p1 = object_panel("Object 1", "1", DEFAULT_OBJECTS["1"], "object 1", small=True)
                with gr.Column():
                    p2 = object_panel("Object 2", "2", DEFAULT_OBJECTS["2"], "object 2", small=True)
                with gr.Column():
                    e_obj = gr.Dropdown([1, 2], value=1, label="object to edit / query")
                    e_feature = gr.Dropdown(list(FACTOR_NAMES), value="scale", label="feature")
                    e_source = gr.Dropdown(list(SOURCES), value=SOURCES[1], label="new value from")
                    e_value = gr.Slider(
                        minimum=0,
                        maximum=max(FACTOR_SIZES) - 1,
                        step=1,
                        value=0,
                        label="slider value",
                        info="class index of the new value (shape 0-2, scale 0-5, orientation "
                        "0-39, positions 0-31)",
                    )
                    e_run = gr.Button("Edit", variant="primary")
                    q_run = gr.Button("Query")
            with gr.Row():
                e_result = _output("Edited scene")
                e_target = _output("Ground truth")
                e_original = _output("Original scene, decoded", small=True)
            e_report = gr.Markdown()
            q_report = gr.Markdown()
            if ex.edit:
                gr.Examples(
                    ex.edit,
                    inputs=[*p1.sliders, *p2.sliders, e_obj, e_feature, e_source, e_value],
                    label="Example edits",
                    example_labels=[
                        f"object {e[10]}'s {e[11]} \u2192 {e[13]} in "
                        f"[{_short(e[:5])}, {_short(e[5:10])}]"
                        for e in ex.edit
                    ],
                    cache_examples=False,
                )
            scene_inputs = {**_kwargs(p1, "1"), **_kwargs(p2, "2"), "object": e_obj}
            e_run.click(
                _edit_event,
                inputs_kwargs={
                    **scene_inputs,
                    "feature": e_feature,
                    "source": e_source,
                    "value": e_value,
                },
                outputs=[e_result, e_original, e_target, e_report],
                api_name="edit",
                **raw,
            )
            q_run.click(
                _query_event,
                inputs_kwargs={**scene_inputs, "feature": e_feature},
                outputs=q_report,
                api_name="query",
                **raw,
            )

        with gr.Tab("About"):
            gr.Markdown(about_text)
            if figures:
                gr.Gallery(
                    value=figures,
                    label="Figures from the model card",
                    columns=2,
                    height="auto",
                    buttons=["fullscreen"],
                )
    _reject_malformed_payloads(demo)
    return demo


def launch_options(**overrides) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: CSS, upload limit; host and port from env."""
    st = state()
    options = {
        "css": CSS,
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [str(st.weights.folder), str(_PNG_DIR)],
    }
    options.update(overrides)
    return options


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start = time.perf_counter()
    try:
        demo = build_demo(setup())
    except WeightsUnavailable as err:
        logger.error("Cannot start: %s", err)
        raise SystemExit(1) from None
    demo.queue(default_concurrency_limit=4)
    logger.info("Built the Space in %.1f s", time.perf_counter() - start)
    demo.launch(**launch_options())


if __name__ == "__main__":
    main()
