"""Naive reference implementations: slow, obviously right, float64-capable. Ground truth for every other backend.

Arguments are assumed already validated (see :mod:`vithub.kernels.ops`). Runs every op on any device and dtype.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..registry import Backend


def neighborhood_starts(length: int, kernel: int, dilation: int) -> torch.Tensor:
    """Group coordinate of the first key of each query's neighborhood along one axis (NATTEN semantics).

    Token ``i`` belongs to dilation group ``i % dilation`` at group coordinate ``i // dilation``; the window of
    ``kernel`` group coordinates is centred on the query and shifted inward at the borders of its group.
    """
    index = torch.arange(length)
    group = index % dilation
    coord = index // dilation
    group_length = length // dilation + (group < length % dilation).long()
    left = kernel // 2
    right = kernel // 2 + (kernel % 2 - 1)
    center = torch.minimum(torch.clamp(coord, min=left), group_length - 1 - right)
    return center - left


def neighborhood_indices(length: int, kernel: int, dilation: int) -> torch.Tensor:
    """``(length, kernel)`` map indices of the keys each query attends to along one axis."""
    index = torch.arange(length)
    group = index % dilation
    key_coords = neighborhood_starts(length, kernel, dilation)[:, None] + torch.arange(kernel)[None, :]
    return group[:, None] + dilation * key_coords


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: Tuple[int, int],
    dilation: Tuple[int, int],
    rpb: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Per-query gather of the ``Kh x Kw`` neighbourhood, softmax over it, weighted sum of values."""
    batch, height, width, heads, head_dim = q.shape
    device = q.device
    rows = neighborhood_indices(height, kernel_size[0], dilation[0]).to(device)  # (H, Kh)
    cols = neighborhood_indices(width, kernel_size[1], dilation[1]).to(device)  # (W, Kw)
    row_index = rows[:, None, :, None]  # (H, 1, Kh, 1)
    col_index = cols[None, :, None, :]  # (1, W, 1, Kw)
    keys = k[:, row_index, col_index]  # (B, H, W, Kh, Kw, heads, d)
    values = v[:, row_index, col_index]
    logits = torch.einsum("byxhc,byxijhc->byxhij", q, keys) * scale
    if rpb is not None:
        # (key - query) / dilation + K - 1, per axis: the NAT/DiNAT checkpoint convention.
        rel_rows = (rows - torch.arange(height, device=device)[:, None]) // dilation[0] + kernel_size[0] - 1
        rel_cols = (cols - torch.arange(width, device=device)[:, None]) // dilation[1] + kernel_size[1] - 1
        bias = rpb[:, rel_rows[:, None, :, None], rel_cols[None, :, None, :]]  # (heads, H, W, Kh, Kw)
        logits = logits + bias.permute(1, 2, 0, 3, 4).unsqueeze(0)
    probs = logits.flatten(-2).softmax(dim=-1).view_as(logits)
    return torch.einsum("byxhij,byxijhc->byxhc", probs, values)


def _neighbourhoods(x: torch.Tensor, kernel: Tuple[int, ...], dilation: Tuple[int, ...]) -> torch.Tensor:
    """``(B, *spatial, heads, d)`` → ``(B, *spatial, *kernel, heads, d)``: each position's neighbourhood."""
    index = [neighborhood_indices(length, size, step).to(x.device)
             for length, size, step in zip(x.shape[1:-2], kernel, dilation)]
    if len(index) == 1:
        return x[:, index[0]]
    return x[:, index[0][:, None, :, None], index[1][None, :, None, :]]


