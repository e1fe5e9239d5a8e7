"""``vithub bench export``: ONNX Runtime latency (batch 1) and throughput (batch 32) of exported vh models against the
ONNX exports of their timm twins or official models (same weights where the twin exists), side by side in one
run, unfused and, where the family fuses, as ``vithub export --fuse`` writes them."""

from __future__ import annotations

import copy
import importlib
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from .models import NoTwinError, load_twin_weights, twin_name
from .timing import measure, report

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
                 output: Optional[str] = None) -> Dict[str, Any]:
    """Export each vh model of ``pairs`` and what it is compared with (its timm twin, or the official model, with the
    same weights loaded into ours when our checkpoint filter takes its state dict), time both in ONNX Runtime (CPU)
    at each batch size round-robin, print the table, write JSON to ``output`` and return it.

    Families with ``fuse()`` (LeViT, EfficientViT) are also timed as ``vithub export --fuse`` writes them: ONNX
    Runtime folds a BatchNorm into a preceding Conv by itself, but not one after a MatMul (LeViT's linear layers).
    """
    import onnxruntime

    if repeats < 1 or any(size < 1 for size in batch_sizes):
        raise ValueError("repeats and batch sizes must be >= 1")
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vithub-bench-export-") as folder:
        for name, other in pairs:
            torch.manual_seed(0)
            ours = timm.create_model(name).eval()
            reference, reference_name, same_weights, missing = _comparison(name, other)
            if same_weights:
                load_twin_weights(ours, reference)
            candidates: Dict[str, Any] = {}
            for label, model, fuse in (("vithub", ours, False), ("fused", ours, True), ("twin", reference, False)):
                if model is None or (fuse and not callable(getattr(model, "fuse", None))):
                    continue
                path = Path(folder) / f"{label}-{name}.onnx"
                _export(copy.deepcopy(model) if fuse else model, path, img_size, fuse=fuse)
                candidates[label] = _session(path, threads)
            for batch in batch_sizes:
                images = torch.randn(batch, 3, img_size, img_size).numpy()

                def run(session) -> Callable[[], None]:
                    feed = {session.get_inputs()[0].name: images}
                    return lambda: session.run(None, feed)

                times = measure({label: run(session) for label, session in candidates.items()}, repeats, warmup=1,
                                device=torch.device("cpu"))
                row: Dict[str, Any] = {"model": name, "compared_with": reference_name if reference else None,
                                       "same_weights": same_weights, "batch_size": batch, "ms": times["vithub"],
                                       "images_per_second": round(1e3 * batch / times["vithub"], 2)}
                if missing:
                    row["no_comparison"] = missing
                if "fused" in times:
                    row.update(fused_ms=times["fused"], fused_images_per_second=round(1e3 * batch / times["fused"], 2))
                if "twin" in times:
                    row.update(twin_ms=times["twin"], twin_images_per_second=round(1e3 * batch / times["twin"], 2),
                               speed_vs_twin=round(times["twin"] / times["vithub"], 3))
                    if "fused" in times:
                        row["fused_speed_vs_twin"] = round(times["twin"] / times["fused"], 3)
                rows.append(row)
    print(format_table(rows))
    payload = {"benchmark": "export", "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
               "torch": torch.__version__, "timm": timm.__version__, "img_size": img_size, "repeats": repeats,
               "intra_op_threads": threads or "ONNX Runtime default", "opset": 18, "cpu": platform.processor() or
               platform.machine(), "cpu_count": os.cpu_count(),
               "weights": "random; the twin's loaded into ours where same_weights", "rows": rows}
    report(output, payload)
    return payload


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    header = (f"{'model':<34}{'vs':<32}{'batch':>6}{'img/s':>10}{'fused':>10}{'twin img/s':>12}{'ratio':>8}"
              f"{'fused ratio':>13}")
    lines = [header, "-" * len(header)]

    def cell(row: Dict[str, Any], key: str, width: int, digits: int) -> str:
        return f"{row[key]:>{width}.{digits}f}" if key in row else f"{'-':>{width}}"

    for row in rows:
        lines.append(f"{row['model']:<34}{str(row['compared_with'] or 'none'):<32}{row['batch_size']:>6}"
                     f"{row['images_per_second']:>10.1f}{cell(row, 'fused_images_per_second', 10, 1)}"
                     f"{cell(row, 'twin_images_per_second', 12, 1)}{cell(row, 'speed_vs_twin', 8, 2)}"
                     f"{cell(row, 'fused_speed_vs_twin', 13, 2)}")
    return "\n".join(lines)
