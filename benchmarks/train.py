"""Training throughput of the default architecture and of the original write-up's wide one.

    python benchmarks/train.py [--stage paired] [--batch-size 64] [--steps 20] [--warmup 3]

Each architecture runs in its own subprocess (so peak memory is its own): the given stage's full
training step (forward, backward, AdamW) on pre-sampled batches, then a timed stretch of steps.
Prints a markdown table with parameter counts, training pairs/s, step time and peak memory (RSS
of the process from ``resource``; Python and numpy allocations of building, sampling and the
warm-up steps from ``tracemalloc``, which torch's own allocator bypasses), and the
throughput ratio default / wide.

"wide" is the write-up's shape: encoder linear layers 2048 -> 10240 -> 10240, decoder linear
layers 1024 -> 1024 -> 2048 (``DSpritesVSAConfig.preset("wide")``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc

PRESETS = ("default", "wide")


def worker(preset: str, stage: str, batch_size: int, steps: int, warmup: int) -> dict:
    """Time ``steps`` training steps of one architecture; runs inside its own process."""
    tracemalloc.start()  # Python and numpy allocations while building and sampling
    import torch

    from dsvsa.model import DSpritesVSA, DSpritesVSAConfig
    from dsvsa.training import Objective, TrainConfig, make_source, step_rng, to_tensors

    torch.manual_seed(0)
    model_cfg = DSpritesVSAConfig.preset(preset)
    cfg = TrainConfig(model=model_cfg.to_dict(), stages={stage: 1.0}, batch_size=batch_size)
    model = DSpritesVSA(model_cfg)
    objective = Objective(model, cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    # data sampled up front, so the timing is the model's step alone
    source = make_source(cfg)
    t0 = time.perf_counter()
    batches = [
        {stage: to_tensors(source.batch(stage, step_rng(0, i, 0, 0), batch_size))}
        for i in range(min(steps + warmup, 8))
    ]
    sample_s = (time.perf_counter() - t0) / len(batches)

    def step(i: int) -> None:
        out = objective(batches[i % len(batches)])
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()  # tracing slows every allocation: off while timing
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    elapsed = time.perf_counter() - t0

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {
        "preset": preset,
        "parameters": model.num_parameters(),
        "enc_hidden": model_cfg.enc_hidden,
        "dec_hidden": model_cfg.dec_hidden,
        "pairs_per_s": steps * batch_size / elapsed,
        "step_ms": 1000 * elapsed / steps,
        "sample_ms": 1000 * sample_s,
        "peak_rss_mb": rss_kb / 1024,
        "peak_python_mb": py_peak / 2**20,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="paired", choices=("paired", "exchange"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    if args.worker:
        result = worker(args.worker, args.stage, args.batch_size, args.steps, args.warmup)
        print(json.dumps(result))
        return

    results = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--worker", preset, "--stage", args.stage]
        cmd += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{preset}: {results[-1]['pairs_per_s']:.1f} pairs/s", file=sys.stderr)

    print(
        f"Training step of the `{args.stage}` stage, batch {args.batch_size} pairs, "
        f"{args.steps} timed steps after {args.warmup} warm-up; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {results[0]['threads']} torch thread(s).\n"
    )
    print(
        "| architecture | encoder / decoder hidden | parameters | pairs/s | step (ms) "
        "| data sampling (ms/batch) | peak RSS (MB) | peak traced heap, setup (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['preset']} | {r['enc_hidden']} / {r['dec_hidden']} | {r['parameters']:,} "
            f"| {r['pairs_per_s']:.1f} | {r['step_ms']:.0f} | {r['sample_ms']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['peak_python_mb']:.1f} |"
        )
    by = {r["preset"]: r for r in results}
    if "default" in by and "wide" in by:
        ratio = by["default"]["pairs_per_s"] / by["wide"]["pairs_per_s"]
        params = by["wide"]["parameters"] / by["default"]["parameters"]
        print(
            f"\nThe default architecture trains {ratio:.1f}x faster than the wide one "
            f"with {params:.0f}x fewer parameters."
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
