"""``vithub bench TARGET``: one entry per target in :data:`BENCH_TARGETS`, each with its own flags, defaults and
handler. The flags every target takes (``--output``, ``--repeats``, ``--device``) come from one parent parser."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from .timing import device_slug


def positive_int(flag: str, plural: bool = False) -> Callable[[str], int]:
    """An argparse type: an int >= 1, else an error that names the flag."""

    def parse(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must {'all ' if plural else ''}be >= 1 (got {value})")
        return value

    parse.__name__ = "positive int"
    return parse


@dataclass(frozen=True)
class BenchTarget:
    """A benchmark target: its help line, the JSON it writes by default (``{device}``: cpu or the GPU's name), its
    default repeat count, its own flags and the function that runs it."""

    name: str
    help: str
    output: str
    repeats: int
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], None]


def _batch_sizes(parser: argparse.ArgumentParser, default: tuple) -> None:
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int("--batch-sizes", plural=True),
                        default=list(default))


def _amp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amp", default=None, choices=["bfloat16", "float16"],
                        help="run every candidate under autocast in this dtype (default: fp32 on CPU)")


def _processes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=positive_int("--processes"), default=1,
                        help="run the timing this many times, each in a fresh process; the JSON keeps the median "
                             "and, per ratio to the twin, the min-max over the runs")


def _backbones(parser: argparse.ArgumentParser, default: tuple) -> None:
    parser.add_argument("--backbones", nargs="+", default=list(default), help="backbones to time under the head")


# --- kernels and gpu ----------------------------------------------------------------------------------------------

def _kernels_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="first shapes only (smoke run)")
    parser.add_argument("--ops", nargs="+", default=["neighborhood", "window"],
                        choices=["neighborhood", "window", "table", "linear", "unfused"],
                        help="table: table_bias_attention (LeViT/EfficientViT-M shapes); linear: "
                             "relu_linear_attention (EfficientViT-B shapes); unfused: neighborhood_attention_qk + "
                             "softmax + neighborhood_attention_av (DiNAT and 1-D shapes) against the fused op")


def _run_kernels(args: argparse.Namespace, output: str) -> None:
    from .kernels import run_kernel_bench

    run_kernel_bench(output=output, repeats=args.repeats, device=args.device, dtype=args.dtype, quick=args.quick,
                     ops=args.ops)


def _gpu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="first shapes only (smoke run)")


def _run_gpu(args: argparse.Namespace, output: str) -> None:
    from .gpu import run_gpu_bench

    run_gpu_bench(output=output, repeats=args.repeats, dtype=args.dtype, quick=args.quick)


# --- models and export --------------------------------------------------------------------------------------------

def _models_arguments(parser: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_BATCH_SIZES, DEFAULT_MODELS

    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models to time")
    _batch_sizes(parser, DEFAULT_BATCH_SIZES)
    parser.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--backends", nargs="+", default=["torch", "reference"],
                        choices=["torch", "reference", "triton"], help="kernel backends to time each model with")
    parser.add_argument("--compare", nargs="*", default=[], help="timm models timed alongside, for context")
    parser.add_argument("--compare-import", nargs="*", default=[], metavar="MODULE",
                        help="modules imported first so that they register --compare models with timm (e.g. the "
                             "official FasterViT package: --compare-import fastervit --compare faster_vit_0_224)")
    parser.add_argument("--img-size", type=positive_int("--img-size"), default=224)
    parser.add_argument("--twin", action="store_true",
                        help="also time each model's timm twin (vh_levit_256 -> levit_256) with the same weights")
    parser.add_argument("--fused", action="store_true", help="also time the model after fuse() (eval rows)")
    _processes(parser)
    _amp(parser)


def _run_models(args: argparse.Namespace, output: str) -> None:
    from .models import run_model_bench

    run_model_bench(output=output, models=args.models, batch_sizes=args.batch_sizes, modes=args.modes,
                    backends=args.backends, compare=args.compare, compare_imports=args.compare_import,
                    repeats=args.repeats, img_size=args.img_size, device=args.device, twin=args.twin,
                    fused=args.fused, amp=args.amp, processes=args.processes)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-models", nargs="+", default=None,
                        help="vh models to export and time against their timm twins (default: Swin-T, NAT-T vs "
                             "Swin-T, FasterViT-0, LeViT-256, EfficientViT-M5, EfficientViT-B1)")
    _batch_sizes(parser, (1, 8, 32))
    parser.add_argument("--img-size", type=positive_int("--img-size"), default=224)
    parser.add_argument("--threads", type=positive_int("--threads"), default=None,
                        help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--no-control", action="store_true",
                        help="leave out the A/A control (a second session of each twin's file, timed alongside)")
    _processes(parser)


def _run_export(args: argparse.Namespace, output: str) -> None:
    from .export import DEFAULT_PAIRS, bench_export

    pairs = [(name, None) for name in args.export_models] if args.export_models else DEFAULT_PAIRS
    bench_export(pairs=pairs, batch_sizes=args.batch_sizes, repeats=args.repeats, img_size=args.img_size,
                 threads=args.threads, output=output, processes=args.processes, control=not args.no_control)


# --- detection, segmentation, tokens, data ------------------------------------------------------------------------

def _dense_arguments(parser: argparse.ArgumentParser, backbones: tuple, prefix: str, img_size_help: str,
                     gpu_batch: int) -> None:
    """The flags detection and segmentation share (``--det-*``/``--seg-*`` are the older spellings)."""
    _backbones(parser, backbones)
    parser.add_argument("--img-size", f"--{prefix}-img-size", type=positive_int("--img-size"), default=None,
                        help=img_size_help)
    parser.add_argument("--batch-size", f"--{prefix}-batch-size", type=positive_int("--batch-size"), default=None,
                        help=f"training batch (default 2 on CPU, {gpu_batch} on CUDA)")
    _amp(parser)


def _dense_settings(args: argparse.Namespace, img_size: Tuple[int, int], gpu_batch: int) -> Dict[str, object]:
    """Image size, batch size and autocast: the given ones, else ``img_size[0]`` at batch 2 in fp32 on the CPU,
    ``img_size[1]`` at ``gpu_batch`` in bf16 on CUDA."""
    gpu = args.device.startswith("cuda")
    return {"img_size": args.img_size or img_size[gpu], "batch_size": args.batch_size or (gpu_batch if gpu else 2),
            "repeats": args.repeats, "device": args.device, "amp": args.amp or ("bfloat16" if gpu else None)}


def _detection_arguments(parser: argparse.ArgumentParser) -> None:
    from .detection import DEFAULT_BACKBONES

    _dense_arguments(parser, DEFAULT_BACKBONES, "det", "short side of the scale (default 320 on CPU, 800 on CUDA)", 8)


def _run_detection(args: argparse.Namespace, output: str) -> None:
    from .detection import bench_detection

    bench_detection(backbones=args.backbones, output=output, **_dense_settings(args, (320, 800), 8))


def _segmentation_arguments(parser: argparse.ArgumentParser) -> None:
    from .segmentation import DEFAULT_BACKBONES

    _dense_arguments(parser, DEFAULT_BACKBONES, "seg", "crop side (default 512)", 16)
    parser.add_argument("--head", default="upernet", choices=["upernet", "fpn"])


def _run_segmentation(args: argparse.Namespace, output: str) -> None:
    from .segmentation import bench_segmentation

    bench_segmentation(backbones=args.backbones, head=args.head, output=output,
                       **_dense_settings(args, (512, 512), 16))


def _tokens_arguments(parser: argparse.ArgumentParser) -> None:
    from .token_reduction import DEFAULT_CROPR_RATES, DEFAULT_MODELS, DEFAULT_R

    parser.add_argument("--vits", nargs="+", default=list(DEFAULT_MODELS), help="timm ViTs to reduce")
    parser.add_argument("--r", nargs="+", type=int, default=list(DEFAULT_R), help="ToMe r values, one row each")
    parser.add_argument("--cropr-rates", nargs="*", type=int, default=list(DEFAULT_CROPR_RATES),
                        help="Cropr rates (last-layer fusion), one row each; none: --cropr-rates with no value")
    parser.add_argument("--no-ltmp", action="store_true",
                        help="leave out the LTMP row (thresholds that keep every token: the cost of its scoring)")
    _batch_sizes(parser, (1, 8, 32))
    parser.add_argument("--img-size", type=positive_int("--img-size"), default=None)
    _amp(parser)


def _run_tokens(args: argparse.Namespace, output: str) -> None:
    from .token_reduction import bench_token_reduction

    bench_token_reduction(models=args.vits, r_values=args.r, batch_sizes=args.batch_sizes, repeats=args.repeats,
                          device=args.device, amp=args.amp, img_size=args.img_size, output=output,
                          cropr_rates=args.cropr_rates, ltmp_overhead=not args.no_ltmp)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=positive_int("--images"), default=256, help="JPEGs to read per timed pass")
    parser.add_argument("--image-side", type=positive_int("--image-side"), default=256,
                        help="side of each random JPEG, in pixels")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2],
                        help="loader worker counts to time the training pipelines at")
    parser.add_argument("--batch-size", type=positive_int("--batch-size"), default=32)
    parser.add_argument("--epoch-model", default="vh_efficientvit_b1",
                        help="model of the training epoch whose data-wait fraction is reported ('' skips it)")


def _run_data(args: argparse.Namespace, output: str) -> None:
    from .data import run_data_bench

    if any(count < 0 for count in args.workers):
        raise SystemExit(f"vithub bench data: error: --workers must all be >= 0 (got {args.workers})")
    run_data_bench(output=output, images=args.images, size=args.image_side, repeats=args.repeats,
                   workers=args.workers, batch_size=args.batch_size, epoch_model=args.epoch_model or None)


BENCH_TARGETS: Dict[str, BenchTarget] = {target.name: target for target in (
    BenchTarget("kernels", "attention ops per backend against NATTEN, timm's Swin attention and the dense floor",
                "kernels_{device}.json", 7, _kernels_arguments, _run_kernels),
    BenchTarget("models", "whole-model eval and train-step img/s per backend, against timm twins or other models",
                "models_{device}.json", 3, _models_arguments, _run_models),
    BenchTarget("gpu", "Triton kernels against torch, FlexAttention and timm's Swin attention on CUDA",
                "gpu_kernels_{device}.json", 20, _gpu_arguments, _run_gpu),
    BenchTarget("data", "vithub train's input pipeline (per worker count) and image reader against timm's, and "
                "a training epoch's data-wait fraction", "data_pipeline_{device}.json", 3,
                _data_arguments, _run_data),
    BenchTarget("detection", "Mask R-CNN train img/s and latency per backbone, vs timm's Swin-T and torchvision's "
                "R50-FPN v2", "detection_{device}.json", 3, _detection_arguments, _run_detection),
    BenchTarget("segmentation", "UPerNet train img/s and latency per backbone, vs timm's Swin-T",
                "segmentation_{device}.json", 3, _segmentation_arguments, _run_segmentation),
    BenchTarget("tokens", "ToMe, Cropr and LTMP eval img/s against the same timm ViT unreduced",
                "token_reduction_{device}.json", 3, _tokens_arguments, _run_tokens),
    BenchTarget("export", "ONNX Runtime img/s of exported vh models against their twins' exports",
                "export_onnxruntime_cpu.json", 3, _export_arguments, _run_export),
)}


def add_bench_arguments(parser: argparse.ArgumentParser, parents: tuple = ()) -> None:
    """One subcommand per target of :data:`BENCH_TARGETS`, each with the common flags and its own."""
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET",
                                    title="targets (vithub bench TARGET --help for each one's flags)")
    for target in BENCH_TARGETS.values():
        sub = targets.add_parser(target.name, help=target.help, description=target.help, parents=list(parents))
        sub.add_argument("--output", default=None,
                         help=f"JSON path ('' for none; default: {target.output} in the current directory)")
        sub.add_argument("--repeats", type=positive_int("--repeats"), default=target.repeats,
                         help="timed calls per candidate, median kept")
        sub.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
        target.add_arguments(sub)


def run_bench(args: argparse.Namespace) -> int:
    """Run the chosen target, writing its JSON to ``--output`` or its default file."""
    target = BENCH_TARGETS[args.target]
    device = args.device
    if target.name == "gpu":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # without CUDA, the GPU bench refuses
    output: Optional[str] = target.output if args.output is None else args.output
    target.run(args, output.format(device=device_slug(device)))
    return 0
