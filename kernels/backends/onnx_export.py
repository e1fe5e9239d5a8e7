"""The ``onnx`` backend: every op written with standard operators only, chosen automatically while
``torch.onnx.export`` traces a model (:func:`vithub.kernels.registry.exporting_onnx`), so exported graphs hold no
``vithub::`` custom op and run in any ONNX runtime. It is never picked automatically otherwise (``backend="onnx"``
runs it eagerly, which is how the kernel tests check it against the reference).

The forms are chosen for ONNX Runtime: neighborhood attention is dense attention of query tiles over the key
regions that hold their neighbourhoods (plans in Python ints, so they become graph constants; the torch backend's
tiled plans take data-dependent steps an export cannot trace); window attention, shifted or not, is one batch of
per-window matmuls with rpb and the shift mask as one additive constant, as timm's Swin exports; one-head table-bias
attention (EfficientViT-M) works on the channel-major layout of the model's NCHW maps, so the model's permutes
cancel. The other ops' torch forms are plain tensor algebra and are used as they are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import rolled_positions, swin_region_labels, window_bias
from .torch_tiled import TorchBackend, gather_table_bias, table_bias_attention


@lru_cache(maxsize=256)
def neighborhood_tile_plan(length: int, kernel: int, dilation: int, tile: int
                           ) -> Tuple[List[int], List[int], List[List[List[int]]], List[int]]:
    """One axis of :func:`tiled_neighborhood_attention`, in Python ints (constants of the exported graph).

    Within each dilation group, queries are cut into tiles of ``tile`` consecutive group coordinates (the last one
    repeats its final query); a tile reads the ``span = tile + kernel - 1`` keys (fewer on a short axis) that hold
    every neighbourhood of its queries, starting where its first query's window starts, moved inward at the end
    (a group shorter than ``span`` repeats its last key). Returns the flat query positions (tiles x tile), the flat
    key positions (tiles x span), the relative index ``key - query + kernel - 1`` (group coordinates) of every
    (tile, query, key), -1 where the key is outside the query's neighbourhood or a repeat, and for every position
    the flat slot its output is read from.
    """
    group_lengths = [length // dilation + (1 if group < length % dilation else 0) for group in range(dilation)]
    left, right = kernel // 2, kernel // 2 + (kernel % 2 - 1)
    span = min(tile + kernel - 1, max(group_lengths))
    queries: List[int] = []
    keys: List[int] = []
    relative: List[List[List[int]]] = []
    output_slot = [0] * length
    for group, group_length in enumerate(group_lengths):
        # NATTEN's window start, as reference.neighborhood_starts computes it with tensors; written again in ints
        # because tensor ops here would be traced into the export (and the reference stays an independent oracle).
        def start(coord: int) -> int:
            return min(max(coord, left), group_length - 1 - right) - left

        for first in range(0, group_length, tile):
            coords = [min(first + offset, group_length - 1) for offset in range(tile)]
            origin = max(0, min(start(first), group_length - span))
            for offset, coord in enumerate(coords):
                if first + offset < group_length:
                    output_slot[group + dilation * coord] = len(queries) + offset
            queries += [group + dilation * coord for coord in coords]
            keys += [group + dilation * min(origin + j, group_length - 1) for j in range(span)]
            relative.append([[origin + j - coord + kernel - 1
                              if origin + j < group_length and start(coord) <= origin + j < start(coord) + kernel
                              else -1 for j in range(span)] for coord in coords])
    return queries, keys, relative, output_slot


def tiled_neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: Tuple[int, int],
                                 dilation: Tuple[int, int], rpb: Optional[torch.Tensor], scale: float,
                                 tile: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Neighbourhood attention (NATTEN semantics) as dense attention of query tiles over the key regions that hold
    their neighbourhoods, with an additive constant of rpb and -inf outside each query's window.

    Each tile of ``tile`` (default: ``kernel``) queries per axis does one ``(th*tw) x (lh*lw)`` matmul instead of
    one gathered ``Kh*Kw`` row per query: about ``((t + K - 1) / K)^2`` times the arithmetic (about 3.4x at 7x7)
    in large batched matmuls, and k and v are copied once per tile rather than once per query. The plan is Python
    ints, so an export holds it as constants.
    """
    batch, height, width, heads, _ = q.shape
    value_dim = v.shape[-1]
    tile = tile if tile is not None else kernel
    (row_queries, row_keys, row_relative, row_slot), (col_queries, col_keys, col_relative, col_slot) = (
        neighborhood_tile_plan(length, size, step, count)
        for length, size, step, count in zip((height, width), kernel, dilation, tile))
    row_tiles, col_tiles = len(row_relative), len(col_relative)
    tile_h, tile_w = len(row_relative[0]), len(col_relative[0])
    span_h, span_w = len(row_relative[0][0]), len(col_relative[0][0])

    def as_index(values: List[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=q.device)

    def flat_positions(rows: List[int], cols: List[int], per_row: int, per_col: int) -> torch.Tensor:
        row_index = as_index(rows).view(row_tiles, 1, per_row, 1)
        col_index = as_index(cols).view(1, col_tiles, 1, per_col)
        return (row_index * width + col_index).reshape(-1)  # tile-major, then raster order inside the tile

    def gather(x: torch.Tensor, positions: torch.Tensor, per_tile: int) -> torch.Tensor:
        x = x.reshape(batch, height * width, heads, x.shape[-1]).index_select(1, positions)
        return x.view(batch, row_tiles * col_tiles, per_tile, heads, x.shape[-1]).transpose(2, 3)

    query_positions = flat_positions(row_queries, col_queries, tile_h, tile_w)
    key_positions = flat_positions(row_keys, col_keys, span_h, span_w)
    logits = (gather(q, query_positions, tile_h * tile_w) * scale) @ gather(
        k, key_positions, span_h * span_w).transpose(-1, -2)
    rel_rows = as_index(row_relative)[:, None, :, None, :, None]  # (row tiles, 1, th, 1, lh, 1)
    rel_cols = as_index(col_relative)[None, :, None, :, None, :]  # (1, col tiles, 1, tw, 1, lw)
    pairs = (row_tiles * col_tiles, 1, tile_h * tile_w, span_h * span_w)
    inside = ((rel_rows >= 0) & (rel_cols >= 0)).reshape(pairs)
    bias = torch.zeros(pairs, dtype=q.dtype, device=q.device).masked_fill(~inside, float("-inf"))
    if rpb is not None:
        flat = (rel_rows.clamp(min=0) * (2 * kernel[1] - 1) + rel_cols.clamp(min=0)).reshape(-1)
        table = rpb.reshape(heads, -1).index_select(1, flat).view(heads, *pairs[:1], *pairs[2:])
        bias = bias + table.transpose(0, 1)
    out = (logits + bias).softmax(dim=-1) @ gather(v, key_positions, span_h * span_w)
    out = out.transpose(2, 3).reshape(batch, row_tiles * col_tiles * tile_h * tile_w, heads, value_dim)
    slots = (as_index(row_slot).view(-1, 1) // tile_h * col_tiles * tile_h * tile_w
             + as_index(row_slot).view(-1, 1) % tile_h * tile_w
             + as_index(col_slot).view(1, -1) // tile_w * tile_h * tile_w + as_index(col_slot).view(1, -1) % tile_w)
    return out.index_select(1, slots.reshape(-1)).view(batch, height, width, heads, value_dim)


def batched_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: Tuple[int, int],
                             shift: Tuple[int, int], rpb: Optional[torch.Tensor], scale: float,
                             unpadded: Optional[Tuple[int, int]]) -> torch.Tensor:
    """(Shifted) window attention as timm's export has it: the windows as a batch of ``(B * windows, heads, N, d)``
    matmuls, rpb and the shift mask one additive constant ``(windows, heads, N, N)``; the roll (of the ``unpadded``
    top-left region only) is a Gather with constant indices on each axis."""
    batch, height, width, heads, head_dim = q.shape
    wh, ww = window
    rows, cols = height // wh, width // ww
    tokens = wh * ww
    shifted = shift != (0, 0)
    row_order = col_order = None
    if shifted:
        unpadded_height, unpadded_width = unpadded if unpadded is not None else (height, width)
        row_order = rolled_positions(height, shift[0], unpadded_height).to(q.device)
        col_order = rolled_positions(width, shift[1], unpadded_width).to(q.device)

    # One window spanning the map (Swin's and FasterViT's last stage, FasterViT's carrier grid): the partition is
    # a transpose of the token sequence, two nodes fewer per operand in ONNX Runtime than the general form.
    whole_map = rows == cols == 1 and not shifted

    def partition(x: torch.Tensor) -> torch.Tensor:
        if whole_map:
            return x.reshape(batch, tokens, heads, x.shape[-1]).transpose(1, 2)
        if shifted:
            x = x.index_select(1, row_order).index_select(2, col_order)
        x = x.reshape(batch, rows, wh, cols, ww, heads, x.shape[-1]).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(batch * rows * cols, heads, tokens, x.shape[-1])

    logits = (partition(q) * scale) @ partition(k).transpose(-1, -2)
    bias = window_bias(rpb, window)[None] if rpb is not None else None
    if shifted:
        labels_y = swin_region_labels(height, wh, shift[0]).to(q.device).view(rows, 1, wh, 1)
        labels_x = swin_region_labels(width, ww, shift[1]).to(q.device).view(1, cols, 1, ww)
        region = (labels_y * 3 + labels_x).reshape(rows * cols, 1, tokens)
        blocked = region.transpose(-1, -2) != region
        mask = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, float("-inf"))
        bias = mask[:, None] if bias is None else bias + mask[:, None]
        logits = (logits.view(batch, rows * cols, heads, tokens, tokens) + bias).view(-1, heads, tokens, tokens)
    elif bias is not None:
        logits = logits + bias
    out = logits.softmax(dim=-1) @ partition(v)
    if whole_map:
        return out.transpose(1, 2).reshape(batch, height, width, heads, v.shape[-1])
    out = out.view(batch, rows, cols, heads, wh, ww, v.shape[-1]).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(batch, height, width, heads, v.shape[-1])
    if shifted:
        out = out.index_select(1, torch.argsort(row_order)).index_select(2, torch.argsort(col_order))
    return out


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """A heads-last ``(B, *spatial, heads, d)`` operand as ``(B, heads, d, N)``, tokens last."""
    axes = x.dim() - 3
    return x.permute(0, axes + 1, axes + 2, *range(1, axes + 1)).reshape(x.shape[0], x.shape[-2], x.shape[-1], -1)


