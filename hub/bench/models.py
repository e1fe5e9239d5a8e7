"""``vithub bench models``: eval and train-step throughput (img/s) of whole models, per attention backend.

Each row (model, batch size, mode) times every candidate round-robin in one stretch (:func:`vithub.bench.timing.measure`):
our model once per kernel backend, plus any timm models named in ``compare`` for context. ``eval`` is a forward under
``torch.no_grad`` in eval mode; ``train`` is forward, cross-entropy, backward and an SGD step in train mode.
"""

from __future__ import annotations

import logging
import copy
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch

from vithub.kernels.cpu_paths import chosen_paths
from vithub.catalog import check_model_name
from vithub.kernels import use_backend

from .timing import cpu_model, device_name, measure, report

_logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("vh_nat_tiny", "vh_dinat_tiny")
DEFAULT_BATCH_SIZES = (1, 8, 32)
# The reference backend keeps every gathered (B, H, W, K*K, C) neighbourhood for backward: about 25 GB for a
# NAT-Tiny train step at batch 32, more than this machine has, so its train rows stop at this batch size.
REFERENCE_TRAIN_MAX_BATCH = 8
# Candidates that are our model (per kernel backend, or fused); the others are timm models timed alongside.
OUR_CANDIDATES = ("torch", "reference", "triton", "fused")


@dataclass
class ModelRow:
    model: str
    batch: int
    mode: str  # "eval" or "train"
    ms: Dict[str, float]
    skipped: Dict[str, str]

    def images_per_second(self) -> Dict[str, float]:
        return {name: round(self.batch * 1e3 / ms, 2) for name, ms in self.ms.items()}


def _autocast(device: torch.device, amp: Optional[str]):
    return torch.autocast(device.type, dtype=getattr(torch, amp) if amp else None, enabled=amp is not None)


def _eval_step(model: torch.nn.Module, images: torch.Tensor, backend: Optional[str],
               amp: Optional[str] = None) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), use_backend(backend), _autocast(images.device, amp):
            model(images)

    return step


def _train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                backend: Optional[str], amp: Optional[str] = None) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        with use_backend(backend):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(images.device, amp):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

    return step


class NoTwinError(ValueError):
    """``--twin`` for a model that timm does not have (NAT, DiNAT, FasterViT)."""


def twin_name(name: str) -> str:
    """timm's own model for a vh model (``vh_levit_256`` -> ``levit_256``)."""
    twin = name[len("vh_"):] if name.startswith("vh_") else ""
    if twin not in timm.list_models(twin):
        raise NoTwinError(f"{name} has no timm twin (expected a timm model named {twin!r})")
    return twin


def load_twin_weights(ours: torch.nn.Module, twin: torch.nn.Module) -> None:
    """Load the timm twin's weights into our model through our family's checkpoint filter (same weights)."""
    family = sys.modules[type(ours).__module__]
    ours.load_state_dict(family.checkpoint_filter_fn(twin.state_dict(), ours), strict=True)


def bench_model(name: str, batch: int, mode: str, backends: Sequence[str], compare: Sequence[str],
                repeats: int, img_size: int, device: torch.device, twin: bool = False,
                fused: bool = False, amp: Optional[str] = None) -> ModelRow:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    candidates: Dict[str, Callable[[], None]] = {}
    skipped: Dict[str, str] = {}
    base = timm.create_model(name)
    others = {other: timm.create_model(other) for other in compare}
    if twin:
        reference = others.setdefault(twin_name(name), timm.create_model(twin_name(name)))
        load_twin_weights(base, reference)

    def step(model: torch.nn.Module, backend: Optional[str]) -> Callable[[], None]:
        model = model.to(device).train(mode == "train")
        return (_train_step(model, images, labels, backend, amp) if mode == "train"
                else _eval_step(model, images, backend, amp))

    for backend in backends:
        if backend == "reference" and mode == "train" and batch > REFERENCE_TRAIN_MAX_BATCH:
            skipped[backend] = f"reference train step above batch {REFERENCE_TRAIN_MAX_BATCH} needs > 20 GB"
            continue
        candidates[backend] = step(copy.deepcopy(base), backend)
    if fused:
        if mode == "eval" and callable(getattr(base, "fuse", None)):
            candidates["fused"] = step(copy.deepcopy(base).fuse(), None)
        else:
            skipped["fused"] = "fuse() is for inference" if mode == "train" else f"{name} has no fuse()"
    for other, model in others.items():
        candidates[other] = step(model, None)
    ms = measure(candidates, repeats, warmup=1, device=device) if candidates else {}
    return ModelRow(name, batch, mode, ms, skipped)


