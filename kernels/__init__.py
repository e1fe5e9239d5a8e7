"""vithub.kernels: the shared attention layer every vithub family runs through.

Ops (heads-last ``(B, H, W, heads, head_dim)``): :func:`neighborhood_attention`, :func:`window_attention`,
:func:`carrier_window_attention` (windows plus per-window carrier tokens, FasterViT), :func:`table_bias_attention` (dense
attention with a ``(|dy|, |dx|)`` bias table, LeViT and EfficientViT-M) and :func:`relu_linear_attention`
(EfficientViT-B/L) and :func:`global_attention` (a ViT's attention with a per-key bias and mask: token reduction,
``(B, tokens, heads, head_dim)``); these four have no Triton kernel yet. Unfused neighborhood attention, 1-D and 2-D
(:func:`neighborhood_attention_qk`, :func:`neighborhood_attention_av`; ``unfused.py``): the logits and the weighted sum
as two ops, for code written against NATTEN's old unfused API.
Backends (``backends/``, one module each, behind :mod:`vithub.kernels.registry`): ``reference`` (naive,
float64-capable ground truth), ``torch`` (fast tiled SDPA path, CPU and fallback), ``triton`` (fused kernels for
CUDA, forward and backward; on CPU only under ``TRITON_INTERPRET=1``). :func:`backend_refusals` says, per backend,
why it cannot run a given call. This package imports nothing else from vithub.
"""

if __name__ != "vithub.kernels":  # imported as a top-level `kernels` from a clone's root: see _shadowing.py
    from ._shadowing import hand_over

    hand_over(__name__, __path__[0])
else:
    from . import backends  # noqa: F401  (importing it registers the backends)
    from ._validation import pair
    from .caching import built_as_constants, constant_tensors
    from .ordering import ascending, ascending_order, descending_order, host_values
    from .backends.reference import window_bias
    from .backends.torch_tiled import gather_table_bias
    from .backends.triton_fused import triton_available, triton_refusal
    from .ops import (
        carrier_window_attention,
        global_attention,
        global_attention_and_importance,
        neighborhood_attention,
        relu_linear_attention,
        rpb_from_swin_table,
        table_bias_attention,
        window_attention,
    )
    from .unfused import neighborhood_attention_av, neighborhood_attention_qk
    from .registry import (
        OPS,
        Backend,
        BackendUnavailableError,
        available_backends,
        backend_names,
        current_backend,
        exporting_onnx,
        get_backend,
        refusals as backend_refusals,
        select_backend,
        use_backend,
    )

    BACKENDS = backend_names()

__all__ = [
    "BACKENDS",
    "OPS",
    "Backend",
    "BackendUnavailableError",
    "ascending",
    "ascending_order",
    "available_backends",
    "backend_refusals",
    "built_as_constants",
    "carrier_window_attention",
    "constant_tensors",
    "current_backend",
    "descending_order",
    "exporting_onnx",
    "gather_table_bias",
    "get_backend",
    "pair",
    "global_attention",
    "global_attention_and_importance",
    "host_values",
    "neighborhood_attention",
    "neighborhood_attention_av",
    "neighborhood_attention_qk",
    "relu_linear_attention",
    "rpb_from_swin_table",
    "select_backend",
    "table_bias_attention",
    "triton_available",
    "triton_refusal",
    "use_backend",
    "window_attention",
    "window_bias",
]
