"""Train a DSpritesVSA model with accelerate.

    accelerate launch --cpu training/train.py --config training/configs/paired.yaml --max-steps 200
    accelerate launch --config_file training/accelerate_cpu2.yaml training/train.py \\
        --config training/configs/default.yaml            # two CPU processes (gloo)

On CPU, accelerate gives each process one torch thread unless told otherwise: on a 2-core
machine `accelerate launch --cpu --num_cpu_threads_per_process 2 ...` uses both cores.

Options: --output-dir DIR, --resume (continue from the last checkpoint in DIR), --overwrite
(start over in a DIR that holds an earlier run), --push-to-hub ORG/NAME (model folder),
--push-dataset-to-hub ORG/NAME (the data the run trained on, as its dataset config), and
overrides of any config key: --set kl_coef=0.1 --set model.latent_dim=512, or --kl-coef 0.1.

Ctrl-C (SIGINT) or SIGTERM: the step in progress finishes, its checkpoint is written and the run
stops with a line saying how to continue it (--resume). A second Ctrl-C stops at once.

A run writes into its output dir: config.json and model.safetensors (save_pretrained),
training_config.json (the resolved config; a run repeats from it with --config), README.md (the
model card rendered from model_card.md), losses.jsonl and eval.jsonl (one line per step / eval),
tensorboard/ (event files) and checkpoints/step_N (the last keep_checkpoints of them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch

from dsvsa.training import (
    STAGES,
    ConfigError,
    Objective,
    TrainConfig,
    eval_rng,
    lr_at,
    make_source,
    parse_override,
    quick_metrics,
    step_rng,
    step_torch_seed,
    to_tensors,
)

logger = logging.getLogger("dsvsa.train")

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD_TEMPLATE = REPO_ROOT / "model_card.md"
CHECKPOINT_FORMAT = 1
# files of a finished run that --push-to-hub uploads
PUSH_PATTERNS = [
    "config.json",
    "model.safetensors",
    "README.md",
    "training_config.json",
    "metrics.json",
    "losses.jsonl",
    "eval.jsonl",
    "*.png",
    "tensorboard/**",
]
# keys a resumed run may change without breaking the replay of the run so far
RESUME_MUTABLE = {
    "max_steps",
    "output_dir",
    "log_interval",
    "eval_interval",
    "eval_batches",
    "checkpoint_interval",
    "keep_checkpoints",
    "eval_at_end",
    "eval_num",
    "log_with",
    "dataset_train_size",
    "dataset_test_size",
}


class RunError(RuntimeError):
    """A problem with the output dir, a checkpoint or the launch; the message says which."""


class StopRequests:
    """SIGINT (Ctrl-C) and SIGTERM while the loop runs: finish the step, checkpoint, stop.

    The handler only records the signal; the loop checks it after each step, saves the
    checkpoint of that completed step and returns, as ``--time-limit`` does. A second signal
    stops at once (KeyboardInterrupt) without a new checkpoint, unless it comes within
    ``REPEAT_S`` of the first: a launcher (torchrun) passes on the Ctrl-C its process group got
    too, and that copy must not cancel the checkpoint.
    """

    REPEAT_S = 1.0

    def __init__(self, announce: bool = True) -> None:
        self.received: str | None = None
        self.announce = announce
        self._previous: dict[int, object] = {}
        self._first = 0.0

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            if time.monotonic() - self._first < self.REPEAT_S:
                return  # the same interruption, forwarded by a launcher
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self._first = time.monotonic()
        if self.announce:  # os.write: no logging lock is taken inside a signal handler
            os.write(
                2,
                f"\n{self.received}: stopping after this step with a checkpoint "
                "(send it again to stop at once, without one)\n".encode(),
            )


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """Arguments plus the config overrides given as --set key=value or --some-key value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML or JSON training config")
    parser.add_argument("--max-steps", type=_at_least_one, default=None, metavar="N")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="start over in a used output dir")
    parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME")
    parser.add_argument("--push-dataset-to-hub", default=None, metavar="ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create Hub repos as private")
    parser.add_argument(
        "--stop-at",
        type=_at_least_one,
        default=None,
        metavar="STEP",
        help="checkpoint and stop after this step (continue later with --resume)",
    )
    parser.add_argument(
        "--time-limit",
        type=_positive_minutes,
        default=None,
        metavar="MINUTES",
        help="checkpoint and stop once this much training time has passed in this session",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args, rest = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the card

    overrides: dict = {}
    origins: dict[str, str] = {}  # key -> the option that set it, for error messages
    for text in args.set:
        key, value = parse_override(text)
        overrides[key] = value
        origins[key] = f"--set {text}"
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(
                f"unexpected argument {token!r} (config overrides look like --key value)"
            )
        if "=" in token:
            key, value = parse_override(token[2:])
            origins[key] = token
            i += 1
        else:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ConfigError(f"option {token} needs a value")
            key, value = parse_override(f"{token[2:]}={rest[i + 1]}")
            origins[key] = f"{token} {rest[i + 1]}"
            i += 2
        overrides[key] = value
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
        origins["max_steps"] = f"--max-steps {args.max_steps}"
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
        origins["output_dir"] = f"--output-dir {args.output_dir}"
    args.override_origins = origins
    return args, overrides


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of minutes > 0, got {text}")
    return value


def _close_matches(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_override_keys(overrides: dict, origins: dict[str, str]) -> None:
    """Unknown keys given on the command line are reported as such (not as the config file's)."""
    import dataclasses

    from dsvsa.model import DSpritesVSAConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    model_known = {f.name for f in dataclasses.fields(DSpritesVSAConfig)}
    for key in overrides:
        parts = key.split(".")
        origin = origins.get(key, key)
        if parts[0] not in known:
            raise ConfigError(
                f"{origin}: unknown training config key {parts[0]!r} (from the command line"
                + _close_matches(parts[0], known)
                + ")"
            )
        if parts[0] == "model" and len(parts) > 1 and parts[1] not in model_known:
            raise ConfigError(
                f"{origin}: unknown model config key {parts[1]!r} (from the command line"
                + _close_matches(parts[1], model_known)
                + ")"
            )


def load_config(args: argparse.Namespace, overrides: dict) -> TrainConfig:
    """The config file with the command line's overrides; errors say which of the two is wrong."""
    origins = getattr(args, "override_origins", {})
    check_override_keys(overrides, origins)
    try:
        return TrainConfig.from_file(args.config, overrides)
    except ConfigError as err:
        text = str(err)
        blamed = [
            origin
            for key, origin in origins.items()
            if f"'{key}'" in text or f"'{key.split('.')[0]}'" in text
        ]
        if blamed:
            raise ConfigError(f"{text} (set on the command line by {', '.join(blamed)})") from None
        raise


# ---------------------------------------------------------------------------------------------
# checkpoints: safetensors for tensors and JSON for the rest (no pickle)


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints under output_dir/checkpoints, oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("step_") and name[5:].isdigit():
            found.append((int(name[5:]), path))
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, model, optimizer, cfg: TrainConfig, step: int, extra: dict) -> None:
    """Write a checkpoint atomically: into step_N.tmp, then renamed to step_N."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    # model weights
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))

    # optimizer: tensors to safetensors, everything else to JSON
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            name = f"{pid}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in opt["param_groups"]
    ]
    (tmp / "optimizer.json").write_text(json.dumps({"param_groups": groups, "scalars": scalars}))

    # trainer state last: its presence marks a complete checkpoint
    trainer = {"format": CHECKPOINT_FORMAT, "step": step, "config": cfg.to_dict(), **extra}
    (tmp / "trainer_state.json").write_text(json.dumps(trainer, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def read_json(path: Path) -> dict:
    """Parse a JSON file, naming it in the error."""
    if not path.is_file():
        raise RunError(f"checkpoint file {path} is missing (incomplete checkpoint?)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"checkpoint file {path} is corrupt or truncated: {err}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, naming it in the error."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise RunError(f"checkpoint file {path} is missing (incomplete checkpoint?)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError and friends
        raise RunError(f"checkpoint file {path} is corrupt or truncated: {err}") from None


def load_checkpoint(path: Path, model, optimizer, cfg: TrainConfig) -> dict:
    """Restore model and optimizer from a checkpoint dir; returns its trainer state.

    The config is compared first (a changed architecture is reported as the config key that
    differs), then the weights are loaded (a mismatch names the file and the tensor).
    """
    from dsvsa.model import CheckpointError, load_weights

    trainer = read_json(path / "trainer_state.json")
    if trainer.get("format") != CHECKPOINT_FORMAT or not isinstance(trainer.get("step"), int):
        raise RunError(f"checkpoint file {path / 'trainer_state.json'} is not a dsvsa checkpoint")
    check_resume_config(cfg, trainer.get("config", {}), path)
    try:
        load_weights(model, path / "model.safetensors", strict=True)
    except CheckpointError as err:
        raise RunError(str(err)) from None

    meta = read_json(path / "optimizer.json")
    tensors = read_tensors(path / "optimizer.safetensors")
    state: dict = {}
    for name, value in {**meta.get("scalars", {}), **tensors}.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError, RuntimeError) as err:
        raise RunError(
            f"checkpoint file {path / 'optimizer.safetensors'} does not match the model: {err}"
        ) from None
    return trainer


def check_resume_config(cfg: TrainConfig, saved: dict, path: Path) -> None:
    """A resumed run must use the config the checkpoint was trained with (except bookkeeping)."""
    current = cfg.to_dict()
    differences = []
    for key, value in saved.items():
        if key in RESUME_MUTABLE or key not in current:
            continue
        differences += _differences(key, current[key], value)
    if differences:
        listed = "; ".join(
            f"{key!r} is {now!r} here, {then!r} in the checkpoint" for key, now, then in differences
        )
        raise ConfigError(
            f"the run's config differs from the one checkpoint {path} was trained with: {listed}; "
            f"resume with the same config (its copy: {path / 'trainer_state.json'})"
        )


def _differences(key: str, now, then) -> list[tuple[str, object, object]]:
    """(dotted key, current, saved) for every leaf value that differs between two configs."""
    if isinstance(now, dict) and isinstance(then, dict):
        out = []
        for sub in sorted(set(now) | set(then)):
            out += _differences(f"{key}.{sub}", now.get(sub), then.get(sub))
        return out
    return [] if now == then else [(key, now, then)]


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# output dir


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check the output dir before anything is written; return the checkpoint to resume from."""
    if resume:
        ckpts = checkpoint_dirs(output_dir)
        if not output_dir.exists():
            raise RunError(
                f"--resume: there is no run to resume in {output_dir} (the folder does not "
                "exist); start the run without --resume"
            )
        if not ckpts:
            raise RunError(
                f"--resume: no checkpoint found under {output_dir / 'checkpoints'}, so there is "
                "nothing to resume; start the run over with --overwrite instead of --resume"
            )
        return ckpts[-1]
    used = [
        name
        for name in ("checkpoints", "model.safetensors", "losses.jsonl", "training_config.json")
        if (output_dir / name).exists()
    ]
    if used and not overwrite:
        raise RunError(
            f"output dir {output_dir} already holds a run ({', '.join(used)}); pass --resume to "
            "continue it, --overwrite to start over, or choose another --output-dir"
        )
    return None


def clear_run(output_dir: Path) -> None:
    """Remove an earlier run's files (after --overwrite, once the new run is validated)."""
    for name in ("checkpoints", "tensorboard", "dataset"):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in ("losses.jsonl", "eval.jsonl", "metrics.json", "model.safetensors"):
        (output_dir / name).unlink(missing_ok=True)
    for png in output_dir.glob("*.png"):
        png.unlink()


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of a .jsonl log whose step is at most ``last_step`` (used on resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(f"{line}\n" for line in kept))


# ---------------------------------------------------------------------------------------------
# model card


def hardware_summary(num_processes: int) -> str:
    threads = torch.get_num_threads()
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{device}; {num_processes} process(es) x {threads} torch thread(s)"


def metrics_table(metrics: dict) -> str:
    """Markdown table of the metrics: the evaluation's own tables, or a plain key/value list."""
    if "recon_iou" in metrics:
        try:
            from dsvsa.evaluation import metrics_markdown

            return metrics_markdown(metrics)
        except (ImportError, KeyError):
            pass
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {prefix} | {value:.4g} |")

    walk("", metrics)
    note = (
        "No held-out evaluation was run for this checkpoint (`eval_at_end: false`, or the "
        "evaluation failed; see the training log). Run `dsvsa evaluate` on it for the metrics."
    )
    if not rows:
        return note
    return "\n".join(
        [note, "", "Last training losses:", "", "| loss | value |", "|---|---|", *rows]
    )


def figures_markdown(output_dir: Path, figures: list[str]) -> str:
    lines = []
    for rel in figures:
        title = Path(rel).stem.replace("_", " ")
        lines.append(f"![{title}]({rel})")
    return "\n\n".join(lines) if lines else "No figures were rendered for this run."


STAGE_WORDS = {
    "paired": "pairs of images that differ in one feature, reconstructed directly and with the "
    "changed feature's slot swapped between them",
    "scenes": "scenes of several objects, decoded from the combination of the objects' vectors, "
    "each object encoded from its own image",
    "paired_scenes": "two-object scenes in which one object changes one feature, reconstructed "
    "after swapping that slot inside the changed object",
    "exchange": "an image and an unrelated donor: some of the image's slots are replaced by the "
    "donor's and the result is scored against the exact picture of the mixed features",
    "codebook": "the encoder classifies each feature's value and the decoder draws the code "
    "vectors of the true values (single objects and scenes)",
}


def describe_model(model_cfg) -> str:
    """Plain-words description of a model config, for the card (binding as configured)."""
    d = model_cfg.latent_dim
    text = [
        f"A variational autoencoder for [dSprites](https://github.com/google-deepmind/"
        f"dsprites-dataset) images. The encoder maps a 64×64 image of one object to **five "
        f"{d}-dimensional slot vectors, one per feature** (shape, scale, orientation, position x, "
        "position y)."
    ]
    if model_cfg.slot_bottleneck == "codebook":
        pick = (
            "the code of the most likely value"
            if model_cfg.codebook_inference == "argmax"
            else "the same probability-weighted mix as in training"
        )
        text.append(
            "Each slot passes through a **codebook bottleneck**: the encoder gives every value "
            "of its feature a probability (3 shapes, 6 scales, 40 orientations, 32 x and 32 y "
            "positions), and the slot is the probability-weighted mix of fixed random code "
            f"vectors, one per value; at inference it is {pick}. The model can therefore also "
            "classify the five features of an image (`model.classify`)."
        )
    else:
        text.append(
            "Each slot is a Gaussian posterior (a mean and a log-variance), as in any VAE; the "
            "inference helpers use the mean."
        )
    combine = "concatenation" if model_cfg.slot_combine == "concat" else "sum"
    if model_cfg.bind_features:
        text.append(
            f"An object vector is the {combine} of its five slots, each first **bound** "
            "(multiplied element-wise) to a fixed random role vector of its feature, stored in "
            "the weights; unbinding with a role reads that feature back."
        )
    else:
        text.append(
            f"An object vector is the plain {combine} of its five slots (**no binding** to "
            "feature roles: `bind_features` is false)."
        )
    if model_cfg.slot_combine == "concat":
        text.append(
            f"The decoder therefore sees every slot separately ({5 * d} numbers per object)."
        )
    if model_cfg.bind_objects:
        text.append(
            "A scene vector is the sum of its object vectors, each **bound** to an object role "
            f"(up to {model_cfg.num_object_roles} objects), so a feature of one object can be "
            "queried from the scene."
        )
    else:
        text.append(
            "A scene vector is the plain sum of its object vectors (**no object roles**: "
            "`bind_objects` is false), so it cannot tell which feature belongs to which object."
        )
    text.append(
        "The decoder turns one object or scene vector into a 64×64 picture, so exchanging, "
        "summing and binding latents edits pictures: take the shape of one image into another, "
        "build one object from five donors, compose scenes."
    )
    return textwrap.fill(" ".join(text), width=100, break_long_words=False, break_on_hyphens=False)


def describe_stages(cfg: TrainConfig) -> str:
    lines = []
    for stage, weight in cfg.stages.items():
        words = STAGE_WORDS.get(stage, "")
        lines.append(f"  - `{stage}` (weight {weight:g}): {words}")
    return "\n".join(lines)


def card_limitations(model_cfg) -> str:
    items = [
        "Inputs other than binary dSprites sprites (photographs, drawings, other shapes) give "
        "meaningless latents; uploads are thresholded to black and white first.",
        "A square looks the same after a quarter turn and an ellipse after a half turn, so an "
        "orientation taken from such a sprite is only defined up to that symmetry.",
    ]
    if model_cfg.bind_objects:
        items.append(
            f"A bound scene holds at most {model_cfg.num_object_roles} objects (one per object "
            "role of the item memory)."
        )
    else:
        items.append(
            "Scenes are plain sums of object vectors: which object a feature belongs to is not "
            "recorded, so scene queries and per-object edits are not supported."
        )
    items.append(
        "The numbers above are the measured quality of this checkpoint; where they fall short of "
        "the reconstruction quality, edits fall short too."
    )
    return "\n".join(f"- {item}" for item in items)


def write_model_card(
    output_dir: Path,
    cfg: TrainConfig,
    metrics: dict,
    figures: list[str],
    command: str,
    wall_time_s: float,
    hardware: str,
    repo_id: str | None,
    dataset_id: str | None,
) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    data = "rendered on the fly by dsvsa.sampling"
    if cfg.data != "sampler":
        data = display_path(cfg.data)
    if cfg.holdout:
        data += f" (hold-out: {cfg.holdout})"
    card_data = ModelCardData(
        library_name="dsvsa",
        license="apache-2.0",
        tags=["dsprites", "vae", "vector-symbolic-architecture", "disentanglement"],
        datasets=[dataset_id] if dataset_id else None,
        model_name=repo_id or output_dir.name,
    )
    hours, rest = divmod(int(round(wall_time_s)), 3600)
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        repo_id=repo_id or display_path(output_dir),
        architecture=describe_model(cfg.model_config()),
        limitations=card_limitations(cfg.model_config()),
        stage_list=describe_stages(cfg),
        metrics_table=metrics_table(metrics),
        figures=figures_markdown(output_dir, figures),
        training_command=command,
        seed=cfg.seed,
        data=data,
        wall_time=f"{hours} h {rest // 60} min {rest % 60} s ({wall_time_s:.0f} s)",
        hardware=hardware,
        config_json=json.dumps(cfg.to_dict(), indent=2),
        stages=", ".join(f"{s} (weight {w:g})" for s, w in cfg.stages.items()),
        steps=cfg.max_steps,
    )
    card.save(output_dir / "README.md")


