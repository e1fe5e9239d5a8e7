"""The ``torch`` backend: fast PyTorch paths for every op, on any device (the CPU path, and the fallback on CUDA).

Local attention over a 2-D map. Neighborhood attention and (shifted) window attention are both "each query attends to a small set of keys near it".
This module treats them as one problem:

* the queries are cut into tiles of ``Th x Tw`` tokens (along each dilation group for NA, along the rolled map for
  shifted windows), so all index arithmetic (dilation groups, border clamping, roll, window partition) lives in
  per-axis index tables built once per shape and cached;
* every tile attends to one key region of ``Rh x Rw`` tokens that holds the neighbourhoods of all its queries;
* one gather per tensor brings tiles and regions into SDPA layout, one call to
  ``scaled_dot_product_attention`` does the work with an additive mask (rpb for allowed keys, ``-inf`` elsewhere),
  and one gather writes the result back heads-last.

Memory is ``O(B * H * W * heads * Rh * Rw)`` with ``R = min(T + K - 1, L)``: never an ``(H W)^2`` score matrix.
Autograd flows through the gathers and SDPA (or :class:`_MaskedAttention` when rpb needs a gradient), so q, k, v
and rpb all get gradients.

Dense forms (further below): table-bias attention (LeViT, EfficientViT-M) as explicit batched matmuls with a gathered
bias, and ReLU linear attention (EfficientViT-B/L) in fp32 at least.
"""

from __future__ import annotations

import contextlib

import functools
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .. import cpu_paths
from ..caching import built_as_constants, constant_tensors
from ..registry import Backend
from .reference import (neighborhood_bias, neighborhood_indices, neighborhood_starts, rolled_positions,
                        swin_region_labels, window_bias)

# Query tile side for neighborhood attention; the key region side is tile + kernel - 1. Smaller tiles waste fewer
# FLOPs on masked keys, larger ones make fewer, bigger SDPA blocks; in a one-off CPU sweep of 4..10 at B=8, 56x56,
# 2 heads, K=7, a side of 7 was fastest (8: +20%, 4: 2x slower).
DEFAULT_NA_TILE = 7


@dataclass(frozen=True)
class AxisPlan:
    """Index tables for one axis: ``tiles`` tiles of ``tile`` queries, each with a region of ``region`` keys."""

    query_index: torch.Tensor  # (tiles, tile) map position read for each query slot
    key_index: torch.Tensor  # (tiles, region) map position read for each key slot
    allowed: Optional[torch.Tensor]  # (tiles, tile, region) bool; None when every key is allowed
    relative: torch.Tensor  # (tiles, tile, region) key - query in kernel units, shifted by kernel - 1
    output_slot: torch.Tensor  # (length,) flat slot (tile * tile_size + j) that holds each map position

    @property
    def tiles(self) -> int:
        return self.query_index.shape[0]

    @property
    def tile(self) -> int:
        return self.query_index.shape[1]

    @property
    def region(self) -> int:
        return self.key_index.shape[1]