def _heads_last(out: torch.Tensor, spatial: Tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`_channel_major`: ``(B, heads, d, N)`` back to ``(B, *spatial, heads, d)``."""
    batch, heads, dim = out.shape[:3]
    return out.reshape(batch, heads, dim, *spatial).permute(0, *range(3, len(spatial) + 3), 1, 2)


def channel_major_table_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                       bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Table-bias attention on ``(B, heads, d, N)`` operands, the layout of an NCHW map.

    One-head callers (EfficientViT-M's cascade) make their heads-last operands by permuting NCHW maps; read back as
    channel-major, those permutes meet their inverses and ONNX Runtime's transpose optimizer removes both, and the
    two matmuls take a transposed operand in place (as in timm's export), instead of a Transpose node per operand.
    """
    logits = (_channel_major(q).transpose(-1, -2) @ _channel_major(k)) * scale
    if bias is not None:
        logits = logits + bias
    out = _channel_major(v) @ logits.softmax(dim=-1).transpose(-1, -2)
    return _heads_last(out, tuple(q.shape[1:-2]))


def channel_major_relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """ReLU linear attention on ``(B, heads, d, N)`` operands, the layout of an NCHW map, transposed:
    ``out^T = ([v, 1]^T relu(k)) relu(q)^T``, so neither product needs a transposed token matrix.

    EfficientViT-B/L make their heads-last operands from NCHW maps; while exporting they make them as permutes that
    this form's permutes undo, so ONNX Runtime removes both, as it does for EfficientViT-M's one-head attention.
    """
    compute = torch.promote_types(q.dtype, torch.float32)

    def channel_major(x: torch.Tensor) -> torch.Tensor:
        return _channel_major(x).to(compute)

    padded_v = F.pad(channel_major(v), (0, 0, 0, 1), value=1.0)  # (B, heads, dv + 1, N)
    context = padded_v @ F.relu(channel_major(k)).transpose(-1, -2)  # (B, heads, dv + 1, d)
    out = context @ F.relu(channel_major(q))  # (B, heads, dv + 1, N)
    out = out[:, :, :-1] / (out[:, :, -1:] + eps)
    return _heads_last(out, tuple(q.shape[1:-2])).to(v.dtype)


class OnnxBackend(TorchBackend):
    """Standard-operator forms of every op; chosen only during an ONNX export."""

    name = "onnx"
    title = "ONNX export form"

    def automatic(self, op, q):
        return False

    def neighborhood_attention(self, q, k, v, rpb, kernel, dilation, scale):
        return tiled_neighborhood_attention(q, k, v, kernel, dilation, rpb, scale)

    def window_attention(self, q, k, v, rpb, window, shift, scale, unpadded):
        return batched_window_attention(q, k, v, window, shift, rpb, scale, unpadded)

    def table_bias_attention(self, q, k, v, bias_table, query_stride, scale, gathered_bias):
        if gathered_bias is None and bias_table is not None:
            gathered_bias = gather_table_bias(bias_table, (q.shape[1], q.shape[2]), query_stride)
        if q.shape[3] == 1:
            return channel_major_table_bias_attention(q, k, v, gathered_bias, scale)
        return table_bias_attention(q, k, v, gathered_bias, scale)

    def relu_linear_attention(self, q, k, v, eps):
        return channel_major_relu_linear_attention(q, k, v, eps)