def format_table(rows: Sequence[ModelRow]) -> str:
    names: List[str] = []
    for row in rows:
        names += [n for n in list(row.ms) + list(row.skipped) if n not in names]
    widths = {n: max(16, len(n) + 8) for n in names}
    header = f"{'model':<22}{'batch':>6}{'mode':>7}" + "".join(f"{n + ' img/s':>{widths[n]}}" for n in names)
    lines = [header, "-" * len(header)]
    for row in rows:
        ips = row.images_per_second()
        cells = "".join(f"{ips[n]:>{widths[n]}.2f}" if n in ips
                        else f"{'skipped' if n in row.skipped else '-':>{widths[n]}}" for n in names)
        lines.append(f"{row.model:<22}{row.batch:>6}{row.mode:>7}{cells}")
    return "\n".join(lines)


def run_model_bench(output: Optional[str] = None, models: Sequence[str] = DEFAULT_MODELS,
                    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, modes: Sequence[str] = ("eval", "train"),
                    backends: Sequence[str] = ("torch", "reference"), compare: Sequence[str] = (),
                    compare_imports: Sequence[str] = (), repeats: int = 3, img_size: int = 224, device: str = "cpu",
                    twin: bool = False, fused: bool = False, amp: Optional[str] = None, processes: int = 1) -> dict:
    """Run the model benchmark, print the table, write JSON to ``output`` (if given) and return the payload.

    ``compare_imports`` names modules to import before the ``compare`` names are looked up, for third-party packages
    that register their models with timm on import (the official FasterViT package does). ``twin`` also times each
    model's timm twin (``vh_levit_256`` -> ``levit_256``) with the same weights; ``fused`` also times our model after
    ``fuse()`` (eval rows only). ``amp`` (``"bfloat16"`` or ``"float16"``) runs every candidate under autocast
    (weights stay fp32, as in mixed-precision training). ``processes`` > 1 runs the whole benchmark that many times,
    each in a fresh Python process, one after the other, and keeps per row and candidate the median of the runs'
    milliseconds, and of each ratio to the twin its median, min and max (the spread between runs).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes > 1:
        return _run_in_processes(processes, output, dict(
            models=list(models), batch_sizes=list(batch_sizes), modes=list(modes), backends=list(backends),
            compare=list(compare), compare_imports=list(compare_imports), repeats=repeats, img_size=img_size,
            device=device, twin=twin, fused=fused, amp=amp))
    if amp not in (None, "bfloat16", "float16"):
        raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {amp!r}")
    torch_device = torch.device(device)
    imported_versions = _import_comparisons(compare_imports)
    models = [check_model_name(name) for name in models]
    compare = [check_model_name(name) for name in compare]
    rows = [
        bench_model(name, batch, mode, backends, compare, repeats, img_size, torch_device, twin, fused, amp)
        for name in models for batch in batch_sizes for mode in modes
    ]
    _logger.info("%s", format_table(rows))
    _logger.info("CPU paths chosen (per kind, shapes per path): %s", chosen_paths() or "none")
    payload = {
        "benchmark": "models",
        "device": device_name(torch_device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "dtype": f"float32 weights, autocast {amp}" if amp else "float32",
        "img_size": img_size,
        "repeats": repeats,
        "compare_imports": imported_versions,
        "same_weights_as_twin": twin,
        "processes": 1,
        # what vithub.kernels.cpu_paths chose on this machine (per kind: how many shapes took each path)
        "cpu_paths": chosen_paths(),
        "rows": [_with_ratios(dict(row.__dict__, images_per_second=row.images_per_second()), twin, [row.ms])
                 for row in rows],
    }
    report(output, payload)
    return payload


def _import_comparisons(modules: Sequence[str]) -> Dict[str, str]:
    """Import each module (which registers its models with timm); their versions, for the results file."""
    versions: Dict[str, str] = {}
    for module in modules:
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "unknown")
        except ImportError as error:
            raise ImportError(f"compare_imports: cannot import {module!r} ({error}); install it first") from error
    return versions


# A child process says as much as its parent's vithub loggers do (argv[2]: the verbosity of configure_logging).
_CHILD = ("import json, sys\nfrom vithub.train.cli import configure_logging\nconfigure_logging(int(sys.argv[2]))\n"
          "from vithub.bench.models import run_model_bench\nrun_model_bench(**json.loads(sys.argv[1]))")
_VERBOSITY = {logging.DEBUG: 1, logging.INFO: 0, logging.WARNING: -1}


def _with_ratios(row: Dict[str, Any], twin: bool, runs: Sequence[Dict[str, float]]) -> Dict[str, Any]:
    """Add ``speed_vs``: for every model timed beside ours (the twin, or a ``compare`` model such as the official
    FasterViT) and every candidate of ours, that model's ms over ours in each run, and their median/min/max; with
    ``twin``, ``speed_vs_twin`` is the twin's entry."""
    speed_vs: Dict[str, Dict[str, Any]] = {}
    for reference in row["ms"]:
        if reference in OUR_CANDIDATES:
            continue
        ratios: Dict[str, Any] = {}
        for candidate in row["ms"]:
            if candidate not in OUR_CANDIDATES:
                continue
            values = [round(run[reference] / run[candidate], 3) for run in runs
                      if reference in run and candidate in run]
            if values:
                ratios[candidate] = {"median": round(statistics.median(values), 3), "min": min(values),
                                     "max": max(values), "runs": values}
        if ratios:
            speed_vs[reference] = ratios
    if speed_vs:
        row["speed_vs"] = speed_vs
    if twin:
        row["speed_vs_twin"] = speed_vs.get(twin_name(row["model"]), {})
    return row


