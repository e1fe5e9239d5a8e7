"""vithub.kernels: the shared attention layer every vithub family runs through.

Ops (heads-last ``(B, H, W, heads, head_dim)``): :func:`neighborhood_attention`, :func:`window_attention`,
:func:`carrier_window_attention` (windows plus per-window carrier tokens, FasterViT; no Triton kernel yet).
Backends: ``reference`` (naive, float64-capable ground truth), ``torch`` (fast tiled SDPA path, CPU and fallback),
``triton`` (fused kernels for CUDA, forward and backward; on CPU only under ``TRITON_INTERPRET=1``).
This package imports nothing else from vithub.
"""

from .dispatch import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    current_backend,
    triton_available,
    triton_refusal,
    use_backend,
)
from .ops import carrier_window_attention, neighborhood_attention, rpb_from_swin_table, window_attention

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "carrier_window_attention",
    "current_backend",
    "neighborhood_attention",
    "rpb_from_swin_table",
    "triton_available",
    "triton_refusal",
    "use_backend",
    "window_attention",
]
