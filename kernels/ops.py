"""Public attention ops over 2-D maps, heads-last layout ``(B, H, W, heads, head_dim)``."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from . import custom_ops
from ._validation import (
    Size2d,
    check_carriers,
    check_gathered_bias,
    check_global_attention,
    check_linear_attention,
    check_table_attention,
    check_neighborhood,
    check_qkv,
    check_rpb,
    check_scale,
    check_unpadded,
    check_window,
    pair,
)
from .backends.torch_tiled import gather_table_bias, relu_linear_arithmetic
from .backends.torch_tiled import global_attention as torch_global_attention
from .backends.torch_tiled import table_bias_attention as torch_table_bias_attention
from .registry import as_custom_op, get_backend, select_backend


# --- TorchScript: a scripted model reaches the ops through their registered torch.ops. The Python wrappers below do
# argument checks and backend selection that TorchScript cannot compile, so a scripted call skips the checks. --------

def _script_pair(value: Size2d) -> List[int]:
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, List[int]):
        return [value[0], value[1]]
    return [value[0], value[1]]  # Tuple[int, int]


def _script_scale(scale: Optional[float], q: torch.Tensor) -> float:
    return scale if scale is not None else q.shape[-1] ** -0.5


def _script_backend(backend: Optional[str]) -> str:
    return backend if backend is not None else "torch"


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: Size2d,
    dilation: Size2d = 1,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """2-D neighborhood attention with NATTEN's semantics (stride 1, non-causal) and optional relative position bias.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)``; strided views (e.g. slices of a fused qkv) are fine.
        kernel_size: neighbourhood size ``K`` (int or ``(Kh, Kw)``); even sizes see one more key before the query.
        dilation: ``d`` (int or pair); a query attends only to keys of its dilation group (same index mod ``d``).
        rpb: ``(heads, 2Kh-1, 2Kw-1)``, added to scaled logits at ``[(k_y-q_y)/d + Kh-1, (k_x-q_x)/d + Kw-1]``.
        scale: logit scale, default ``head_dim ** -0.5``.
        backend: ``None`` (by device), ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(B, H, W, heads, head_dim)``. Requires ``H >= Kh*dh`` and ``W >= Kw*dw``.
    """
    if torch.jit.is_scripting():  # TorchScript calls the registered op (compiled away in eager Python)
        return torch.ops.vithub.neighborhood_attention(q, k, v, rpb, _script_pair(kernel_size),
                                                       _script_pair(dilation), _script_scale(scale, q),
                                                       _script_backend(backend))
    check_qkv(q, k, v)
    kernel = pair(kernel_size, "kernel_size")
    dil = pair(dilation, "dilation")
    check_neighborhood(q, kernel, dil)
    check_rpb(rpb, q, kernel)
    softmax_scale = check_scale(scale, q.shape[-1])
    name = select_backend("neighborhood_attention", backend, q)
    if as_custom_op():
        return custom_ops.neighborhood_attention_op(q, k, v, rpb, list(kernel), list(dil), softmax_scale, name)
    return get_backend(name).neighborhood_attention(q, k, v, rpb, kernel, dil, softmax_scale)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: Size2d,
    shift_size: Size2d = 0,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    unpadded_size: Optional[Size2d] = None,
) -> torch.Tensor:
    """Swin window attention (W-MSA, or SW-MSA when ``shift_size > 0``) without roll or partition copies.

    Equivalent to: roll the map by ``-shift``, split it into non-overlapping windows, attend inside each window with
    ``rpb`` and Swin's region mask, merge, roll back by ``+shift``.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)`` with ``H``, ``W`` multiples of the window.
        window_size: int or ``(wh, ww)``.
        shift_size: int or pair, each ``0 <= shift < window``.
        rpb: ``(heads, 2wh-1, 2ww-1)`` indexed by key minus query (convert Swin tables with :func:`rpb_from_swin_table`).
        scale: logit scale, default ``head_dim ** -0.5``.
        backend: ``None`` (by device), ``"reference"``, ``"torch"`` or ``"triton"``.
        unpadded_size: ``(h, w)`` of the map before bottom/right padding to a window multiple; then only that region
            is rolled and the padding stays at the bottom/right, which is timm's Swin order (roll, then pad).
            Default: the whole map rolls.
    """
    if torch.jit.is_scripting():
        unpadded_list = [q.shape[1], q.shape[2]] if unpadded_size is None else _script_pair(unpadded_size)
        return torch.ops.vithub.window_attention(q, k, v, rpb, _script_pair(window_size), _script_pair(shift_size),
                                                 _script_scale(scale, q), _script_backend(backend), unpadded_list)
    check_qkv(q, k, v)
    window = pair(window_size, "window_size")
    shift = pair(shift_size, "shift_size", minimum=0)
    check_window(q, window, shift)
    check_rpb(rpb, q, window)
    unpadded = check_unpadded(q, unpadded_size)
    softmax_scale = check_scale(scale, q.shape[-1])
    name = select_backend("window_attention", backend, q)
    if as_custom_op():
        return custom_ops.window_attention_op(q, k, v, rpb, list(window), list(shift), softmax_scale, name,
                                              list(unpadded))
    return get_backend(name).window_attention(q, k, v, rpb, window, shift, softmax_scale, unpadded)


def carrier_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    carrier_q: torch.Tensor,
    carrier_k: torch.Tensor,
    carrier_v: torch.Tensor,
    window_size: Size2d,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Window attention in which every window also holds its own carrier tokens (FasterViT's hierarchical attention).

    Each window's sequence is its ``E`` carrier tokens followed by its ``wh*ww`` tokens; every token of the sequence
    (carriers included) attends to the whole sequence. ``rpb`` biases token-token pairs as in
    :func:`window_attention`; any pair with a carrier gets zero bias. No shift.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)`` with ``H``, ``W`` multiples of the window.
        carrier_q, carrier_k, carrier_v: ``(B, H/wh, W/ww, E, heads, head_dim)``, the carriers of window ``(i, j)``
            at ``[:, i, j]``.
        window_size: int or ``(wh, ww)``.
        rpb: ``(heads, 2wh-1, 2ww-1)`` indexed by key minus query.
        scale: logit scale, default ``head_dim ** -0.5``.
        backend: ``None``, ``"reference"`` or ``"torch"`` (there is no Triton kernel for this op yet: ``None`` uses
            ``torch`` on every device and an explicit ``"triton"`` raises).

    Returns:
        ``(out, carrier_out)`` shaped like ``q`` and ``carrier_q``.
    """
    if torch.jit.is_scripting():
        return torch.ops.vithub.carrier_window_attention(q, k, v, carrier_q, carrier_k, carrier_v, rpb,
                                                         _script_pair(window_size), _script_scale(scale, q),
                                                         _script_backend(backend))
    check_qkv(q, k, v)
    window = pair(window_size, "window_size")
    check_window(q, window, (0, 0))
    check_carriers(q, window, carrier_q, carrier_k, carrier_v)
    check_rpb(rpb, q, window)
    softmax_scale = check_scale(scale, q.shape[-1])
    name = select_backend("carrier_window_attention", backend, q)
    if as_custom_op():
        return custom_ops.carrier_window_attention_op(q, k, v, carrier_q, carrier_k, carrier_v, rpb, list(window),
                                                      softmax_scale, name)
    return get_backend(name).carrier_window_attention(q, k, v, carrier_q, carrier_k, carrier_v, rpb, window,
                                                      softmax_scale)


