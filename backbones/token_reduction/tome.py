"""ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023), with the partition and token order of the
official code (facebookresearch/ToMe ``tome/merge.py`` and ``tome/patch/timm.py``): in every block, between attention
and MLP, bipartite soft matching on the keys averaged over heads. The **whole** sequence alternates into A (even
positions) and B (odd positions); the prefix tokens (class, distillation, register tokens) take part in the split but
are protected: an A prefix token never merges (the official code's class-token row of scores set to minus infinity),
a B prefix token never receives a merge (its distillation-token column). Each A token's most cosine-similar B token is
its edge; the ``r`` A tokens with the most similar edges merge into their B tokens by a size-weighted average; sizes
add up. Output order: the prefix tokens (unchanged, in their order), the unmerged A tokens, then B. The unmerged A
tokens keep their original order when there is a prefix, and are in order of descending best similarity without one
(the official code sorts them only when there is a class token). Since every later block partitions by position,
that order decides all later merges. With proportional attention, ``log(size)`` is added to every key's logits, so a
merged token acts as ``size`` copies of itself. ``r`` is capped per block at ``(N - prefix) // 2``.

The official code protects a class token and a distillation token; register tokens are protected by the same rule
(a generalisation of ours, which the official code does not handle)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
from torch import nn
from torch.utils.checkpoint import checkpoint

from vithub.kernels import ascending, descending_order

from .runner import Reducer, ReducibleBlock, TokenReduced, checkpointing, records_statistics

RSchedule = Union[int, Sequence[int], Tuple[int, float]]


def merge_schedule(r: RSchedule, depth: int) -> List[int]:
    """Tokens to merge in each of ``depth`` blocks, as the official ``parse_r``: an int (the same in every block), a
    list of at most one int per block (padded with zeros), or a pair ``(r, inflection)``: from ``int(r·(1 −
    inflection))`` in the first block linearly to ``2r`` minus that in the last (``(r, -1)``: 2r down to 0, the same
    total as a constant r), truncated to ints."""
    shape = f"an int >= 0, a list of at most {depth} ints >= 0, or a pair (r, inflection)"
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
        start = int(base * (1.0 - inflection))
        step = (2 * base - 2 * start) / max(depth - 1, 1)
        return [int(start + step * index) for index in range(depth)]
    if isinstance(r, (list, tuple)):
        values = list(r)
        if len(values) > depth or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"r as a list needs at most one int >= 0 per block ({depth} blocks), got {values!r}")
        return values + [0] * (depth - len(values))
    raise ValueError(f"r must be {shape}, got {r!r}")


def protected_counts(prefix: int) -> Tuple[int, int]:
    """How many of the ``prefix`` leading tokens fall into A (even positions) and into B (odd positions)."""
    return (prefix + 1) // 2, prefix // 2


def bipartite_matching(metric: torch.Tensor, r: int, prefix: int
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """ToMe's bipartite soft matching over the whole sequence, the official way.

    Args:
        metric: ``(B, N, C)`` (keys averaged over heads).
        r: tokens to merge (already capped at ``(N - prefix) // 2``).
        prefix: leading tokens that neither merge (in A) nor receive a merge (in B).

    Returns:
        ``(unmerged, sources, destinations, a_count)``: A-set indices of the tokens that stay (the protected ones
        first, then ascending with a prefix; in order of descending best similarity without one), of the ``r`` that
        merge (most similar first), their B-set destinations, and the size of A.
    """
    tokens = metric / metric.norm(p=2, dim=-1, keepdim=True)
    a, b = tokens[:, ::2], tokens[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    a_protected, b_protected = protected_counts(prefix)
    if prefix > 0:
        rows = torch.arange(a.shape[1], device=metric.device)[:, None] < a_protected
        columns = torch.arange(b.shape[1], device=metric.device)[None, :] < b_protected
        scores = scores.masked_fill(rows | columns, float("-inf"))
    best, best_index = scores.max(dim=-1)
    order = descending_order(best)
    sources = order[:, :r]
    unmerged = ascending(order[:, r:]) if prefix > 0 else order[:, r:]
    destinations = best_index.gather(1, sources)
    return unmerged, sources, destinations, a.shape[1]


def merge_tokens(x: torch.Tensor, size: torch.Tensor, origin: torch.Tensor, r: int, prefix: int,
                 metric: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of ``x`` ``(B, N, C)`` by size-weighted average; returns the new ``x``, ``size`` ``(B, N-r)``
    and ``origin`` ``(B, N0)``: where each original token now is. Output order: the prefix, the unmerged A tokens,
    then B (merged into), as in the official code."""
    unmerged, sources, destinations, a_count = bipartite_matching(metric, r, prefix)
    a_protected, b_protected = protected_counts(prefix)
    batch, _, channels = x.shape
    a_x, b_x = x[:, ::2], x[:, 1::2]
    a_size, b_size = size[:, ::2], size[:, 1::2]
    kept = unmerged[:, a_protected:]  # the protected A tokens are the first unmerged ones (prefix > 0 sorts)
    kept_x = a_x.gather(1, kept[..., None].expand(-1, -1, channels))
    kept_size = a_size.gather(1, kept)
    moved_size = a_size.gather(1, sources)
    moved_x = a_x.gather(1, sources[..., None].expand(-1, -1, channels)) * moved_size[..., None].to(x.dtype)
    target_index = destinations[..., None].expand(-1, -1, channels)
    summed = (b_x * b_size[..., None].to(x.dtype)).scatter_add(1, target_index, moved_x)
    summed_size = b_size.scatter_add(1, destinations, moved_size)
    received = torch.zeros_like(b_size).scatter_add(1, destinations, torch.ones_like(moved_size)) > 0
    # tokens that took no merge are copied, not divided back (x * s / s is not always x in floating point)
    new_b = torch.where(received[..., None], summed / summed_size[..., None].to(x.dtype), b_x)
    # the prefix tokens neither merge nor receive: they are the input's, unchanged
    new_x = torch.cat([x[:, :prefix], kept_x, new_b[:, b_protected:]], dim=1)
    new_size = torch.cat([size[:, :prefix], kept_size, summed_size[:, b_protected:]], dim=1)
    # Where each current token goes: kept A tokens after the prefix, merged A tokens to their destination, B after.
    kept_count = kept.shape[1]
    b_start = prefix + kept_count - b_protected  # new position of B token j is b_start + j (j >= b_protected)
    a_target = torch.empty(batch, a_count, dtype=torch.long, device=x.device)
    a_target.scatter_(1, unmerged, torch.arange(unmerged.shape[1], device=x.device).expand(batch, -1)
                      + (prefix - a_protected))
    a_target.scatter_(1, sources, destinations + b_start)
    b_target = torch.arange(b_x.shape[1], device=x.device).expand(batch, -1) + b_start
    target = torch.empty(batch, x.shape[1], dtype=torch.long, device=x.device)
    target[:, ::2] = a_target
    target[:, 1::2] = b_target
    target[:, :prefix] = torch.arange(prefix, device=x.device)
    return new_x, new_size, target.gather(1, origin)


def merge_step(x: torch.Tensor, size: Optional[torch.Tensor], origin: torch.Tensor, r: int, prefix: int,
               keys: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """ToMe between attention and MLP: ``r`` capped at half the non-prefix tokens, then :func:`merge_tokens` on the
    keys averaged over heads (nothing when the cap leaves none; ``size`` ``None`` means every token has size 1).
    One FX node: the cap depends on the run-time token count."""
    r = min(r, (x.shape[1] - prefix) // 2)
    if r <= 0:
        return x, size, origin
    sizes = size if size is not None else torch.ones(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    merged, merged_size, merged_origin = merge_tokens(x, sizes, origin, r, prefix, keys.mean(dim=2))
    return merged, merged_size, merged_origin


torch.fx.wrap("merge_step")


class ToMeBlock(ReducibleBlock):
    """A timm ``Block`` under ToMe."""

    def tome_step(self, x: torch.Tensor, size: Optional[torch.Tensor], origin: torch.Tensor, r: int, prefix: int,
                  proportional: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """The block with ToMe between attention and MLP: tokens, sizes and each original token's position out."""
        x, k, _ = self.attend(x, size if proportional else None)
        x, size, origin = merge_step(x, size, origin, r, prefix, k)
        return self.feed_forward(x), size, origin


class ToMeTransformer(TokenReduced):
    """The ViT under ToMe: ``token_schedule`` (``r`` per block) and ``proportional_attention`` are its typed
    settings."""

    def run_blocks(self, x: torch.Tensor, last: Optional[int] = None, take: Optional[List[int]] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        prefix = self.num_prefix_tokens
        origin = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        size: Optional[torch.Tensor] = None
        counts: List[int] = []
        merges: List[int] = []
        taken: List[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if last is None or index <= last:
                r = self.token_schedule[index]
                if not torch.jit.is_scripting():
                    if records_statistics(x):
                        counts.append(x.shape[1])
                        merges.append(min(r, (x.shape[1] - prefix) // 2))  # at most half the non-prefix tokens
                if torch.jit.is_scripting():
                    x, size, origin = block.tome_step(x, size, origin, r, prefix, self.proportional_attention)
                elif checkpointing(self):
                    x, size, origin = checkpoint(block.tome_step, x, size, origin, r, prefix,
                                                 self.proportional_attention, use_reentrant=False)
                else:
                    x, size, origin = block.tome_step(x, size, origin, r, prefix, self.proportional_attention)
                if take is not None and index in take:
                    taken.append(x.gather(1, origin[..., None].expand(-1, -1, x.shape[-1])))  # on the full grid
        if not torch.jit.is_scripting():
            if records_statistics(x):
                # where each input token ended: the official trace_source, as an index per token
                self.token_counts, self.token_merges, self.token_origin = counts, merges, origin
        return x, size, taken


class ToMe(Reducer):
    """``reduce_tokens(model, "tome", r=..., proportional_attention=True)``. ``model.token_merges`` reports the
    tokens each block merged in the last forward (``r`` after the cap), ``model.token_origin`` ``(B, N)`` the output
    token each input token ended in (the official ``trace_source`` matrix is its one-hot form)."""

    name = "tome"
    options = ("r", "proportional_attention")
    model_mixin = ToMeTransformer
    block_mixin = ToMeBlock

    def settings(self, vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"tome takes the options {list(self.options)}, got unknown {unknown}")
        proportional = options.get("proportional_attention", True)
        if not isinstance(proportional, bool):
            raise ValueError(f"proportional_attention must be True or False, got {proportional!r}")
        return {"method": "tome", "r": merge_schedule(options.get("r", 0), len(vit.blocks)),
                "proportional_attention": proportional}

    def scripted_settings(self, vit: nn.Module, settings: Dict[str, Any]) -> Dict[str, Any]:
        return {"token_schedule": list(settings["r"]), "proportional_attention": settings["proportional_attention"]}