def neighborhood_axis_plan(length: int, kernel: int, dilation: int, tile: int = DEFAULT_NA_TILE) -> AxisPlan:
    """Tile one axis for neighborhood attention (requires ``length >= kernel * dilation``)."""
    group_lengths = [length // dilation + (1 if g < length % dilation else 0) for g in range(dilation)]
    longest = max(group_lengths)
    tile = min(tile, longest)
    region = min(tile + kernel - 1, longest)
    starts_full = neighborhood_starts(length, kernel, dilation)

    query_rows, key_rows, allowed_rows, relative_rows = [], [], [], []
    output_slot = torch.empty(length, dtype=torch.long)
    for group, group_length in enumerate(group_lengths):
        # Neighbourhood start (group coordinate) of each query of this group.
        starts = starts_full[group::dilation]
        tiles_in_group = -(-group_length // tile)
        for t in range(tiles_in_group):
            first = min(t * tile, max(group_length - tile, 0))
            coords = torch.arange(first, first + tile)
            valid_query = coords < group_length
            coords = coords.clamp(max=group_length - 1)  # padded slots repeat the last query; results dropped
            region_first = max(0, min(int(starts[coords[0]]), group_length - region))
            key_coords = torch.arange(region_first, region_first + region)
            valid_key = key_coords < group_length
            query_start = starts[coords][:, None]
            inside = (key_coords[None, :] >= query_start) & (key_coords[None, :] < query_start + kernel)
            tile_index = len(query_rows)
            for j in range(tile):
                if valid_query[j]:
                    output_slot[group + dilation * int(coords[j])] = tile_index * tile + j
            query_rows.append(group + dilation * coords)
            key_rows.append(group + dilation * key_coords.clamp(max=group_length - 1))
            allowed_rows.append(inside & valid_key[None, :])
            relative_rows.append((key_coords[None, :] - coords[:, None] + kernel - 1).clamp(0, 2 * kernel - 2))
    return AxisPlan(
        query_index=torch.stack(query_rows),
        key_index=torch.stack(key_rows),
        allowed=torch.stack(allowed_rows),
        relative=torch.stack(relative_rows),
        output_slot=output_slot,
    )


def window_axis_plan(length: int, window: int, shift: int, unpadded: Optional[int] = None) -> AxisPlan:
    """Tile one axis for Swin window attention: tiles are the windows of the map rolled by ``-shift`` (only its first
    ``unpadded`` positions roll; padding stays at the end)."""
    tiles = length // window
    positions = rolled_positions(length, shift, length if unpadded is None else unpadded)
    source = positions.view(tiles, window)
    offsets = torch.arange(window)
    relative = (offsets[None, :] - offsets[:, None] + window - 1).expand(tiles, window, window)
    allowed = None
    if shift > 0:
        labels = swin_region_labels(length, window, shift).view(tiles, window)
        allowed = labels[:, :, None] == labels[:, None, :]
    output_slot = torch.argsort(positions)  # the inverse permutation: where each map position sits in the tiles
    return AxisPlan(source, source, allowed, relative.contiguous(), output_slot)


@dataclass(frozen=True)
class Plan2d:
    """Flat gather indices and mask layout for a 2-D map, the outer product of two :class:`AxisPlan`."""

    height: int
    width: int
    tiles: int
    query_tokens: int  # Th * Tw
    key_tokens: int  # Rh * Rw
    query_index: torch.Tensor  # (query_tokens * tiles,) flat map positions, slot-major
    key_index: torch.Tensor  # (key_tokens * tiles,) flat map positions, slot-major
    output_index: torch.Tensor  # (H * W,) flat (slot * tiles + tile) holding each map position
    blocked: Optional[torch.Tensor]  # (tiles, query_tokens, key_tokens) bool; None when nothing is blocked
    mask_index: torch.Tensor  # (tiles * Tq * Tk,) flat index into the rpb table (heads, -1) plus a -inf column
    # per (heads, table size): mask_index spread over the heads of a padded (heads, table + 1) table, built on first use
    head_mask_index: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict, compare=False, hash=False,
                                                                  repr=False)

    def mask_index_for(self, heads: int, table_size: int) -> torch.Tensor:
        """``(tiles * heads * Tq * Tk,)`` index into a flattened ``(heads, table_size)`` table, cached per head
        count and table size (every block of a stage asks for the same one)."""
        index = self.head_mask_index.get((heads, table_size))
        if index is None:
            with constant_tensors():
                index = self.spread_mask_index(heads, table_size)
            self.head_mask_index[(heads, table_size)] = index
        return index

    def spread_mask_index(self, heads: int, table_size: int) -> torch.Tensor:
        """The index of :meth:`mask_index_for`, built now (traced graphs build it in the graph)."""
        offsets = table_size * torch.arange(heads, device=self.mask_index.device)[:, None]
        return (self.mask_index.view(self.tiles, 1, -1) + offsets).reshape(-1)


def _outer(rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    """Flat index rows[ty, i] * width + cols[tx, j] laid out as (ty, tx, i, j)."""
    return rows[:, None, :, None] * width + cols[None, :, None, :]


def combine(plan_y: AxisPlan, plan_x: AxisPlan, height: int, width: int, kernel: Tuple[int, int]) -> Plan2d:
    """Build the 2-D plan; ``kernel`` sizes the rpb table, ``(2 * kernel[0] - 1, 2 * kernel[1] - 1)`` per head."""
    ny, nx = plan_y.tiles, plan_x.tiles
    ty, tx, ry, rx = plan_y.tile, plan_x.tile, plan_y.region, plan_x.region
    tiles = ny * nx
    # Gathers are slot-major: element (slot, tile) of the flat index, see local_attention.
    query_index = _outer(plan_y.query_index, plan_x.query_index, width).view(tiles, ty * tx).t().reshape(-1)
    key_index = _outer(plan_y.key_index, plan_x.key_index, width).view(tiles, ry * rx).t().reshape(-1)
    tile_y, offset_y = plan_y.output_slot // ty, plan_y.output_slot % ty
    tile_x, offset_x = plan_x.output_slot // tx, plan_x.output_slot % tx
    slot = offset_y[:, None] * tx + offset_x[None, :]
    tile = tile_y[:, None] * nx + tile_x[None, :]
    output_index = (slot * tiles + tile).reshape(-1)

    def spread(y_part: torch.Tensor, x_part: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # (ny, ty, ry) and (nx, tx, rx) broadcast to (ny, nx, ty, tx, ry, rx)
        return y_part[:, None, :, None, :, None], x_part[None, :, None, :, None, :]

    blocked = None
    if plan_y.allowed is not None or plan_x.allowed is not None:
        ay = plan_y.allowed if plan_y.allowed is not None else torch.ones(ny, ty, ry, dtype=torch.bool)
        ax = plan_x.allowed if plan_x.allowed is not None else torch.ones(nx, tx, rx, dtype=torch.bool)
        a, b = spread(ay, ax)
        blocked = ~(a & b).reshape(ny * nx, ty * tx, ry * rx)
        if not bool(blocked.any()):
            blocked = None
    a, b = spread(plan_y.relative, plan_x.relative)
    mask_index = (a * (2 * kernel[1] - 1) + b).reshape(tiles, ty * tx, ry * rx)
    if blocked is not None:
        # Blocked keys read the -inf column appended after the (2Kh-1) x (2Kw-1) table.
        mask_index = mask_index.masked_fill(blocked, (2 * kernel[0] - 1) * (2 * kernel[1] - 1))
    return Plan2d(
        height, width, tiles, ty * tx, ry * rx, query_index, key_index, output_index, blocked, mask_index.reshape(-1)
    )


@functools.lru_cache(maxsize=64)
@built_as_constants
def _neighborhood_plan_cpu(height: int, width: int, kernel: Tuple[int, int], dilation: Tuple[int, int], tile: int) -> Plan2d:
    plan_y = neighborhood_axis_plan(height, kernel[0], dilation[0], tile)
    plan_x = neighborhood_axis_plan(width, kernel[1], dilation[1], tile)
    return combine(plan_y, plan_x, height, width, kernel)


@functools.lru_cache(maxsize=64)
@built_as_constants
def _window_plan_cpu(height: int, width: int, window: Tuple[int, int], shift: Tuple[int, int],
                     unpadded: Tuple[int, int]) -> Plan2d:
    plan_y = window_axis_plan(height, window[0], shift[0], unpadded[0])
    plan_x = window_axis_plan(width, window[1], shift[1], unpadded[1])
    return combine(plan_y, plan_x, height, width, window)


def _to_device(plan: Plan2d, device: torch.device) -> Plan2d:
    moved = {
        name: (value.to(device) if isinstance(value, torch.Tensor) else value)
        for name, value in plan.__dict__.items() if name != "head_mask_index"
    }
    return Plan2d(**moved)


# Plans are built eagerly and cached; torch.compile must not trace (and re-run) their Python index arithmetic.
@torch.compiler.disable
@functools.lru_cache(maxsize=64)
@built_as_constants
def neighborhood_plan(
    height: int, width: int, kernel: Tuple[int, int], dilation: Tuple[int, int], device: torch.device,
    tile: int = DEFAULT_NA_TILE,
) -> Plan2d:
    """Cached plan for neighborhood attention on an ``height x width`` map."""
    return _to_device(_neighborhood_plan_cpu(height, width, kernel, dilation, tile), device)


@torch.compiler.disable
@functools.lru_cache(maxsize=64)
@built_as_constants
def window_plan(
    height: int, width: int, window: Tuple[int, int], shift: Tuple[int, int], device: torch.device,
    unpadded: Optional[Tuple[int, int]] = None,
) -> Plan2d:
    """Cached plan for (shifted) window attention on an ``height x width`` map (rolled within ``unpadded``)."""
    return _to_device(_window_plan_cpu(height, width, window, shift, unpadded or (height, width)), device)


def _attention_mask(
    plan: Plan2d, rpb: Optional[torch.Tensor], heads: int, dtype: torch.dtype, device: torch.device
) -> Optional[torch.Tensor]:
    """Additive mask (1, tiles * heads, Tq, Tk): rpb where allowed, -inf where blocked; None if neither applies."""
    if rpb is None and plan.blocked is None:
        return None
    if rpb is None:
        mask = torch.zeros(plan.blocked.shape, dtype=dtype, device=device).masked_fill(plan.blocked, float("-inf"))
        mask = mask[:, None].expand(plan.tiles, heads, plan.query_tokens, plan.key_tokens)
        return mask.reshape(1, plan.tiles * heads, plan.query_tokens, plan.key_tokens)
    # One gather builds the whole mask: blocked entries read an extra -inf column appended to each head's table.
    table = F.pad(rpb.reshape(heads, -1), (0, 1), value=float("-inf"))
    size = table.shape[1]
    index = plan.spread_mask_index(heads, size) if torch.compiler.is_compiling() else plan.mask_index_for(heads, size)
    mask = table.reshape(-1).index_select(0, index)
    return mask.view(1, plan.tiles * heads, plan.query_tokens, plan.key_tokens)


class _MaskedAttention(torch.autograd.Function):
    """SDPA forward with a differentiable additive mask and a matmul backward.

    PyTorch's fused attention kernels cannot return a mask gradient, so a mask that requires grad drops SDPA to its
    unfused math path, whose autograd graph is several times slower than needed here. The forward stays fused; the
    backward recomputes the probabilities once and forms every gradient with five batched matmuls:
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = s dS K, dK = s dS^T Q, dMask = sum_batch dS.
    """

    @staticmethod
    def forward(q, k, v, mask, scale):  # type: ignore[override]
        # SDPA picks its kernel from requires_grad even under no_grad: detached inputs keep it fused.
        return F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), attn_mask=mask.detach(), scale=scale)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        # A separate setup_context lets torch.func (used by the custom ops' backward) run this Function.
        q, k, v, mask, scale = inputs
        ctx.save_for_backward(q, k, v, mask, output)
        ctx.scale = scale

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, mask, out = ctx.saved_tensors
        batch, groups, queries, head_dim = q.shape
        keys = k.shape[2]
        # One contiguous copy of each operand buys large, well-shaped bmm calls (faster here than per-batch bmm on
        # the strided slot-major views).
        flat_q = q.contiguous().view(batch * groups, queries, head_dim)
        flat_k = k.contiguous().view(batch * groups, keys, head_dim)
        flat_v = v.contiguous().view(batch * groups, keys, head_dim)
        flat_grad = grad_out.contiguous().view(batch * groups, queries, head_dim)
        probs = torch.bmm(flat_q, flat_k.transpose(1, 2)).view(batch, groups, queries, keys)
        probs = probs.mul_(ctx.scale).add_(mask).softmax(dim=-1).view(batch * groups, queries, keys)
        grad_v = torch.bmm(probs.transpose(1, 2), flat_grad)
        grad_scores = torch.bmm(flat_grad, flat_v.transpose(1, 2))
        row_dot = (grad_out * out).sum(dim=-1).reshape(batch * groups, queries, 1)
        grad_scores.sub_(row_dot).mul_(probs)  # dS, zero wherever the mask is -inf
        del probs
        grad_q = torch.bmm(grad_scores, flat_k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), flat_q).mul_(ctx.scale)
        grad_mask = grad_scores.view(batch, groups, queries, keys).sum(dim=0, keepdim=True)
        return (grad_q.view(batch, groups, queries, head_dim), grad_k.view(batch, groups, keys, head_dim),
                grad_v.view(batch, groups, keys, head_dim), grad_mask, None)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
            scale: float) -> torch.Tensor:
    """SDPA with an additive mask; :class:`_MaskedAttention` when the mask (an rpb) needs a gradient. Inference on
    eager CPU runs takes the faster of SDPA and explicit matrix products (:func:`_attention_path`)."""
    if mask is not None and mask.requires_grad:
        return _MaskedAttention.apply(q, k, v, mask, scale)
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)) and \
            cpu_paths.measuring_allowed(q) and _attention_path(q, k, v, mask, scale) == "matmul":
        return _matmul_attention(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                      scale: float) -> torch.Tensor:
    """Scaled logits, additive mask, softmax, weighted sum as separate ops: timm's Swin attention. On CPU, for the
    short sequences of windows and tiles, it can beat SDPA's fused kernel (which tiles for long sequences)."""
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    if mask is not None:
        logits += mask
    return torch.matmul(logits.softmax(dim=-1), v)


