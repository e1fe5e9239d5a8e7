"""Per-node ONNX Runtime (CPU) profile of an exported vh model, its ``--fuse`` export and its twin's export (same
weights), at one or more batch sizes:

    python benchmarks/profile_onnxruntime.py --model vh_efficientvit_m5 --batch 1 32 \
        [--output benchmarks/results/profile_onnxruntime_m5_cpu.json]

The files are exported as ``vithub bench export`` exports them. Each candidate is run with ONNX Runtime's own
profiler on, in ``--rounds`` alternating rounds (this machine's speed drifts; one candidate timed after another
would compare two machine states) after a warm-up; in each round a candidate first waits ``SETTLE_SECONDS`` and runs
once untimed, so that no other session's spinning threads share the cores with its profiled runs. Per candidate and
batch it prints and records, per forward: the run's wall time, the time summed per ONNX operator type (``Conv``,
``MatMul``, ``Softmax``...) with its node count, and the operator types that take the most time. This is the
evidence for why an export row is slower or faster than its twin's. Node counts: ``n``, those of the exported file;
``run``, those ONNX Runtime ran per forward (its optimized graph fuses some, e.g. ``MatMul`` and a scale into
``FusedMatMul``, and adds layout nodes, ``ReorderInput``/``ReorderOutput`` around its blocked-layout convolutions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import onnx
import onnxruntime
import timm
import torch

import vithub  # noqa: F401  (registers the vh models)
from vithub.bench.export import SETTLE_SECONDS, export_candidates
from vithub.bench.timing import cpu_model, write_json


def _node_counts(path: str) -> Dict[str, int]:
    counts: Dict[str, int] = defaultdict(int)
    for node in onnx.load(path, load_external_data=False).graph.node:
        counts[node.op_type] += 1
    return dict(counts)


def _per_forward(trace: List[Dict[str, Any]], timed_runs: Sequence[int]) -> Dict[str, Any]:
    """Wall time per run and node time per operator type, averaged over the runs numbered ``timed_runs`` (in the
    session's order)."""
    runs = [event for event in trace if event.get("cat") == "Session" and event.get("name") == "model_run"]
    if not timed_runs or max(timed_runs) >= len(runs):
        raise RuntimeError(f"the profile holds {len(runs)} runs; the timed ones were numbered up to "
                           f"{max(timed_runs, default=None)}")
    timed = [runs[index] for index in timed_runs]
    windows = [(event["ts"], event["ts"] + event["dur"]) for event in timed]
    op_us: Dict[str, float] = defaultdict(float)
    op_calls: Dict[str, int] = defaultdict(int)
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        start = event["ts"]
        if any(low <= start <= high for low, high in windows):
            op_us[event["args"]["op_name"]] += event["dur"]
            op_calls[event["args"]["op_name"]] += 1
    forwards = len(timed)
    return {"run_ms": round(float(np.median([event["dur"] for event in timed])) / 1e3, 3),
            "node_ms": round(sum(op_us.values()) / forwards / 1e3, 3),
            "op_ms": {op: round(us / forwards / 1e3, 3) for op, us in sorted(op_us.items(), key=lambda kv: -kv[1])},
            # nodes of ONNX Runtime's optimized graph, per forward (fused nodes and its layout reorders included)
            "op_runs": {op: calls // forwards for op, calls in op_calls.items()}}


def profile_files(files: Dict[str, str], batch: int, img_size: int, rounds: int, iterations: int, threads: int,
                  folder: Path) -> Dict[str, Dict[str, Any]]:
    images = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
    sessions = {}
    for label, path in files.items():
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / f"{label}-b{batch}")
        sessions[label] = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {label: {session.get_inputs()[0].name: images} for label, session in sessions.items()}
    warmup = 2
    for label, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feeds[label])
    timed_runs = []
    for round_index in range(rounds):
        order = list(sessions) if round_index % 2 == 0 else list(sessions)[::-1]
        for label in order:
            # as ``vithub bench export`` times: the other sessions' threads park, one untimed run wakes this one's
            time.sleep(SETTLE_SECONDS)
            sessions[label].run(None, feeds[label])
            for _ in range(iterations):
                sessions[label].run(None, feeds[label])
        first = warmup + round_index * (iterations + 1) + 1
        timed_runs.extend(range(first, first + iterations))
    results = {}
    for label, session in sessions.items():
        trace = json.loads(Path(session.end_profiling()).read_text())
        results[label] = dict(_per_forward(trace, timed_runs), nodes=_node_counts(files[label]))
    return results


def _print(model: str, batch: int, results: Dict[str, Dict[str, Any]], top: int) -> None:
    labels = list(results)
    print(f"\n{model}  batch {batch}: ms per forward (run wall time; node time summed)")
    for label in labels:
        print(f"  {label:<8} run {results[label]['run_ms']:9.2f}  nodes {results[label]['node_ms']:9.2f}  "
              f"({sum(results[label]['nodes'].values())} nodes)")
    ops = sorted({op for label in labels for op in results[label]["op_ms"]},
                 key=lambda op: -max(results[label]["op_ms"].get(op, 0.0) for label in labels))[:top]
    print("  " + f"{'op type':<22}" + "".join(f"{label + ' ms':>12}{'n':>5}{'run':>5}" for label in labels))
    for op in ops:
        cells = "".join(f"{results[label]['op_ms'].get(op, 0.0):>12.2f}{results[label]['nodes'].get(op, 0):>5}"
                        f"{results[label]['op_runs'].get(op, 0):>5}" for label in labels)
        print(f"  {op:<22}{cells}")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a vh model with a timm twin or an official comparison")
    parser.add_argument("--compare", default=None,
                        help="what to compare with (default: its twin; e.g. faster_vit_0_224, the official model)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=3, help="forwards per candidate per round")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--top", type=int, default=12, help="operator types printed per candidate")
    parser.add_argument("--output", default="", help="JSON path (none when empty)")
    args = parser.parse_args(list(argv))
    with tempfile.TemporaryDirectory(prefix="vithub-profile-onnx-") as name, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = Path(name)
        (exported,) = export_candidates([(args.model, args.compare)], folder, args.img_size)
        if "twin" not in exported["files"]:
            parser.error(f"{args.model}: nothing to compare with ({exported['no_comparison']})")
        batches = {}
        for batch in args.batch:
            results = profile_files(exported["files"], batch, args.img_size, args.rounds, args.iterations,
                                    args.threads, folder)
            _print(args.model, batch, results, args.top)
            batches[str(batch)] = results
    payload = {"benchmark": "profile_onnxruntime", "model": args.model, "compared_with": exported["compared_with"],
               "same_weights": exported["same_weights"], "cpu": cpu_model(), "intra_op_threads": args.threads,
               "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider", "torch": torch.__version__,
               "timm": timm.__version__, "img_size": args.img_size, "rounds": args.rounds,
               "iterations": args.iterations, "batches": batches}
    if args.output:
        write_json(args.output, payload)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
