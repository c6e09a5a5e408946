"""The Space: upload preparation, handlers called directly, every api_name through gradio_client,
bad input, 16 concurrent clients, and the app started from the loopback Hub and offline.

The weights are a tiny untrained model saved in a temporary folder: the tests check that the app
serves exactly what the model computes, not that the model is good.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from dsvsa import DSpritesVSA, DSpritesVSAConfig
from dsvsa.factors import FACTOR_NAMES
from dsvsa.render import render, render_scene
from dsvsa.uploads import UploadError, prepare_upload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import app  # noqa: E402

TINY = DSpritesVSAConfig(
    latent_dim=64,
    enc_channels=[4, 4, 8, 8],
    enc_hidden=32,
    dec_hidden=32,
    dec_channels=[8, 8, 4, 4],
)
CARD = """---
library_name: dsvsa
license: apache-2.0
model-index:
- name: tiny
  results:
  - task: {type: image-to-image, name: feature transfer}
    dataset: {name: dsprites-vsa paired, type: dsvsa/dsprites-vsa}
    metrics:
    - {type: iou, name: recon IoU, value: 0.5}
    - {type: iou, name: exchange IoU shape, value: 0.25}
---

# Tiny test model

![Reconstructions](figures/recon.png)

<img src="figures/recon.png" alt="The same picture again" width="200">

Numbers above are made up.
"""
A = (2, 5, 0, 10, 12)  # large heart
B = (0, 3, 5, 22, 20)  # mid square


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny(folder: Path, seed: int = 0, card: bool = True) -> Path:
    torch.manual_seed(seed)
    DSpritesVSA(config=TINY).save_pretrained(folder)
    if card:
        (folder / "figures").mkdir()
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / "figures" / "recon.png")
        (folder / "README.md").write_text(CARD)
    return folder


def sliders(suffix: str, factors) -> dict[str, int]:
    """API keyword arguments of one object panel's five sliders."""
    return {f"{n}_{suffix}": int(v) for n, v in zip(FACTOR_NAMES, factors, strict=True)}


def rest_call(url: str, api_name: str, data: list) -> str:
    """One call through Gradio's plain HTTP API; -> the text of its event stream."""
    r = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, trust_env=False)
    r.raise_for_status()
    stream = httpx.get(
        f"{url}gradio_api/call/{api_name}/{r.json()['event_id']}", trust_env=False, timeout=60
    )
    return stream.text


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def png_bytes(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(tiny_dir, tmp_path_factory):
    """The app's state, loaded from the tiny folder, examples from the samplers."""
    return app.setup(model=str(tiny_dir), dataset=str(tmp_path_factory.mktemp("x") / "missing"))


@pytest.fixture(scope="module")
def server(loaded):
    demo = app.build_demo(loaded)
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=free_port(),
        quiet=True,
        **app.launch_options(),
    )
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False, analytics_enabled=False)


# ---- uploads ---------------------------------------------------------------------------------


def test_prepare_upload_passes_binary_objects_untouched():
    obj = render(np.array(A))[0]
    for img in (obj, obj * 255, obj.astype(bool), Image.fromarray(obj * 255)):
        pixels, notes = prepare_upload(img)
        np.testing.assert_array_equal(pixels, obj)
        assert notes == []


