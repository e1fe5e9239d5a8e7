"""``vithub bench export``: ONNX Runtime latency (batch 1) and throughput (batch 32) of exported vh models against the
ONNX exports of their timm twins or official models (same weights where the twin exists), side by side in one
run, unfused and, where the family fuses, as ``vithub export --fuse`` writes them; a second session of the twin's own
file is timed with them (an A/A control), so that each row shows how far apart one file reads from itself."""

from __future__ import annotations

import logging
import copy
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from .models import NoTwinError, load_twin_weights, twin_name
from .timing import cpu_model, measure, report, write_json

_logger = logging.getLogger(__name__)

# (ours, what it is compared with): None = its timm twin; FasterViT's is the official package's model (compared only
# where ``fastervit`` is installed); NAT has no twin and is set against the Swin export of similar MACs (context).
DEFAULT_PAIRS: Tuple[Tuple[str, Optional[str]], ...] = (
    ("vh_swin_tiny_patch4_window7_224", None),
    ("vh_nat_tiny", "swin_tiny_patch4_window7_224"),
    ("vh_fastervit_0_224", "faster_vit_0_224"),
    ("vh_levit_256", None),
    ("vh_efficientvit_m5", None),
    ("vh_efficientvit_b1", None),
)
# Pause before each candidate's timed call, so that the thread pool of the session timed before it has parked (see
# ``measure``): back to back, every row measured the sessions' contention, not the exports (batch 1 up to ~3x slow).
SETTLE_SECONDS = 0.05
# The A/A control's label: a second session of the twin's file.
CONTROL = "twin_again"
# Third-party packages that register the official models with timm when imported.
OFFICIAL_PACKAGES = {"faster_vit_": "fastervit"}


def _session(path: Path, threads: Optional[int]):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(model: torch.nn.Module, path: Path, size: int, fuse: bool = False) -> None:
    from vithub.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, path, img_size=size, dynamic_batch=True, fuse=fuse)


def _comparison(name: str, other: Optional[str]) -> Tuple[Optional[torch.nn.Module], Optional[str], bool, str]:
    """What ``name`` is timed against: (model, its name, whether it is of our family's layout, so that its weights
    load into ours; why there is none)."""
    same_layout = other is None
    if other is None:
        try:
            other = twin_name(name)
        except NoTwinError as error:
            return None, None, False, str(error)
    for prefix, package in OFFICIAL_PACKAGES.items():
        if other.startswith(prefix):
            same_layout = True
            try:
                importlib.import_module(package)
            except ImportError:
                return None, other, False, f"the official model needs the {package!r} package, not installed here"
    if other not in timm.list_models(other):
        return None, other, False, f"timm has no model {other!r}"
    return timm.create_model(other).eval(), other, same_layout, ""


def bench_export(pairs: Sequence[Tuple[str, Optional[str]]] = DEFAULT_PAIRS, batch_sizes: Sequence[int] = (1, 32),
                 repeats: int = 3, img_size: int = 224, threads: Optional[int] = None,
                 output: Optional[str] = None, processes: int = 1, control: bool = True) -> Dict[str, Any]:
    """Export each vh model of ``pairs`` and what it is compared with (its timm twin, or the official model, with the
    same weights loaded into ours when our checkpoint filter takes its state dict), time both in ONNX Runtime (CPU)
    at each batch size round-robin, print the table, write JSON to ``output`` and return it.

    Families with ``fuse()`` (LeViT, EfficientViT) are also timed as ``vithub export --fuse`` writes them: ONNX
    Runtime folds a BatchNorm into a preceding Conv by itself, but not one after a MatMul (LeViT's linear layers).
    ``processes`` > 1 exports once and times the same files that many times, each in a fresh Python process (fresh
    ONNX Runtime sessions), one after the other; a row then keeps the median of the runs' milliseconds and, of each
    ratio to the twin, the median and the range (``*_range``: min, max) over the runs. Each process times the
    candidates in another order (rotated by one per process), so no candidate always gets the first session's place.

    ``control``: a second session of the twin's file (``twin_again``) is timed in the same rounds, and a row's
    ``control_ratio`` (with ``control_range``) is the twin's speed against itself: identical files read a few percent
    apart on a shared machine (thread placement, memory), and a ratio to the twin inside that spread is no difference.
    """
    import onnxruntime

    if repeats < 1 or any(size < 1 for size in batch_sizes):
        raise ValueError("repeats and batch sizes must be >= 1")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    with tempfile.TemporaryDirectory(prefix="vithub-bench-export-") as folder:
        exported = export_candidates(pairs, Path(folder), img_size)
        if control:
            for model in exported:
                if "twin" in model["files"]:
                    model["files"][CONTROL] = model["files"]["twin"]
        arguments = dict(exported=exported, batch_sizes=list(batch_sizes), repeats=repeats, img_size=img_size,
                         threads=threads)
        if processes == 1:
            runs = [time_exports(**arguments)]
        else:
            runs = []
            for index in range(processes):
                _logger.info(f"-- process {index + 1} of {processes}")
                result = Path(folder) / f"run{index}.json"
                subprocess.run([sys.executable, "-c", _CHILD,
                                json.dumps(dict(arguments, output=str(result), order_shift=index))], check=True)
                runs.append(json.loads(result.read_text())["timings"])
    rows = [_row(model, batch, [run[index] for run in runs]) for index, (model, batch) in
            enumerate((model, batch) for model in exported for batch in batch_sizes)]
    _logger.info("%s", format_table(rows))
    payload = {"benchmark": "export", "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
               "torch": torch.__version__, "timm": timm.__version__, "img_size": img_size, "repeats": repeats,
               "processes": processes, "control": control, "intra_op_threads": threads or "ONNX Runtime default",
               "opset": 18, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
               "weights": "random; the twin's loaded into ours where same_weights", "rows": rows}
    report(output, payload)
    return payload