def run_evaluation(model, cfg: TrainConfig, output_dir: Path) -> tuple[dict, list[str]]:
    """Final evaluation with dsvsa.evaluation; (metrics, figure file names in output_dir).

    Writes metrics.json and the figures into output_dir. A failing evaluation is logged and
    leaves the saved model in place (the card then says no metrics were measured).
    """
    try:
        from dsvsa import evaluation
    except ImportError:
        logger.warning("dsvsa.evaluation is not available; the card lists no metrics")
        return {}, []
    data = None if cfg.data == "sampler" else cfg.data
    try:
        metrics = evaluation.evaluate(
            model,
            data=data,
            num=cfg.eval_num,
            seed=cfg.seed,
            out_dir=output_dir,
            holdout=cfg.holdout,
        )
    except Exception:  # the model is saved already; report and go on
        logger.exception("final evaluation failed; the card lists no metrics")
        return {}, []
    figures = [name for name in evaluation.FIGURES.values() if (output_dir / name).is_file()]
    return metrics, figures


# ---------------------------------------------------------------------------------------------
# the run


def stage_batch(cfg: TrainConfig, stage: str) -> int:
    return cfg.stage_batch_size.get(stage, cfg.batch_size)


def get_batches(source, cfg: TrainConfig, step: int, process: int, micro: int, device) -> dict:
    """One micro-batch per stage, drawn from generators seeded by (seed, step, process)."""
    batches = {}
    for stage in cfg.stages:
        rng = step_rng(cfg.seed, step, process, STAGES.index(stage), micro)
        n = stage_batch(cfg, stage)
        if source.name == "sampler":
            batch = source.batch(stage, rng, n, "train")
        else:
            index = step * cfg.gradient_accumulation_steps + micro
            batch = source.batch(stage, rng, n, "train", step=index, process=process)
        batches[stage] = to_tensors(batch, device)
    return batches