def test_prepare_upload_reports_each_change():
    obj = render(np.array(A))[0]
    # RGBA, white shape on a transparent background, 2x size, not square
    rgba = np.zeros((128, 160, 4), np.uint8)
    rgba[:, 16:144, :3] = np.kron(obj, np.ones((2, 2), np.uint8))[:, :, None] * 255
    rgba[:, 16:144, 3] = np.kron(obj, np.ones((2, 2), np.uint8)) * 255
    pixels, notes = prepare_upload(png_bytes(rgba))
    text = " ".join(notes)
    assert "composited on black" in text and "padded" in text and "resized from 160x160" in text
    assert pixels.sum() > 0.5 * obj.sum()

    # a dark shape on a transparent background stays visible
    dark = np.zeros((64, 64, 4), np.uint8)
    dark[..., 3] = obj * 255
    pixels, notes = prepare_upload(Image.fromarray(dark))
    np.testing.assert_array_equal(pixels, obj)
    assert "opaque area" in notes[0]

    # JPEG artefacts are thresholded away; palette GIF converted; black on white inverted
    pixels, notes = prepare_upload(png_bytes(obj * 255, "JPEG", quality=90))
    assert np.mean(pixels != obj) < 0.01 and any("thresholded" in n for n in notes)
    pixels, notes = prepare_upload(png_bytes(obj * 255, "GIF"))
    np.testing.assert_array_equal(pixels, obj)
    assert any("converted from P" in n for n in notes)
    pixels, notes = prepare_upload(255 - obj * 255)
    np.testing.assert_array_equal(pixels, obj)
    assert any("inverted" in n for n in notes)

    # an RGB array in {0, 1}
    pixels, notes = prepare_upload(np.stack([obj] * 3, axis=-1))
    np.testing.assert_array_equal(pixels, obj)
    assert notes == ["converted from RGB to greyscale"]

    # 4000x4000: resized (and here empty, which is said too)
    pixels, notes = prepare_upload(Image.new("L", (4000, 4000)))
    assert pixels.shape == (64, 64) and any("4000x4000" in n for n in notes)
    assert any("empty" in n for n in notes)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "no image"),
        (np.zeros((1, 1), np.uint8), "too small"),
        (b"GIF89a but not really", "not an image"),
        (np.zeros((4, 4, 7)), "expected an image array"),
        (np.full((64, 64), np.nan), "NaN"),
        (Image.new("L", (6000, 6000)), "megapixels"),
    ],
)
def test_prepare_upload_rejects_with_a_message(bad, message):
    with pytest.raises(UploadError, match=message):
        prepare_upload(bad)


# ---- handlers called directly ----------------------------------------------------------------


def test_transfer_handler_matches_the_model(loaded):
    model = loaded.weights.model
    result, recon_a, recon_b, target, report = app.transfer(None, None, "scale", A, B)
    for img in (result, recon_a, recon_b, target):
        assert img.shape == (64, 64) and img.dtype == np.uint8
        assert set(np.unique(img)) <= {0, 255}
    a, b = render(np.array(A))[0], render(np.array(B))[0]
    np.testing.assert_array_equal(result, model.transfer(a, b, "scale")[0] * 255)
    np.testing.assert_array_equal(recon_a, model.reconstruct(a)[0] * 255)
    t = np.array(A)
    t[1] = B[1]
    np.testing.assert_array_equal(target, render(t)[0] * 255)
    assert "Ground truth" in report and "no image given" in report

    # the same object as an image (in {0, 255}) keeps its factors known: same answer
    again = app.transfer(a * 255, b * 255, "scale", A, B)
    np.testing.assert_array_equal(again[0], result)
    np.testing.assert_array_equal(again[3], target)
    assert "no image given" not in again[4]


def test_transfer_of_an_upload_has_no_ground_truth(loaded):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[20:40, 20:40] = 255
    result, _, _, target, report = app.transfer(Image.fromarray(rgba), None, "shape", A, B)
    assert target is None and "No ground truth" in report
    assert "A: transparent background composited on black" in report
    assert result.shape == (64, 64)


def test_orientation_target_is_symmetry_aware(loaded):
    # a square donor fixes its angle modulo pi/2: the best equivalent orientation is scored
    a, b = (1, 5, 0, 16, 16), (0, 5, 30, 16, 16)
    result, *_, target, _ = app.transfer(None, None, "orientation", a, b)
    score = app.iou(result, target)
    for o in np.flatnonzero(app.equivalent_orientations([0], [30])[0]):
        cand = render(np.array([1, 5, o, 16, 16]))[0] * 255
        assert app.iou(result, cand) <= score + 1e-9


