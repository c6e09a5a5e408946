"""The Space in a real browser: headless Chromium (Debian's package) driven by Playwright.

Opens the page, picks the first transfer example, runs the transfer, checks that the result image
appears and is the handler's answer, and saves a screenshot (to the test's tmp folder and, when
DSVSA_SCREENSHOT_DIR is set, there too). Uses the bundled weights when they are in the repository,
else a tiny untrained model.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter,Translate",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")

sys.path.insert(0, str(ROOT))
import app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if (app.BUNDLED_MODEL / "model.safetensors").is_file():
        weights = app.BUNDLED_MODEL
    else:
        from dsvsa import DSpritesVSA, DSpritesVSAConfig

        torch.manual_seed(0)
        cfg = DSpritesVSAConfig(
            latent_dim=64,
            enc_channels=[4, 4, 8, 8],
            enc_hidden=32,
            dec_hidden=32,
            dec_channels=[8, 8, 4, 4],
        )
        weights = tmp_path_factory.mktemp("tiny")
        DSpritesVSA(config=cfg).save_pretrained(weights)
    st = app.setup(model=str(weights), dataset=str(tmp_path_factory.mktemp("x") / "missing"))
    demo = app.build_demo(st)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=free_port(),
        quiet=True,
        **app.launch_options(),
    )
    yield url, st
    demo.close()


def test_transfer_in_a_real_browser(served, tmp_path):
    url, st = served
    example = st.examples.transfer[0]
    a, b, feature = example[:5], example[5:10], example[10]
    want = app.transfer(None, None, feature, a, b)

    with playwright.sync_playwright() as pw:
        # anything the browser aims elsewhere than the app goes to a closed port of 127.0.0.1
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            proxy={"server": f"http://127.0.0.1:{free_port()}", "bypass": "127.0.0.1,localhost"},
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url, wait_until="networkidle")
            page.locator("#transfer_examples button").first.click()
            page.wait_for_function(
                "v => document.querySelector('#shape_a input[type=number]').value == v",
                arg=str(a[0]),
            )
            page.wait_for_timeout(500)  # the previews re-render from the new slider values
            page.click("#transfer_run")
            page.wait_for_function(
                "() => document.querySelector('#transfer_report').innerText.includes('IoU')",
                timeout=60_000,
            )
            result = page.locator("#transfer_result img")
            result.wait_for(state="visible")
            page.wait_for_function(
                "() => { const i = document.querySelector('#transfer_result img');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            report = page.inner_text("#transfer_report")
            shown = page.request.get(result.get_attribute("src")).body()
            box = result.bounding_box()
            fit, rendering = result.evaluate(
                "i => [getComputedStyle(i).objectFit, getComputedStyle(i).imageRendering]"
            )
            shot = tmp_path / "transfer.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert not errors, errors
    assert "Ground truth" in report and f"**{feature}**" not in report  # markdown rendered
    assert f"{feature}" in report
    pixels = np.asarray(Image.open(io.BytesIO(shown)))
    np.testing.assert_array_equal(pixels, want[0])
    # the 64x64 picture is drawn large and sharp: scaled to fit a box of at least 200 px
    assert fit == "contain" and rendering == "pixelated"
    assert min(box["width"], box["height"]) >= 200
    assert shot.stat().st_size > 10_000
    if os.environ.get("DSVSA_SCREENSHOT_DIR"):
        out = Path(os.environ["DSVSA_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "transfer.png")
