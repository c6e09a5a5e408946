"""Latency of the Space: /transfer and /compose through gradio_client, and cold start offline.

    python benchmarks/app.py                      # bundled weights (or an untrained default model)
    python benchmarks/app.py --model DIR --calls 100 --out benchmarks/app.md

Each endpoint is called ``--calls`` times, one request at a time, with inputs that change from call
to call; the same handler is timed called directly in this process, so the table shows what the
HTTP/queue/file round trip adds (ratio client / direct). Then 16 clients send one /transfer each at
the same moment. Cold start: ``python app.py`` with the Hub unreachable (HF_ENDPOINT on a closed
port of 127.0.0.1), timed to its "Running on" line and to the first answered /transfer, beside the
time ``import torch, gradio`` alone takes in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    return sock, sock.getsockname()[1]


_HOLD, _DEAD_PORT = _closed_port()
os.environ.setdefault("HF_ENDPOINT", f"http://127.0.0.1:{_DEAD_PORT}")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def model_folder(arg: str | None) -> tuple[Path, str]:
    import app

    if arg:
        return Path(arg), f"folder {arg}"
    if (app.BUNDLED_MODEL / "model.safetensors").is_file():
        return app.BUNDLED_MODEL, "bundled weights"
    import torch

    from dsvsa import DSpritesVSA

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="dsvsa-bench-")) / "model"
    DSpritesVSA().save_pretrained(folder)
    return folder, "untrained default architecture (no bundled weights yet)"


def inputs(i: int):
    rng = np.random.default_rng(i)
    a = [int(rng.integers(0, s)) for s in (3, 6, 40, 32, 32)]
    b = [int(rng.integers(0, s)) for s in (3, 6, 40, 32, 32)]
    feature = ("shape", "scale", "orientation", "pos_x", "pos_y")[i % 5]
    from dsvsa.sampling import sample_scenes

    rows = sample_scenes(rng, 1, 2, 2 + i % 4)[0]["factors"].tolist()
    return a, b, feature, rows


def gradio_floor(calls: int, want: tuple) -> list[float]:
    """gradio_client round trips of a do-nothing endpoint with /transfer's outputs."""
    import gradio as gr
    from gradio_client import Client

    with gr.Blocks() as floor:
        box = gr.Textbox()
        outs = [gr.Image(format="png", image_mode="L") for _ in range(4)] + [gr.Markdown()]
        box.submit(lambda _: want, box, outs, api_name="floor")
    floor.queue()
    _, url, _ = floor.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    client = Client(url, verbose=False, analytics_enabled=False)
    client.predict("x", api_name="/floor")
    seconds = []
    for _ in range(calls):
        t = time.perf_counter()
        client.predict("x", api_name="/floor")
        seconds.append(time.perf_counter() - t)
    floor.close()
    return seconds