def test_compose_handler(loaded):
    rows = [[2, 0, 0, 5, 5], [0, 0, 0, 26, 26], [1, 0, 10, 5, 26]]
    scene, target, report = app.compose(rows)
    np.testing.assert_array_equal(target, render_scene(np.array(rows)) * 255)
    assert scene.shape == (64, 64) and "3 objects" in report and "overlap" not in report
    # two objects: the model's bound composition
    scene2, _, report2 = app.compose(rows[:2])
    model = loaded.weights.model
    np.testing.assert_array_equal(scene2, model.compose(render(np.array(rows[:2]))) * 255)
    assert "bound to object roles" in report2
    # overlap notice; an upload mixed in has no ground truth
    _, target, report = app.compose([A, A], [render(np.array(B))[0] * 255])
    assert "overlap" in report and target is None
    # a table as Gradio sends it, with a blank row
    data = {"headers": list(FACTOR_NAMES), "data": [rows[0], [None] * 5, rows[1]]}
    np.testing.assert_array_equal(app.compose(data)[0], scene2)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([[0, 0, 0, 1, 1]] * 6, "at most 5 objects"),
        ([[0, 0, 0, 1, 1]], "Choose 2 to 5"),
        ([[0, 9, 0, 1, 1], [0, 0, 0, 1, 1]], "object 1: scale must be an integer from 0 to 5"),
        ([[0, 0, 0, 1], [0, 0, 0, 1, 1]], "expected 5 factor values"),
        ("not a table", "one row of 5 factor values"),
    ],
)
def test_compose_rejects_bad_tables(loaded, rows, message):
    with pytest.raises(gr.Error, match=message):
        app.compose(rows)


def test_mix_handler(loaded):
    sources = [A, B, (1, 1, 20, 3, 3), (2, 2, 0, 30, 9), (0, 4, 7, 12, 28)]
    result, target, report = app.mix([None] * 5, sources)
    expect = np.array([sources[k][k] for k in range(5)])
    np.testing.assert_array_equal(target, render(expect)[0] * 255)
    model = loaded.weights.model
    np.testing.assert_array_equal(result, model.mix(render(np.array(sources))) * 255)
    with pytest.raises(gr.Error, match="exactly 5 sources"):
        app.mix([None] * 4, sources[:4])


def test_edit_and_query_handlers(loaded):
    objs = [(1, 2, 0, 6, 6), (2, 2, 0, 24, 24)]
    edited, original, target, report = app.edit([None, None], objs, 1, "scale", "slider value", 5)
    t = np.array(objs)
    t[0, 1] = 5
    np.testing.assert_array_equal(target, render_scene(t) * 255)
    model = loaded.weights.model
    value_img = render(t[0])
    np.testing.assert_array_equal(edited, model.edit(render(np.array(objs)), 0, 1, value_img) * 255)
    assert "Ground truth" in report
    # take object 2's shape; giving object 1 a value it has already is said
    _, _, target, _ = app.edit([None, None], objs, 1, "shape", "other object")
    t = np.array(objs)
    t[0, 0] = 2
    np.testing.assert_array_equal(target, render_scene(t) * 255)
    assert "changes nothing" in app.edit([None, None], objs, 2, "scale", "slider value", 2)[3]
    with pytest.raises(gr.Error, match="scale value must be an integer from 0 to 5"):
        app.edit([None, None], objs, 1, "scale", "slider value", 9)
    with pytest.raises(gr.Error, match="object must be 1 or 2"):
        app.edit([None, None], objs, 3, "scale")
    report = app.query([None, None], objs, 2, "pos_x")
    assert "read from the scene vector" in report and "True value: class 24" in report


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"feature": "colour"}, "Unknown feature 'colour'"),
        ({"factors_a": (0, 0, 40, 0, 0)}, "A: orientation must be an integer from 0 to 39"),
        ({"factors_a": (0, 0, 0.5, 0, 0)}, "A: orientation must be an integer"),
        ({"factors_a": None}, "A: give an image or the five factor values"),
        ({"image_b": b"no picture"}, "B: the upload is not an image file"),
        ({"image_b": np.zeros((1, 1), np.uint8)}, "B: the image is 1x1 pixels, too small"),
    ],
)
def test_transfer_rejects_bad_input(loaded, kwargs, message):
    args = {"image_a": None, "image_b": None, "feature": "shape", "factors_a": A, "factors_b": B}
    args.update(kwargs)
    with pytest.raises(gr.Error, match=message):
        app.transfer(**args)


