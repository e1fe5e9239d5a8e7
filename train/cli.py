"""Command-line front end of the training pipeline: ``vithub train``, ``vithub validate``, ``python -m vithub.train``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .config import add_config_arguments, config_from_args
from .data import DataError
from .engine import TrainingError, train, validate
from .reporting import WandbStartError, WandbUnavailableError
from .tasks import task_names

# The options vithub validate shares with vithub train (same flags, same defaults).
VALIDATE_OPTIONS = ("task", "model", "data", "data_dir", "val_split", "max_unreadable", "batch_size", "img_size",
                    "device")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vithub train``: one flag per :class:`TrainConfig` field (timm ``train.py`` names where it
    has them)."""
    add_config_arguments(parser, choices={"task": task_names()})


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vithub validate``: a checkpoint and the data options of ``vithub train``."""
    parser.add_argument("--checkpoint", default=None, help=".safetensors (e.g. a run's best-eNNN.safetensors)")
    add_config_arguments(parser, VALIDATE_OPTIONS, choices={"task": task_names()})


def run_train(args: argparse.Namespace) -> int:
    try:
        summary = train(config_from_args(vars(args)))
    except (DataError, TrainingError, ValueError, WandbUnavailableError, WandbStartError) as error:
        print(f"vithub train: error: {error}", file=sys.stderr)
        return 2
    if "metric_names" in summary:  # rank 0 (or a single process) reports; other torchrun ranks stay quiet
        print(json.dumps({key: summary[key] for key in (*summary["metric_names"], "seconds")}))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    try:
        metrics = validate(args.model, args.checkpoint, args.data, args.batch_size, args.img_size, args.device,
                           args.data_dir, args.val_split, args.max_unreadable, task=args.task)
    except (DataError, TrainingError, ValueError) as error:
        print(f"vithub validate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vithub.train [options]``: the same as ``vithub train``."""
    parser = argparse.ArgumentParser(prog="python -m vithub.train", description="Fine-tune a timm model.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(list(argv) if argv is not None else None))
