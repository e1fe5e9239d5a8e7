"""The ``vithub`` command: ``list``, ``info NAME``, ``train``, ``validate``, ``push``, ``pull``, ``bench kernels``,
``bench models``, ``bench gpu``, ``bench data``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

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


# Written into the current directory unless --output says otherwise; {device}: cpu, or the GPU's name.
DEFAULT_BENCH_OUTPUT = {
    "kernels": "kernels_{device}.json",
    "models": "models_{device}.json",
    "gpu": "gpu_kernels_{device}.json",
    "data": "data_readable_samples_cpu.json",
    "detection": "detection_{device}.json",
    "segmentation": "segmentation_{device}.json",
    "tokens": "token_reduction_{device}.json",
    "export": "export_onnxruntime_cpu.json",
}


def _cmd_bench(args: argparse.Namespace) -> int:
    from vithub.bench import device_slug

    device = args.device
    if args.target == "gpu":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # without CUDA, run_gpu_bench refuses below
    output = DEFAULT_BENCH_OUTPUT[args.target] if args.output is None else args.output
    output = output.format(device=device_slug(device))
    if args.target == "gpu":
        from vithub.bench.gpu import run_gpu_bench

        try:
            run_gpu_bench(output=output, repeats=args.repeats or 20, dtype=args.dtype or "bfloat16",
                          quick=args.quick)
        except RuntimeError as error:
            print(f"vithub: error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.target == "kernels":
        from vithub.bench.kernels import run_kernel_bench

        run_kernel_bench(output=output, repeats=args.repeats or 7, device=args.device, dtype=args.dtype or "float32",
                         quick=args.quick, ops=args.ops)
        return 0
    if args.target == "detection":
        from vithub.bench.detection import DEFAULT_BACKBONES, bench_detection

        on_gpu = args.device.startswith("cuda")
        bench_detection(backbones=args.backbones or DEFAULT_BACKBONES,
                        img_size=args.det_img_size or (800 if on_gpu else 320),
                        batch_size=args.det_batch_size or (8 if on_gpu else 2), repeats=args.repeats or 3,
                        device=args.device, amp=args.amp or ("bfloat16" if on_gpu else None), output=output)
        return 0
    if args.target == "segmentation":
        from vithub.bench.segmentation import DEFAULT_BACKBONES as SEGMENTATION_BACKBONES, bench_segmentation

        on_gpu = args.device.startswith("cuda")
        bench_segmentation(backbones=args.backbones or SEGMENTATION_BACKBONES, head=args.head,
                           img_size=args.seg_img_size or 512, batch_size=args.seg_batch_size or (16 if on_gpu else 2),
                           repeats=args.repeats or 3, device=args.device,
                           amp=args.amp or ("bfloat16" if on_gpu else None), output=output)
        return 0
    if args.target == "export":
        from vithub.bench.export import DEFAULT_PAIRS, bench_export

        pairs = [(name, None) for name in args.export_models] if args.export_models else DEFAULT_PAIRS
        bench_export(pairs=pairs, batch_sizes=args.batch_sizes, repeats=args.repeats or 3,
                     img_size=args.img_size or 224, threads=args.threads, output=output, processes=args.processes,
                     control=not args.no_control)
        return 0
    if args.target == "tokens":
        from vithub.bench.token_reduction import DEFAULT_MODELS as TOKEN_MODELS, bench_token_reduction

        bench_token_reduction(models=args.vits or TOKEN_MODELS, r_values=args.r, batch_sizes=args.batch_sizes,
                              repeats=args.repeats or 3, device=args.device, amp=args.amp, img_size=args.img_size,
                              output=output, cropr_rates=args.cropr_rates, ltmp_overhead=not args.no_ltmp)
        return 0
    if args.target == "data":
        from vithub.bench.data import run_data_bench

        run_data_bench(output=output, images=args.images, size=args.image_side, repeats=args.repeats or 5)
        return 0
    from vithub.bench.models import run_model_bench

    run_model_bench(output=output, models=args.models, batch_sizes=args.batch_sizes, modes=args.modes,
                    backends=args.backends, compare=args.compare, compare_imports=args.compare_import,
                    repeats=args.repeats or 3, img_size=args.img_size, device=args.device, twin=args.twin,
                    fused=args.fused, amp=args.amp, processes=args.processes)
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
    if hasattr(model, "detector_config"):
        return f"{model.detector_config['detector']}:{model.detector_config['backbone']}"
    if hasattr(model, "segmentor_config"):
        return f"{model.segmentor_config['head']}:{model.segmentor_config['backbone']}"
    return model.pretrained_cfg.get("architecture")


def _num_classes(model) -> Optional[int]:
    settings = getattr(model, "detector_config", None) or getattr(model, "segmentor_config", None) or {}
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
    from vithub.export import export_onnx

    model = _export_model(args.source, pretrained=not args.no_pretrained)
    result = export_onnx(model, args.output, img_size=args.img_size, dynamic_batch=args.dynamic_batch,
                         batch_size=args.batch_size, opset=args.opset, fuse=args.fuse, atol=args.atol)
    print(f"wrote {result.path} ({result.input_size[1]}x{result.input_size[2]}, "
          f"{'dynamic batch' if result.dynamic_batch else f'batch {args.batch_size}'}, opset {result.opset}): "
          f"ONNX Runtime vs eager max abs diff {result.max_abs_diff:.2e} at batch "
          f"{', '.join(map(str, result.validated_batch_sizes))}", file=sys.stderr)
    print(json.dumps(result.as_dict()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vithub", description="Efficient vision-transformer backbones for timm.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="table of registered vh_* models")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_list.add_argument("--filter", default="", help="only names containing this text")
    p_list.add_argument("--no-macs", action="store_true", help="skip counting MACs (faster)")
    p_list.set_defaults(func=_cmd_list)

    p_info = sub.add_parser("info", help="pretrained cfg and feature_info of one model")
    p_info.add_argument("name", help="model name, e.g. vh_nat_tiny or vh_nat_tiny.in1k")
    p_info.set_defaults(func=_cmd_info)

    from vithub.train.cli import add_train_arguments, add_validate_arguments, run_train, run_validate

    p_train = sub.add_parser("train", help="fine-tune a timm model (default: the embedded digits data set)")
    add_train_arguments(p_train)
    p_train.set_defaults(func=run_train)
    p_validate = sub.add_parser("validate", help="top-1/top-5 of a model and checkpoint on a validation split")
    add_validate_arguments(p_validate)
    p_validate.set_defaults(func=run_validate)

    p_push = sub.add_parser("push", help="publish a training run's best weights (or a checkpoint) to the Hub")
    p_push.add_argument("source", help="a `vithub train` output folder, or a checkpoint (.safetensors, .state.pt)")
    p_push.add_argument("repo_id", help="namespace/name (or name, in your namespace)")
    p_push.add_argument("--private", action="store_true", help="create the repo private")
    p_push.add_argument("--revision", default=None, help="branch to commit to (created from main if new)")
    p_push.add_argument("--commit-message", default="Upload model with vithub")
    p_push.add_argument("--license", default=None, help="model card licence (default: the architecture's)")
    p_push.add_argument("--dataset", default=None, help="Hub dataset id for the card's metadata")
    p_push.add_argument("--model", default=None, help="architecture, for a checkpoint that does not name it")
    p_push.set_defaults(func=_cmd_push)
    p_pull = sub.add_parser("pull", help="download a model repo into the cache and verify its weights")
    p_pull.add_argument("repo_id", help="namespace/name (optionally @revision)")
    p_pull.add_argument("--revision", default=None, help="branch, tag or commit sha")
    p_pull.add_argument("--cache-dir", default=None)
    p_pull.set_defaults(func=_cmd_pull)
    p_export = sub.add_parser("export", help="export a model to ONNX, check it and compare ONNX Runtime with eager")
    p_export.add_argument("source", help="a registered name (vh_*, timm's), a run folder, a checkpoint, a saved folder "
                                         "or a Hub repo")
    p_export.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p_export.add_argument("--output", required=True, help="the .onnx file (written atomically)")
    p_export.add_argument("--img-size", nargs="+", type=int, default=None, metavar="SIZE",
                          help="H W, or one side (default: the model's pretrained input size)")
    p_export.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    p_export.add_argument("--batch-size", type=int, default=1, help="the fixed batch without --dynamic-batch")
    p_export.add_argument("--fuse", action="store_true", help="fold BatchNorms first (LeViT, EfficientViT)")
    p_export.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p_export.add_argument("--atol", type=float, default=1e-4, help="largest accepted ONNX Runtime vs eager difference")
    p_export.add_argument("--no-pretrained", action="store_true", help="random weights (a registered name only)")
    p_export.set_defaults(func=_cmd_export)

    p_bench = sub.add_parser("bench", help="benchmarks: attention kernels, whole-model throughput, data reading")
    p_bench.add_argument("target", choices=["kernels", "models", "gpu", "data", "detection", "segmentation", "tokens",
                                            "export"],
                         help="kernels/models: CPU or --device cuda; gpu: Triton vs torch, FlexAttention and timm on "
                              "CUDA, bf16; data: vithub train's image reader against timm's; detection: Mask R-CNN "
                              "train img/s and latency per backbone, vs timm's Swin-T and torchvision's R50-FPN v2; "
                              "segmentation: UPerNet train img/s and latency per backbone, vs timm's Swin-T; tokens: ToMe "
                              "(per r), Cropr (per rate) and LTMP (overhead) eval img/s vs the same timm ViT unreduced; export: "
                              "ONNX Runtime img/s of exported vh models vs their timm twins' exports")
    p_bench.add_argument("--output", default=None,
                         help="JSON path ('' for none; default in the current directory: <target>_<device>.json, "
                              "gpu_kernels_<gpu name>.json for gpu)")
    p_bench.add_argument("--repeats", type=int, default=None,
                         help="timed calls per candidate, median kept (default 7 for kernels, 3 for models, 20 for "
                              "gpu, 5 for data)")
    p_bench.add_argument("--device", default="cpu")
    kernels = p_bench.add_argument_group("kernels")
    kernels.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                         help="kernels: default float32; gpu: default bfloat16")
    kernels.add_argument("--quick", action="store_true", help="first shapes only (smoke run)")
    kernels.add_argument("--ops", nargs="+", default=["neighborhood", "window"],
                         choices=["neighborhood", "window", "table", "linear"],
                         help="table: table_bias_attention (LeViT/EfficientViT-M shapes); linear: "
                              "relu_linear_attention (EfficientViT-B shapes)")
    models = p_bench.add_argument_group("models")
    models.add_argument("--models", nargs="+", default=["vh_nat_tiny", "vh_dinat_tiny"], help="models to time")
    models.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    models.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    models.add_argument("--backends", nargs="+", default=["torch", "reference"], choices=["torch", "reference", "triton"],
                        help="kernel backends to time each model with")
    models.add_argument("--compare", nargs="*", default=[], help="timm models timed alongside, for context")
    models.add_argument("--compare-import", nargs="*", default=[], metavar="MODULE",
                        help="modules imported first so that they register --compare models with timm (e.g. the "
                             "official FasterViT package: --compare-import fastervit --compare faster_vit_0_224)")
    models.add_argument("--img-size", type=int, default=224)
    models.add_argument("--twin", action="store_true",
                        help="also time each model's timm twin (vh_levit_256 -> levit_256) with the same weights")
    models.add_argument("--fused", action="store_true", help="also time the model after fuse() (eval rows)")
    models.add_argument("--processes", type=int, default=1,
                        help="run the benchmark (models, export: the timing of the same exported files) this many "
                             "times, each in a fresh process; the JSON keeps the median and, per ratio to the twin, "
                             "the min-max over the runs")
    models.add_argument("--amp", default=None, choices=["bfloat16", "float16"],
                        help="run every candidate under autocast in this dtype (default: fp32)")
    data = p_bench.add_argument_group("data")
    data.add_argument("--images", type=int, default=256, help="JPEGs to read per timed pass")
    data.add_argument("--image-side", type=int, default=256, help="side of each random JPEG, in pixels")
    detection = p_bench.add_argument_group("detection and segmentation")
    detection.add_argument("--backbones", nargs="+", default=None,
                           help="default: vh_swin_tiny_patch4_window7_224 vh_nat_tiny vh_efficientvit_b1 "
                                "swin_tiny_patch4_window7_224 (for detection, torchvision's R50-FPN v2 always runs)")
    detection.add_argument("--det-img-size", type=int, default=None,
                           help="short side of the scale (default 320 on CPU, 800 on CUDA)")
    detection.add_argument("--det-batch-size", type=int, default=None, help="training batch (default 2 CPU, 8 CUDA)")
    detection.add_argument("--head", default="upernet", choices=["upernet", "fpn"], help="segmentation head")
    detection.add_argument("--seg-img-size", type=int, default=None, help="segmentation crop side (default 512)")
    detection.add_argument("--seg-batch-size", type=int, default=None,
                           help="segmentation training batch (default 2 CPU, 16 CUDA)")
    tokens = p_bench.add_argument_group("tokens (also --batch-sizes, --img-size, --amp)")
    tokens.add_argument("--vits", nargs="+", default=None,
                        help="timm ViTs to reduce (default: deit_small_patch16_224 vit_base_patch16_224)")
    tokens.add_argument("--r", nargs="+", type=int, default=[0, 8, 13, 16], help="ToMe r values, one row each")
    tokens.add_argument("--cropr-rates", nargs="*", type=int, default=[8],
                        help="Cropr rates (last-layer fusion), one row each; none: --cropr-rates with no value")
    tokens.add_argument("--no-ltmp", action="store_true",
                        help="leave out the LTMP row (thresholds that keep every token: the cost of its scoring)")
    export = p_bench.add_argument_group("export (also --batch-sizes, --img-size)")
    export.add_argument("--export-models", nargs="+", default=None,
                        help="vh models to export and time against their timm twins (default: Swin-T, NAT-T vs "
                             "Swin-T, FasterViT-0, LeViT-256, EfficientViT-M5, EfficientViT-B1)")
    export.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    export.add_argument("--no-control", action="store_true",
                        help="leave out the A/A control (a second session of each twin's file, timed alongside)")
    p_bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vithub`` console script."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if getattr(args, "repeats", None) is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if getattr(args, "processes", 1) < 1:
        parser.error("--processes must be >= 1")
    if any(size < 1 for size in getattr(args, "batch_sizes", [1])):
        parser.error("--batch-sizes must all be >= 1")
    if getattr(args, "images", 1) < 1 or getattr(args, "image_side", 1) < 1:
        parser.error("--images and --image-side must be >= 1")
    from vithub.bench.models import NoTwinError
    from vithub.export import ExportError
    from vithub.publishing import HubError

    try:
        return args.func(args)
    except (UnknownModelError, NoTwinError, ImportError, HubError, ExportError) as error:
        print(f"vithub: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