def table_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_table: Optional[torch.Tensor] = None,
    query_stride: int = 1,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    gathered_bias: Optional[torch.Tensor] = None,  # not keyword-only: TorchScript compiles no keyword-only argument
) -> torch.Tensor:
    """Dense attention over a 2-D map with an additive bias gathered from a table indexed by ``(|dy|, |dx|)``
    (LeViT attention and attention-subsample; EfficientViT-M cascaded group attention inside a window).

    Every query attends to every key. Query ``(i, j)`` sits at ``(i * query_stride, j * query_stride)`` of the key
    map, so ``query_stride=2`` is LeViT's subsampling attention (queries from ``x[::2, ::2]``). The logit of query
    ``(i, j)`` and key ``(y, x)`` is ``scale * q.k + bias_table[h, |i*s - y|, |j*s - x|]``.

    Args:
        q: ``(B, ceil(H/s), ceil(W/s), heads, head_dim)``.
        k: ``(B, H, W, heads, head_dim)``.
        v: ``(B, H, W, heads, value_dim)`` (``value_dim`` may differ from ``head_dim``).
        bias_table: ``(heads, H, W)``; ``None`` for no bias. Models trained at another size resize their table to
            the new ``(H, W)`` first.
        query_stride: ``s >= 1``.
        scale: logit scale, default ``head_dim ** -0.5``.
        backend: ``None``, ``"reference"`` or ``"torch"`` (batched matmuls with the gathered bias; no Triton
            kernel: ``None`` uses ``torch`` on every device and an explicit ``"triton"`` raises).
        gathered_bias: instead of ``bias_table``, its dense form ``(heads, Hq*Wq, H*W)`` from
            :func:`gather_table_bias` with the same ``query_stride``, for callers that cache it across calls (the
            model families do in eval mode, as timm does).

    Returns:
        ``(B, ceil(H/s), ceil(W/s), heads, value_dim)``.
    """
    if torch.jit.is_scripting():  # the torch backend's arithmetic, which TorchScript compiles as it is
        if gathered_bias is None and bias_table is not None:
            gathered_bias = gather_table_bias(bias_table, (q.shape[1], q.shape[2]), query_stride)
        return torch_table_bias_attention(q, k, v, gathered_bias, _script_scale(scale, q))
    check_table_attention(q, k, v, bias_table, query_stride)
    if gathered_bias is not None:
        if bias_table is not None:
            raise ValueError("pass either bias_table or gathered_bias, not both")
        check_gathered_bias(gathered_bias, q, k)
    softmax_scale = check_scale(scale, q.shape[-1])
    name = select_backend("table_bias_attention", backend, q)
    return get_backend(name).table_bias_attention(q, k, v, bias_table, query_stride, softmax_scale, gathered_bias)