def _attention_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                    scale: float) -> str:
    """``"matmul"`` (the twin's form, the baseline) or ``"sdpa"`` for this call's shapes, timed once per shape,
    strides and thread count on this machine (:func:`vithub.kernels.cpu_paths.choose_path`)."""
    key = (q.shape, q.stride(), k.shape, k.stride(), v.stride(), None if mask is None else mask.shape, q.dtype)
    return cpu_paths.choose_path(
        "attention", key,
        lambda: {"matmul": lambda: _matmul_attention(q, k, v, mask, scale),
                 "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)},
        baseline="matmul", ours="sdpa")


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: Plan2d,
    rpb: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Attention of every query tile over its key region, per ``plan``; returns ``(B, H, W, heads, head_dim)``."""
    batch, height, width, heads, head_dim = q.shape

    # Gathers index rows of (B * H * W, heads * head_dim): dim-0 index_select copies whole rows and takes the row
    # stride of a qkv slice as is, where a dim-1 gather would first copy the strided input.
    batch_index = torch.arange(batch, device=q.device)[:, None] if batch > 1 else None

    def rows_of(index: torch.Tensor, per_item: int) -> torch.Tensor:
        return index.view(-1) if batch_index is None else (index + batch_index * per_item).view(-1)

    def gather(x: torch.Tensor, rows: torch.Tensor, tokens: int) -> torch.Tensor:
        # Slot-major (slot, tile) order keeps (tile, head) adjacent, so it merges into SDPA's head axis as a view
        # and the mask broadcasts over the batch.
        gathered = x.reshape(batch * height * width, heads * head_dim).index_select(0, rows)
        return gathered.view(batch, tokens, plan.tiles * heads, head_dim).transpose(1, 2)

    key_rows = rows_of(plan.key_index, height * width)
    q_tiles = gather(q, rows_of(plan.query_index, height * width), plan.query_tokens)
    k_tiles = gather(k, key_rows, plan.key_tokens)
    v_tiles = gather(v, key_rows, plan.key_tokens)
    out = _attend(q_tiles, k_tiles, v_tiles, _attention_mask(plan, rpb, heads, q.dtype, q.device), scale)
    slots = plan.query_tokens * plan.tiles
    out = out.transpose(1, 2).reshape(batch * slots, heads * head_dim)
    return out.index_select(0, rows_of(plan.output_index, slots)).view(batch, height, width, heads, head_dim)


def unshifted_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Tuple[int, int],
    rpb: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Window attention without a shift: the windows are a reshape, so no gather plan is needed (one SDPA call over
    ``(B * windows, heads, wh*ww)``; a map that is one window needs no copy at all)."""
    return _windows_sdpa(q, k, v, None, window, rpb, scale)[0]


def carrier_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    carrier_q: torch.Tensor,
    carrier_k: torch.Tensor,
    carrier_v: torch.Tensor,
    window: Tuple[int, int],
    rpb: Optional[torch.Tensor],
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Window attention with per-window carrier tokens as one SDPA call over ``(B * windows, heads, E + wh*ww)``."""
    return _windows_sdpa(q, k, v, (carrier_q, carrier_k, carrier_v), window, rpb, scale)  # type: ignore[return-value]


@torch.compiler.disable
@functools.lru_cache(maxsize=64)
@built_as_constants
def window_bias_index(wh: int, ww: int, device: torch.device) -> torch.Tensor:
    """Flat index into a ``(2wh-1) * (2ww-1)`` table row of ``key - query + window - 1`` for every (query, key) pair
    of a window, raster order; cached (Swin asks for it every block)."""
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[None, :] - ys[:, None] + wh - 1) * (2 * ww - 1) + xs[None, :] - xs[:, None] + ww - 1).reshape(-1)


def cached_window_bias(rpb: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """:func:`~vithub.kernels.backends.reference.window_bias` through a cached index (one gather per call)."""
    tokens = window[0] * window[1]
    index = window_bias_index(window[0], window[1], rpb.device)
    return rpb.reshape(rpb.shape[0], -1).index_select(1, index).view(rpb.shape[0], tokens, tokens)


def _windows_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    carriers: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    window: Tuple[int, int],
    rpb: Optional[torch.Tensor],
    scale: float,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Unshifted windows (each optionally prefixed by its carriers) partitioned by reshape, one SDPA call."""
    batch, height, width, heads, head_dim = q.shape
    wh, ww = window
    rows, cols = height // wh, width // ww
    extra = carriers[0].shape[3] if carriers is not None else 0
    tokens = extra + wh * ww

    def sequence(x: torch.Tensor, carrier: Optional[torch.Tensor]) -> torch.Tensor:
        x = x.view(batch, rows, wh, cols, ww, heads, head_dim).permute(0, 1, 3, 2, 4, 5, 6)
        x = x.reshape(batch, rows, cols, wh * ww, heads, head_dim)
        if carrier is not None:
            # The concatenation is the one copy: window partition and the carrier prefix land in SDPA layout together.
            x = torch.cat([carrier, x], dim=3)
        return x.reshape(batch * rows * cols, tokens, heads, head_dim).transpose(1, 2)

    seq_q, seq_k, seq_v = (sequence(x, carriers[i] if carriers is not None else None)
                           for i, x in enumerate((q, k, v)))
    mask = None
    if rpb is not None:
        # traced graphs (torch.export, ONNX) build the bias in the graph; eager runs gather through a cached index
        mask = window_bias(rpb, window) if torch.compiler.is_compiling() else cached_window_bias(rpb, window)
        if extra:
            mask = F.pad(mask, (extra, 0, extra, 0))  # carrier rows and columns: zero bias
        mask = mask.unsqueeze(0)
    out = _attend(seq_q, seq_k, seq_v, mask, scale)
    out = out.transpose(1, 2).reshape(batch, rows, cols, tokens, heads, head_dim)
    carrier_out = out[:, :, :, :extra] if extra else None
    out = out[:, :, :, extra:].reshape(batch, rows, cols, wh, ww, heads, head_dim).permute(0, 1, 3, 2, 4, 5, 6)
    return out.reshape(batch, height, width, heads, head_dim), carrier_out


# --- dense forms ---------------------------------------------------------------------------------------------------

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
    per shape and device (under ``torch.compile`` it is traced into the graph instead, and a scripted model builds it
    on each call)."""
    if torch.jit.is_scripting():
        return _table_index(query_size, key_size, stride, device)
    if torch.compiler.is_compiling():
        return _table_index(query_size, key_size, stride, device)
    key = (query_size, key_size, stride, str(device))
    index = _INDEX_CACHE.get(key)
    if index is None:
        if len(_INDEX_CACHE) >= _INDEX_CACHE_LIMIT:
            _INDEX_CACHE.clear()
        with constant_tensors():  # a normal tensor even under inference_mode: training may read it later
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
    """``relu(q) (relu(k)^T [v, 1])`` in at least fp32 with autocast off: :func:`relu_linear_arithmetic`."""
    # autocast off where the device has autocast at all (meta tensors, which only carry shapes, have none)
    no_autocast = (torch.autocast(device_type=q.device.type, enabled=False)
                   if torch.amp.is_autocast_available(q.device.type) else contextlib.nullcontext())
    with no_autocast:
        return relu_linear_arithmetic(q, k, v, eps)


def relu_linear_arithmetic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """``relu(q) (relu(k)^T [v, 1])`` in at least fp32: two matmuls per (batch, head), O(tokens) memory (also what a
    scripted model runs: plain tensor code TorchScript compiles).

    The ones column appended to ``v`` makes the normaliser ``relu(q) . sum_j relu(k_j)`` come out of the same two
    matmuls as the numerator (the padded copy is also the contiguous layout the matmuls want).
    """
    batch, heads, head_dim, value_dim = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    compute = torch.promote_types(q.dtype, torch.float32)
    flat_q = F.relu(q.reshape(batch, -1, heads, head_dim).transpose(1, 2).to(compute))  # (B, h, N, d)
    flat_k = F.relu(k.reshape(batch, -1, heads, head_dim).transpose(1, 2).to(compute))
    flat_v = F.pad(v.reshape(batch, -1, heads, value_dim).transpose(1, 2).to(compute), (0, 1), value=1.0)
    out = flat_q @ (flat_k.transpose(-1, -2) @ flat_v)  # (B, h, N, dv + 1)
    out = out[..., :-1] / (out[..., -1:] + eps)
    return out.transpose(1, 2).reshape(q.shape[:-1] + (value_dim,)).to(v.dtype)


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor],
                     key_mask: Optional[torch.Tensor], scale: float, importance: bool = False,
                     query_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fused SDPA when the key mask is absent or boolean (the key bias, and ``-inf`` for masked keys, as one additive
    ``(B, 1, 1, N)`` mask) and no importance is asked for; otherwise the explicit path, where a weighted mask
    multiplies the exponentials so its gradient stays finite at 0 (``log`` of the mask in the logits would not), and
    the attention map gives each key's importance (its mean over heads and queries)."""
    seq_q, seq_k, seq_v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N, d)
    if not importance and (key_mask is None or key_mask.dtype == torch.bool):
        additive: Optional[torch.Tensor] = None
        if key_bias is not None:
            additive = key_bias[:, None, None, :]
        if key_mask is not None:
            blocked = torch.zeros_like(key_mask, dtype=q.dtype).masked_fill(~key_mask, float("-inf"))
            additive = blocked[:, None, None, :] if additive is None else additive + blocked[:, None, None, :]
        out = F.scaled_dot_product_attention(seq_q, seq_k, seq_v, attn_mask=additive, scale=scale)
        return out.transpose(1, 2), None
    logits = (seq_q * scale) @ seq_k.transpose(-1, -2)
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :]
    weights = (logits - logits.amax(dim=-1, keepdim=True).detach()).exp()
    if key_mask is not None:
        weights = weights * key_mask.to(weights.dtype)[:, None, None, :]
    probs = weights / weights.sum(dim=-1, keepdim=True)
    out = probs @ seq_v
    if not importance:
        return out.transpose(1, 2), None
    if query_mask is None:
        return out.transpose(1, 2), probs.mean(dim=(1, 2))
    query_weights = query_mask.to(probs.dtype)
    received = (query_weights[:, None, :] @ probs.sum(dim=1)).squeeze(1)  # (B, keys): sum_i w_i sum_h a_hij
    return out.transpose(1, 2), received / (probs.shape[1] * query_weights.sum(dim=1, keepdim=True))


