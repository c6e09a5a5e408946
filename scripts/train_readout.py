"""Train the factor readout on exact renders and write it into the package.

    python scripts/train_readout.py [--out dsvsa/assets] [--steps 1000] [--seed 0]

One CPU thread and a fixed seed make the result bit-reproducible; about a minute on an idle core.
Prints the readout's accuracy on fresh exact renders (orientation modulo symmetry) after the
weights were stored in float16 and loaded back.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from dsvsa.readout import (
    ReadoutConfig,
    load_readout,
    readout_accuracy,
    save_readout,
    train_readout,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dsvsa" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the two files")
    defaults = ReadoutConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--eval-num", type=int, default=5000, help="fresh renders to score")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = ReadoutConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    logging.info("readout config: %s", json.dumps(asdict(config)))
    start = time.perf_counter()
    readout = train_readout(config)
    seconds = time.perf_counter() - start
    path = save_readout(readout, args.out)

    accuracy = readout_accuracy(load_readout(args.out), num=args.eval_num)
    print(f"trained in {seconds:.0f} s; wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print("accuracy on fresh exact renders (orientation modulo symmetry):")
    for name, value in accuracy.items():
        print(f"  {name:12s} {value:.4f}")


if __name__ == "__main__":
    main()