def test_about_shows_card_metrics_and_figures(loaded):
    text, figures = app.about(loaded.weights)
    assert "| recon IoU | 0.5 |" in text and "Numbers above are made up" in text
    assert "library_name" not in text  # front matter is not shown as text
    assert [Path(p).name for p, _ in figures] == ["recon.png", "recon.png"]
    assert [caption for _, caption in figures] == ["Reconstructions", "The same picture again"]


# ---- loading ---------------------------------------------------------------------------------


def test_missing_or_corrupt_weights_fall_back(tiny_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DSVSA_FALLBACK_MODEL", str(tiny_dir))
    caplog.set_level("INFO", logger="dsvsa.app")
    weights = app.load_weights(str(tmp_path / "nowhere"))
    assert weights.folder == tiny_dir and "fallback" in weights.description
    assert "no model folder" in weights.fallback_reason

    broken = save_tiny(tmp_path / "broken", card=False)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    caplog.clear()
    weights = app.load_weights(str(broken))
    assert weights.folder == tiny_dir and "safetensors" in weights.fallback_reason
    serving = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Serving")]
    assert len(serving) == 1 and "fallback" in serving[0]
    assert any("Could not load weights" in r.getMessage() for r in caplog.records)

    monkeypatch.setenv("DSVSA_FALLBACK_MODEL", str(tmp_path / "also-missing"))
    with pytest.raises(app.WeightsUnavailable, match="fallback failed too"):
        app.load_weights(str(broken))


@pytest.fixture
def silent_hub(monkeypatch):
    """An endpoint on 127.0.0.1 that accepts connections and never answers (a black hole)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(app, "_endpoint", lambda: endpoint)
    monkeypatch.setattr(app, "_HUB_DOWN", {})
    yield endpoint
    sock.close()


def test_hub_that_never_answers_falls_back_within_seconds(silent_hub, tiny_dir, monkeypatch):
    monkeypatch.setenv("DSVSA_FALLBACK_MODEL", str(tiny_dir))
    start = time.perf_counter()
    weights = app.load_weights("dsvsa-tester/never-pushed")
    examples = app.load_examples("dsvsa-tester/never-pushed-data")
    elapsed = time.perf_counter() - start
    assert elapsed < 3 * app.HUB_TIMEOUT + 5, elapsed  # one short probe, not a retry loop
    assert weights.folder == tiny_dir and "cannot be reached" in weights.fallback_reason
    assert examples.source.startswith("built-in sampler")


def test_a_probe_that_hangs_is_abandoned(monkeypatch):
    # e.g. a name lookup that hangs, which the HTTP timeout does not cover
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "repo_info", lambda *a, **k: time.sleep(5))
    monkeypatch.setattr(app, "HUB_TIMEOUT", 0.5)
    monkeypatch.setattr(app, "_HUB_DOWN", {})
    start = time.perf_counter()
    sha, reason = app._probe("dsvsa-tester/slow", "model")
    assert time.perf_counter() - start < 2.5
    assert sha is None and "cannot be reached (TimeoutError)" in reason


def test_hub_weights_cached_earlier_serve_when_the_hub_is_gone(
    hub, hub_repo, monkeypatch, unreachable_hub, tmp_path
):
    from huggingface_hub import HfApi

    repo = hub_repo("cached")
    api = HfApi()
    api.create_repo(repo)
    api.upload_folder(folder_path=save_tiny(tmp_path / "up", seed=3), repo_id=repo)
    online = app.load_weights(repo)
    assert online.description.startswith(f"Hub model {repo} at revision")
    text, figures = app.about(online)  # the card and its figure came down with the weights
    assert "| exchange IoU shape | 0.25 |" in text and len(figures) == 2
    monkeypatch.setattr(app, "_endpoint", lambda: unreachable_hub.endpoint)
    monkeypatch.setattr(app, "_HUB_DOWN", {})
    monkeypatch.setenv("DSVSA_FALLBACK_MODEL", str(tmp_path / "none"))
    offline = app.load_weights(repo)
    assert "cached copy" in offline.description and offline.fallback_reason is None
    a = render(np.array(A))
    np.testing.assert_array_equal(online.model.reconstruct(a), offline.model.reconstruct(a))


def test_examples_from_a_dataset_folder(tmp_path):
    from dsvsa.export import build_config, load_split

    out = tmp_path / "ds"
    for config in ("paired", "scenes", "paired_scenes"):
        build_config(out, config, 10, 40, seed=0, progress=False)
    examples = app.load_examples(str(out))
    assert examples.source.startswith("dataset folder")
    pairs = load_split(out, "paired", "test")
    first = examples.transfer[0]
    np.testing.assert_array_equal(first[:5], pairs["factors_a"][0])
    np.testing.assert_array_equal(first[5:10], pairs["factors_b"][0])
    assert first[10] == FACTOR_NAMES[pairs["changed"][0]]
    assert len(examples.compose) >= 1 and len(examples.mix) >= 1 and len(examples.edit) >= 1

    # a dataset with only some configs: the sampler fills in the rest
    only = tmp_path / "only-paired"
    build_config(only, "paired", 10, 40, seed=0, progress=False)
    partial = app.load_examples(str(only))
    assert partial.transfer == examples.transfer
    assert "built-in sampler for scenes" in partial.source and partial.compose and partial.edit


# ---- through gradio_client -------------------------------------------------------------------


def test_every_api_name_answers_like_the_handler(client, loaded):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/transfer", "/compose", "/mix", "/edit", "/query"} <= names

    kw = sliders("a", A) | sliders("b", B)
    out = client.predict(image_a=None, image_b=None, feature="pos_x", api_name="/transfer", **kw)
    want = app.transfer(None, None, "pos_x", A, B)
    for got, exp in zip(out[:4], want[:4], strict=True):
        np.testing.assert_array_equal(png(got), exp)
    assert out[4] == want[4]

    rows = [[2, 0, 0, 5, 5], [0, 0, 0, 26, 26], [1, 0, 10, 5, 26]]
    table = {"headers": list(FACTOR_NAMES), "data": rows}
    out = client.predict(objects=table, uploads=None, api_name="/compose")
    want = app.compose(rows)
    np.testing.assert_array_equal(png(out[0]), want[0])
    np.testing.assert_array_equal(png(out[1]), want[1])

    sources = [A, B, (1, 1, 20, 3, 3), (2, 2, 0, 30, 9), (0, 4, 7, 12, 28)]
    kw = {}
    for i in range(5):
        kw |= sliders(str(i + 1), sources[i]) | {f"image_{i + 1}": None}
    out = client.predict(api_name="/mix", **kw)
    np.testing.assert_array_equal(png(out[0]), app.mix([None] * 5, sources)[0])

    objs = [(1, 2, 0, 6, 6), (2, 2, 0, 24, 24)]
    kw = sliders("1", objs[0]) | sliders("2", objs[1])
    kw |= {"image_1": None, "image_2": None, "object": 2, "feature": "orientation"}
    out = client.predict(source="slider value", value=17, api_name="/edit", **kw)
    want = app.edit([None, None], objs, 2, "orientation", "slider value", 17)
    for got, exp in zip(out[:3], want[:3], strict=True):
        np.testing.assert_array_equal(png(got), exp)
    assert client.predict(api_name="/query", **kw) == app.query(
        [None, None], objs, 2, "orientation"
    )


def test_uploads_through_the_api(client, loaded, tmp_path):
    # an RGBA upload (transparent background) and a JPEG: each told what was done to it
    obj = render(np.array(A))[0]
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[16:80, 16:80, :3] = obj[:, :, None] * 255
    rgba[16:80, 16:80, 3] = obj * 255
    (tmp_path / "a.png").write_bytes(png_bytes(rgba))
    (tmp_path / "b.jpg").write_bytes(png_bytes(render(np.array(B))[0] * 255, "JPEG"))
    out = client.predict(
        image_a=handle_file(str(tmp_path / "a.png")),
        image_b=handle_file(str(tmp_path / "b.jpg")),
        feature="shape",
        api_name="/transfer",
    )
    assert "A: transparent background composited on black" in out[4]
    assert "B: thresholded" in out[4]
    want = app.transfer(tmp_path / "a.png", tmp_path / "b.jpg", "shape")
    np.testing.assert_array_equal(png(out[0]), want[0])
    # compose with two uploaded objects
    out = client.predict(
        objects={"headers": list(FACTOR_NAMES), "data": []},
        uploads=[handle_file(str(tmp_path / "a.png")), handle_file(str(tmp_path / "b.jpg"))],
        api_name="/compose",
    )
    assert "2 objects" in out[2] and out[1] is None


def test_bad_input_through_the_api_gives_messages_not_tracebacks(server, client, tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("this is not an image")
    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    (tmp_path / "big.png").write_bytes(os.urandom(6 * 1024 * 1024))  # over the 5 MB limit
    cases = [
        (dict(feature="colour"), "Unknown feature"),
        (dict(shape_a=3), "Object A: shape must be an integer from 0 to 2"),
        (dict(pos_y_b=-1), "Object B: pos_y must be an integer from 0 to 31"),
        (dict(image_a=handle_file(str(tmp_path / "notes.txt"))), "not an image file"),
        (dict(image_b=handle_file(str(tmp_path / "dot.png"))), "too small"),
    ]
    for kwargs, message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(api_name="/transfer", **kwargs)
    with pytest.raises(Exception, match="at most 5 objects"):
        client.predict(
            objects={"headers": list(FACTOR_NAMES), "data": [[0, 0, 0, 1, 1]] * 6},
            api_name="/compose",
        )
    # payloads of the wrong type, and a server path that was never uploaded
    with pytest.raises(Exception, match="wrong type for this endpoint"):
        client.predict(image_a="not a file", api_name="/transfer")
    with pytest.raises(Exception, match="wrong type for this endpoint"):
        client.predict(objects="not a table", api_name="/compose")
    outside = {"path": str(tmp_path / "dot.png"), "meta": {"_type": "gradio.FileData"}}
    answer = rest_call(server, "transfer", [outside, *A, None, *B, "shape"])
    assert "must be uploaded to this server" in answer
    # uploads over the limit: gradio_client refuses them, and so does the server itself
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(image_a=handle_file(str(tmp_path / "big.png")), api_name="/transfer")
    with open(tmp_path / "big.png", "rb") as f:
        response = httpx.post(
            server + "gradio_api/upload", files={"files": ("big.png", f)}, trust_env=False
        )
    assert response.status_code == 413
    # the next request works, and nothing printed a traceback
    out = client.predict(feature="scale", api_name="/transfer")
    assert "Ground truth" in out[4]
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_sixteen_concurrent_clients_get_their_own_answers(server, loaded, monkeypatch):
    # every httpx client gradio_client makes (one per file download) builds one transport per
    # proxy variable; the catch-all proxies of conftest triple this test's time, and all its
    # traffic goes to 127.0.0.1 (in NO_PROXY) anyway
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    n = 16
    jobs = []
    for i in range(n):
        a = (i % 3, i % 6, (7 * i) % 40, (2 * i) % 32, (31 - 2 * i) % 32)
        b = ((i + 1) % 3, (i + 2) % 6, (11 * i) % 40, (5 * i) % 32, (3 * i) % 32)
        jobs.append((a, b, FACTOR_NAMES[i % 5]))
    barrier = threading.Barrier(n)

    def call(i):
        a, b, feature = jobs[i]
        kw = sliders("a", a) | sliders("b", b)
        client = Client(server, verbose=False, analytics_enabled=False)
        barrier.wait()  # all 16 requests in flight together
        return client.predict(
            image_a=None, image_b=None, feature=feature, api_name="/transfer", **kw
        )

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(call, range(n)))
    for (a, b, feature), out in zip(jobs, results, strict=True):
        want = app.transfer(None, None, feature, a, b)
        np.testing.assert_array_equal(png(out[0]), want[0])
        np.testing.assert_array_equal(png(out[3]), want[3])
        assert out[4] == want[4]


# ---- the app as a process ----------------------------------------------------------------------


def start_app(env: dict[str, str], timeout: float = 90.0):
    """`python app.py` with ``env``; -> (process, url, seconds to serving, log lines)."""
    port = free_port()
    env = {**env, "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "Running on local URL" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or proc.poll() is not None:
        proc.kill()
        pytest.fail("app did not start:\n" + "\n".join(lines))
    return proc, f"http://127.0.0.1:{port}/", time.perf_counter() - start, lines


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_app_loads_model_and_examples_from_the_hub(hub, hub_env, hub_repo, tmp_path):
    from dsvsa.export import build_config, push_config

    model_repo, data_repo = hub_repo("dsprites-vsa"), hub_repo("dsprites-vsa-data")
    torch.manual_seed(1)
    model = DSpritesVSA(config=TINY)
    model.push_to_hub(model_repo)
    out = tmp_path / "ds"
    for config in ("paired", "scenes", "paired_scenes"):
        build_config(out, config, 10, 20, seed=2, progress=False)
        push_config(out, config, data_repo)

    env = {**os.environ, **hub_env, "DSVSA_MODEL": model_repo, "DSVSA_DATASET": data_repo}
    env["DSVSA_FALLBACK_MODEL"] = str(tmp_path / "no-fallback")  # the Hub must serve
    proc, url, _, lines = start_app(env)
    try:
        log = "\n".join(lines)
        assert f"Serving dsvsa weights from Hub model {model_repo} at revision" in log
        assert f"Examples from Hub dataset {data_repo}" in log
        c = Client(url, verbose=False, analytics_enabled=False)
        got = c.predict(feature="shape", api_name="/transfer")
        a, b = render(np.array(A))[0], render(np.array(B))[0]
        np.testing.assert_array_equal(png(got[0]), model.transfer(a, b, "shape")[0] * 255)
        assert "Traceback" not in "\n".join(lines)
    finally:
        stop(proc)


def test_app_starts_offline_with_the_bundled_weights(unreachable_hub, tiny_dir):
    env = {**os.environ, **unreachable_hub.env}
    env.pop("DSVSA_MODEL", None)
    env.pop("DSVSA_DATASET", None)
    bundled = app.BUNDLED_MODEL
    if not (bundled / "model.safetensors").is_file():  # until the trained weights are committed
        env["DSVSA_FALLBACK_MODEL"] = str(tiny_dir)
        bundled = tiny_dir
    proc, url, seconds, lines = start_app(env)
    try:
        log = "\n".join(lines)
        assert seconds < 30, log
        assert "cannot be reached" in log
        serving = [line for line in lines if "Serving dsvsa weights" in line]
        assert len(serving) == 1 and "(fallback)" in serving[0] and str(bundled) in serving[0]
        assert "Examples from the built-in sampler" in log
        c = Client(url, verbose=False, analytics_enabled=False)
        assert "Ground truth" in c.predict(feature="pos_y", api_name="/transfer")[4]
    finally:
        stop(proc)


def test_image_paths_outside_the_upload_cache_are_refused(server, tmp_path):
    # a FileData without meta is not checked by Gradio: the app must refuse any server path
    Image.fromarray(render(np.array(A))[0] * 255).save(tmp_path / "real.png")
    paths = [
        str(tmp_path / "real.png"),
        str(tmp_path / "missing.png"),
        str(ROOT / "app.py"),
        os.path.join(gr.utils.get_upload_folder(), "..", "..", str(tmp_path / "real.png")),
    ]
    for p in paths:
        answers = [
            rest_call(server, "transfer", [{"path": p}, *A, None, *B, "shape"]),
            rest_call(server, "query", [{"path": p}, *A, None, *B, 1, "shape"]),
        ]
        for answer in answers:
            assert "must be uploaded to this server" in answer, answer
            assert "no file at" not in answer and "not an image" not in answer
        table = {"headers": list(FACTOR_NAMES), "data": []}
        answer = rest_call(server, "compose", [table, [{"path": p}]])
        assert answer.startswith("event: error") and "no file at" not in answer


def test_omitted_images_follow_the_sliders(client, loaded):
    # an API caller who leaves the images out gets the objects of the sliders it sent
    out = client.predict(
        shape_a=0, scale_a=1, shape_b=1, pos_x_b=3, feature="scale", api_name="/transfer"
    )
    assert "Ground truth" in out[4]
    fa = [0, 1, *app.DEFAULT_OBJECTS["a"][2:]]
    fb = [1, *app.DEFAULT_OBJECTS["b"][1:3], 3, app.DEFAULT_OBJECTS["b"][4]]
    want = app.transfer(None, None, "scale", fa, fb)
    np.testing.assert_array_equal(png(out[0]), want[0])


def test_long_thin_pictures_are_scaled_before_padding(monkeypatch):
    # a 20000x40 strip would be a 400 MB square if padded first
    strip = np.full((40, 20000), 255, np.uint8)
    pixels, notes = prepare_upload(strip)
    assert pixels.shape == (64, 64)
    assert "padded from 20000x40 to 20000x20000 with black" in notes


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    arr = np.zeros((64, 64), np.uint16)
    arr[16:48, 16:48] = 40000  # ~155/255: foreground once scaled
    arr[0:8, 0:8] = 20000  # ~78/255: background once scaled (clipping would make it white)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    pixels, notes = prepare_upload(tmp_path / "deep.png")
    assert pixels[16:48, 16:48].all() and not pixels[0:8, 0:8].any()
    assert any("16-bit" in n for n in notes)


def test_decompression_bombs_get_the_size_message(tmp_path):
    Image.new("1", (15000, 15000)).save(tmp_path / "bomb.png")  # 225 megapixels, a tiny file
    with pytest.raises(UploadError, match="at most 25 megapixels"):
        prepare_upload(tmp_path / "bomb.png")


def test_reused_output_files_are_refreshed(monkeypatch):
    pixels = np.zeros((64, 64), np.uint8)
    path = Path(app._png_file(pixels))
    old = time.time() - app._PNG_MAX_AGE - 60
    os.utime(path, (old, old))
    monkeypatch.setattr(app, "_last_prune", [0.0])  # the next call prunes
    again = Path(app._png_file(pixels))
    assert again == path and path.exists()
    assert time.time() - path.stat().st_mtime < 60


def test_inline_images_over_the_limit_are_refused_before_decoding():
    big = {"url": "data:image/png;base64," + "A" * (8 * 1024 * 1024)}
    with pytest.raises(gr.Error, match="over the 5mb upload limit"):
        app._file_path(big)