def eval_batches(source, cfg: TrainConfig, device) -> list[dict]:
    """Fixed held-out batches (the same at every evaluation of a run)."""
    out = []
    for i in range(cfg.eval_batches):
        batches = {}
        for stage in cfg.stages:
            rng = eval_rng(cfg.seed, STAGES.index(stage), i)
            n = stage_batch(cfg, stage)
            if source.name == "sampler":
                batch = source.batch(stage, rng, n, "test")
            else:
                batch = source.batch(stage, rng, n, "test", step=i, process=0)
            batches[stage] = to_tensors(batch, device)
        out.append(batches)
    return out


@torch.no_grad()
def evaluate_losses(objective: Objective, batches: list[dict]) -> dict[str, float]:
    was_training = objective.training
    objective.eval()
    totals: dict[str, float] = {}
    for batch in batches:
        for key, value in objective(batch).items():
            totals[key] = totals.get(key, 0.0) + float(value) / len(batches)
    objective.train(was_training)
    return totals


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _cpu_processes() -> bool:
    """True for several processes on a machine without CUDA: accelerate then uses gloo.

    A multi-process launch (torchrun, ``accelerate launch --multi_gpu`` or the config
    training/accelerate_cpu2.yaml) sets WORLD_SIZE; without ``cpu=True`` accelerate would run
    each process alone on such a machine.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    forced = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    return forced or (world > 1 and not torch.cuda.is_available())


def train(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm.auto import tqdm

    from dsvsa.model import DSpritesVSA

    output_dir = Path(cfg.output_dir)
    resume_from = prepare_output_dir(output_dir, args.resume, args.overwrite)
    if args.push_dataset_to_hub and cfg.data != "sampler" and not Path(cfg.data).is_dir():
        raise RunError(
            f"--push-dataset-to-hub: the data {cfg.data!r} is not a local dataset folder "
            "(it is on the Hub already)"
        )

    # processes and devices (nothing written yet)
    project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir))
    accelerator = Accelerator(
        log_with=cfg.log_with,
        project_config=project,
        mixed_precision=cfg.mixed_precision,
        cpu=_cpu_processes(),
    )
    device = accelerator.device
    process = accelerator.process_index
    num_processes = accelerator.num_processes
    # read while the launcher runs (a signal may end it before this process stops)
    args.typed_command = _typed_command(num_processes, getattr(args, "argv", None))
    main = accelerator.is_main_process

    # data source (a dataset lacking the needed columns fails here)
    try:
        source = make_source(cfg, num_processes=num_processes)
    except ValueError as err:
        raise RunError(str(err)) from None

    # model and optimizer, identically initialised in every process
    torch.manual_seed(cfg.seed)
    model = DSpritesVSA(cfg.model_config()).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
    )

    # resume: every file of the checkpoint is read and checked before anything is written
    start_step, wall_before = 0, 0.0
    if resume_from is not None:
        trainer = load_checkpoint(resume_from, model, optimizer, cfg)
        if trainer.get("num_processes", num_processes) != num_processes:
            logger.warning(
                "checkpoint %s was written by %s processes, this run has %s: batches after "
                "the resume differ from an uninterrupted run",
                resume_from,
                trainer.get("num_processes"),
                num_processes,
            )
        start_step = trainer["step"]
        wall_before = float(trainer.get("wall_time_s", 0.0))
        if start_step > cfg.max_steps:
            raise RunError(
                f"checkpoint {resume_from} is at step {start_step}, beyond max_steps "
                f"{cfg.max_steps}"
            )

    objective = Objective(model, cfg)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    accelerator.wait_for_everyone()

    # from here on the output dir is written
    if main:
        if args.overwrite and resume_from is None:
            clear_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(output_dir / "losses.jsonl", start_step)
        truncate_jsonl(output_dir / "eval.jsonl", start_step)
        (output_dir / "training_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        logger.info("training config: %s", display_path(output_dir / "training_config.json"))
        logger.info(
            "%s parameters, %s process(es) on %s, steps %s..%s",
            f"{model.num_parameters():,}",
            num_processes,
            device,
            start_step,
            cfg.max_steps,
        )
    if cfg.log_with:
        accelerator.init_trackers("tensorboard", config=flat_hparams(cfg))
    held_out = eval_batches(source, cfg, device)
    raw = accelerator.unwrap_model(objective)

    # the loop
    progress = tqdm(
        total=cfg.max_steps, initial=start_step, disable=not main, desc="train", dynamic_ncols=True
    )
    t0 = time.time()
    accum = cfg.gradient_accumulation_steps
    last_parts: dict[str, float] = {}
    with StopRequests(announce=main) as stops:
        for step in range(start_step, cfg.max_steps):
            # learning rate for this step
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # forward and backward over the micro-batches; gradients sync on the last one
            torch.manual_seed(step_torch_seed(cfg.seed, step, process))
            sums: dict[str, torch.Tensor] = {}
            for micro in range(accum):
                batches = get_batches(source, cfg, step, process, micro, device)
                sync = micro == accum - 1
                with accelerator.no_sync(objective) if not sync else contextlib.nullcontext():
                    with accelerator.autocast():
                        out = objective(batches)
                    accelerator.backward(out["loss"] / accum)
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float() / accum

            # clip, step
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            # losses averaged over processes
            keys = sorted(sums)
            values = accelerator.reduce(torch.stack([sums[k] for k in keys]), reduction="mean")
            parts = dict(zip(keys, values.tolist(), strict=True))
            if not math.isfinite(parts["loss"]):
                raise RunError(f"loss became {parts['loss']} at step {step + 1}; lower lr")
            last_parts = parts
            done = step + 1
            if main:
                append_jsonl(output_dir / "losses.jsonl", {"step": done, "lr": lr, **parts})
                progress.update(1)
                progress.set_postfix(loss=f"{parts['loss']:.1f}")
            if cfg.log_with and (done % cfg.log_interval == 0 or done == cfg.max_steps):
                logs = {f"train/{k}": v for k, v in parts.items()}
                logs["train/lr"] = lr
                accelerator.log(logs, step=done)

            # held-out losses and quick metrics
            if cfg.eval_interval and (done % cfg.eval_interval == 0 or done == cfg.max_steps):
                if main:
                    record = evaluate_losses(raw, held_out)
                    record.update(quick_metrics(raw.model, cfg, device=device))
                    append_jsonl(output_dir / "eval.jsonl", {"step": done, **record})
                    if cfg.log_with:
                        accelerator.log({f"eval/{k}": v for k, v in record.items()}, step=done)
                    progress.write(
                        f"step {done}: held-out loss {record['loss']:.1f} (training objective), "
                        f"recon BCE {record['recon_bce']:.1f} nats/image, "
                        f"recon IoU {record['recon_iou']:.3f}"
                    )

            # stop early when asked to (the checkpoint below lets --resume continue): --stop-at,
            # --time-limit, or SIGINT / SIGTERM in any process (all processes stop at the same step)
            stop = args.stop_at is not None and done >= args.stop_at
            reason = f"--stop-at {args.stop_at}" if stop else ""
            if args.time_limit is not None or num_processes > 1:
                flags = torch.tensor([time.time() - t0, float(stops.received is not None)])
                elapsed, signalled = accelerator.reduce(flags.to(device), reduction="sum").tolist()
                elapsed /= num_processes
            else:
                elapsed, signalled = time.time() - t0, float(stops.received is not None)
            if args.time_limit is not None and elapsed >= 60 * args.time_limit and not stop:
                stop, reason = True, f"--time-limit {args.time_limit:g} min"
            if signalled and not stop:
                stop, reason = True, stops.received or "a signal to another process"

            # checkpoint
            periodic = cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0
            if periodic or done == cfg.max_steps or (stop and done < cfg.max_steps):
                if main:
                    wall = wall_before + time.time() - t0
                    extra = {"num_processes": num_processes, "wall_time_s": wall, "last": parts}
                    path = output_dir / "checkpoints" / f"step_{done}"
                    save_checkpoint(path, raw.model, optimizer, cfg, done, extra)
                    prune_checkpoints(output_dir, cfg.keep_checkpoints)
                accelerator.wait_for_everyone()
            if stop and done < cfg.max_steps:
                progress.close()
                if main:
                    saved = display_path(output_dir / "checkpoints" / f"step_{done}")
                    print(
                        f"train.py: stopped ({reason}) after step {done} of {cfg.max_steps}, "
                        f"checkpoint {saved}; continue with: {resume_command(args, num_processes)}",
                        file=sys.stderr,
                        flush=True,
                    )
                accelerator.end_training()
                return output_dir
    progress.close()
    wall_time = wall_before + time.time() - t0

    # final model, config, evaluation and card (main process only)
    accelerator.wait_for_everyone()
    if main:
        model = raw.model
        model.eval()
        model.save_pretrained(output_dir)
        (output_dir / "training_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        metrics, figures = {}, []
        if cfg.eval_at_end:
            metrics, figures = run_evaluation(model, cfg, output_dir)
        if metrics and cfg.log_with:
            from dsvsa.evaluation import flatten_metrics

            accelerator.log(flatten_metrics(metrics, prefix="final"), step=cfg.max_steps)
        if not metrics:
            # no evaluation: the card lists the last training losses instead
            metrics = {"train": last_parts} if last_parts else {}
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(
            output_dir,
            cfg,
            metrics,
            figures,
            command=_join(args.typed_command),
            wall_time_s=wall_time,
            hardware=hardware_summary(num_processes),
            repo_id=args.push_to_hub,
            dataset_id=args.push_dataset_to_hub,
        )
        logger.info("saved %s (%.0f s of training)", output_dir, wall_time)
        if args.push_dataset_to_hub:
            push_dataset(cfg, output_dir, args.push_dataset_to_hub, args.private)
        if args.push_to_hub:
            push_model(output_dir, args.push_to_hub, args.private)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def flat_hparams(cfg: TrainConfig) -> dict:
    """The config as TensorBoard hparams: scalars only, nested keys joined by dots."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = json.dumps(value)

    walk("", cfg.to_dict())
    return out


