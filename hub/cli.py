"""The ``vithub`` command: one entry per subcommand in :data:`COMMANDS` (its parser and its handler); the
``vithub bench`` targets are their own table in :mod:`vithub.bench.cli`. ``-v``/``-q`` set how much vithub's
loggers say."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from vithub.catalog import UnknownModelError, list_vithub_models, model_info, summarize


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_vithub_models()
    if args.filter:
        names = [name for name in names if args.filter in name]
    rows = [summarize(name, with_macs=not args.no_macs).to_dict() for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no vh_* models registered")
        return 0
    print(f"{'model':<36}{'params (M)':>12}{'GMACs':>9}{'input':>14}  pretrained")
    for row in rows:
        gmacs = "-" if row["gmacs"] is None else f"{row['gmacs']:.2f}"
        size = "x".join(str(s) for s in row["input_size"])
        tags = ", ".join(row["pretrained_tags"]) or "-"
        print(f"{row['name']:<36}{row['params_m']:>12.2f}{gmacs:>9}{size:>14}  {tags}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(model_info(args.name), indent=2, default=str))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vithub.publishing import model_from_checkpoint, model_from_run, push_to_hub

    source = Path(args.source)
    if source.is_dir():
        model, card = model_from_run(source, **({"model_name": args.model} if args.model else {}))
    else:
        model, card = model_from_checkpoint(source, args.model)
    if args.license:
        card["license"] = args.license
    if args.dataset:
        card["datasets"] = [args.dataset]
    url = push_to_hub(model, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message, **{key: value for key, value in card.items() if value})
    print(json.dumps({"repo_id": args.repo_id, "commit_url": url, "architecture": _architecture(model),
                      "metrics": card.get("metrics", {})}))
    return 0


def _architecture(model) -> str:
    """A timm model's architecture, ``<detector>:<backbone>`` for a vithub detector, ``<head>:<backbone>`` for a
    segmentor."""
    from vithub.detection.publishing import kind_of_model

    kind = kind_of_model(model)
    return kind.architecture(model) if kind is not None else model.pretrained_cfg.get("architecture")


def _num_classes(model) -> Optional[int]:
    from vithub.detection.publishing import kind_of_model

    kind = kind_of_model(model)
    settings = getattr(model, kind.settings) if kind is not None else {}
    return settings.get("num_classes", getattr(model, "num_classes", None))


def _cmd_pull(args: argparse.Namespace) -> int:
    from vithub.publishing import load, pull

    folder = pull(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    model = load(folder)  # verifies the weights against the architecture
    print(json.dumps({"repo_id": args.repo_id, "revision": folder.name, "path": str(folder),
                      "architecture": _architecture(model),
                      "num_classes": _num_classes(model),
                      "files": sorted(entry.name for entry in folder.iterdir())}))
    return 0


def _export_model(source: str, pretrained: bool):
    """The model ``vithub export`` exports: a registered timm/vh name (with its pretrained weights unless
    ``--no-pretrained``), else whatever :func:`vithub.load` takes (run folder, checkpoint, saved folder, Hub repo)."""
    from pathlib import Path

    import timm

    from vithub.export import ExportError
    from vithub.publishing import load

    if timm.is_model(source.split(".", 1)[0]) and not Path(source).exists():
        try:
            return timm.create_model(source, pretrained=pretrained)
        except Exception as error:  # a download that failed, a tag that does not exist
            raise ExportError(f"{source}: could not build it{' with pretrained weights' if pretrained else ''}: "
                              f"{type(error).__name__}: {error} (--no-pretrained exports random weights)") from error
    if not Path(source).exists() and source.count("/") != 1 and not source.startswith("hf-hub:"):
        raise ExportError(f"{source!r} is not a registered model (vithub list), a run folder, a checkpoint, a saved "
                          "folder or a Hub repo (org/name)")
    return load(source)


def _cmd_export(args: argparse.Namespace) -> int:
    from vithub.export import export_onnx, export_program

    model = _export_model(args.source, pretrained=not args.no_pretrained)
    if args.format != "onnx":
        program = export_program(model, args.output, format=args.format, img_size=args.img_size,
                                 dynamic_batch=args.dynamic_batch, batch_size=args.batch_size, strict=args.strict,
                                 fuse=args.fuse, atol=args.atol)
        print(f"wrote {program.path} ({args.format}, {program.input_size[1]}x{program.input_size[2]}, "
              f"{'dynamic batch' if program.dynamic_batch else f'batch {args.batch_size}'}, "
              f"{'strict' if program.strict else 'non-strict'}): loaded file vs eager max abs diff "
              f"{program.max_abs_diff:.2e} at batch {', '.join(map(str, program.validated_batch_sizes))}",
              file=sys.stderr)
        print(json.dumps(program.as_dict()))
        return 0
    result = export_onnx(model, args.output, img_size=args.img_size, dynamic_batch=args.dynamic_batch,
                         batch_size=args.batch_size, opset=args.opset, fuse=args.fuse, atol=args.atol)
    print(f"wrote {result.path} ({result.input_size[1]}x{result.input_size[2]}, "
          f"{'dynamic batch' if result.dynamic_batch else f'batch {args.batch_size}'}, opset {result.opset}): "
          f"ONNX Runtime vs eager max abs diff {result.max_abs_diff:.2e} at batch "
          f"{', '.join(map(str, result.validated_batch_sizes))}", file=sys.stderr)
    print(json.dumps(result.as_dict()))
    return 0


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--filter", default="", help="only names containing this text")
    parser.add_argument("--no-macs", action="store_true", help="skip counting MACs (faster)")


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name, e.g. vh_nat_tiny or vh_nat_tiny.in1k")


def _recipes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, help="a recipe to print whole (values and sources)")


def _cmd_recipes(args: argparse.Namespace) -> int:
    from vithub.train.recipes import RECIPES, get_recipe

    if args.name is not None:
        try:
            print(json.dumps(get_recipe(args.name).as_dict(), indent=2))
        except ValueError as error:
            print(f"vithub: error: {error}", file=sys.stderr)
            return 2
        return 0
    models = {name: str(recipe.values.get("model", "-")) for name, recipe in RECIPES.items()}
    name_width, model_width = (max(map(len, column)) + 2 for column in (models, models.values()))
    for name in sorted(RECIPES):
        print(f"{name:<{name_width}}{models[name]:<{model_width}}{RECIPES[name].description}")
    return 0


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a `vithub train` output folder, or a checkpoint (.safetensors, .state.pt)")
    parser.add_argument("repo_id", help="namespace/name (or name, in your namespace)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if new)")
    parser.add_argument("--commit-message", default="Upload model with vithub")
    parser.add_argument("--license", default=None, help="model card licence (default: the architecture's)")
    parser.add_argument("--dataset", default=None, help="Hub dataset id for the card's metadata")
    parser.add_argument("--model", default=None, help="architecture, for a checkpoint that does not name it")


def _pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", help="namespace/name (optionally @revision)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit sha")
    parser.add_argument("--cache-dir", default=None)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a registered name (vh_*, timm's), a run folder, a checkpoint, a saved folder "
                                       "or a Hub repo")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torch-export", "aoti"],
                        help="onnx; torch-export (a torch.export program, .pt2); aoti (an AOTInductor package, .pt2)")
    parser.add_argument("--output", required=True, help="the .onnx or .pt2 file (written atomically)")
    parser.add_argument("--strict", action="store_true", help="torch-export/aoti: trace with TorchDynamo (strict)")
    parser.add_argument("--img-size", nargs="+", type=int, default=None, metavar="SIZE",
                        help="H W, or one side (default: the model's pretrained input size)")
    parser.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    parser.add_argument("--batch-size", type=int, default=1, help="the fixed batch without --dynamic-batch")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorms first (LeViT, EfficientViT)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted ONNX Runtime vs eager difference")
    parser.add_argument("--no-pretrained", action="store_true", help="random weights (a registered name only)")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from vithub.train.cli import add_train_arguments

    add_train_arguments(parser)


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    from vithub.train.cli import add_validate_arguments

    add_validate_arguments(parser)


def _cmd_train(args: argparse.Namespace) -> int:
    from vithub.train.cli import run_train

    return run_train(args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from vithub.train.cli import run_validate

    return run_validate(args)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pack = actions.add_parser("pack", help="write an ImageNet-style folder (train/, val/, a sub-folder per class) as "
                              "WebDataset-style tar shards that vithub train reads (--data OUT_DIR)",
                              description="Images are stored byte for byte; each shard and _info.json is written "
                                          "atomically.")
    pack.add_argument("image_folder", help="folder with train/ and val/ (val/ optional), one sub-folder per class")
    pack.add_argument("out_dir", help="where the shards and _info.json go")
    pack.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")


def _cmd_data(args: argparse.Namespace) -> int:
    from vithub.train.data import DataError
    from vithub.train.shards import pack_image_folder

    if args.shard_size < 1:
        print(f"vithub data pack: error: --shard-size must be >= 1, got {args.shard_size}", file=sys.stderr)
        return 2
    try:
        info = pack_image_folder(args.image_folder, args.out_dir, args.shard_size)
    except DataError as error:
        print(f"vithub data pack: error: {error}", file=sys.stderr)
        return 2
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} images, {len(split['filenames'])} shards")
    print(f"{len(info['classes'])} classes; train with: vithub train --data {args.out_dir}")
    return 0


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from vithub.bench.cli import add_bench_arguments

    add_bench_arguments(parser, parents=(_verbosity_parser(),))


def _cmd_bench(args: argparse.Namespace) -> int:
    from vithub.bench.cli import run_bench

    return run_bench(args)


@dataclass(frozen=True)
class Command:
    """A ``vithub`` subcommand: its name, help line, flags and handler (which returns the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = (
    Command("list", "table of registered vh_* models", _list_arguments, _cmd_list),
    Command("info", "pretrained cfg and feature_info of one model", _info_arguments, _cmd_info),
    Command("train", "fine-tune a timm model (default: the embedded digits data set)", _train_arguments, _cmd_train),
    Command("validate", "evaluate a model and checkpoint on a validation split", _validate_arguments, _cmd_validate),
    Command("recipes", "the official ImageNet recipe presets of vithub train --recipe", _recipes_arguments,
            _cmd_recipes),
    Command("data", "prepare training data: vithub data pack IMAGE_FOLDER OUT_DIR writes tar shards",
            _data_arguments, _cmd_data),
    Command("push", "publish a training run's best weights (or a checkpoint) to the Hub", _push_arguments, _cmd_push),
    Command("pull", "download a model repo into the cache and verify its weights", _pull_arguments, _cmd_pull),
    Command("export", "export a model (ONNX, torch.export, AOTInductor), check it and compare it with eager",
            _export_arguments,
            _cmd_export),
    Command("bench", "benchmarks: kernels, models, gpu, data, detection, segmentation, tokens, export",
            _bench_arguments, _cmd_bench),
)


def _verbosity_parser() -> argparse.ArgumentParser:
    """``-v``/``-q``, accepted before or after the subcommand (not given after it: the value before it stands)."""
    from vithub.train.cli import add_verbosity_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_verbosity_arguments(parser, default=argparse.SUPPRESS)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``vithub`` parser: one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="vithub", description="Efficient vision-transformer backbones for timm.",
                                     parents=[_verbosity_parser()])
    parser.set_defaults(verbose=0, quiet=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help,
                                        parents=[_verbosity_parser()])
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vithub`` console script."""
    from vithub.train.cli import configure_logging

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    configure_logging(args.verbose - args.quiet)
    from vithub.bench.gpu import GpuUnavailableError
    from vithub.bench.models import NoTwinError
    from vithub.export import ExportError
    from vithub.publishing import HubError

    try:
        return args.func(args)
    except (UnknownModelError, NoTwinError, ImportError, HubError, ExportError, GpuUnavailableError) as error:
        print(f"vithub: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