def relu_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = 1e-15,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """ReLU linear attention (EfficientViT-B/L "LiteMLA"): ``out_i = sum_j a_ij v_j / (sum_j a_ij + eps)`` with
    ``a_ij = relu(q_i) . relu(k_j)``, over all tokens of each (batch, head).

    The ``torch`` backend forms ``relu(k)^T v`` first (cost linear in the number of tokens) and accumulates in fp32
    at least, with autocast off: half-precision inputs are upcast and the result is cast back to ``v``'s dtype.

    Args:
        q, k: ``(B, *tokens, heads, head_dim)``, e.g. heads-last maps ``(B, H, W, heads, head_dim)``; raw
            projections, the ReLU is applied here.
        v: ``(B, *tokens, heads, value_dim)``.
        eps: added to the normaliser (official EfficientViT: ``1e-15``; timm's LiteMLA: ``1e-5``).
        backend: ``None``, ``"reference"`` (the sums written out as einsums, float64-capable) or ``"torch"``; no
            Triton kernel.

    Returns:
        ``(B, *tokens, heads, value_dim)`` in ``v``'s dtype.
    """
    if torch.jit.is_scripting():  # the torch backend's arithmetic, which TorchScript compiles as it is
        return relu_linear_arithmetic(q, k, v, eps)
    check_linear_attention(q, k, v, eps)
    name = select_backend("relu_linear_attention", backend, q)
    return get_backend(name).relu_linear_attention(q, k, v, float(eps))