def training_command(num_processes: int, script_args: list[str] | None = None) -> str:
    """The command line of this run as typed (launcher included), paths relative to the cwd.

    The launcher's own options are read from its command line (the parent process, on Linux);
    elsewhere they are reconstructed from the environment accelerate sets.
    """
    return _join(_typed_command(num_processes, script_args))


def resume_command(args: argparse.Namespace, num_processes: int = 1) -> str:
    """This run's command with --resume (and without --overwrite and --stop-at)."""
    argv = getattr(args, "typed_command", None) or _typed_command(
        num_processes, getattr(args, "argv", None)
    )
    script = _script_index(argv)
    head, tail = argv[: script + 1], argv[script + 1 :]
    kept: list[str] = []
    skip = False
    for token in tail:
        if skip:
            skip = False
            continue
        if token == "--overwrite" or token.startswith("--stop-at="):
            continue
        if token == "--stop-at":
            skip = True
            continue
        kept.append(token)
    if "--resume" not in kept:
        kept.append("--resume")
    return _join(head + kept)


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies inside it, else unchanged."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive on Windows
        return text
    return text if rel == ".." or rel.startswith(".." + os.sep) else rel


def _join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _script_index(argv: list[str]) -> int:
    for i, token in enumerate(argv):
        if os.path.basename(token) == Path(__file__).name:
            return i
    return 0


