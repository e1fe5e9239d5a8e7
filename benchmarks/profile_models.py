"""Per-op CPU profile of a vh model, its ``fuse()`` form and its timm twin (same weights), eval, one batch size:

    python benchmarks/profile_models.py --model vh_levit_256 --batch 1 [--output benchmarks/results/profile_cpu.json]

For each candidate it prints and records, per forward over ``--rounds`` alternating rounds of ``--iterations``
forwards (after a warm-up): the self CPU time of the
top ops (``torch.profiler``), the share of the time in matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``:
the same products in all three, since the weights and shapes are the same), and the minor page faults per forward
(``getrusage``). This is the evidence behind a throughput ratio that a change cannot move: when the products are
most of the twin's time, removing everything else bounds the speed-up.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import sys
import warnings
from typing import Dict

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import vithub
from vithub.bench.models import load_twin_weights, twin_name
from vithub.bench.timing import cpu_model, write_json

MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_candidates(candidates: Dict[str, torch.nn.Module], images: torch.Tensor, iterations: int, rounds: int,
                       top: int) -> Dict[str, Dict]:
    """Profile the candidates in ``rounds`` alternating rounds of ``iterations`` forwards each (this machine's speed
    drifts: one candidate profiled after another would compare two machine states), summing per op."""
    self_us: Dict[str, Dict[str, float]] = {name: {} for name in candidates}
    calls: Dict[str, Dict[str, int]] = {name: {} for name in candidates}
    faults: Dict[str, int] = dict.fromkeys(candidates, 0)
    with torch.no_grad():
        for model in candidates.values():
            for _ in range(3):
                model(images)
        for round_index in range(rounds):
            order = list(candidates) if round_index % 2 == 0 else list(candidates)[::-1]
            for name in order:
                model = candidates[name]
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(iterations):
                    model(images)
                faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(iterations):
                        model(images)
                for event in prof.key_averages():
                    self_us[name][event.key] = self_us[name].get(event.key, 0.0) + event.self_cpu_time_total
                    calls[name][event.key] = calls[name].get(event.key, 0) + event.count
    forwards = iterations * rounds
    results = {}
    for name in candidates:
        total_us = sum(self_us[name].values()) / forwards
        products_us = sum(value for key, value in self_us[name].items() if key in MATRIX_PRODUCTS) / forwards
        ranked = sorted(self_us[name], key=lambda key: -self_us[name][key])[:top]
        results[name] = {
            "self_cpu_ms": round(total_us / 1e3, 3), "matrix_products_ms": round(products_us / 1e3, 3),
            "matrix_product_share": round(products_us / total_us, 3),
            "page_faults_per_forward": round(faults[name] / forwards),
            "ops_calls_per_forward": sum(calls[name].values()) // forwards,
            "top_ops": [{"op": key, "calls": calls[name][key] // forwards,
                         "self_ms": round(self_us[name][key] / forwards / 1e3, 3)} for key in ranked]}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vh_levit_256")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="forwards per candidate and round")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds over the candidates")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--target", type=float, default=1.3, help="the speed-up (twin time / ours) to account for")
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    ours = timm.create_model(args.model).eval()
    twin = timm.create_model(twin_name(args.model)).eval()
    load_twin_weights(ours, twin)
    candidates = {"ours": ours, twin_name(args.model): twin}
    if callable(getattr(ours, "fuse", None)):
        candidates["fused"] = copy.deepcopy(ours).fuse()
    images = torch.randn(args.batch, 3, *ours.pretrained_cfg["input_size"][1:])
    results = profile_candidates(candidates, images, args.iterations, args.rounds, args.top)
    twin_ms = results[twin_name(args.model)]["self_cpu_ms"]
    for name, result in results.items():
        print(f"== {name}: {result['self_cpu_ms']:.1f} ms self CPU per forward ({twin_ms / result['self_cpu_ms']:.2f}x "
              f"the twin under the profiler), matrix products {result['matrix_products_ms']:.1f} ms "
              f"({100 * result['matrix_product_share']:.0f}%), {result['page_faults_per_forward']} page faults, "
              f"{result['ops_calls_per_forward']} op calls per forward")
        for op in result["top_ops"]:
            print(f"   {op['op']:<34}{op['calls']:>6} calls {op['self_ms']:>9.3f} ms")
    products = results[twin_name(args.model)]["matrix_products_ms"]
    bound = twin_ms / products
    print(f"the twin's matrix products alone take {products:.1f} ms: a model with the same products and nothing else "
          f"would be at most {bound:.2f}x the twin")
    needed = {}
    for name in ("ours", "fused"):
        if name in results:
            result = results[name]
            rest = result["self_cpu_ms"] - result["matrix_products_ms"]
            allowed = twin_ms / args.target - result["matrix_products_ms"]
            needed[name] = {"non_product_ms": round(rest, 3), "non_product_ms_for_target": round(allowed, 3)}
            print(f"{name}: {args.target:.2f}x the twin needs its non-product time at {allowed:.1f} ms; it is "
                  f"{rest:.1f} ms")
    if args.output:
        write_json(args.output, {
            "benchmark": "profile_models", "model": args.model, "batch": args.batch, "iterations": args.iterations,
            "rounds": args.rounds,
            "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "vithub": vithub.__version__, "machine": platform.machine(),
            "bound_if_only_matrix_products": round(bound, 3), "target": args.target, "for_target": needed,
            "candidates": results})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