def global_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: Optional[torch.Tensor] = None,
    key_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    return_importance: bool = False,
    query_mask: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Every query over every key (a ViT's attention), with two per-key terms that token reduction needs:
    ``a_ij = m_j exp(s_ij + b_j) / sum_k m_k exp(s_ik + b_k)``, ``s_ij = scale * q_i . k_j``.

    Args:
        q: ``(B, query_tokens, heads, head_dim)``.
        k: ``(B, tokens, heads, head_dim)``.
        v: ``(B, tokens, heads, value_dim)``.
        key_bias: ``(B, tokens)`` added to every query's logit of that key, in q's dtype (ToMe's proportional
            attention passes ``log(size)``: a merged token of size ``s`` acts as ``s`` copies of itself).
        key_mask: ``(B, tokens)``: bool (``False`` keys are left out: padding) or weights in [0, 1] in q's dtype that
            multiply the exponentials (a soft mask whose gradient stays finite at 0). Every query needs at least one
            key with a non-zero weight.
        scale: logit scale, default ``head_dim ** -0.5``.
        backend: ``None``, ``"reference"`` (the formula in einsums, float64-capable) or ``"torch"`` (fused SDPA
            unless the mask is a float weight or the importance is asked for); no Triton kernel.
        return_importance: also return each key's importance, the attention it receives averaged over heads and
            queries, ``mean_{h,i} a_ij`` ``(B, tokens)`` (LTMP's pruning score).
        query_mask: ``(B, query_tokens)``, bool or weights in q's dtype, only with ``return_importance``: the mean
            over queries becomes ``sum_i w_i a_ij / sum_i w_i``, so padded or masked-out tokens' rows do not count
            (each query still needs a non-zero weight somewhere in its row of the batch: ``sum_i w_i > 0``).

    Returns:
        ``(B, query_tokens, heads, value_dim)``, and with ``return_importance`` the importance as well.
    """
    out, importance = global_attention_and_importance(q, k, v, key_bias, key_mask, scale, backend, return_importance,
                                                      query_mask)
    if return_importance:
        assert importance is not None
        return out, importance
    return out


def global_attention_and_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: Optional[torch.Tensor] = None,
    key_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    return_importance: bool = False,
    query_mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`global_attention` with one return type, ``(out, importance)``, the importance ``None`` unless asked
    for: the form TorchScript compiles (scripted, the torch backend's arithmetic runs, without the checks)."""
    if torch.jit.is_scripting():  # the torch backend's arithmetic, which TorchScript compiles as it is
        return torch_global_attention(q, k, v, key_bias, key_mask, _script_scale(scale, q), return_importance,
                                      query_mask)
    check_global_attention(q, k, v, key_bias, key_mask, query_mask)
    if query_mask is not None and not return_importance:
        raise ValueError("query_mask only weights the importance; pass it with return_importance=True")
    softmax_scale = check_scale(scale, q.shape[-1])
    name = select_backend("global_attention", backend, q)
    return get_backend(name).global_attention(q, k, v, key_bias, key_mask, softmax_scale, return_importance,
                                              query_mask)


def rpb_from_swin_table(table: torch.Tensor, window_size: Size2d) -> torch.Tensor:
    """Convert a Swin relative-position table to this layer's rpb convention.

    Swin (timm and official) stores ``((2wh-1) * (2ww-1), heads)`` rows indexed by query minus key; the ops take
    ``(heads, 2wh-1, 2ww-1)`` indexed by key minus query, so both axes are flipped.
    """
    wh, ww = pair(window_size, "window_size")
    if table.dim() != 2 or table.shape[0] != (2 * wh - 1) * (2 * ww - 1):
        raise ValueError(
            f"table must have shape ((2wh-1)*(2ww-1), heads) = ({(2 * wh - 1) * (2 * ww - 1)}, heads) for window "
            f"{(wh, ww)}, got {tuple(table.shape)}"
        )
    return table.view(2 * wh - 1, 2 * ww - 1, -1).flip(0, 1).permute(2, 0, 1)
