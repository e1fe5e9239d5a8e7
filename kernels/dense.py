"""Fast PyTorch path (the ``torch`` backend) for the dense attention forms: table-bias attention (LeViT,
EfficientViT-M) and ReLU linear attention (EfficientViT-B/L)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F


def _table_index(query_size: Tuple[int, int], key_size: Tuple[int, int], stride: int,
                 device: torch.device) -> torch.Tensor:
    height, width = key_size
    qy = torch.arange(query_size[0], device=device) * stride
    qx = torch.arange(query_size[1], device=device) * stride
    ky, kx = torch.arange(height, device=device), torch.arange(width, device=device)
    dy = (qy[:, None, None, None] - ky[None, None, :, None]).abs()
    dx = (qx[None, :, None, None] - kx[None, None, None, :]).abs()
    return (dy * width + dx).reshape(-1)


_INDEX_CACHE: Dict[Tuple[Tuple[int, int], Tuple[int, int], int, str], torch.Tensor] = {}
_INDEX_CACHE_LIMIT = 256  # distinct (grid, stride, device) entries kept; any-size inputs must not grow it forever


def table_index(query_size: Tuple[int, int], key_size: Tuple[int, int], stride: int,
                device: torch.device) -> torch.Tensor:
    """Flat ``(Hq*Wq*H*W,)`` index into a ``(H*W)`` table row: ``|qy*stride - ky| * W + |qx*stride - kx|``, cached
    per shape and device (under ``torch.compile`` it is traced into the graph instead)."""
    if torch.compiler.is_compiling():
        return _table_index(query_size, key_size, stride, device)
    key = (query_size, key_size, stride, str(device))
    index = _INDEX_CACHE.get(key)
    if index is None:
        if len(_INDEX_CACHE) >= _INDEX_CACHE_LIMIT:
            _INDEX_CACHE.clear()
        index = _INDEX_CACHE[key] = _table_index(query_size, key_size, stride, device)
    return index


def gather_table_bias(bias_table: torch.Tensor, query_size: Tuple[int, int], stride: int) -> torch.Tensor:
    """The dense ``(heads, Hq*Wq, H*W)`` bias of a ``(heads, H, W)`` table indexed by ``(|dy|, |dx|)``."""
    heads, height, width = bias_table.shape
    index = table_index(query_size, (height, width), stride, bias_table.device)
    return bias_table.reshape(heads, height * width).index_select(1, index).view(
        heads, query_size[0] * query_size[1], height * width)


def table_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                         scale: float) -> torch.Tensor:
    """Attention with a gathered ``(heads, Hq*Wq, H*W)`` bias: scaled logits as one batched matmul, the bias added in
    place, softmax, one matmul with ``v``.

    An explicit score matrix instead of SDPA: at these sizes (LeViT: at most 196 x 196, EfficientViT-M: 49 x 49
    windows, value widths unlike key widths) CPU SDPA with a float bias ran its unfused math path and was the
    slowest of ours, SDPA and timm's arithmetic in ``vithub bench kernels --ops table``. Memory is that of the
    score matrix, ``B * heads * Hq*Wq * H*W``, as in timm and the official code.
    """
    batch, q_height, q_width, heads, head_dim = q.shape
    height, width, value_dim = k.shape[1], k.shape[2], v.shape[-1]
    if heads == 1:
        # One head (EfficientViT-M calls each cascaded head alone): 3-D operands are views, and baddbmm applies
        # scale and bias in the matmul itself, so the call costs a few ops less (it is made 28 times a forward).
        flat_q = q.reshape(batch, q_height * q_width, head_dim)
        flat_k = k.reshape(batch, height * width, head_dim)
        flat_v = v.reshape(batch, height * width, value_dim)
        if bias is None:
            logits = torch.bmm(flat_q, flat_k.transpose(1, 2)).mul_(scale)
        else:
            logits = torch.baddbmm(bias, flat_q, flat_k.transpose(1, 2), alpha=scale)
        out = torch.bmm(logits.softmax(dim=-1), flat_v)
        return out.view(batch, q_height, q_width, 1, value_dim)
    seq_q = q.reshape(batch, q_height * q_width, heads, head_dim).transpose(1, 2)
    seq_k = k.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
    seq_v = v.reshape(batch, height * width, heads, value_dim).transpose(1, 2)
    # Scaling q (Nq x d) is cheaper than scaling the logits (Nq x Nk); the matmul's backward needs only its inputs,
    # so adding the bias in place is autograd-safe.
    logits = (seq_q * scale) @ seq_k.transpose(-1, -2)
    if bias is not None:
        logits += bias
    out = logits.softmax(dim=-1) @ seq_v
    return out.transpose(1, 2).reshape(batch, q_height, q_width, heads, value_dim)


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """``relu(q) (relu(k)^T [v, 1])`` in at least fp32: two matmuls per (batch, head), O(tokens) memory.

    The ones column appended to ``v`` makes the normaliser ``relu(q) . sum_j relu(k_j)`` come out of the same two
    matmuls as the numerator (the padded copy is also the contiguous layout the matmuls want).
    """
    batch, heads, head_dim, value_dim = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    compute = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        flat_q = F.relu(q.reshape(batch, -1, heads, head_dim).transpose(1, 2).to(compute))  # (B, h, N, d)
        flat_k = F.relu(k.reshape(batch, -1, heads, head_dim).transpose(1, 2).to(compute))
        flat_v = F.pad(v.reshape(batch, -1, heads, value_dim).transpose(1, 2).to(compute), (0, 1), value=1.0)
        out = flat_q @ (flat_k.transpose(-1, -2) @ flat_v)  # (B, h, N, dv + 1)
        out = out[..., :-1] / (out[..., -1:] + eps)
    return out.transpose(1, 2).reshape(*q.shape[:-1], value_dim).to(v.dtype)
