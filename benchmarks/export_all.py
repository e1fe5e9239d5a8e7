"""Export every registered vh model to ONNX at its default input size (weights redrawn by
``vithub.export.redraw_weights``, dynamic batch, opset 18), check it with ``onnx.checker``, run it in ONNX Runtime
at batch 1 and 3 against eager, and write one row per model:

    python benchmarks/export_all.py [--output benchmarks/results/export_all_cpu.json] [--models NAME ...]

CI exports every registered model in its small test form (``tests/test_export.py``); this script covers every
registered model at its full size and the input size it is used at, which takes too long for CI (15 s to 5 min a
model on two cores). The JSON is rewritten after every model, and a rerun skips the models it already holds, so an
interrupted sweep resumes; ``--redo NAME ...`` exports those again (after a change to their export) and replaces
their rows. A model that fails is recorded with its error, and the script exits 1. Each row says which weights it
was checked with (``"weights"``): ``"redrawn"``, or ``"init"`` for rows of the first sweep, which ran on init
weights, where zero-initialised branches (EfficientViT-M, LeViT) output zero and hide errors inside them; and, for
rows written since the field was added, the CPU and the project's commit it ran on (``"cpu"``, ``"commit"``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch

import vithub
from vithub.bench.timing import cpu_model, write_json
from vithub.export import ExportError, export_onnx, redraw_weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/export_all_cpu.json")
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered vh model")
    parser.add_argument("--redo", nargs="+", default=[], help="export these again and replace their rows")
    args = parser.parse_args()
    registered = timm.list_models("vh_*")
    unknown = [name for name in list(args.models or []) + args.redo if name not in registered]
    if unknown:
        parser.error(f"not registered vh models: {' '.join(unknown)}")
    names = args.models or registered
    output = Path(args.output)
    rows = json.loads(output.read_text())["rows"] if output.is_file() else []
    for row in rows:
        row.setdefault("weights", "init")  # the first sweep's rows predate the field
    done = {row["model"] for row in rows} - set(args.redo)
    commit = _commit()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="vithub-export-all-") as folder:
        for name in names:
            if name in done:
                continue
            torch.manual_seed(0)
            model = redraw_weights(timm.create_model(name))
            start = time.perf_counter()
            row = {"model": name, "input_size": list(model.pretrained_cfg["input_size"]), "weights": "redrawn",
                   "cpu": cpu_model(), "commit": commit}
            try:
                result = export_onnx(model, Path(folder) / f"{name}.onnx", dynamic_batch=True)
                # Past 2 GB the weights sit in <name>.onnx.data beside the model (ONNX external data).
                files = [path for path in Path(folder).iterdir() if path.name.startswith(f"{name}.onnx")]
                row.update(ok=True, max_abs_diff=result.max_abs_diff,
                           validated_batch_sizes=list(result.validated_batch_sizes),
                           megabytes=round(sum(path.stat().st_size for path in files) / 2 ** 20, 1),
                           external_data=any(path.name.endswith(".data") for path in files))
                for path in files:
                    path.unlink()
            except ExportError as error:
                row.update(ok=False, error=str(error))
            row["seconds"] = round(time.perf_counter() - start, 1)
            index = next((i for i, old in enumerate(rows) if old["model"] == name), len(rows))
            rows[index:index + 1] = [row]
            status = f"max diff {row['max_abs_diff']:.1e}" if row["ok"] else f"FAILED: {row['error'][:120]}"
            print(f"{name:<44}{'x'.join(map(str, row['input_size'][1:])):>9}  {status}  ({row['seconds']} s)",
                  flush=True)
            write(output, rows)
    failed = write(output, rows)
    print(f"{len(rows) - len(failed)}/{len(rows)} exported and matched; wrote {output}")
    return 1 if failed else 0


def _commit() -> str:
    """The checkout's commit (with ``+changes`` when its tracked files differ from it), or ``"unknown"``."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def write(output: Path, rows: list) -> list:
    """Rewrite the JSON with ``rows`` (atomically); return the models that failed."""
    import onnxruntime

    failed = [row["model"] for row in rows if not row["ok"]]
    write_json(output, {
        "benchmark": "export_all", "what": "every registered vh model exported at its default input size "
        "(weights as each row says: redrawn by vithub.export.redraw_weights, or init; dynamic batch; opset 18), "
        "checked with onnx.checker, ONNX Runtime vs eager at batch 1 and 3",
        "torch": torch.__version__, "timm": timm.__version__, "vithub": vithub.__version__,
        "onnxruntime": onnxruntime.__version__, "machine": platform.machine(), "models": len(rows),
        "registered": len(timm.list_models("vh_*")), "failed": failed,
        "rows_by_weights": {kind: sum(row.get("weights") == kind for row in rows) for kind in ("redrawn", "init")},
        "largest_max_abs_diff": max((row["max_abs_diff"] for row in rows if row["ok"]), default=None),
        "rows": rows})
    return failed


if __name__ == "__main__":
    sys.exit(main())