_POSITIONS: Dict[Tuple[int, int, int], Tuple[Tuple[int, ...], ...]] = {}
_POSITIONS_LIMIT = 256


def neighbour_positions(length: int, kernel: int, dilation: int) -> Tuple[Tuple[int, ...], ...]:
    """Per kernel offset, the position of every query's neighbour along one axis (Python ints, so an export holds
    them as constants). Cached only when they are plain ints: under a non-strict export they come out symbolic, and
    a later eager call must not read those."""
    key = (length, kernel, dilation)
    positions = _POSITIONS.get(key)
    if positions is None:
        index = neighborhood_indices(length, kernel, dilation)
        positions = tuple(tuple(index[:, offset].tolist()) for offset in range(kernel))
        if all(type(value) is int for row in positions for value in row):
            if len(_POSITIONS) >= _POSITIONS_LIMIT:
                _POSITIONS.clear()
            _POSITIONS[key] = positions
    return positions


def _neighbour_selections(x: torch.Tensor, kernel: Tuple[int, ...], dilation: Tuple[int, ...]):
    """Yield ``(offset, x at every query's neighbour of that offset)`` over the kernel's offsets in row-major order:
    one shifted copy of ``x`` at a time, so memory stays that of ``x`` (forward)."""
    index = [[torch.tensor(positions, device=x.device) for positions in neighbour_positions(length, size, step)]
             for length, size, step in zip(x.shape[1:-2], kernel, dilation)]
    if len(kernel) == 1:
        for offset in range(kernel[0]):
            yield offset, x.index_select(1, index[0][offset])
        return
    for row in range(kernel[0]):
        rows = x.index_select(1, index[0][row])
        for column in range(kernel[1]):
            yield row * kernel[1] + column, rows.index_select(2, index[1][column])


