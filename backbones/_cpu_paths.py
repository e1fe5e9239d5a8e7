"""CPU paths chosen by measurement on the machine that runs them.

Where a vh model computes the same math as its timm twin by another CPU path (a 1x1 convolution as a matrix product,
a channels-last network), which one is faster depends on the CPU (Intel or AMD), the thread count and the shape.
:func:`choose_path` times the candidates on first use, per kind, key (shape, dtype, ...) and thread count, keeps the
faster and caches the choice for the process. The twin's path is the baseline: another path is taken only when it
measured faster by a margin, so a choice is never the slower of the two by more than timing noise.

``VITHUB_CPU_PATHS`` pins paths: ``"pointwise=conv,norm_fold=separate,input_format=contiguous"`` (per kind),
``"twin"`` (every kind takes its baseline, the twin's path) or ``"vithub"`` (every kind takes vithub's path without
timing); tests and reproducible benchmarks use it. It is read when a choice is made; layers remember their choices
(:func:`memoized`) until :func:`clear_choices`. :func:`chosen_paths` says what each kind chose (``vithub bench
models`` records it).
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
_measuring = threading.local()


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


def pointwise_path(conv: torch.nn.Conv2d, x: torch.Tensor) -> str:
    """``"linear"`` or ``"conv"`` for a 1x1 conv (:class:`~vithub.backbones._common.PointwiseConv2d`) on the
    channels-last map ``x``: timed per shape on eager CPU runs, ``"linear"`` elsewhere (GPU, graphs)."""
    if not measuring_allowed(x):
        return pinned("pointwise", ("conv", "linear"), "conv", "linear") or "linear"

    def decide() -> str:
        key = (x.shape, x.stride(), x.dtype, conv.out_channels)
        return choose_path("pointwise", key, lambda: {"conv": lambda: conv._conv_forward(x, conv.weight, conv.bias),
                                                      "linear": lambda: conv.as_linear(x)},
                           baseline="conv", ours="linear")

    return memoized(conv, "_pointwise_memo", x, decide)


def fold_path(layer: torch.nn.Module, x: torch.Tensor, candidates: Callable[[], Mapping[str, Callable[[], Any]]],
              weight_shape: Tuple[int, ...] = ()) -> str:
    """``"folded"`` (the layer with its BatchNorm folded in, one op) or ``"separate"`` (the layer then the
    BatchNorm, the twin's path) for ``layer`` on ``x`` in eval-mode inference: timed per layer kind, weight shape and
    input shape on eager CPU runs (``candidates`` makes the two calls, only to time), ``"separate"`` elsewhere
    (compiled, exported, traced or on GPU, pinned or not)."""
    if not measuring_allowed(x):  # graphs keep the pair whatever the pin: their folding is the compiler's
        return "separate"

    def decide() -> str:
        key = (type(layer).__name__, tuple(weight_shape), x.shape, x.stride(), x.dtype)
        return choose_path("norm_fold", key, candidates, baseline="separate", ours="folded")

    return memoized(layer, "_fold_memo", x, decide)


def input_format(model: torch.nn.Module, x: torch.Tensor, body: Callable[[torch.Tensor], Any]
                 ) -> torch.memory_format:
    """The memory format to run ``body`` (the network after its input) in: ``channels_last`` (vithub's path) or
    ``contiguous`` (NCHW, the twin's), timed as whole forwards on first use per model architecture, input shape and
    thread count, in eval mode on eager CPU runs. Training and other runs keep ``channels_last`` unless pinned."""
    names = ("channels_last", "contiguous")
    choice = pinned("input_format", names, "contiguous", "channels_last")
    if choice is None and measuring_allowed(x) and not model.training and x.dim() == 4:
        if getattr(_measuring, "active", False):  # a candidate being timed: keep the format it was given
            return torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        key = (type(model).__name__, id(model), tuple(x.shape), x.dtype)  # a model built at the same id anew
        # reuses the choice: only its speed could differ, never its output
        formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
        candidates = {name: (lambda fmt=fmt: body(x.contiguous(memory_format=fmt))) for name, fmt in formats.items()}
        _measuring.active = True
        try:
            choice = choose_path("input_format", key, candidates, baseline="contiguous", ours="channels_last")
        finally:
            _measuring.active = False
    return torch.contiguous_format if choice == "contiguous" else torch.channels_last


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


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
