"""The ``dsvsa`` command line.

    dsvsa generate --config paired --train 100000 --test 10000 --seed 0 --out data/dsprites-vsa
    dsvsa evaluate MODEL --data DIR_OR_REPO [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys

CONFIGS = ("paired", "scenes", "paired_scenes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsvsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a derived dSprites dataset config")
    gen.add_argument("--config", required=True, choices=CONFIGS)
    gen.add_argument("--train", type=int, required=True, help="number of train examples")
    gen.add_argument("--test", type=int, required=True, help="number of test examples")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="dataset folder (created or extended)")
    gen.add_argument(
        "--holdout",
        default=None,
        help="compositional split: factor combinations never seen in train (e.g. square_right)",
    )
    gen.add_argument("--push-to-hub", default=None, metavar="ORG/NAME")
    gen.add_argument("--private", action="store_true", help="create the Hub repo as private")

    ev = sub.add_parser("evaluate", help="evaluate a trained model on a held-out split")
    ev.add_argument("model", help="model folder or Hub repo id")
    ev.add_argument("--data", default=None, help="dataset folder or Hub id (default: sampler)")
    ev.add_argument("--out", default=None, help="folder for metrics.json and figures")
    ev.add_argument("--num", type=int, default=1000, help="held-out examples per metric")
    ev.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from dsvsa.export import generate_command

            return generate_command(args) or 0
        from dsvsa.evaluation import evaluate_command

        return evaluate_command(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"dsvsa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
