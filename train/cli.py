"""Command-line front end of the training pipeline: ``vithub train``, ``vithub validate``, ``python -m vithub.train``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .data import DataError
from .reporting import WandbStartError, WandbUnavailableError
from .engine import DEFAULT_MODEL, TrainConfig, TrainingError, config_from_args, train, validate


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vithub train`` (timm ``train.py`` names where it has them)."""
    defaults = TrainConfig()
    parser.add_argument("--model", default=DEFAULT_MODEL, help="any timm model name (ours: vh_*)")
    parser.add_argument("--pretrained", action="store_true", help="start from the model's pretrained weights")
    parser.add_argument("--initial-checkpoint", default=None, help="start from these weights (.safetensors or "
                        "a weights-only torch file)")
    parser.add_argument("--data", "--dataset", default=None, help="folder with train/ and val/ class sub-folders, "
                        "or a timm dataset spec (torch/cifar10, hfds/<name>) read from --data-dir; default: the "
                        "embedded handwritten digits (scikit-learn)")
    parser.add_argument("--data-dir", default=None, help="where a dataset spec's files are")
    parser.add_argument("--train-split", default=defaults.train_split, help="split of a dataset spec to train on")
    parser.add_argument("--val-split", default=defaults.val_split, help="split of a dataset spec to validate on")
    parser.add_argument("--dataset-download", action="store_true", help="let torchvision download a torch/ spec")
    parser.add_argument("--max-unreadable", type=float, default=defaults.max_unreadable, help="largest fraction "
                        "of a split's images that may be unreadable (skipped and counted) before training stops")
    parser.add_argument("--output", default=defaults.output, help="run folder: checkpoints, metrics, summary.json")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", "-b", type=int, default=defaults.batch_size)
    parser.add_argument("--opt", default=defaults.opt, help="timm optimizer name")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--sched", default=defaults.sched, help="timm scheduler name")
    parser.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs)
    parser.add_argument("--min-lr", type=float, default=defaults.min_lr)
    parser.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay (timm group_matcher)")
    parser.add_argument("--drop-path", type=float, default=None)
    parser.add_argument("--mixup", type=float, default=0.0)
    parser.add_argument("--cutmix", type=float, default=0.0)
    parser.add_argument("--smoothing", type=float, default=defaults.smoothing)
    parser.add_argument("--model-ema", action="store_true")
    parser.add_argument("--model-ema-decay", type=float, default=defaults.model_ema_decay)
    parser.add_argument("--amp", default=None, choices=["bfloat16", "float16"], help="mixed precision (CUDA)")
    parser.add_argument("--grad-accum-steps", type=int, default=1)
    parser.add_argument("--clip-grad", type=float, default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--torchcompile", action="store_true")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--workers", "-j", type=int, default=0)
    parser.add_argument("--resume", default=None, help="'auto' (newest complete checkpoint in --output) or a "
                        "*.state.pt file")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N optimizer steps")
    parser.add_argument("--keep-best", type=int, default=defaults.keep_best)
    parser.add_argument("--device", default=None)
    parser.add_argument("--wandb", "--log-wandb", action="store_true", help="log config and metrics to Weights & "
                        "Biases (WANDB_MODE=offline works without an account)")
    parser.add_argument("--wandb-project", default=defaults.wandb_project)
    parser.add_argument("--wandb-name", default=None, help="run name (default: the --output folder's name)")
    parser.add_argument("--wandb-tags", nargs="*", default=None)


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--checkpoint", default=None, help=".safetensors (e.g. a run's best-eNNN.safetensors)")
    parser.add_argument("--data", "--dataset", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--val-split", default="validation")
    parser.add_argument("--max-unreadable", type=float, default=0.01)
    parser.add_argument("--batch-size", "-b", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--device", default=None)


def run_train(args: argparse.Namespace) -> int:
    try:
        summary = train(config_from_args(vars(args)))
    except (DataError, TrainingError, ValueError, WandbUnavailableError, WandbStartError) as error:
        print(f"vithub train: error: {error}", file=sys.stderr)
        return 2
    if "top1" in summary:  # rank 0 (or a single process) reports; other torchrun ranks stay quiet
        print(json.dumps({key: summary[key] for key in ("top1", "top5", "best_top1", "seconds")}))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    try:
        metrics = validate(args.model, args.checkpoint, args.data, args.batch_size, args.img_size, args.device,
                           args.data_dir, args.val_split, args.max_unreadable)
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
