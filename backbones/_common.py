"""Small helpers shared by the vithub model families."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F


def take_indices(num_stages: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """Absolute stage indices for ``forward_intermediates`` and the largest of them.

    ``None`` takes every stage, an int ``n`` the last ``n``, a sequence those indices (negative counts from the end).
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices: the last-n count must be in 1..{num_stages}, got {indices}")
        taken = list(range(num_stages - indices, num_stages))
    else:
        taken = []
        for index in indices:
            absolute = num_stages + index if index < 0 else index
            if not 0 <= absolute < num_stages:
                raise ValueError(f"indices: stage index {index} is out of range for {num_stages} stages")
            taken.append(absolute)
    return taken, max(taken)


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def resize_rpb(rpb: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ``(heads, 2Kh-1, 2Kw-1)`` relative-position-bias table to ``size`` (a new kernel/window)."""
    work_dtype = torch.float64 if rpb.dtype == torch.float64 else torch.float32  # no half-precision bicubic on CPU
    resized = F.interpolate(rpb[None].to(work_dtype), size=size, mode="bicubic", align_corners=False)
    return resized[0].to(rpb.dtype)
