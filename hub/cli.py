"""The ``vithub`` command: ``list``, ``info NAME``, ``bench kernels``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from vithub.models import UnknownModelError, list_vithub_models, model_info, summarize


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


def _cmd_bench(args: argparse.Namespace) -> int:
    from vithub.bench import run_kernel_bench

    run_kernel_bench(output=args.output, repeats=args.repeats, device=args.device, dtype=args.dtype,
                     quick=args.quick, ops=args.ops)
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

    p_bench = sub.add_parser("bench", help="benchmarks")
    p_bench.add_argument("target", choices=["kernels"], help="what to benchmark")
    p_bench.add_argument("--output", default="benchmarks/results/kernels_cpu.json", help="JSON path ('' for none)")
    p_bench.add_argument("--repeats", type=int, default=7, help="timed calls per candidate (median kept)")
    p_bench.add_argument("--device", default="cpu")
    p_bench.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p_bench.add_argument("--quick", action="store_true", help="first shapes only (smoke run)")
    p_bench.add_argument("--ops", nargs="+", default=["neighborhood", "window"], choices=["neighborhood", "window"])
    p_bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vithub`` console script."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if getattr(args, "repeats", 1) < 1:
        parser.error("--repeats must be >= 1")
    try:
        return args.func(args)
    except UnknownModelError as error:
        print(f"vithub: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
