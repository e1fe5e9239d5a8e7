"""vithub.kernels: the shared attention layer every vithub family runs through.

Ops (heads-last ``(B, H, W, heads, head_dim)``): :func:`neighborhood_attention`, :func:`window_attention`,
:func:`carrier_window_attention` (windows plus per-window carrier tokens, FasterViT), :func:`table_bias_attention` (dense
attention with a ``(|dy|, |dx|)`` bias table, LeViT and EfficientViT-M) and :func:`relu_linear_attention`
(EfficientViT-B/L); these three have no Triton kernel yet.
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
from .dense import gather_table_bias
from .ops import (
    carrier_window_attention,
    neighborhood_attention,
    relu_linear_attention,
    rpb_from_swin_table,
    table_bias_attention,
    window_attention,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "carrier_window_attention",
    "current_backend",
    "gather_table_bias",
    "neighborhood_attention",
    "relu_linear_attention",
    "rpb_from_swin_table",
    "table_bias_attention",
    "triton_available",
    "triton_refusal",
    "use_backend",
    "window_attention",
]
