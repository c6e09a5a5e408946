"""The ``dsvsa`` command line.

    dsvsa generate --config paired --train 100000 --test 10000 --seed 0 --out data/dsprites-vsa
    dsvsa evaluate MODEL --data DIR_OR_REPO [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys

CONFIGS = ("paired", "scenes", "paired_scenes")


def at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, with a message saying so otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsvsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a derived dSprites dataset config")
    gen.add_argument("--config", required=True, choices=CONFIGS)
    gen.add_argument("--train", type=at_least(1), required=True, help="number of train examples")
    gen.add_argument("--test", type=at_least(0), required=True, help="number of test examples")
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
    ev.add_argument("--num", type=at_least(1), default=1000, help="held-out examples per metric")
    ev.add_argument("--seed", type=int, default=0)
    return parser


class _PrintedAlready(logging.Filter):
    """Drop records a library's own handler has printed already (no warning shown twice).

    ``huggingface_hub`` and ``datasets`` give their root logger a handler of its own and still
    let records propagate to the root logger, so with ``logging.basicConfig`` each of their
    warnings would appear twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False
            if not logger.propagate:
                break
            logger = logger.parent  # type: ignore[assignment]
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """INFO lines of this package on stderr; HTTP clients quiet; no warning printed twice."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:
        if not any(isinstance(f, _PrintedAlready) for f in handler.filters):
            handler.addFilter(_PrintedAlready())
    # the HTTP clients log every request at INFO
    for name in ("httpx", "httpx2", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # huggingface_hub's own handler goes (cheap to import): its warnings get the common format
    from huggingface_hub.utils import logging as hub_logging

    library_root = hub_logging.get_logger()
    for handler in list(library_root.handlers):
        if type(handler) is logging.StreamHandler:
            library_root.removeHandler(handler)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean a user-facing problem (bad input, missing file, no network).

    They are printed as one line; anything else is a bug and keeps its traceback.
    """
    errors: list[type[BaseException]] = [ValueError, OSError, RuntimeError, LookupError]
    if "datasets" in sys.modules:
        from datasets.exceptions import DatasetsError

        errors.append(DatasetsError)
    for name in ("httpx2", "httpx"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "HTTPError"):
            errors.append(module.HTTPError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from dsvsa.export import generate_command

            return generate_command(args) or 0
        from dsvsa.evaluation import evaluate_command

        return evaluate_command(args) or 0
    except KeyboardInterrupt:
        print(f"dsvsa {args.command}: interrupted", file=sys.stderr)
        return 130
    except expected_errors() as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"dsvsa {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