def _relative_tokens(argv: list[str]) -> list[str]:
    out = []
    for token in argv:
        if token.startswith("--") and "=" in token:
            key, value = token.split("=", 1)
            out.append(f"{key}={display_path(value)}")
        else:
            out.append(display_path(token))
    return out


def _launcher_from_parent(script_args: list[str]) -> list[str] | None:
    """The launcher part of the parent's command line, if the parent launched this script."""
    ppid = os.getppid()
    try:
        raw = Path(f"/proc/{ppid}/cmdline").read_bytes()
        parent_cwd = os.readlink(f"/proc/{ppid}/cwd")
    except OSError:
        return None
    parent = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    here = os.path.realpath(__file__)
    for i, token in enumerate(parent):
        if os.path.realpath(os.path.join(parent_cwd, token)) != here:
            continue
        if parent[i + 1 :] != script_args:
            return None  # not the command that started this process
        launcher = parent[:i]
        if launcher and os.path.basename(launcher[0]).startswith("python"):
            launcher = launcher[1:]
        if launcher[:1] == ["-m"] and len(launcher) > 1:
            module = {
                "accelerate.commands.launch": ["accelerate", "launch"],
                "torch.distributed.run": ["torchrun"],
            }.get(launcher[1], ["python", "-m", launcher[1]])
            launcher = module + launcher[2:]
        elif launcher:
            name = os.path.basename(launcher[0])
            launcher = ([name, "launch"] if name == "accelerate-launch" else [name]) + launcher[1:]
        if not launcher or launcher[0] not in ("accelerate", "torchrun"):
            return None
        return launcher
    return None


