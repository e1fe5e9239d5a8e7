"""The families' CPU paths chosen by measurement (1x1 convolutions, BatchNorm folding, the input memory format),
on the shared chooser :mod:`vithub.kernels.cpu_paths` (its pins, cache and :func:`chosen_paths` cover these too)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Tuple

import torch

from vithub.kernels import cpu_paths

_measuring = threading.local()  # set while input_format times whole forwards


def pointwise_path(conv: torch.nn.Conv2d, x: torch.Tensor) -> str:
    """``"linear"`` or ``"conv"`` for a 1x1 conv (:class:`~vithub.backbones._common.PointwiseConv2d`) on the
    channels-last map ``x``: timed per shape on eager CPU runs, ``"linear"`` elsewhere (GPU, graphs)."""
    if not cpu_paths.measuring_allowed(x):
        return cpu_paths.pinned("pointwise", ("conv", "linear"), "conv", "linear") or "linear"

    def decide() -> str:
        key = (x.shape, x.stride(), x.dtype, conv.out_channels)
        return cpu_paths.choose_path("pointwise", key,
                                     lambda: {"conv": lambda: conv._conv_forward(x, conv.weight, conv.bias),
                                              "linear": lambda: conv.as_linear(x)},
                                     baseline="conv", ours="linear")

    return cpu_paths.memoized(conv, "_pointwise_memo", x, decide)


def fold_path(layer: torch.nn.Module, x: torch.Tensor, candidates: Callable[[], Mapping[str, Callable[[], Any]]],
              weight_shape: Tuple[int, ...] = ()) -> str:
    """``"folded"`` (the layer with its BatchNorm folded in, one op) or ``"separate"`` (the layer then the
    BatchNorm, the twin's path) for ``layer`` on ``x`` in eval-mode inference: timed per layer kind, weight shape and
    input shape on eager CPU runs (``candidates`` makes the two calls, only to time), ``"separate"`` elsewhere
    (compiled, exported, traced or on GPU, pinned or not)."""
    if not cpu_paths.measuring_allowed(x):  # graphs keep the pair whatever the pin: their folding is the compiler's
        return "separate"

    def decide() -> str:
        key = (type(layer).__name__, tuple(weight_shape), x.shape, x.stride(), x.dtype)
        return cpu_paths.choose_path("norm_fold", key, candidates, baseline="separate", ours="folded")

    return cpu_paths.memoized(layer, "_fold_memo", x, decide)


def input_format(model: torch.nn.Module, x: torch.Tensor, body: Callable[[torch.Tensor], Any]
                 ) -> torch.memory_format:
    """The memory format to run ``body`` (the network after its input) in: ``channels_last`` (vithub's path) or
    ``contiguous`` (NCHW, the twin's), timed as whole forwards on first use per model architecture, input shape and
    thread count, in eval mode on eager CPU runs. Training and other runs keep ``channels_last`` unless pinned."""
    names = ("channels_last", "contiguous")
    choice = cpu_paths.pinned("input_format", names, "contiguous", "channels_last")
    if choice is None and cpu_paths.measuring_allowed(x) and not model.training and x.dim() == 4:
        if getattr(_measuring, "active", False):  # a candidate being timed: keep the format it was given
            return torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        key = (type(model).__name__, id(model), tuple(x.shape), x.dtype)  # a model built at the same id anew
        # reuses the choice: only its speed could differ, never its output
        formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
        candidates = {name: (lambda fmt=fmt: body(x.contiguous(memory_format=fmt))) for name, fmt in formats.items()}
        _measuring.active = True
        try:
            choice = cpu_paths.choose_path("input_format", key, candidates, baseline="contiguous",
                                           ours="channels_last")
        finally:
            _measuring.active = False
    return torch.contiguous_format if choice == "contiguous" else torch.channels_last


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


