"""CPU paths chosen by measurement on the machine that runs them (the chooser the kernel layer and the families share).

Where vithub computes the same math as the twin (timm's model, or the official code) by another CPU path (a 1x1
convolution as a matrix product, a channels-last network, fused attention instead of explicit matrix products),
which one is faster depends on the CPU (Intel or AMD), the thread count and the shape. :func:`choose_path` times the
candidates on first use, per kind, key (shape, dtype, ...) and thread count, keeps the faster and caches the choice
for the process. The twin's path is the baseline: another path is taken only when it measured faster by a margin, so
a choice is never the slower of the two by more than timing noise.

``VITHUB_CPU_PATHS`` pins paths: ``"pointwise=conv,norm_fold=separate,attention=matmul"`` (per kind), ``"twin"``
(every kind takes its baseline, the twin's path) or ``"vithub"`` (every kind takes vithub's path without timing);
tests and reproducible benchmarks use it. It is read when a choice is made; layers remember their choices
(:func:`memoized`) until :func:`clear_choices`. :func:`chosen_paths` says what each kind chose (``vithub bench
models`` records it). The kinds and their paths: :data:`KINDS`.
Outside eager CPU runs (CUDA, ``torch.compile``, export, FX, TorchScript) callers take their static path.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import threading
import time
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Tuple, Union

import torch
import torch.fx

_LOG = logging.getLogger(__name__)

PIN_ENV = "VITHUB_CPU_PATHS"
MARGIN = 0.03  # another path must beat the baseline's median by this fraction
ROUNDS = 5  # timed rounds per candidate, interleaved, after one warm-up call each
_clock: Callable[[], float] = time.perf_counter  # seconds; tests put a deterministic clock here

_choices: Dict[Tuple[str, Hashable, int], str] = {}
_generation = 0  # bumped by clear_choices(): the per-module memos of older generations are stale
_lock = threading.RLock()  # re-entrant: a whole-forward candidate makes its layers' choices inside the timing

# kind: (the twin's path, the baseline; vithub's path) - what each chooser decides between
KINDS: Dict[str, Tuple[str, str]] = {
    "pointwise": ("conv", "linear"),  # a 1x1 conv on a channels-last map: convolution, or a matrix product
    "norm_fold": ("separate", "folded"),  # eval conv/linear + BatchNorm: two ops, or one with the norm folded in
    "input_format": ("contiguous", "channels_last"),  # the memory format a convolutional network runs in
    "attention": ("matmul", "sdpa"),  # window/neighbourhood tiles at inference: logits, softmax, matmul; or SDPA
}


@functools.lru_cache(maxsize=32)
def _parse_pins(spec: str) -> Dict[str, str]:
    pins: Dict[str, str] = {}
    for item in spec.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals:
            raise ValueError(f"{PIN_ENV} must be 'twin', 'vithub' or KIND=PATH,... (e.g. pointwise=conv), got {spec!r}")
        pins[key.strip()] = value.strip()
    return pins


def pinned(kind: str, names: Tuple[str, ...], baseline: str, ours: str) -> Optional[str]:
    """The path ``VITHUB_CPU_PATHS`` pins for ``kind`` (``None``: not pinned); an unknown path name is an error."""
    spec = os.environ.get(PIN_ENV, "").strip()
    if not spec:
        return None
    if spec == "twin":
        return baseline
    if spec == "vithub":
        return ours
    value = _parse_pins(spec).get(kind)
    if value is not None and value not in names:
        raise ValueError(f"{PIN_ENV}: {kind} takes one of {list(names)}, got {value!r}")
    return value


def _time(candidates: Mapping[str, Callable[[], Any]]) -> Dict[str, float]:
    """Median seconds per call of each candidate over :data:`ROUNDS` interleaved rounds (after a warm-up call)."""
    samples: Dict[str, list] = {name: [] for name in candidates}
    with torch.no_grad():
        for run in candidates.values():
            run()
        for _ in range(ROUNDS):
            for name, run in candidates.items():
                start = _clock()
                run()
                samples[name].append(_clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def choose_path(kind: str, key: Hashable,
                candidates: Union[Mapping[str, Callable[[], Any]], Callable[[], Mapping[str, Callable[[], Any]]]],
                baseline: str, ours: str) -> str:
    """The path to run for ``kind`` at ``key`` on this machine and thread count: pinned by :data:`PIN_ENV`, else
    the cached choice, else timed now. ``candidates`` maps path names (``baseline``, the twin's path, and ``ours``)
    to calls that run the path once on the real input, or is a function making that map (only called to time);
    ``ours`` wins only if faster by :data:`MARGIN`."""
    choice = pinned(kind, (baseline, ours), baseline, ours)
    if choice is not None:
        return choice
    cache_key = (kind, key, torch.get_num_threads())
    choice = _choices.get(cache_key)
    if choice is not None:
        return choice
    with _lock:
        choice = _choices.get(cache_key)
        if choice is None:
            seconds = _time(candidates() if callable(candidates) else candidates)
            choice = ours if seconds[ours] < seconds[baseline] * (1.0 - MARGIN) else baseline
            _choices[cache_key] = choice
            _LOG.debug("%s %s: %s (%s)", kind, key, choice,
                       ", ".join(f"{name} {value * 1e3:.3f} ms" for name, value in seconds.items()))
    return choice


def measuring_allowed(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` may time its candidates: an eager CPU run (not compiled, exported or traced)."""
    # cheap checks only (this runs on every 1x1 conv call): torch.compile and torch.export (an ONNX export's route
    # too) count as compiling; the older ONNX exporter traces with TorchScript's tracer
    return (not isinstance(x, torch.fx.Proxy) and x.is_cpu and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def chosen_paths() -> Dict[str, Dict[str, int]]:
    """Per kind, how many keys (shapes, ...) chose each path so far in this process, and the pin if one is set."""
    summary: Dict[str, Dict[str, int]] = {}
    for (kind, _, _), choice in list(_choices.items()):
        counts = summary.setdefault(kind, {})
        counts[choice] = counts.get(choice, 0) + 1
    spec = os.environ.get(PIN_ENV, "").strip()
    if spec:
        summary["pinned"] = {spec: 1}
    return summary


def clear_choices() -> None:
    """Forget every choice, the modules' memos included (they are timed, and the pins read, again on next use)."""
    global _generation
    with _lock:
        _choices.clear()
        _generation += 1


def memoized(owner: torch.nn.Module, slot: str, x: torch.Tensor, decide: Callable[[], str]) -> str:
    """``decide()``, remembered on ``owner`` (attribute ``slot``) for inputs of ``x``'s shape, strides and dtype at
    this thread count until :func:`clear_choices`: a layer called again on the same shape skips the pin, key and
    cache lookups of :func:`choose_path` (these layers run hundreds of times per forward)."""
    memo = owner.__dict__.get(slot)
    shape, stride, threads = x.shape, x.stride(), torch.get_num_threads()
    if (memo is not None and memo[0] == _generation and memo[1] == threads and memo[2] == shape
            and memo[3] == stride and memo[4] is x.dtype):
        return memo[5]
    choice = decide()
    owner.__dict__[slot] = (_generation, threads, shape, stride, x.dtype, choice)
    return choice