def export_candidates(pairs: Sequence[Tuple[str, Optional[str]]], folder: Path, img_size: int
                      ) -> List[Dict[str, Any]]:
    """Export every candidate of each pair into ``folder``: ours (``vithub``), ours fused where the family fuses
    (``fused``) and what it is compared with (``twin``). Returns per pair its names and ``{label: onnx file}``."""
    exported: List[Dict[str, Any]] = []
    for name, other in pairs:
        torch.manual_seed(0)
        ours = timm.create_model(name).eval()
        reference, reference_name, same_weights, missing = _comparison(name, other)
        if same_weights:
            load_twin_weights(ours, reference)
        files: Dict[str, str] = {}
        for label, model, fuse in (("vithub", ours, False), ("fused", ours, True), ("twin", reference, False)):
            if model is None or (fuse and not callable(getattr(model, "fuse", None))):
                continue
            path = folder / f"{label}-{name}.onnx"
            _export(copy.deepcopy(model) if fuse else model, path, img_size, fuse=fuse)
            files[label] = str(path)
        exported.append({"model": name, "compared_with": reference_name if reference is not None else None,
                         "same_weights": same_weights, "no_comparison": missing, "files": files})
    return exported


def time_exports(exported: Sequence[Dict[str, Any]], batch_sizes: Sequence[int], repeats: int, img_size: int,
                 threads: Optional[int], output: Optional[str] = None, order_shift: int = 0) -> List[Dict[str, float]]:
    """Median ms per candidate (one ONNX Runtime session each), per model and batch size (candidates of a row timed
    round-robin, each timed call after a pause and one untimed call of the same session); written as JSON to
    ``output`` when given (the child process's answer). ``order_shift`` rotates the order in which the sessions are
    made and timed."""
    timings: List[Dict[str, float]] = []
    for model in exported:
        labels = list(model["files"])
        shift = order_shift % len(labels)
        sessions = {label: _session(Path(model["files"][label]), threads) for label in labels[shift:] + labels[:shift]}
        for batch in batch_sizes:
            images = torch.randn(batch, 3, img_size, img_size).numpy()

            def run(session) -> Callable[[], None]:
                feed = {session.get_inputs()[0].name: images}
                return lambda: session.run(None, feed)

            times = measure({label: run(session) for label, session in sessions.items()}, repeats, warmup=1,
                            device=torch.device("cpu"), settle_s=SETTLE_SECONDS)
            timings.append({label: times[label] for label in labels})
    if output:
        write_json(output, {"timings": timings})
    return timings


_CHILD = ("import json, sys\nfrom vithub.bench.export import time_exports\n"
          "time_exports(**json.loads(sys.argv[1]))")


def _row(model: Dict[str, Any], batch: int, runs: Sequence[Dict[str, float]]) -> Dict[str, Any]:
    """One table row from the runs' timings of one model at one batch size: medians over the runs."""
    ms = {label: round(statistics.median(run[label] for run in runs), 3) for label in runs[0]}
    row: Dict[str, Any] = {"model": model["model"], "compared_with": model["compared_with"],
                           "same_weights": model["same_weights"], "batch_size": batch, "ms": ms["vithub"],
                           "images_per_second": round(1e3 * batch / ms["vithub"], 2)}
    if model["no_comparison"]:
        row["no_comparison"] = model["no_comparison"]
    if "fused" in ms:
        row.update(fused_ms=ms["fused"], fused_images_per_second=round(1e3 * batch / ms["fused"], 2))
    if "twin" in ms:
        row.update(twin_ms=ms["twin"], twin_images_per_second=round(1e3 * batch / ms["twin"], 2))
        for label, key in (("vithub", "speed_vs_twin"), ("fused", "fused_speed_vs_twin"), (CONTROL, "control_ratio")):
            if label in ms:
                ratios = [round(run["twin"] / run[label], 3) for run in runs]
                row[key] = round(statistics.median(ratios), 3)
                if len(runs) > 1:
                    row[f"{key}_range"] = [min(ratios), max(ratios)]
    if len(runs) > 1:
        row["ms_runs"] = {label: [run[label] for run in runs] for label in ms}
    return row


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    header = (f"{'model':<34}{'vs':<32}{'batch':>6}{'img/s':>10}{'fused':>10}{'twin img/s':>12}{'ratio':>18}"
              f"{'fused ratio':>18}{'twin vs itself':>18}")
    lines = [header, "-" * len(header)]

    def cell(row: Dict[str, Any], key: str, width: int, digits: int) -> str:
        return f"{row[key]:>{width}.{digits}f}" if key in row else f"{'-':>{width}}"

    def ratio(row: Dict[str, Any], key: str, width: int) -> str:
        if key not in row:
            return f"{'-':>{width}}"
        spread = f" ({row[key + '_range'][0]:.2f}-{row[key + '_range'][1]:.2f})" if key + "_range" in row else ""
        return f"{row[key]:.2f}{spread}".rjust(width)

    for row in rows:
        lines.append(f"{row['model']:<34}{str(row['compared_with'] or 'none'):<32}{row['batch_size']:>6}"
                     f"{row['images_per_second']:>10.1f}{cell(row, 'fused_images_per_second', 10, 1)}"
                     f"{cell(row, 'twin_images_per_second', 12, 1)}{ratio(row, 'speed_vs_twin', 18)}"
                     f"{ratio(row, 'fused_speed_vs_twin', 18)}{ratio(row, 'control_ratio', 18)}")
    return "\n".join(lines)