def _run_in_processes(processes: int, output: Optional[str], arguments: Dict[str, Any]) -> dict:
    runs: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="vithub-bench-models-") as folder:
        for index in range(processes):
            _logger.info(f"-- process {index + 1} of {processes}")
            path = Path(folder) / f"run{index}.json"
            verbosity = _VERBOSITY.get(_logger.getEffectiveLevel(), -2)
            subprocess.run([sys.executable, "-c", _CHILD, json.dumps(dict(arguments, output=str(path))), str(verbosity)],
                           check=True)
            runs.append(json.loads(path.read_text()))
    rows = []
    for per_run in zip(*(run["rows"] for run in runs)):
        first = per_run[0]
        ms = {name: round(statistics.median(run["ms"][name] for run in per_run), 3) for name in first["ms"]}
        row = dict(first, ms=ms, ms_runs={name: [run["ms"][name] for run in per_run] for name in first["ms"]},
                   images_per_second={name: round(first["batch"] * 1e3 / value, 2) for name, value in ms.items()})
        rows.append(_with_ratios(row, arguments["twin"], [run["ms"] for run in per_run]))
    payload = dict(runs[0], processes=processes, rows=rows, cpu_paths=[run.get("cpu_paths") for run in runs])
    _logger.info(f"-- median of {processes} processes")
    _logger.info("%s", format_table([ModelRow(row["model"], row["batch"], row["mode"], row["ms"], row["skipped"])
                                     for row in rows]))
    for row in rows:
        for reference, ratios in row.get("speed_vs", {}).items():
            for candidate, ratio in ratios.items():
                _logger.info(f"{row['model']:<22}{row['batch']:>6}{row['mode']:>7}  {candidate:<8} vs {reference:<22} "
                             f"{ratio['median']:.2f}x (runs {ratio['min']:.2f}-{ratio['max']:.2f})")
    report(output, payload)
    return payload