def unfused_neighborhood_qk(q: torch.Tensor, k: torch.Tensor, rpb: Optional[torch.Tensor], kernel: Tuple[int, ...],
                            dilation: Tuple[int, ...]) -> torch.Tensor:
    """Unfused logits, one kernel offset at a time (a product and a sum over ``head_dim`` per offset), then rpb."""
    logits = torch.stack([(q * keys).sum(dim=-1) for _, keys in _neighbour_selections(k, kernel, dilation)], dim=-1)
    if rpb is not None:
        bias = neighborhood_bias(rpb, tuple(q.shape[1:-2]), kernel, dilation).flatten(-len(kernel))
        logits = logits + bias.movedim(0, -2)
    return logits


def unfused_neighborhood_av(attn: torch.Tensor, v: torch.Tensor, kernel: Tuple[int, ...],
                            dilation: Tuple[int, ...]) -> torch.Tensor:
    """Unfused output, one kernel offset at a time: the sum of each offset's weight times its shifted values."""
    out: Optional[torch.Tensor] = None
    for offset, values in _neighbour_selections(v, kernel, dilation):
        term = attn[..., offset, None] * values
        out = term if out is None else out + term
    return out


class TorchBackend(Backend):
    """Every op in plain PyTorch (SDPA and batched matmuls): the automatic choice wherever Triton is not."""

    name = "torch"
    title = "torch kernel"

    def automatic(self, op: str, q: torch.Tensor) -> bool:
        return True

    def neighborhood_attention(self, q, k, v, rpb, kernel, dilation, scale):
        plan = neighborhood_plan(q.shape[1], q.shape[2], kernel, dilation, q.device)
        return local_attention(q, k, v, plan, rpb, scale)

    def window_attention(self, q, k, v, rpb, window, shift, scale, unpadded):
        if shift == (0, 0):  # no roll: the windows are a reshape (the unpadded extent only matters to the roll)
            return unshifted_window_attention(q, k, v, window, rpb, scale)
        plan = window_plan(q.shape[1], q.shape[2], window, shift, q.device, unpadded)
        return local_attention(q, k, v, plan, rpb, scale)

    def carrier_window_attention(self, q, k, v, carrier_q, carrier_k, carrier_v, rpb, window, scale):
        return carrier_window_attention(q, k, v, carrier_q, carrier_k, carrier_v, window, rpb, scale)

    def table_bias_attention(self, q, k, v, bias_table, query_stride, scale, gathered_bias):
        if gathered_bias is None and bias_table is not None:
            gathered_bias = gather_table_bias(bias_table, (q.shape[1], q.shape[2]), query_stride)
        return table_bias_attention(q, k, v, gathered_bias, scale)

    def relu_linear_attention(self, q, k, v, eps):
        return relu_linear_attention(q, k, v, eps)

    def global_attention(self, q, k, v, key_bias, key_mask, scale, importance, query_mask):
        return global_attention(q, k, v, key_bias, key_mask, scale, importance, query_mask)

    def neighborhood_qk(self, q, k, rpb, kernel, dilation):
        return unfused_neighborhood_qk(q, k, rpb, kernel, dilation)

    def neighborhood_av(self, attn, v, kernel, dilation):
        return unfused_neighborhood_av(attn, v, kernel, dilation)
