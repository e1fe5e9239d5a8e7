"""The one timing helper every ``vithub bench`` subcommand uses, and the few things they share around it.

Candidates of a row are timed round-robin (one call each, repeated, every other round reversed) and the median is
kept, so the ratios in a row come from the same stretch of a noisy shared machine. On CUDA a call only *queues*
work: host clocks would measure the launch, so CUDA rows are timed with CUDA events and read after a device
synchronisation.
"""

from __future__ import annotations

import logging
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch

from vithub.train.checkpoint import atomic_write

_logger = logging.getLogger(__name__)

DeviceLike = Union[torch.device, str, None]


def _time_cpu(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _time_cuda(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    # elapsed_time is only defined once both events have completed on the device.
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def measure(candidates: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
            device: DeviceLike = None, digits: int = 3, settle_s: float = 0.0) -> Dict[str, float]:
    """Median milliseconds per candidate, timed round-robin (every other round in reverse order) after ``warmup``
    untimed calls each.

    ``device`` says where the candidates run: ``"cuda"`` (any CUDA device) times each call between two CUDA events
    and synchronises before reading them; anything else times on the host clock.

    ``settle_s`` > 0: before each timed call, wait that many seconds and make one untimed call of the same candidate.
    For candidates that each own a thread pool (ONNX Runtime sessions): a pool keeps its threads spinning for a while
    after a call, and on a machine with few cores the pool of the candidate just timed slows the next candidate's
    call down (up to about 3x at batch 1 in ``vithub bench export`` on two cores). The wait lets the other pools park;
    the untimed call wakes this candidate's own threads, so the timed call sees it as it runs alone.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if settle_s < 0:
        raise ValueError(f"settle_s must be >= 0 seconds, got {settle_s}")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    time_call = _time_cuda if on_cuda else _time_cpu
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    if on_cuda:
        torch.cuda.synchronize()  # the warm-up's queued work must not land in the first timed call
    samples: Dict[str, List[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(repeats):
        # every other round in reverse, so that no candidate always runs right after the same other one
        for name in names if repeat % 2 == 0 else names[::-1]:
            fn = candidates[name]
            if settle_s:
                time.sleep(settle_s)
                fn()
            samples[name].append(time_call(fn))
    return {name: round(statistics.median(values), digits) for name, values in samples.items()}


def device_name(device: DeviceLike) -> str:
    """The GPU's name, or the CPU's model name and the thread count, for a results file: a speed ratio holds for the
    processor it was measured on, so every results file names it."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_slug(device: DeviceLike) -> str:
    """A file-name-safe device name: ``cpu`` or the GPU's name, e.g. ``nvidia_h200``."""
    import re

    device = torch.device(device or "cpu")
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def write_json(path: Union[str, Path], payload: dict) -> None:
    """Write a results file atomically (a kill leaves the old file or the new one)."""
    text = json.dumps(payload, indent=2)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def report(output: Optional[str], payload: dict) -> None:
    """Write ``payload`` to ``output`` (none when empty) and say where."""
    if output:
        write_json(output, payload)
        _logger.info(f"wrote {output}")
