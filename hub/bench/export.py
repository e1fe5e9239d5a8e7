"""``vithub bench export``: ONNX Runtime latency (batch 1) and throughput (batch 32) of exported vh models against the
ONNX exports of their timm twins (same weights where the twin exists), side by side in one run."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from .models import NoTwinError, load_twin_weights, twin_name
from .timing import measure, report

# (ours, what it is compared with): the timm twin, or for NAT the Swin export of similar MACs (context, not a twin).
DEFAULT_PAIRS: Tuple[Tuple[str, Optional[str]], ...] = (
    ("vh_swin_tiny_patch4_window7_224", None),
    ("vh_nat_tiny", "swin_tiny_patch4_window7_224"),
    ("vh_fastervit_0_224", None),
    ("vh_levit_256", None),
    ("vh_efficientvit_m5", None),
    ("vh_efficientvit_b1", None),
)


def _session(path: Path, threads: Optional[int]):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(model: torch.nn.Module, path: Path, size: int) -> None:
    from vithub.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, path, img_size=size, dynamic_batch=True)


def bench_export(pairs: Sequence[Tuple[str, Optional[str]]] = DEFAULT_PAIRS, batch_sizes: Sequence[int] = (1, 32),
                 repeats: int = 3, img_size: int = 224, threads: Optional[int] = None,
                 output: Optional[str] = None) -> Dict[str, Any]:
    """Export each vh model of ``pairs`` and what it is compared with (its timm twin, with the same weights, when no
    other model is named and timm has one), time both in ONNX Runtime (CPU) at each batch size round-robin, print
    the table, write JSON to ``output`` and return it."""
    import onnxruntime

    if repeats < 1 or any(size < 1 for size in batch_sizes):
        raise ValueError("repeats and batch sizes must be >= 1")
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vithub-bench-export-") as folder:
        for name, other in pairs:
            torch.manual_seed(0)
            ours = timm.create_model(name).eval()
            reference_name, same_weights = other, False
            if reference_name is None:
                try:
                    reference_name = twin_name(name)
                except NoTwinError:
                    reference_name = None
            reference = timm.create_model(reference_name).eval() if reference_name else None
            if reference is not None and other is None:
                load_twin_weights(ours, reference)
                same_weights = True
            candidates: Dict[str, Any] = {}
            for label, model in (("vithub", ours), ("twin", reference)):
                if model is None:
                    continue
                path = Path(folder) / f"{label}-{name}.onnx"
                _export(model, path, img_size)
                candidates[label] = _session(path, threads)
            for batch in batch_sizes:
                images = torch.randn(batch, 3, img_size, img_size).numpy()

                def run(session) -> Callable[[], None]:
                    feed = {session.get_inputs()[0].name: images}
                    return lambda: session.run(None, feed)

                times = measure({label: run(session) for label, session in candidates.items()}, repeats, warmup=1,
                                device=torch.device("cpu"))
                row: Dict[str, Any] = {"model": name, "compared_with": reference_name, "same_weights": same_weights,
                                       "batch_size": batch, "ms": times["vithub"],
                                       "images_per_second": round(1e3 * batch / times["vithub"], 2)}
                if "twin" in times:
                    row.update(twin_ms=times["twin"], twin_images_per_second=round(1e3 * batch / times["twin"], 2),
                               speed_vs_twin=round(times["twin"] / times["vithub"], 3))
                rows.append(row)
    print(format_table(rows))
    payload = {"benchmark": "export", "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
               "torch": torch.__version__, "timm": timm.__version__, "img_size": img_size, "repeats": repeats,
               "intra_op_threads": threads or "ONNX Runtime default", "opset": 18,
               "weights": "random; the twin's loaded into ours where same_weights", "rows": rows}
    report(output, payload)
    return payload


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    header = f"{'model':<34}{'vs':<32}{'batch':>6}{'img/s':>10}{'twin img/s':>12}{'ratio':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        twin = f"{row['twin_images_per_second']:.1f}" if "twin_images_per_second" in row else "-"
        ratio = f"{row['speed_vs_twin']:.2f}" if "speed_vs_twin" in row else "-"
        lines.append(f"{row['model']:<34}{str(row['compared_with'] or 'no twin'):<32}{row['batch_size']:>6}"
                     f"{row['images_per_second']:>10.1f}{twin:>12}{ratio:>8}")
    return "\n".join(lines)