def _typed_command(num_processes: int, script_args: list[str] | None) -> list[str]:
    script_args = list(sys.argv[1:] if script_args is None else script_args)
    script = display_path(Path(__file__).resolve())
    launcher = _launcher_from_parent(script_args)
    if launcher is None and any(k.startswith("ACCELERATE_") for k in os.environ):
        # launched by accelerate, whose command line cannot be read: rebuild its options
        launcher = ["accelerate", "launch"]
        if num_processes > 1 and not torch.cuda.is_available():
            launcher += ["--config_file", "training/accelerate_cpu2.yaml"]
            if num_processes != 2:
                launcher += ["--num_processes", str(num_processes)]
        elif num_processes > 1:
            launcher += ["--multi_gpu", "--num_processes", str(num_processes)]
        elif os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            launcher.append("--cpu")
    if launcher is None:
        launcher = ["python"]
    return _relative_tokens([*launcher, script, *script_args])


def push_model(output_dir: Path, repo_id: str, private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        repo_type="model",
        allow_patterns=PUSH_PATTERNS,
        commit_message="Upload DSpritesVSA model trained with training/train.py",
    )
    logger.info("pushed %s to the Hub model repo %s", output_dir, repo_id)


def push_dataset(cfg: TrainConfig, output_dir: Path, repo_id: str, private: bool) -> None:
    """Push the data the run trained on as configs of a Hub dataset repository.

    A dataset folder is pushed as it is (the configs its stages read). For a sampler run, the
    same distribution (seed and hold-out of the run) is written with ``dsvsa.export`` into
    output_dir/dataset, dataset_train_size / dataset_test_size examples per config, and pushed.
    """
    from dsvsa.export import build_config, push_config
    from dsvsa.training import data_config

    configs = sorted({data_config(cfg, stage) for stage in cfg.stages})
    if cfg.data == "sampler":
        folder = output_dir / "dataset"
        for config in configs:
            build_config(
                folder,
                config,
                cfg.dataset_train_size,
                cfg.dataset_test_size,
                seed=cfg.seed,
                holdout=cfg.holdout,
                progress=False,
            )
    elif Path(cfg.data).is_dir():
        folder = Path(cfg.data)
    else:
        raise RunError(f"--push-dataset-to-hub: the data {cfg.data!r} is already a Hub dataset")
    for config in configs:
        url = push_config(folder, config, repo_id, private=private)
        logger.info("pushed dataset config %r to %s (%s)", config, repo_id, url)


def main(argv: list[str] | None = None) -> int:
    from dsvsa.cli import configure_logging

    configure_logging()  # INFO lines, HTTP clients quiet, no warning printed twice
    try:
        args, overrides = parse_args(argv)
        cfg = load_config(args, overrides)
        train(args, cfg)
    except (ConfigError, RunError, FileNotFoundError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # outside the loop (setup, final evaluation, push) or a second Ctrl-C inside it
        print(
            "train.py: interrupted; nothing more was saved (a run that wrote checkpoints "
            "continues from its last one with --resume)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
