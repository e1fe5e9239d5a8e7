"""Token bookkeeping that token reduction needs with a form for every way a model runs: stable orderings (ONNX has
no stable sort, so an export takes TopK, which keeps ties in index order too) and Python-side values of a tensor
(an exported graph has no host side)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .registry import exporting_onnx


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``values`` along the last dim, largest first, ties in index order."""
    if not torch.jit.is_scripting():
        if exporting_onnx():
            return values.topk(values.shape[-1], dim=-1, largest=True, sorted=True).indices
    return values.argsort(dim=-1, descending=True, stable=True)


def ascending_order(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``values`` along the last dim, smallest first, ties in index order."""
    if not torch.jit.is_scripting():
        if exporting_onnx():
            return values.topk(values.shape[-1], dim=-1, largest=False, sorted=True).indices
    return values.argsort(dim=-1, stable=True)


def ascending(indices: torch.Tensor) -> torch.Tensor:
    """``indices`` (distinct ints) sorted along the last dim."""
    if not torch.jit.is_scripting():
        if exporting_onnx():
            return indices.topk(indices.shape[-1], dim=-1, largest=False, sorted=True).values
    return indices.sort(dim=-1).values


def host_values(tensor: torch.Tensor) -> Optional[Any]:
    """``tensor``'s values as Python numbers (``tolist()``), or ``None`` while ``torch.onnx.export`` or
    ``torch.export`` traces, or for a meta tensor: what needs them (statistics, data-dependent sizes) has no place in
    an exported graph, and a meta tensor (a shape-only model, ``create_model(..., device="meta")``) has no values;
    callers leave it out there."""
    if exporting_onnx() or torch.compiler.is_exporting() or tensor.is_meta:
        return None
    return tensor.detach().tolist()