def cold_start(folder: Path) -> dict[str, float]:
    from gradio_client import Client

    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_DEAD_PORT}"}
    env.pop("DSVSA_MODEL", None)
    env.pop("DSVSA_DATASET", None)
    import app

    if folder.resolve() != app.BUNDLED_MODEL.resolve():
        env["DSVSA_FALLBACK_MODEL"] = str(folder)
    port = free_port()
    env["GRADIO_SERVER_PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "Running on local URL" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(180) or proc.poll() is not None:
            raise RuntimeError("app did not start:\n" + "".join(lines))
        serving = time.perf_counter() - start
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        client.predict(feature="shape", api_name="/transfer")
        answered = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(20)
    fallback = any("(fallback)" in line for line in lines)
    return {"serving": serving, "answered": answered, "fallback": fallback}


def import_time() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, gradio"], check=True, env=os.environ)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: bundled weights)")
    parser.add_argument("--calls", type=int, default=50, help="sequential calls per endpoint")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args()

    import torch
    from gradio_client import Client

    import app

    folder, what = model_folder(args.model)
    st = app.setup(model=str(folder), dataset=str(Path(tempfile.gettempdir()) / "no-dataset"))
    demo = app.build_demo(st)
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=free_port(),
        quiet=True,
        **app.launch_options(),
    )
    client = Client(url, verbose=False, analytics_enabled=False)
    names = ("shape", "scale", "orientation", "pos_x", "pos_y")

    def kw(a, b):
        out = {f"{n}_a": v for n, v in zip(names, a, strict=True)}
        out |= {f"{n}_b": v for n, v in zip(names, b, strict=True)}
        return out

    cases = [inputs(i) for i in range(args.calls)]
    for a, b, feature, rows in cases[:3]:  # warm up both paths (prototype caches, first render)
        app.transfer(None, None, feature, a, b)
        app.compose(rows)
        client.predict(
            image_a=None, image_b=None, feature=feature, api_name="/transfer", **kw(a, b)
        )

    timings: dict[str, list[float]] = {
        k: [] for k in ("t_client", "t_direct", "c_client", "c_direct")
    }
    for a, b, feature, rows in cases:
        t = time.perf_counter()
        client.predict(
            image_a=None, image_b=None, feature=feature, api_name="/transfer", **kw(a, b)
        )
        timings["t_client"].append(time.perf_counter() - t)
        t = time.perf_counter()
        app.transfer(None, None, feature, a, b)
        timings["t_direct"].append(time.perf_counter() - t)
        table = {"headers": list(names), "data": rows}
        t = time.perf_counter()
        client.predict(objects=table, uploads=None, api_name="/compose")
        timings["c_client"].append(time.perf_counter() - t)
        t = time.perf_counter()
        app.compose(rows)
        timings["c_direct"].append(time.perf_counter() - t)

    # 16 clients at once
    n = 16
    clients = [Client(url, verbose=False, analytics_enabled=False) for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(i):
        a, b, feature, _ = cases[i % len(cases)]
        barrier.wait()
        t = time.perf_counter()
        clients[i].predict(
            image_a=None, image_b=None, feature=feature, api_name="/transfer", **kw(a, b)
        )
        return time.perf_counter() - t

    wall = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        concurrent = list(pool.map(one, range(n)))
    wall = time.perf_counter() - wall
    demo.close()

    floor = gradio_floor(
        args.calls, want=app._as_files(app.transfer(None, None, "shape", *cases[0][:2]))
    )
    cold = cold_start(folder)
    imports = import_time()

    rows_md = [
        "| measurement | p50 | p95 | reference (direct handler call) | ratio client / direct |",
        "|---|---|---|---|---|",
    ]
    for label, ck, dk in (
        ("/transfer", "t_client", "t_direct"),
        ("/compose", "c_client", "c_direct"),
    ):
        c50, c95 = percentiles(timings[ck])
        d50, d95 = percentiles(timings[dk])
        rows_md.append(
            f"| {label} via gradio_client, {args.calls} sequential calls | {c50:.1f} ms | "
            f"{c95:.1f} ms | p50 {d50:.1f} ms, p95 {d95:.1f} ms | {c50 / d50:.1f}x (p50) |"
        )
    f50, f95 = percentiles(floor)
    rows_md.append(
        f"| gradio floor: an endpoint returning the same 4 PNGs + text, no model | {f50:.1f} ms | "
        f"{f95:.1f} ms | - | - |"
    )
    p50, p95 = percentiles(concurrent)
    rows_md.append(
        f"| /transfer, {n} clients at once (per request) | {p50:.1f} ms | {p95:.1f} ms | "
        f"all {n} answered in {wall * 1000:.0f} ms | - |"
    )
    rows_md.append(
        f"| cold start offline: `python app.py` to 'Running on' | {cold['serving']:.1f} s | - | "
        f"`import torch, gradio` alone: {imports:.1f} s | {cold['serving'] / imports:.1f}x |"
    )
    rows_md.append(
        f"| cold start offline: to the first /transfer answered | {cold['answered']:.1f} s | - | "
        f"weights fallback used: {cold['fallback']} | - |"
    )
    threads = torch.get_num_threads()
    header = (
        f"Weights: {what} ({st.weights.model.num_parameters() / 1e6:.2f}M parameters); "
        f"{os.cpu_count()} CPUs, torch threads {threads}; gradio {_version('gradio')}, "
        f"gradio_client {_version('gradio_client')}."
    )
    text = header + "\n\n" + "\n".join(rows_md) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
