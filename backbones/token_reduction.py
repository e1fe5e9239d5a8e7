"""Token reduction on timm's ``VisionTransformer`` family, each method written from its paper: ToMe (Bolya et al.,
"Token Merging: Your ViT but Faster", ICLR 2023), LTMP (Bonnaerens & Dambre, "Learned Thresholds Token Merging and
Pruning for Vision Transformers", TMLR 2023) and Token Cropr (Bergner et al., "Token Cropr: Faster ViTs for Quite a
Few Tasks", CVPR 2025).

:func:`reduce_tokens` turns a timm ViT (DeiT, DeiT-3, ViT AugReg/MAE/CLIP, with or without class, distillation or
register tokens, LayerScale, qk-norm) into a token-reduced one in place, and ``reduce_tokens(model, None)`` gives the
original back, bit for bit: the model's class is swapped for one whose forward runs the method, and what a method
adds (LTMP's thresholds, Cropr's routers) is removed again. Every block is run from its own submodules (norms, qkv,
qk-norm, attention-output norm and gate, projection, LayerScale, drop path, MLP); a block or attention layout it does
not know is refused with an error naming it, never run with a part left out. Attention goes through
:func:`vithub.kernels.global_attention` (proportional attention is its per-key bias, LTMP's masks its key mask).

ToMe: in every block, between attention and MLP, bipartite soft matching on the keys averaged over heads. The tokens
after the prefix (class, distillation, register tokens, which never merge and never receive a merge) alternate into
sets A and B; each A token's most cosine-similar B token is its edge; the ``r`` A tokens with the most similar edges
merge into their B tokens by a size-weighted average; sizes add up. With proportional attention, ``log(size)`` is
added to every key's logits, so a merged token acts as ``size`` copies of itself. ``r`` is capped per block at half
the non-prefix tokens (``(N - prefix) // 2``), as in the paper.

LTMP: per block, a learned merge threshold (on the same similarity) and prune threshold (on the attention a token
receives); straight-through masks in training (nothing removed, dropped tokens masked out of attention), hard
decisions and real removal at inference, batched with padding so each image's result equals running it alone.

Cropr: a router after each block but the last one or two keeps the top-scoring tokens (a learned-query scorer);
auxiliary heads train the routers in training; last-layer fusion brings the pruned tokens back for the last block,
so dense outputs keep the full grid.

``model.token_counts`` reports the tokens that entered each block in the last forward. The registered members
(``vh_deit_small_patch16_224_tome``, ``..._ltmp``, ``..._cropr`` ...) are timm's ViTs with timm's weights and the method
applied; LTMP's thresholds and Cropr's routers start untrained.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from vithub.kernels import exporting_onnx, global_attention

from ._common import take_indices

METHODS = ("tome", "ltmp", "cropr")
_BLOCK_PARTS = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
_ATTENTION_PARTS = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop"}
RSchedule = Union[int, Sequence[int], Tuple[int, float]]


# --- the merging -------------------------------------------------------------------------------------------------

def merge_schedule(r: RSchedule, depth: int) -> List[int]:
    """Tokens to merge in each of ``depth`` blocks: an int (the same in every block), a list of one int per block, or
    a pair ``(r, inflection)``, ToMe's schedule: linear from ``r·(1 − inflection)`` in the first block to ``r·(1 +
    inflection)`` in the last (``(r, -1)``: 2r down to 0, the same total as a constant r), truncated to ints."""
    shape = f"an int >= 0, a list of {depth} ints >= 0, or a pair (r, inflection)"
    if isinstance(r, bool):
        raise ValueError(f"r must be {shape}, got {r!r}")
    if isinstance(r, int):
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        return [r] * depth
    if isinstance(r, tuple) and len(r) == 2:
        base, inflection = r
        if (isinstance(base, bool) or not isinstance(base, int) or base < 0 or isinstance(inflection, bool)
                or not isinstance(inflection, (int, float)) or not -1.0 <= inflection <= 1.0):
            raise ValueError(f"r as (r, inflection) needs an int r >= 0 and an inflection in [-1, 1], got {r!r}")
        start, end = base * (1.0 - inflection), base * (1.0 + inflection)
        step = (end - start) / max(depth - 1, 1)
        return [int(start + step * index) for index in range(depth)]
    if isinstance(r, (list, tuple)):
        values = list(r)
        if len(values) != depth or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"r as a list needs one int >= 0 per block ({depth} blocks), got {values!r}")
        return values
    raise ValueError(f"r must be {shape}, got {r!r}")


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``values`` along the last dim, largest first, ties in index order. In an ONNX export this
    is a full-length TopK (ONNX's TopK keeps ties in index order too), as ONNX has no stable sort."""
    if exporting_onnx():
        return values.topk(values.shape[-1], dim=-1, largest=True, sorted=True).indices
    return values.argsort(dim=-1, descending=True, stable=True)


def ascending(indices: torch.Tensor) -> torch.Tensor:
    """``indices`` (distinct ints) sorted along the last dim (a TopK in an ONNX export)."""
    if exporting_onnx():
        return indices.topk(indices.shape[-1], dim=-1, largest=False, sorted=True).values
    return indices.sort(dim=-1).values


