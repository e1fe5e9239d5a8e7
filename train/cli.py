"""Command-line front end of the training pipeline: ``vithub train``, ``vithub validate``, ``python -m vithub.train``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, fields
from typing import Dict, List, Optional, Sequence, Set

from .config import EXPLICIT, SCHEDULE_DEFAULTS, TASK_DEFAULTED, TrainConfig, add_config_arguments, config_from_args
from .data import DataError
from .engine import TrainingError, resolve_config, train, validate
from .reporting import WandbStartError, WandbUnavailableError
from .tasks import task_classes, task_names

# Flags of the command itself, not options of a run (not TrainConfig fields).
COMMAND_FLAGS = ("print_config",)
# The options vithub validate shares with vithub train (same flags, same defaults).
VALIDATE_OPTIONS = ("task", "model", "data", "data_dir", "val_split", "max_unreadable", "batch_size", "img_size",
                    "device")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vithub train``: one flag per :class:`TrainConfig` field (timm ``train.py`` names where it
    has them)."""
    add_config_arguments(parser, choices={"task": task_names()}, extra_help=task_defaults_help())
    add_task_option_arguments(parser)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (recipe, flags, task defaults) as JSON and exit")


def task_defaults_help() -> Dict[str, str]:
    """For each option a task fills in when it is left unset, the help text naming every registered task's default
    (and the default on its embedded data where that differs), read from the tasks themselves."""
    texts: Dict[str, List[str]] = {name: [] for name in TASK_DEFAULTED}
    for task_cls in task_classes():
        task = task_cls()
        full = {**SCHEDULE_DEFAULTS, **task.defaults_for(TrainConfig(task=task_cls.name, data="DATA"))}
        embedded = {**SCHEDULE_DEFAULTS, **task.defaults_for(TrainConfig(task=task_cls.name))}
        for name in TASK_DEFAULTED:
            text = f"{task_cls.name} {full[name]}"
            texts[name].append(text + (f", {embedded[name]} on its embedded data" if embedded[name] != full[name]
                                       else ""))
    return {name: f"default: the task's ({'; '.join(parts)})" for name, parts in texts.items()}


def add_task_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Each registered task's own options, as a group of flags titled by the task. Tasks may share a flag (the same
    name and type, e.g. ``--train-images``): it is listed under the first task and named in the others' titles.
    Flags that are not given stay out of the parsed namespace, so each task fills in its own defaults."""
    added: Set[str] = set()
    for task_cls in task_classes():
        if task_cls.options is None:
            continue
        names = [option_field.name for option_field in fields(task_cls.options)]
        shared = [name for name in names if name in added]
        title = f"--task {task_cls.name} options"
        if shared:
            title += " (also " + ", ".join("--" + name.replace("_", "-") for name in shared) + ", as above)"
        group = parser.add_argument_group(title)
        add_config_arguments(group, [name for name in names if name not in added], config_class=task_cls.options,
                             absent_when_unset=True)
        added.update(names)


def task_config_from_args(values: dict):
    """A :class:`TrainConfig` from parsed arguments, with the chosen task's own options in ``task_options``."""
    from .recipes import apply_recipe

    config = apply_recipe(config_from_args(values), values.get(EXPLICIT) or set())
    chosen = [task_cls for task_cls in task_classes() if task_cls.name == config.task]
    if chosen and chosen[0].options is not None:
        names = {option_field.name for option_field in fields(chosen[0].options)}
        config.task_options = {name: values[name] for name in names if name in values}
    return config


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vithub validate``: a checkpoint and the data options of ``vithub train``."""
    parser.add_argument("--checkpoint", default=None, help=".safetensors (e.g. a run's best-eNNN.safetensors)")
    add_config_arguments(parser, VALIDATE_OPTIONS, choices={"task": task_names()}, extra_help=task_defaults_help())
    add_task_option_arguments(parser)


class _ConsoleHandler(logging.Handler):
    """vithub's messages on the console: info and debug on stdout (progress lines, tables), warnings and errors on
    stderr, as plain text. The stream is looked up at each message, so a redirected ``sys.stdout`` is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"vithub: {record.levelname.lower()}: {text}"
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # a closed stream must not take the run down
            self.handleError(record)


def configure_logging(verbosity: int = 0) -> None:
    """Route the ``vithub`` loggers to the console for a command-line run: 0 shows info and up, 1+ debug, -1
    warnings and up, -2 or less errors only. Library use leaves logging to the program (no handler is added)."""
    levels = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}
    logger = logging.getLogger("vithub")
    logger.setLevel(levels.get(max(-2, min(1, verbosity)), logging.ERROR))
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler())


def add_verbosity_arguments(parser: argparse.ArgumentParser, default: object = 0) -> None:
    """``-v``/``-q`` (counted) for how much the ``vithub`` loggers say (``default=argparse.SUPPRESS`` for a
    subcommand's copy, so that a value given before the subcommand stands)."""
    parser.add_argument("-v", "--verbose", action="count", default=default, help="say more (-v: debug messages)")
    parser.add_argument("-q", "--quiet", action="count", default=default,
                        help="say less (-q: warnings and errors only, -qq: errors only)")


def run_train(args: argparse.Namespace) -> int:
    try:
        config = task_config_from_args(vars(args))
        if getattr(args, "print_config", False):
            print(json.dumps(asdict(resolve_config(config)), indent=2))
            return 0
        summary = train(config)
    except (DataError, TrainingError, ValueError, WandbUnavailableError, WandbStartError) as error:
        print(f"vithub train: error: {error}", file=sys.stderr)
        return 2
    if "metric_names" in summary:  # rank 0 (or a single process) reports; other torchrun ranks stay quiet
        print(json.dumps({key: summary[key] for key in (*summary["metric_names"], "seconds")}))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    try:
        config = task_config_from_args(vars(args))
        metrics = validate(args.model, args.checkpoint, args.data, args.batch_size, args.img_size, args.device,
                           args.data_dir, args.val_split, args.max_unreadable, task=args.task,
                           task_options=config.task_options)
    except (DataError, TrainingError, ValueError) as error:
        print(f"vithub validate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vithub.train [options]``: the same as ``vithub train``."""
    parser = argparse.ArgumentParser(prog="python -m vithub.train", description="Fine-tune a timm model.")
    add_train_arguments(parser)
    add_verbosity_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    configure_logging(args.verbose - args.quiet)
    return run_train(args)