def neighborhood_bias(rpb: torch.Tensor, spatial: Tuple[int, ...], kernel: Tuple[int, ...],
                      dilation: Tuple[int, ...]) -> torch.Tensor:
    """``(heads, *spatial, *kernel)``: the rpb entry of every (query, neighbour) pair, at ``(key - query) /
    dilation + K - 1`` per axis."""
    relative = []
    for length, size, step in zip(spatial, kernel, dilation):
        keys = neighborhood_indices(length, size, step).to(rpb.device)
        relative.append((keys - torch.arange(length, device=rpb.device)[:, None]) // step + size - 1)
    if len(relative) == 1:
        return rpb[:, relative[0]]
    return rpb[:, relative[0][:, None, :, None], relative[1][None, :, None, :]]


def neighborhood_qk(q: torch.Tensor, k: torch.Tensor, rpb: Optional[torch.Tensor], kernel: Tuple[int, ...],
                    dilation: Tuple[int, ...]) -> torch.Tensor:
    """Unfused logits: ``q . k`` over each query's gathered neighbourhood (unscaled), plus rpb; ``(B, *spatial, heads,
    prod(kernel))``, neighbours in row-major order from the window start (NATTEN's)."""
    keys = _neighbourhoods(k, kernel, dilation)
    if len(kernel) == 1:
        logits = torch.einsum("blhc,blihc->blhi", q, keys)
    else:
        logits = torch.einsum("byxhc,byxijhc->byxhij", q, keys)
    if rpb is not None:
        logits = logits + neighborhood_bias(rpb, tuple(q.shape[1:-2]), kernel, dilation).movedim(0, len(kernel))
    return logits.flatten(-len(kernel))


def neighborhood_av(attn: torch.Tensor, v: torch.Tensor, kernel: Tuple[int, ...], dilation: Tuple[int, ...]
                    ) -> torch.Tensor:
    """Unfused output: each query's weights ``(B, *spatial, heads, prod(kernel))`` times its gathered neighbourhood's
    values; ``(B, *spatial, heads, value_dim)``."""
    values = _neighbourhoods(v, kernel, dilation)
    weights = attn.unflatten(-1, kernel)
    if len(kernel) == 1:
        return torch.einsum("blhi,blihc->blhc", weights, values)
    return torch.einsum("byxhij,byxijhc->byxhc", weights, values)


def swin_region_labels(length: int, window: int, shift: int) -> torch.Tensor:
    """Region id of each position of the rolled map along one axis, as Swin's shifted-window mask defines it."""
    labels = torch.zeros(length, dtype=torch.long)
    if shift > 0:
        labels[length - window:length - shift] = 1
        labels[length - shift:] = 2
    return labels


def window_bias(rpb: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """The ``(heads, wh*ww, wh*ww)`` bias of one window, ``[h, query, key]``, from a key-minus-query ``rpb`` table
    (tokens in raster order)."""
    wh, ww = window_size
    ys, xs = torch.meshgrid(torch.arange(wh, device=rpb.device), torch.arange(ww, device=rpb.device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return rpb[:, ys[None, :] - ys[:, None] + wh - 1, xs[None, :] - xs[:, None] + ww - 1]


def rolled_positions(length: int, shift: int, unpadded: int) -> torch.Tensor:
    """Map position read at each position of the rolled map: the first ``unpadded`` positions are rolled by ``-shift``
    (``torch.roll(x[:unpadded], -shift)``), the padding after them stays in place (timm's Swin: roll, then pad)."""
    index = torch.arange(length)
    return torch.where(index < unpadded, (index + shift) % unpadded, index)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: Tuple[int, int],
    shift_size: Tuple[int, int],
    rpb: Optional[torch.Tensor],
    scale: float,
    unpadded_size: Optional[Tuple[int, int]] = None,
) -> torch.Tensor:
    """Roll, partition into windows, masked attention in each window with rpb, merge, roll back (Swin W/SW-MSA).

    With ``unpadded_size`` only that top-left region is rolled; the rest is padding that stays at the bottom/right.
    """
    batch, height, width, heads, head_dim = q.shape
    wh, ww = window_size
    sh, sw = shift_size
    uh, uw = unpadded_size if unpadded_size is not None else (height, width)
    device = q.device
    rows = rolled_positions(height, sh, uh).to(device)
    cols = rolled_positions(width, sw, uw).to(device)

    def partition(x: torch.Tensor) -> torch.Tensor:
        x = x[:, rows][:, :, cols]
        x = x.view(batch, height // wh, wh, width // ww, ww, heads, head_dim)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(batch, height // wh, width // ww, heads, wh * ww, head_dim)

    qw, kw, vw = partition(q), partition(k), partition(v)
    logits = torch.einsum("bijhqc,bijhkc->bijhqk", qw, kw) * scale

    if rpb is not None:
        logits = logits + window_bias(rpb, window_size)[None, None, None]

    labels_y = swin_region_labels(height, wh, sh).to(device).view(height // wh, wh)
    labels_x = swin_region_labels(width, ww, sw).to(device).view(width // ww, ww)
    region = labels_y[:, None, :, None] * 3 + labels_x[None, :, None, :]  # (nWh, nWw, wh, ww)
    region = region.reshape(height // wh, width // ww, wh * ww)
    blocked = region[:, :, :, None] != region[:, :, None, :]  # (nWh, nWw, query, key)
    logits = logits.masked_fill(blocked[None, :, :, None], float("-inf"))

    out = torch.einsum("bijhqk,bijhkc->bijhqc", logits.softmax(dim=-1), vw)
    out = out.view(batch, height // wh, width // ww, heads, wh, ww, head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, height, width, heads, head_dim)
    return out[:, torch.argsort(rows)][:, :, torch.argsort(cols)]  # undo the roll


def carrier_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    carrier_q: torch.Tensor,
    carrier_k: torch.Tensor,
    carrier_v: torch.Tensor,
    window_size: Tuple[int, int],
    rpb: Optional[torch.Tensor],
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each window's sequence is its carrier tokens followed by its tokens in raster order; every token of that
    sequence attends to all of it. ``rpb`` biases token-token pairs only; pairs with a carrier get zero bias."""
    batch, height, width, heads, head_dim = q.shape
    wh, ww = window_size
    rows, cols = height // wh, width // ww
    carriers = carrier_q.shape[3]

    def sequence(x: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
        x = x.view(batch, rows, wh, cols, ww, heads, head_dim).permute(0, 1, 3, 2, 4, 5, 6)
        return torch.cat([carrier, x.reshape(batch, rows, cols, wh * ww, heads, head_dim)], dim=3)

    seq_q, seq_k, seq_v = sequence(q, carrier_q), sequence(k, carrier_k), sequence(v, carrier_v)
    logits = torch.einsum("bijqhc,bijkhc->bijhqk", seq_q, seq_k) * scale
    if rpb is not None:
        bias = torch.zeros(heads, carriers + wh * ww, carriers + wh * ww, dtype=logits.dtype, device=q.device)
        bias[:, carriers:, carriers:] = window_bias(rpb, window_size)
        logits = logits + bias
    out = torch.einsum("bijhqk,bijkhc->bijqhc", logits.softmax(dim=-1), seq_v)
    carrier_out, tokens = out[:, :, :, :carriers], out[:, :, :, carriers:]
    tokens = tokens.reshape(batch, rows, cols, wh, ww, heads, head_dim).permute(0, 1, 3, 2, 4, 5, 6)
    return tokens.reshape(batch, height, width, heads, head_dim), carrier_out


def table_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: Optional[torch.Tensor],
                         stride: int, scale: float, gathered_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense attention of every query over every key; query ``(i, j)`` sits at ``(i*stride, j*stride)`` of the key
    map and gets ``bias_table[h, |dy|, |dx|]`` added to its scaled logits (or ``gathered_bias[h, query, key]``, raster
    order, when given)."""
    batch, q_height, q_width, heads, _ = q.shape
    _, height, width, _, value_dim = v.shape
    logits = torch.einsum("bijhc,byxhc->bhijyx", q, k) * scale
    if bias_table is not None:
        qy = torch.arange(q_height, device=q.device) * stride
        qx = torch.arange(q_width, device=q.device) * stride
        dy = (qy[:, None] - torch.arange(height, device=q.device)[None, :]).abs()  # (Hq, H)
        dx = (qx[:, None] - torch.arange(width, device=q.device)[None, :]).abs()  # (Wq, W)
        bias = bias_table[:, dy[:, None, :, None], dx[None, :, None, :]]  # (heads, Hq, Wq, H, W)
        logits = logits + bias[None]
    if gathered_bias is not None:
        logits = logits + gathered_bias.view(heads, q_height, q_width, height, width)[None]
    probs = logits.reshape(batch, heads, q_height, q_width, height * width).softmax(dim=-1)
    probs = probs.view(batch, heads, q_height, q_width, height, width)
    return torch.einsum("bhijyx,byxhc->bijhc", probs, v)


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """``out_i = relu(q_i) . S / (relu(q_i) . z + eps)`` with ``S = sum_j relu(k_j) v_j^T`` and ``z = sum_j relu(k_j)``:
    the definition ``sum_j a_ij v_j / (sum_j a_ij + eps)``, ``a_ij = relu(q_i) . relu(k_j)``, with the sums over
    ``j`` taken first (each term written out as an einsum, no padding trick, no fp32 casts). Its cost is the linear
    one the model has, which is what ``vithub list`` counts; the tests check it against a per-query loop of the
    tokens-by-tokens definition."""
    batch, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
    token_shape = q.shape[1:-2]
    flat_q, flat_k = q.reshape(batch, -1, heads, head_dim).relu(), k.reshape(batch, -1, heads, head_dim).relu()
    flat_v = v.reshape(batch, -1, heads, v.shape[-1])
    context = torch.einsum("bmhc,bmhe->bhce", flat_k, flat_v)
    normaliser = torch.einsum("bnhc,bhc->bnh", flat_q, flat_k.sum(dim=1))
    out = torch.einsum("bnhc,bhce->bnhe", flat_q, context) / (normaliser[..., None] + eps)
    return out.reshape(batch, *token_shape, heads, v.shape[-1])


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor],
                     key_mask: Optional[torch.Tensor], scale: float, query_mask: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``a_ij = m_j exp(s_ij + b_j) / sum_k m_k exp(s_ik + b_k)`` with ``s_ij = scale q_i . k_j``, per head: the
    key bias added to every query's logits, the key mask (bool: keep where True; float: a weight) multiplying the
    exponentials. Also returns each key's importance, ``mean_h sum_i w_i a_ij / sum_i w_i`` (``w`` the query mask,
    all ones by default)."""
    logits = torch.einsum("bqhc,bkhc->bhqk", q, k) * scale
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :]
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    if key_mask is not None:
        weights = weights * key_mask.to(weights.dtype)[:, None, None, :]
    probs = weights / weights.sum(dim=-1, keepdim=True)
    if query_mask is None:
        importance = probs.mean(dim=(1, 2))
    else:
        query_weights = query_mask.to(probs.dtype)
        importance = (torch.einsum("bhqk,bq->bk", probs, query_weights) / probs.shape[1]
                      / query_weights.sum(dim=1, keepdim=True))
    return torch.einsum("bhqk,bkhc->bqhc", probs, v), importance


class ReferenceBackend(Backend):
    """The definitions, written out naively; only ever chosen by name (``backend="reference"``)."""

    name = "reference"
    title = "reference implementation"

    def neighborhood_attention(self, q, k, v, rpb, kernel, dilation, scale):
        return neighborhood_attention(q, k, v, kernel, dilation, rpb, scale)

    def window_attention(self, q, k, v, rpb, window, shift, scale, unpadded):
        return window_attention(q, k, v, window, shift, rpb, scale, unpadded)

    def carrier_window_attention(self, q, k, v, carrier_q, carrier_k, carrier_v, rpb, window, scale):
        return carrier_window_attention(q, k, v, carrier_q, carrier_k, carrier_v, window, rpb, scale)

    def table_bias_attention(self, q, k, v, bias_table, query_stride, scale, gathered_bias):
        return table_bias_attention(q, k, v, bias_table, query_stride, scale, gathered_bias)

    def relu_linear_attention(self, q, k, v, eps):
        return relu_linear_attention(q, k, v, eps)

    def neighborhood_qk(self, q, k, rpb, kernel, dilation):
        return neighborhood_qk(q, k, rpb, kernel, dilation)

    def neighborhood_av(self, attn, v, kernel, dilation):
        return neighborhood_av(attn, v, kernel, dilation)

    def global_attention(self, q, k, v, key_bias, key_mask, scale, importance, query_mask):
        out, key_importance = global_attention(q, k, v, key_bias, key_mask, scale, query_mask)
        return out, key_importance if importance else None