def bipartite_matching(metric: torch.Tensor, r: int, prefix: int
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching over the tokens after ``prefix``.

    Args:
        metric: ``(B, N, C)`` (keys averaged over heads).
        r: tokens to merge (already capped at ``(N - prefix) // 2``).
        prefix: leading tokens that take no part.

    Returns:
        ``(unmerged, sources, destinations, a_count)``: A-set indices (within A, ascending) of the tokens that stay,
        of the ``r`` that merge (most similar first), their B-set destinations, and the size of A.
    """
    tokens = metric[:, prefix:]
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    a, b = tokens[:, ::2], tokens[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    best, best_index = scores.max(dim=-1)
    order = descending_order(best)
    sources = order[:, :r]
    unmerged = ascending(order[:, r:])
    destinations = best_index.gather(1, sources)
    return unmerged, sources, destinations, a.shape[1]


def merge_tokens(x: torch.Tensor, size: torch.Tensor, origin: torch.Tensor, r: int, prefix: int,
                 metric: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of ``x`` ``(B, N, C)`` by size-weighted average; returns the new ``x``, ``size`` ``(B, N-r)``
    and ``origin`` ``(B, N0)``: where each original token now is. Output order: the prefix, the unmerged A tokens,
    then B (merged into)."""
    unmerged, sources, destinations, a_count = bipartite_matching(metric, r, prefix)
    batch, _, channels = x.shape
    a_x, b_x = x[:, prefix::2], x[:, prefix + 1::2]
    a_size, b_size = size[:, prefix::2], size[:, prefix + 1::2]
    kept_x = a_x.gather(1, unmerged[..., None].expand(-1, -1, channels))
    kept_size = a_size.gather(1, unmerged)
    moved_size = a_size.gather(1, sources)
    moved_x = a_x.gather(1, sources[..., None].expand(-1, -1, channels)) * moved_size[..., None].to(x.dtype)
    target_index = destinations[..., None].expand(-1, -1, channels)
    summed = (b_x * b_size[..., None].to(x.dtype)).scatter_add(1, target_index, moved_x)
    summed_size = b_size.scatter_add(1, destinations, moved_size)
    received = torch.zeros_like(b_size).scatter_add(1, destinations, torch.ones_like(moved_size)) > 0
    # tokens that took no merge are copied, not divided back (x * s / s is not always x in floating point)
    new_b = torch.where(received[..., None], summed / summed_size[..., None].to(x.dtype), b_x)
    new_x = torch.cat([x[:, :prefix], kept_x, new_b], dim=1)
    new_size = torch.cat([size[:, :prefix], kept_size, summed_size], dim=1)
    # Where each current token goes: prefix stays; A tokens to their kept slot or their destination; B after.
    kept_count = unmerged.shape[1]
    a_target = torch.empty(batch, a_count, dtype=torch.long, device=x.device)
    a_target.scatter_(1, unmerged, torch.arange(kept_count, device=x.device).expand(batch, -1) + prefix)
    a_target.scatter_(1, sources, destinations + prefix + kept_count)
    b_count = b_x.shape[1]
    b_target = torch.arange(b_count, device=x.device).expand(batch, -1) + prefix + kept_count
    target = torch.empty(batch, x.shape[1], dtype=torch.long, device=x.device)
    target[:, :prefix] = torch.arange(prefix, device=x.device)
    target[:, prefix::2] = a_target
    target[:, prefix + 1::2] = b_target
    return new_x, new_size, target.gather(1, origin)


# --- running a timm block with merging ---------------------------------------------------------------------------

def check_block(block: nn.Module, index: int) -> None:
    """Refuse a block whose layout this module does not run exactly (naming the class and the part)."""
    if type(block).forward is not Block.forward:
        raise ValueError(f"token reduction runs timm's Block; block {index} is {type(block).__name__}, whose forward "
                         "differs")
    unknown = set(block._modules) - _BLOCK_PARTS
    if unknown:
        raise ValueError(f"block {index} ({type(block).__name__}) has parts token reduction does not run: "
                         f"{sorted(unknown)}")
    attention = block.attn
    if type(attention).forward is not Attention.forward:
        raise ValueError(f"token reduction runs timm's Attention; block {index}'s attention is "
                         f"{type(attention).__name__}, whose forward differs")
    unknown = set(attention._modules) - _ATTENTION_PARTS
    if unknown:
        raise ValueError(f"block {index}'s attention ({type(attention).__name__}) has parts token reduction does not "
                         f"run: {sorted(unknown)}")
    if attention.attn_drop.p > 0:
        raise ValueError(f"block {index} has attention dropout {attention.attn_drop.p}: the merged attention takes "
                         "none (build the model with attn_drop_rate=0)")
    for name in ("ls1", "ls2"):
        part = getattr(block, name)
        if not isinstance(part, (nn.Identity, LayerScale)):
            raise ValueError(f"block {index}: {name} is {type(part).__name__}, not timm's LayerScale")


def block_forward(block: Block, x: torch.Tensor, size: Optional[torch.Tensor], origin: torch.Tensor, r: int,
                  prefix: int, proportional: bool
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """One timm ``Block`` with ToMe between attention and MLP; ``size`` ``None`` means every token has size 1."""
    attention = block.attn
    hidden = block.norm1(x)
    batch, tokens, _ = hidden.shape
    gate = attention.gate(hidden).sigmoid() if attention.gate is not None else None
    qkv = attention.qkv(hidden).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim)
    q, k, v = qkv.unbind(2)  # (B, N, heads, head_dim): norms over head_dim act alike in either layout
    q, k = attention.q_norm(q), attention.k_norm(k)
    key_bias = size.log().to(q.dtype) if proportional and size is not None else None
    out = global_attention(q, k, v, key_bias=key_bias, scale=attention.scale)
    out = attention.norm(out.reshape(batch, tokens, attention.attn_dim))
    if gate is not None:
        out = out * gate
    out = attention.proj_drop(attention.proj(out))
    x = x + block.drop_path1(block.ls1(out))
    if r > 0:
        ones = size if size is not None else torch.ones(batch, tokens, dtype=x.dtype, device=x.device)
        x, size, origin = merge_tokens(x, ones, origin, r, prefix, k.mean(dim=2))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size, origin



# --- LTMP: learned thresholds for merging and pruning -------------------------------------------------------------

def threshold_mask(score: torch.Tensor, threshold: torch.Tensor, tau: float) -> torch.Tensor:
    """1 where ``score > threshold``, else 0, with the gradient of ``sigmoid((score - threshold) / tau)``: the
    straight-through estimator that lets a hard decision train its threshold."""
    soft = torch.sigmoid((score - threshold) / tau)
    return (score > threshold).to(soft.dtype) + (soft - soft.detach())


def ltmp_layout(x: torch.Tensor, prefix: int) -> Tuple[torch.Tensor, int]:
    """Reorder the tokens after ``prefix`` as ``[even | odd]`` (ToMe's sets A and B, kept for the whole forward, so
    the training and inference paths match the same pairs); returns ``x`` and the size of A."""
    count = x.shape[1] - prefix
    order = torch.cat([torch.arange(prefix), prefix + torch.arange(0, count, 2), prefix + torch.arange(1, count, 2)])
    return x[:, order.to(x.device)], (count + 1) // 2


def _threshold_merge(x: torch.Tensor, size: torch.Tensor, alive: torch.Tensor, live: torch.Tensor,
                     importance: torch.Tensor, k: torch.Tensor, prefix: int, split: int, threshold: torch.Tensor,
                     tau: float, hard: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LTMP's merging step: each live A token whose best cosine match among the live B tokens is above
    ``threshold`` merges into it (size-weighted). Returns ``x``, ``size``, the importance of the tokens after the
    prefix (a B token that took merges is as important as the most important token it stands for) and their
    liveness after merging (merged A tokens leave)."""
    a_live, b_live = live[:, prefix:split], live[:, split:]
    metric = F.normalize(k.mean(dim=2)[:, prefix:].float(), dim=-1)
    a_count = split - prefix
    scores = metric[:, :a_count] @ metric[:, a_count:].transpose(-1, -2)
    scores = scores.masked_fill(~b_live[:, None, :], -2.0)  # below any cosine: a dropped B token takes nothing
    best, destination = scores.max(dim=-1)
    can_merge = a_live & b_live.any(dim=1, keepdim=True)
    best = best.masked_fill(~can_merge, -2.0)
    if hard:
        merged = (best > threshold) & can_merge
        merge_weight = merged.to(size.dtype)
        unmerged = torch.cat([a_live & ~merged, b_live], dim=1)
    else:
        merged_soft = threshold_mask(best, threshold, tau) * can_merge.to(best.dtype)
        merge_weight = merged_soft.detach().to(size.dtype)
        unmerged = torch.cat([alive[:, prefix:split] * (1 - merged_soft), alive[:, split:]], dim=1)
    channels = x.shape[-1]
    a_x, b_x = x[:, prefix:split], x[:, split:]
    a_size, b_size = size[:, prefix:split], size[:, split:]
    moved_size = a_size * merge_weight
    summed = (b_x * b_size[..., None].to(x.dtype)).scatter_add(
        1, destination[..., None].expand(-1, -1, channels), a_x * moved_size[..., None].to(x.dtype))
    summed_size = b_size.scatter_add(1, destination, moved_size)
    received = torch.zeros_like(b_size).scatter_add(1, destination, merge_weight) > 0
    # tokens that took no merge are copied, not divided back (x * s / s is not always x in floating point)
    new_b = torch.where(received[..., None], summed / summed_size[..., None].to(x.dtype), b_x)
    x = torch.cat([x[:, :split], new_b], dim=1)
    size = torch.cat([size[:, :split], torch.where(received, summed_size, b_size)], dim=1)
    a_importance, b_importance = importance[:, :a_count], importance[:, a_count:]
    b_importance = b_importance.scatter_reduce(1, destination, a_importance * merge_weight.to(importance.dtype),
                                               reduce="amax", include_self=True)
    return x, size, torch.cat([a_importance, b_importance], dim=1), unmerged


def ltmp_block_forward(block: Block, x: torch.Tensor, size: torch.Tensor, alive: torch.Tensor, a_count: int,
                       prefix: int, merge_threshold: torch.Tensor, prune_threshold: torch.Tensor, tau: float,
                       proportional: bool, hard: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One timm ``Block`` with LTMP between attention and MLP, on tokens laid out ``[prefix | A | B]``.

    ``alive`` is the tokens still in the sequence: bool with ``hard`` (inference; False also marks padding), else
    a 0/1 float carrying the straight-through gradients (training: nothing is removed, dropped tokens are masked
    out of every later attention). A tokens whose best cosine match in B (keys averaged over heads) exceeds the merge
    threshold merge into it (size-weighted); then tokens whose importance (attention received, averaged over heads
    and the live queries) is not above the prune threshold drop. The prefix never merges or drops.
    """
    attention = block.attn
    hidden = block.norm1(x)
    batch, tokens, _ = hidden.shape
    gate = attention.gate(hidden).sigmoid() if attention.gate is not None else None
    qkv = attention.qkv(hidden).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim)
    q, k, v = qkv.unbind(2)
    q, k = attention.q_norm(q), attention.k_norm(k)
    live = alive if hard else alive.detach() > 0.5
    key_bias = size.log().to(q.dtype) if proportional else None
    key_mask = alive if hard else alive.to(q.dtype)
    out, importance = global_attention(q, k, v, key_bias=key_bias, key_mask=key_mask, scale=attention.scale,
                                       return_importance=True, query_mask=live)
    out = attention.norm(out.reshape(batch, tokens, attention.attn_dim))
    if gate is not None:
        out = out * gate
    x = x + block.drop_path1(block.ls1(attention.proj_drop(attention.proj(out))))

    split = prefix + a_count
    importance = importance[:, prefix:]
    if a_count and tokens - split:
        x, size, importance, unmerged = _threshold_merge(x, size, alive, live, importance, k, prefix, split,
                                                         merge_threshold, tau, hard)
    else:  # A or B is empty (inference dropped it all): nothing can merge
        unmerged = alive[:, prefix:]
    if hard:
        rest = unmerged & (importance > prune_threshold)
    else:
        rest = unmerged * threshold_mask(importance.float(), prune_threshold, tau)
    if prefix == 0 and rest.shape[1]:  # no class token to fall back on: each image keeps its most important token
        still_live = unmerged if hard else unmerged.detach() > 0.5
        top = importance.float().masked_fill(~still_live, -1.0).argmax(dim=1)
        rest = torch.where(F.one_hot(top, rest.shape[1]).bool() & still_live, unmerged, rest)
    alive = torch.cat([alive[:, :prefix], rest], dim=1)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size, alive


@torch.compiler.disable  # data-dependent sizes: runs eagerly, the blocks around it compile (with graph breaks)
def compact_tokens(tensors: Sequence[torch.Tensor], alive: torch.Tensor, prefix: int, a_count: int
                   ) -> Tuple[List[torch.Tensor], torch.Tensor, int]:
    """Drop what no image of the batch still has: within A and within B, each image's live tokens move to the front
    in their order and both parts shrink to the batch's longest; the rest is padding (``alive`` False). Returns the
    gathered ``tensors`` (``(B, N, ...)``), ``alive`` and the new size of A."""
    parts, kept = [], []
    for start, stop in ((prefix, prefix + a_count), (prefix + a_count, alive.shape[1])):
        part_alive = alive[:, start:stop]
        keep = int(part_alive.sum(dim=1).max()) if part_alive.shape[1] else 0
        parts.append((~part_alive).to(torch.uint8).argsort(dim=1, stable=True)[:, :keep] + start)
        kept.append(keep)
    new_a = kept[0]
    index = torch.cat([torch.arange(prefix, device=alive.device).expand(alive.shape[0], -1), *parts], dim=1)
    gathered = [tensor.gather(1, index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(
        -1, -1, *tensor.shape[2:])) for tensor in tensors]
    return gathered, alive.gather(1, index), new_a


def ltmp_flops_ratio(entering: Sequence[torch.Tensor], leaving: Sequence[torch.Tensor], tokens: int, dim: int
                     ) -> torch.Tensor:
    """The LTMP paper's FLOPs ratio per image: the mean over blocks of ``(2 n_in d² + n_in² d + 4 n_out d²) / (6 N
    d² + N² d)``, ``n_in`` the live tokens entering a block's attention, ``n_out`` those left for its MLP, ``N`` the
    unreduced count (the linear layers, attention's two matmuls and the MLP, in units of ``2 d² N``)."""
    full = 6 * tokens * dim ** 2 + tokens ** 2 * dim
    ratios = [(2 * n_in * dim ** 2 + n_in ** 2 * dim + 4 * n_out * dim ** 2) / full
              for n_in, n_out in zip(entering, leaving)]
    return torch.stack(ratios).mean(dim=0)



# --- Token Cropr: learned top-k pruning with last-layer fusion -----------------------------------------------------

class CroprRouter(nn.Module):
    """One Cropr pruning module (Bergner et al., "Token Cropr", CVPR 2025), written from the paper.

    Learned queries cross-attend to the tokens. At inference only the scorer runs: each token's score is its
    attention logit summed over heads and queries, which folds into one dot product with ``W_k^T sum_m q_m`` after a
    LayerNorm. In training the same cross-attention (on the tokens with gradients stopped, so the backbone is not
    pulled towards the router) aggregates the tokens through an MLP into an auxiliary classifier: its loss teaches
    the queries and keys which tokens the task needs.
    """

    def __init__(self, dim: int, num_heads: int, num_queries: int, num_classes: int, mlp_ratio: float = 4.0
                 ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cropr: router_heads {num_heads} must divide the width {dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.queries = nn.Parameter(torch.empty(1, num_queries, dim))
        nn.init.trunc_normal_(self.queries, std=dim ** -0.5)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim) if num_heads > 1 else nn.Identity()
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` → ``(B, N)``: sum over heads and queries of ``q_m · k_j`` (unscaled logits)."""
        query = self.q(self.queries[0]).sum(dim=0)  # (C,): the queries summed, as the score sums over them
        weight = self.k.weight.t() @ query.to(self.k.weight.dtype)
        bias = self.k.bias @ query.to(self.k.bias.dtype)
        return self.norm(x) @ weight.to(x.dtype) + bias.to(x.dtype)

    def auxiliary_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary head's logits ``(B, classes)`` from the cross-attention over ``x`` (gradients stopped)."""
        x = self.norm(x.detach())
        batch, tokens, dim = x.shape
        queries = self.q(self.queries).expand(batch, -1, -1)
        q = queries.reshape(batch, -1, self.num_heads, self.head_dim)
        k = self.k(x).reshape(batch, tokens, self.num_heads, self.head_dim)
        v = self.v(x).reshape(batch, tokens, self.num_heads, self.head_dim)
        pooled = self.proj(global_attention(q, k, v).reshape(batch, -1, dim)).mean(dim=1)
        pooled = pooled + self.mlp(self.mlp_norm(pooled))
        return self.head(self.head_norm(pooled))

    def reset_classifier(self, num_classes: int) -> None:
        dim = self.head_norm.normalized_shape[0]
        reference = self.queries
        self.head = (nn.Linear(dim, num_classes, device=reference.device, dtype=reference.dtype)
                     if num_classes > 0 else nn.Identity())


def cropr_schedule(rate: int, modules: int) -> List[int]:
    """Tokens each Cropr module prunes: ``rate``, the first one ``rate + 1`` (the paper's schedule); none at
    ``rate=0``."""
    if rate == 0 or modules == 0:
        return [0] * modules
    return [rate + 1] + [rate] * (modules - 1)


def grid_tokens(x: torch.Tensor, index: torch.Tensor, pruned: Sequence[torch.Tensor],
                pruned_index: Sequence[torch.Tensor], prefix: int, patches: int) -> torch.Tensor:
    """``x`` ``(B, prefix + kept, C)`` (kept tokens at grid positions ``index``) and the pruned tokens as they left,
    put back in grid order: ``(B, prefix + patches, C)``."""
    channels = x.shape[-1]
    grid = x.new_empty(x.shape[0], patches, channels)
    for tokens, positions in ((x[:, prefix:], index), *zip(pruned, pruned_index)):
        grid.scatter_(1, positions[..., None].expand(-1, -1, channels), tokens)
    return torch.cat([x[:, :prefix], grid], dim=1)


class TokenMerging:
    """Mixed into a timm ``VisionTransformer`` subclass by :func:`reduce_tokens`: the forward paths with token
    reduction (ToMe, LTMP)."""

    token_reduction: Dict[str, Any]
    token_counts: List[float]  # tokens entering each block in the last forward (LTMP: the mean over the batch)
    token_merges: List[int]  # ToMe: tokens merged in each block in the last forward (r after the cap)
    token_reduction_losses: Dict[str, torch.Tensor]  # terms a training step adds to its loss (LTMP: "flops")
    flops_ratio: float  # LTMP: the FLOPs ratio of the last forward, mean over the batch

    @property
    def input_dependent_macs(self) -> bool:
        """True for LTMP: how many tokens its thresholds keep, so what a forward costs, depends on the image."""
        return self.token_reduction["method"] == "ltmp"

    def _ltmp_blocks(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        settings = self.token_reduction
        prefix = self.num_prefix_tokens
        tokens, dim = x.shape[1], x.shape[2]
        x, a_count = ltmp_layout(x, prefix)
        hard = not self.training
        size = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
        alive = torch.ones(x.shape[:2], dtype=torch.bool if hard else torch.float32, device=x.device)
        entering, leaving = [], []
        merge_thresholds, prune_thresholds = self.ltmp_merge_thresholds, self.ltmp_prune_thresholds
        for index, block in enumerate(self.blocks):
            entering.append(alive.sum(dim=1, dtype=torch.float32))
            args = (block, x, size, alive, a_count, prefix, merge_thresholds[index], prune_thresholds[index],
                    settings["tau"], settings["proportional_attention"], hard)
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x, size, alive = checkpoint(ltmp_block_forward, *args, use_reentrant=False)
            else:
                x, size, alive = ltmp_block_forward(*args)
            leaving.append(alive.sum(dim=1, dtype=torch.float32))
            if hard and not exporting_onnx():  # what every image dropped leaves the batch: fewer tokens next
                (x, size), alive, a_count = compact_tokens((x, size), alive, prefix, a_count)
        ratio = ltmp_flops_ratio(entering, leaving, tokens, dim).mean()
        if not exporting_onnx():  # Python-side statistics; an exported graph has no place for them
            self.token_counts = torch.stack(entering).mean(dim=1).tolist()
            self.flops_ratio = float(ratio.detach())
        self.token_reduction_losses = (
            {"flops": settings["flops_weight"] * (settings["flops_ratio"] - ratio) ** 2} if self.training else {})
        return x, size * alive.to(size.dtype)

    def _merge_blocks(self, x: torch.Tensor, last: Optional[int] = None, take: Sequence[int] = ()
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, List[torch.Tensor]]:
        settings = self.token_reduction
        prefix = self.num_prefix_tokens
        origin = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        size: Optional[torch.Tensor] = None
        counts, merges, taken = [], [], []
        blocks = list(self.blocks)[: None if last is None else last + 1]
        for index, block in enumerate(blocks):
            counts.append(x.shape[1])
            r = min(settings["r"][index], (x.shape[1] - prefix) // 2)  # at most half the non-prefix tokens
            merges.append(r)
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x, size, origin = checkpoint(block_forward, block, x, size, origin, r, prefix,
                                             settings["proportional_attention"], use_reentrant=False)
            else:
                x, size, origin = block_forward(block, x, size, origin, r, prefix, settings["proportional_attention"])
            if index in take:
                taken.append(x.gather(1, origin[..., None].expand(-1, -1, x.shape[-1])))  # back on the full grid
        self.token_counts, self.token_merges = counts, merges
        return x, size, origin, taken

    def _cropr_blocks(self, x: torch.Tensor, last: Optional[int] = None, take: Sequence[int] = ()
                      ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        settings = self.token_reduction
        prefix, depth = self.num_prefix_tokens, len(self.blocks)
        patches = x.shape[1] - prefix
        schedule = settings["schedule"]
        if sum(schedule) >= patches:
            raise ValueError(f"cropr: rate {settings['rate']} prunes {sum(schedule)} tokens over {len(schedule)} "
                             f"blocks, but the input has only {patches} patch tokens (lower rate or enlarge the "
                             "image)")
        index = torch.arange(patches, device=x.device).expand(x.shape[0], -1)
        pruned: List[torch.Tensor] = []
        pruned_index: List[torch.Tensor] = []
        counts, taken, auxiliary = [], [], []
        fused = False
        for block_index, block in enumerate(list(self.blocks)[: None if last is None else last + 1]):
            if settings["last_layer_fusion"] and block_index == depth - 1 and pruned:
                x = torch.cat([x, *pruned], dim=1)  # last-layer fusion: every pruned token rejoins for the last block
                index = torch.cat([index, *pruned_index], dim=1)
                pruned, pruned_index, fused = [], [], True
            counts.append(x.shape[1])
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if block_index in take:
                taken.append(grid_tokens(x, index, pruned, pruned_index, prefix, patches))
            if block_index < len(schedule) and schedule[block_index]:
                router = self.cropr_routers[block_index]
                tokens = x[:, prefix:]
                if self.training and self.num_classes > 0:
                    auxiliary.append(router.auxiliary_logits(x))
                keep = tokens.shape[1] - schedule[block_index]
                order = descending_order(router.scores(tokens))
                kept, dropped = ascending(order[:, :keep]), order[:, keep:]
                channels = x.shape[-1]
                pruned.append(tokens.gather(1, dropped[..., None].expand(-1, -1, channels)))
                pruned_index.append(index.gather(1, dropped))
                x = torch.cat([x[:, :prefix], tokens.gather(1, kept[..., None].expand(-1, -1, channels))], dim=1)
                index = index.gather(1, kept)
        if fused:  # every token went through the last block: give them back in grid order
            x = grid_tokens(x, index, [], [], prefix, patches)
        self.token_counts = counts
        self.token_reduction_aux_logits = auxiliary
        return x, taken

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        super().reset_classifier(num_classes, *args, **kwargs)
        if self.token_reduction["method"] == "cropr":  # the auxiliary heads predict the same classes
            for router in self.cropr_routers:
                router.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: a token-reduced ViT takes neither (merging changes the tokens)")
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        if self.token_reduction["method"] == "ltmp":
            x, self._token_sizes = self._ltmp_blocks(x)
            return self.norm(x)
        if self.token_reduction["method"] == "cropr":
            x, _ = self._cropr_blocks(x)
            self._token_sizes = None
            return self.norm(x)
        x, size, _, _ = self._merge_blocks(x)
        self._token_sizes = size
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        size = getattr(self, "_token_sizes", None)
        if pool_type == "avg" and size is not None and size.shape[:2] == x.shape[:2]:
            # a merged token stands for `size` tokens: the mean over the original tokens
            start = 0 if self.pool_include_prefix else self.num_prefix_tokens
            weights = size[:, start:, None].to(x.dtype)
            return (x[:, start:] * weights).sum(dim=1) / weights.sum(dim=1)
        return super().pool(x, pool_type)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              output_dict: bool = False, attn_mask: Optional[torch.Tensor] = None,
                              is_causal: bool = False):
        """timm's ``forward_intermediates``, with each taken block's tokens put back on the full grid (a merged
        token is copied to every position it stands for), so dense outputs keep their shape."""
        if self.token_reduction["method"] == "ltmp":
            raise ValueError("forward_intermediates / features_only: LTMP drops tokens for good, so there is no full "
                             "grid to give back; use ToMe (unmerged through its source map) or Cropr with "
                             "last_layer_fusion=True for dense outputs")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: a token-reduced ViT takes neither (merging changes the tokens)")
        if self.token_reduction["method"] == "cropr" and not self.token_reduction["last_layer_fusion"]:
            raise ValueError("forward_intermediates / features_only: Cropr without last-layer fusion ends with the "
                             "kept tokens only, so there is no full grid to give back; reduce with "
                             "last_layer_fusion=True for dense outputs")
        take, max_index = take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        if self.token_reduction["method"] == "cropr":
            x, taken = self._cropr_blocks(x, max_index if stop_early else None, take)
            size = None
        else:
            x, size, _, taken = self._merge_blocks(x, max_index if stop_early else None, take)
        self._token_sizes = size
        intermediates = [self.norm(y) if norm else y for y in taken]
        prefix = self.num_prefix_tokens
        prefix_tokens = [y[:, :prefix] for y in intermediates] if prefix else None
        intermediates = [y[:, prefix:] for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if output_dict:
            result: Dict[str, Any] = {"image_intermediates": intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                result["image_features"] = self.norm(x)
            return result
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


_REDUCED_CLASSES: Dict[type, type] = {}


def _reduced_class(base: type) -> type:
    if base not in _REDUCED_CLASSES:
        _REDUCED_CLASSES[base] = type(f"TokenMerging{base.__name__}", (TokenMerging, base),
                                      {"__module__": __name__})
    return _REDUCED_CLASSES[base]


def _find_vit(model: nn.Module) -> nn.Module:
    """The ViT itself, also inside timm's ``features_only`` wrapper."""
    inner = getattr(model, "model", None)
    if not isinstance(model, VisionTransformer) and isinstance(inner, VisionTransformer):
        return inner
    return model


TOME_OPTIONS = ("r", "proportional_attention")
LTMP_OPTIONS = ("flops_ratio", "merge_threshold", "prune_threshold", "tau", "flops_weight", "proportional_attention",
                "train_backbone")
LTMP_DEFAULTS: Dict[str, Any] = {"merge_threshold": 0.9, "prune_threshold": 0.0, "tau": 0.1, "flops_weight": 10.0,
                                 "proportional_attention": True, "train_backbone": False}
CROPR_OPTIONS = ("rate", "last_layer_fusion", "num_queries", "router_heads", "mlp_ratio")
_DERIVED = ("schedule",)  # settings computed from the options, not options themselves
_STATE = ("_unreduced_class", "token_reduction", "token_counts", "token_merges", "_token_sizes", "flops_ratio",
          "token_reduction_losses", "token_reduction_aux_logits")


def _remove_reduction(vit: nn.Module) -> None:
    original = getattr(vit, "_unreduced_class", None)
    if original is None:
        return
    vit.__class__ = original
    for name in ("ltmp_merge_thresholds", "ltmp_prune_thresholds"):
        if name in vit._parameters:
            del vit._parameters[name]
    vit._modules.pop("cropr_routers", None)
    frozen = vit.__dict__.pop("_requires_grad_before", None)
    if frozen is not None:
        for name, parameter in vit.named_parameters():
            parameter.requires_grad_(frozen[name])
    for name in _STATE:
        vit.__dict__.pop(name, None)


def _number(options: Dict[str, Any], name: str, low: float, high: float, low_open: bool = False) -> float:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            (low < value if low_open else low <= value) and value <= high):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"ltmp: {name} must be a number in {interval}, got {value!r}")
    return float(value)


def _ltmp_settings(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(LTMP_OPTIONS))
    if unknown:
        raise ValueError(f"ltmp takes the options {list(LTMP_OPTIONS)}, got unknown {unknown}")
    if "flops_ratio" not in options:
        raise ValueError("ltmp needs flops_ratio, the FLOPs fraction its thresholds train towards (e.g. 0.7)")
    settings = {**LTMP_DEFAULTS, **options}
    for name in ("proportional_attention", "train_backbone"):
        if not isinstance(settings[name], bool):
            raise ValueError(f"ltmp: {name} must be True or False, got {settings[name]!r}")
    settings["flops_ratio"] = _number(settings, "flops_ratio", 0.0, 1.0, low_open=True)
    settings["merge_threshold"] = _number(settings, "merge_threshold", -2.0, 2.0)
    settings["prune_threshold"] = _number(settings, "prune_threshold", -1.0, 1.0)
    settings["tau"] = _number(settings, "tau", 0.0, math.inf, low_open=True)
    settings["flops_weight"] = _number(settings, "flops_weight", 0.0, math.inf)
    return {"method": "ltmp", **settings}


def _int_at_least(method: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{method}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _cropr_settings(vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(CROPR_OPTIONS))
    if unknown:
        raise ValueError(f"cropr takes the options {list(CROPR_OPTIONS)}, got unknown {unknown}")
    rate = _int_at_least("cropr", "rate", options.get("rate", 8), 0)
    fusion = options.get("last_layer_fusion", True)
    if not isinstance(fusion, bool):
        raise ValueError(f"cropr: last_layer_fusion must be True or False, got {fusion!r}")
    heads = _int_at_least("cropr", "router_heads", options.get("router_heads", vit.blocks[0].attn.num_heads), 1)
    queries = _int_at_least("cropr", "num_queries", options.get("num_queries", 1), 1)
    mlp_ratio = options.get("mlp_ratio", 4.0)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"cropr: mlp_ratio must be a number > 0, got {mlp_ratio!r}")
    depth = len(vit.blocks)
    modules = max(depth - 2, 0) if fusion else max(depth - 1, 0)
    schedule = cropr_schedule(rate, modules)
    grid = getattr(vit.patch_embed, "num_patches", None)
    if grid is not None and not getattr(vit, "dynamic_img_size", False) and sum(schedule) >= grid:
        raise ValueError(f"cropr: rate {rate} prunes {sum(schedule)} tokens over {modules} blocks, but the model has "
                         f"only {grid} patch tokens")
    return {"method": "cropr", "rate": rate, "last_layer_fusion": fusion, "num_queries": queries,
            "router_heads": heads, "mlp_ratio": float(mlp_ratio), "schedule": schedule}


def reduce_tokens(model: nn.Module, method: Optional[str], **options: Any) -> nn.Module:
    """Apply token reduction to a timm ``VisionTransformer`` in place and return it; ``method=None`` removes it
    (the original forward, parameters and ``requires_grad`` flags, bit for bit).

    Args:
        model: a timm ``VisionTransformer`` (or subclass: DeiT distilled, ...), or its ``features_only`` wrapper.
        method: ``"tome"``, ``"ltmp"`` or ``None``.
        options: for ToMe, ``r`` (int, one int per block, or ``(r, inflection)``; default 0) and
            ``proportional_attention`` (default True). For LTMP, ``flops_ratio`` (the target its thresholds train
            towards, required), the thresholds' starting values ``merge_threshold`` (0.9) and ``prune_threshold``
            (0.0), the straight-through temperature ``tau`` (0.1), the weight of the FLOPs loss ``flops_weight``
            (10), ``proportional_attention`` (True) and ``train_backbone`` (False: every other parameter is frozen).

    Raises ``ValueError`` naming the argument for an unknown method or option, a bad value, a model that is not a
    timm ViT, or a block layout this module does not run exactly.
    """
    vit = _find_vit(model)
    if method is None:
        if options:
            raise ValueError(f"method None takes no options, got {sorted(options)}")
        _remove_reduction(vit)
        return model
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)} or None, got {method!r}")
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"model must be a timm VisionTransformer (deit_*, vit_*, ...), got {type(vit).__name__}")
    if method == "tome":
        unknown = sorted(set(options) - set(TOME_OPTIONS))
        if unknown:
            raise ValueError(f"tome takes the options {list(TOME_OPTIONS)}, got unknown {unknown}")
        proportional = options.get("proportional_attention", True)
        if not isinstance(proportional, bool):
            raise ValueError(f"proportional_attention must be True or False, got {proportional!r}")
        settings: Dict[str, Any] = {"method": "tome", "r": merge_schedule(options.get("r", 0), len(vit.blocks)),
                                    "proportional_attention": proportional}
    elif method == "ltmp":
        settings = _ltmp_settings(options)
    else:
        settings = _cropr_settings(vit, options)
    base = getattr(vit, "_unreduced_class", type(vit))
    if base.forward_features is not VisionTransformer.forward_features:
        raise ValueError(f"token reduction runs timm's VisionTransformer.forward_features; {base.__name__} "
                         "overrides it")
    if getattr(vit, "attn_pool", None) is not None:
        raise ValueError(f"{base.__name__} pools with attention (global_pool='map'), which merged tokens would "
                         "skew; use a token- or average-pooled model")
    if method == "ltmp" and vit.global_pool not in ("token", "avg", ""):
        raise ValueError(f"ltmp: global_pool {vit.global_pool!r} would pool over dropped tokens; use 'token' or "
                         "'avg'")
    for index, block in enumerate(vit.blocks):
        check_block(block, index)
    _remove_reduction(vit)
    vit._unreduced_class = base
    vit.__class__ = _reduced_class(base)
    vit.token_reduction = settings
    vit.token_counts, vit.token_merges, vit.token_reduction_losses = [], [], {}
    reference = next(vit.parameters())  # what a method adds lives on the model's device and dtype
    if method == "ltmp":
        depth = len(vit.blocks)
        if not settings["train_backbone"]:
            vit._requires_grad_before = {name: p.requires_grad for name, p in vit.named_parameters()}
            vit.requires_grad_(False)
        vit.ltmp_merge_thresholds = nn.Parameter(torch.full((depth,), settings["merge_threshold"],
                                                            device=reference.device))
        vit.ltmp_prune_thresholds = nn.Parameter(torch.full((depth,), settings["prune_threshold"],
                                                            device=reference.device))
    if method == "cropr":
        vit.cropr_routers = nn.ModuleList([
            CroprRouter(vit.embed_dim, settings["router_heads"], settings["num_queries"], vit.num_classes,
                        settings["mlp_ratio"]) for _ in settings["schedule"]]).to(reference.device, reference.dtype)
    return model


def reduction_config(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The settings that :func:`reduce_tokens` takes to reduce a fresh model the same way (``method`` plus
    options; what training learned, such as LTMP's thresholds, lives in the weights), or ``None`` for an unreduced
    model. Hub configs and run checkpoints store this."""
    settings = getattr(_find_vit(model), "token_reduction", None)
    if not settings:
        return None
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in settings.items()
            if key not in _DERIVED}


def parse_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"tome:r=13"``, ``"tome:r=(16,-1),proportional_attention=False"``, ``"tome:r=[1,2,3]"`` → ``(method,
    options)``; values are Python literals (``true``/``false`` also read as booleans)."""
    import ast

    method, _, rest = spec.partition(":")
    options: Dict[str, Any] = {}
    depth, start = 0, 0
    parts = []
    for index, char in enumerate(rest + ","):
        depth += char in "([" and 1 or 0
        depth -= char in ")]" and 1 or 0
        if char == "," and depth == 0:
            parts.append(rest[start:index])
            start = index + 1
    for part in filter(None, (part.strip() for part in parts)):
        key, equals, value = part.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"token_reduction: expected METHOD:key=value,..., got {spec!r} (part {part!r})")
        text = {"true": "True", "false": "False"}.get(value.strip().lower(), value.strip())
        try:
            options[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"token_reduction: {key.strip()}={value.strip()!r} is not a number, list, pair or "
                             f"boolean (in {spec!r})") from error
    return method.strip(), options


def reduce_tokens_from_spec(model: nn.Module, spec: Optional[str]) -> nn.Module:
    """:func:`reduce_tokens` with its method and options written as ``vithub train --token-reduction`` takes them
    (``"tome:r=13"``); ``None`` or ``""`` leaves the model as it is."""
    if not spec:
        return model
    method, options = parse_spec(spec)
    return reduce_tokens(model, method, **options)


# --- registered family members ------------------------------------------------------------------------------------

_NOTES = {
    "tome": "timm's weights with ToMe applied: merging needs no training",
    "ltmp": ("timm's weights; LTMP's thresholds start untrained (merge 0.9, prune 0.0, the paper's starting values): "
             "train them with `vithub train --token-reduction ltmp:flops_ratio=...`"),
    "cropr": ("timm's weights; Cropr's routers and auxiliary heads start untrained (they score tokens at random "
              "until trained): train them with `vithub train --token-reduction cropr:rate=...`"),
}
_ARCHITECTURES = {  # base timm model: (width, depth, heads)
    "deit_tiny_patch16_224": (192, 12, 3), "deit_small_patch16_224": (384, 12, 6),
    "deit_base_patch16_224": (768, 12, 12), "vit_base_patch16_224": (768, 12, 12),
    "vit_large_patch16_224": (1024, 24, 16),
}
_WEIGHTS = {  # base timm model: {weights tag: cfg overrides}
    "deit_tiny_patch16_224": {"fb_in1k": {}},
    "deit_small_patch16_224": {"fb_in1k": {}},
    "deit_base_patch16_224": {"fb_in1k": {}},
    "vit_base_patch16_224": {"augreg2_in21k_ft_in1k": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
                             "mae": {"num_classes": 0, "license": "cc-by-nc-4.0"}},
    "vit_large_patch16_224": {"augreg_in21k_ft_in1k": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
                              "mae": {"num_classes": 0, "license": "cc-by-nc-4.0"}},
}


def _cfg(hub_id: str, method: str, **kwargs: Any) -> Dict[str, Any]:
    notes = (_NOTES[method],) + (("MAE pre-training only: no classifier",) if hub_id.endswith(".mae") else ())
    return {"hf_hub_id": hub_id, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
            "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": True, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "apache-2.0", "notes": notes, **kwargs}


default_cfgs = generate_default_cfgs({
    f"vh_{base}_{method}.{tag}": _cfg(f"timm/{base}.{tag}", method, **overrides)
    for method in _NOTES for base, tags in _WEIGHTS.items() for tag, overrides in tags.items()
})


def _create(base: str, method: str, pretrained: bool, options: Dict[str, Any], **kwargs: Any) -> nn.Module:
    """timm's ViT ``base`` (with timm's weights when ``pretrained``), reduced by ``method`` with ``options``; the
    keyword arguments that are options of the method go to :func:`reduce_tokens`, the rest to the ViT."""
    names = {"tome": TOME_OPTIONS, "ltmp": LTMP_OPTIONS, "cropr": CROPR_OPTIONS}[method]
    options = {**options, **{name: kwargs.pop(name) for name in list(kwargs) if name in names}}
    width, depth, heads = _ARCHITECTURES[base]
    model_args = dict(patch_size=16, embed_dim=width, depth=depth, num_heads=heads)
    model = build_model_with_cfg(VisionTransformer, f"vh_{base}_{method}", pretrained,
                                 pretrained_filter_fn=checkpoint_filter_fn,
                                 feature_cfg=dict(out_indices=3, feature_cls="getter"), **dict(model_args, **kwargs))
    return reduce_tokens(model, method, **options)


@register_model
def vh_deit_tiny_patch16_224_tome(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-Ti with ToMe (default r=13 per block)."""
    return _create("deit_tiny_patch16_224", "tome", pretrained, {"r": 13}, **kwargs)


@register_model
def vh_deit_small_patch16_224_tome(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-S with ToMe (default r=13 per block: the paper's off-the-shelf ViT-S setting)."""
    return _create("deit_small_patch16_224", "tome", pretrained, {"r": 13}, **kwargs)


@register_model
def vh_deit_base_patch16_224_tome(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-B with ToMe (default r=13 per block)."""
    return _create("deit_base_patch16_224", "tome", pretrained, {"r": 13}, **kwargs)


@register_model
def vh_vit_base_patch16_224_tome(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ViT-B/16 (AugReg or MAE weights) with ToMe (default r=13 per block)."""
    return _create("vit_base_patch16_224", "tome", pretrained, {"r": 13}, **kwargs)


@register_model
def vh_vit_large_patch16_224_tome(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ViT-L/16 (AugReg or MAE weights) with ToMe (default r=7 per block: the paper's off-the-shelf ViT-L
    setting)."""
    return _create("vit_large_patch16_224", "tome", pretrained, {"r": 7}, **kwargs)


@register_model
def vh_deit_tiny_patch16_224_ltmp(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-Ti with LTMP (untrained thresholds; default target FLOPs ratio 0.7)."""
    return _create("deit_tiny_patch16_224", "ltmp", pretrained, {"flops_ratio": 0.7}, **kwargs)


@register_model
def vh_deit_small_patch16_224_ltmp(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-S with LTMP (untrained thresholds; default target FLOPs ratio 0.7)."""
    return _create("deit_small_patch16_224", "ltmp", pretrained, {"flops_ratio": 0.7}, **kwargs)


@register_model
def vh_deit_base_patch16_224_ltmp(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-B with LTMP (untrained thresholds; default target FLOPs ratio 0.7)."""
    return _create("deit_base_patch16_224", "ltmp", pretrained, {"flops_ratio": 0.7}, **kwargs)


@register_model
def vh_vit_base_patch16_224_ltmp(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ViT-B/16 (AugReg or MAE weights) with LTMP (untrained thresholds; default target FLOPs ratio 0.7)."""
    return _create("vit_base_patch16_224", "ltmp", pretrained, {"flops_ratio": 0.7}, **kwargs)


@register_model
def vh_vit_large_patch16_224_ltmp(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ViT-L/16 (AugReg or MAE weights) with LTMP (untrained thresholds; default target FLOPs ratio 0.7)."""
    return _create("vit_large_patch16_224", "ltmp", pretrained, {"flops_ratio": 0.7}, **kwargs)


@register_model
def vh_deit_tiny_patch16_224_cropr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-Ti with Token Cropr (untrained routers; rate 8 per block, last-layer fusion)."""
    return _create("deit_tiny_patch16_224", "cropr", pretrained, {"rate": 8}, **kwargs)


@register_model
def vh_deit_small_patch16_224_cropr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-S with Token Cropr (untrained routers; rate 8 per block, last-layer fusion)."""
    return _create("deit_small_patch16_224", "cropr", pretrained, {"rate": 8}, **kwargs)


@register_model
def vh_deit_base_patch16_224_cropr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeiT-B with Token Cropr (untrained routers; rate 8 per block, last-layer fusion)."""
    return _create("deit_base_patch16_224", "cropr", pretrained, {"rate": 8}, **kwargs)


@register_model
def vh_vit_base_patch16_224_cropr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ViT-B/16 (AugReg or MAE weights) with Token Cropr (untrained routers; rate 8 per block, last-layer
    fusion)."""
    return _create("vit_base_patch16_224", "cropr", pretrained, {"rate": 8}, **kwargs)


@register_model
def vh_vit_large_patch16_224_cropr(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ViT-L/16 (AugReg or MAE weights) with Token Cropr (untrained routers; rate 4 per block over its 22 pruning
    blocks, last-layer fusion)."""
    return _create("vit_large_patch16_224", "cropr", pretrained, {"rate": 4}, **kwargs)
