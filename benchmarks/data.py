"""Data benchmarks: renderer throughput, full-grid time, table build and the slow references.

    python benchmarks/data.py
    python benchmarks/data.py --batch 10000 --repeats 7 --naive 500

Prints a markdown table. Run it in a fresh process: the renderer's tables are built on first
use, and the first benchmark times exactly that build.

Each benchmark is a function returning ``Row``s; ``main`` runs those listed in ``BENCHMARKS`` in
order, so further data benchmarks are added as one more function in that list.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dsvsa.factors import NUM_IMAGES, index_to_classes
from dsvsa.render import build_tables, render, render_direct, render_naive


@dataclass
class Row:
    name: str
    value: float
    unit: str
    note: str = ""


def _random_classes(n: int, seed: int = 0) -> np.ndarray:
    return index_to_classes(np.random.default_rng(seed).integers(0, NUM_IMAGES, n))


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_build(args: argparse.Namespace) -> list[Row]:
    """Renderer lookup tables: built once per process (in memory, nothing cached on disk)."""
    seconds = build_tables()
    note = "whole grid as row-pattern ids, ~45 MB"
    if seconds == 0.0:
        note = "already built in this process: run the script fresh"
    return [Row("renderer table build", seconds, "s", note)]


def bench_render(args: argparse.Namespace) -> list[Row]:
    """Random batches through ``render``, after the tables exist."""
    build_tables()
    rows = []
    for batch in sorted({1000, args.batch, 10 * args.batch}):
        classes = _random_classes(batch, seed=batch)
        render(classes)  # warm-up
        seconds = _median_time(lambda c=classes: render(c), args.repeats)
        note = f"batch {batch:,}, median of {args.repeats}, 1 thread"
        rows.append(Row(f"render, random batch {batch:,}", batch / seconds, "images/s", note))
    classes = _random_classes(args.batch, seed=1)
    seconds = _median_time(lambda: render(classes, packed=True), args.repeats)
    note = f"batch {args.batch:,}, (N, 64, 8) np.packbits layout"
    rows.append(Row("render packed, random batch", args.batch / seconds, "images/s", note))
    return rows


def bench_grid(args: argparse.Namespace) -> list[Row]:
    """All 737,280 images in index order, in chunks (the whole grid is 3 GB as uint8)."""
    build = build_tables()
    chunk = 65536
    start = time.perf_counter()
    pixels = 0
    for first in range(0, NUM_IMAGES, chunk):
        classes = index_to_classes(np.arange(first, min(first + chunk, NUM_IMAGES)))
        pixels += int(render(classes).sum(dtype=np.int64))
    seconds = time.perf_counter() - start
    note = f"chunks of {chunk:,} incl. index_to_classes; {pixels / NUM_IMAGES:.1f} px on/image"
    if build:
        note += f"; +{build:.2f} s table build"
    return [Row("full grid render (737,280 images)", seconds, "s", note)]


def bench_naive(args: argparse.Namespace) -> list[Row]:
    """The slow references: PIL polygons (not exact) and the exact per-pixel definition."""
    build_tables()
    classes = _random_classes(args.naive, seed=2)
    naive = args.naive / _median_time(lambda: render_naive(classes), 3)
    direct_classes = classes[: max(1, args.naive // 5)]
    direct = len(direct_classes) / _median_time(lambda: render_direct(direct_classes), 1)
    fast = args.batch / _median_time(lambda: render(_random_classes(args.batch, 3)), args.repeats)
    return [
        Row("render_naive (PIL, 4x supersampled)", naive, "images/s", f"{args.naive} images"),
        Row(
            "render_direct (exact, per pixel)", direct, "images/s", f"{len(direct_classes)} images"
        ),
        Row("speed-up render / render_naive", fast / naive, "x", f"batch {args.batch:,}"),
    ]


def bench_export(args: argparse.Namespace) -> list[Row]:
    """``paired`` config of 100k pairs: sampling alone, the whole export, parquet size, load."""
    import tempfile
    from pathlib import Path

    from dsvsa.export import build_config, load_split
    from dsvsa.sampling import sample_pairs

    n = 100_000
    build_tables()
    start = time.perf_counter()
    sample_pairs(np.random.default_rng(0), n)
    sampling = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dsprites-vsa"
        start = time.perf_counter()
        build_config(out, "paired", n, 0, seed=0, progress=False)
        export = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (out / "paired").glob("*.parquet"))
        shards = len(list((out / "paired").glob("*.parquet")))
        start = time.perf_counter()
        load_split(out, "paired", "train", cache_dir=str(Path(tmp) / "cache"))
        load = time.perf_counter() - start
    return [
        Row("sample_pairs, 100k pairs (render + checks)", sampling, "s", "one call, 200k images"),
        Row(
            "export paired, 100k pairs",
            export,
            "s",
            f"sample + PNG encode + zstd parquet, {n / export:,.0f} pairs/s",
        ),
        Row(
            "parquet size, 100k pairs", size / 1e6, "MB", f"{shards} shards, {size / n:.0f} B/pair"
        ),
        Row("load_split, 100k pairs", load, "s", "load_dataset + PNG decode to uint8 arrays"),
    ]


BENCHMARKS: list[Callable[[argparse.Namespace], list[Row]]] = [
    bench_build,
    bench_render,
    bench_grid,
    bench_naive,
    bench_export,
]


def format_table(rows: list[Row]) -> str:
    lines = ["| benchmark | value | unit | notes |", "|---|---:|---|---|"]
    for row in rows:
        value = f"{row.value:,.0f}" if row.value >= 100 else f"{row.value:.3g}"
        lines.append(f"| {row.name} | {value} | {row.unit} | {row.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000, help="random batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per batch")
    parser.add_argument("--naive", type=int, default=500, help="images for the slow renderers")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    for bench in BENCHMARKS:
        rows.extend(bench(args))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"numpy {np.__version__}, Python {platform.python_version()}, {cpus} CPUs\n")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
