"""LTMP (Bonnaerens & Dambre, "Learned Thresholds Token Merging and Pruning for Vision Transformers", TMLR 2023),
with the semantics of the official code (Mxbonn/ltmp ``ltmp/timm/lt_mergeprune.py`` for training and
``lt_mergeprune_inference.py`` for inference): per block, between attention and MLP, ToMe's split of the current
sequence into A (even positions) and B (odd positions); every A token whose best cosine match in B (keys averaged over
heads) is above the block's learned merge threshold merges into it (size-weighted, proportional attention); then every
token whose importance (the attention it receives, averaged over heads and queries; a B token that took merges keeps
the largest importance among them) is not above the learned prune threshold drops. The class token (the prefix, by the
same rule for distillation and register tokens) never merges, receives or drops. ``model.flops_ratio`` reports the
last forward.

Inference removes tokens: the sequence becomes ``[prefix, unmerged A, B]`` minus the pruned ones. The official code
runs one image at a time; vithub runs the batch padded and masked, each image's result equal to running it alone.
Training keeps every token in the order ``[prefix, A, B]`` (merged and pruned ones masked out of attention with
straight-through masks, so the thresholds learn; loss: task + λ·(target − FLOPs ratio)², the paper's FLOPs ratio). As
in the official code, the two paths partition differently after the first block (training keeps the merged A tokens
in place), so a training forward is not the inference forward with masks."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vithub.kernels import ascending_order, host_values

from .runner import Reducer, ReducibleBlock, TokenReduced, checkpointing, records_statistics
from .tome import protected_counts

LTMP_DEFAULTS: Dict[str, Any] = {"merge_threshold": 0.9, "prune_threshold": 0.0, "tau": 0.1, "flops_weight": 10.0,
                                 "proportional_attention": True, "train_backbone": False}


def threshold_mask(score: torch.Tensor, threshold: torch.Tensor, tau: float) -> torch.Tensor:
    """1 where ``score > threshold``, else 0, with the gradient of ``sigmoid((score - threshold) / tau)``: the
    straight-through estimator that lets a hard decision train its threshold."""
    soft = torch.sigmoid((score - threshold) / tau)
    return (score > threshold).to(soft.dtype) + (soft - soft.detach())


def _protected(prefix: int, length: int, device: torch.device) -> torch.Tensor:
    return torch.arange(length, device=device) < prefix


def _best_matches(k: torch.Tensor, prefix: int, a_blocked: Optional[torch.Tensor] = None,
                  b_blocked: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each A token's best cosine similarity to a B token and that token (keys averaged over heads, normalised, times
    ``weight`` where given: the training path's live mask). Protected (prefix) and ``*_blocked`` A rows and B columns
    are minus infinity."""
    metric = k.mean(dim=2)
    metric = metric / metric.norm(p=2, dim=-1, keepdim=True)
    if weight is not None:
        metric = metric * weight[..., None]
    a, b = metric[:, ::2], metric[:, 1::2]
    if b.shape[1] == 0:  # a single token left: nothing to merge into
        return (a.new_full(a.shape[:2], float("-inf")),
                torch.zeros(a.shape[:2], dtype=torch.long, device=a.device))
    a_protected, b_protected = protected_counts(prefix)
    rows = _protected(a_protected, a.shape[1], k.device)[None, :]
    columns = _protected(b_protected, b.shape[1], k.device)[None, :]
    if a_blocked is not None:
        rows = rows | a_blocked
    if b_blocked is not None:
        columns = columns | b_blocked
    scores = (a @ b.transpose(-1, -2)).masked_fill(rows[..., None] | columns[:, None, :], float("-inf"))
    return scores.max(dim=-1)


def _merge_into_b(x: torch.Tensor, size: torch.Tensor, importance: torch.Tensor, destination: torch.Tensor,
                  weight: torch.Tensor, prefix: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tokens merged into B with ``weight`` (1: merged, 0: not), on ``x`` already multiplied by ``size``, in the
    layout ``[A | B]``; a B token's importance becomes the largest among it and what it took (protected A rows do
    not count, as the official code's class-token score)."""
    if x.shape[1] < 2:  # a single token: nothing merges
        return x, size, importance
    channels = x.shape[-1]
    a_x, b_x = x[:, ::2], x[:, 1::2]
    a_size, b_size = size[:, ::2], size[:, 1::2]
    a_importance, b_importance = importance[:, ::2], importance[:, 1::2]
    b_x = b_x.scatter_add(1, destination[..., None].expand(-1, -1, channels), a_x * weight[..., None].to(x.dtype))
    b_size = b_size.scatter_add(1, destination, a_size * weight.to(size.dtype))
    taken = a_importance * weight.to(importance.dtype)
    taken = taken.masked_fill(_protected(protected_counts(prefix)[0], taken.shape[1], x.device), 0.0)
    b_importance = b_importance.scatter_reduce(1, destination, taken, reduce="amax", include_self=True)
    return (torch.cat([a_x, b_x], dim=1), torch.cat([a_size, b_size], dim=1),
            torch.cat([a_importance, b_importance], dim=1))


def _sequence_keys(length: int, prefix: int, device: torch.device) -> torch.Tensor:
    """For each position of the ``[A | B]`` layout, a key whose ascending order is the sequence ``[prefix, A, B]``:
    prefix tokens back at the front in their order, then A, then B (with a class token only, the official
    ``[A, B]``)."""
    positions = torch.cat([torch.arange(0, length, 2, device=device), torch.arange(1, length, 2, device=device)])
    return torch.where(positions < prefix, positions - prefix, torch.arange(length, device=device))


def _keep_one_without_prefix(rest: torch.Tensor, live: torch.Tensor, importance: torch.Tensor,
                             prefix: int) -> torch.Tensor:
    """Without a class token nothing stops an image from dropping every token: each image keeps its most important
    live token (vithub's rule; the official code assumes a class token)."""
    if prefix > 0 or rest.shape[1] == 0:
        return rest
    top = importance.float().masked_fill(~live, -1.0).argmax(dim=1)
    return torch.where(F.one_hot(top, rest.shape[1]).to(torch.bool) & live, torch.ones_like(rest), rest)


def ltmp_reduce(x: torch.Tensor, k: torch.Tensor, importance: Optional[torch.Tensor], size: torch.Tensor,
                alive: torch.Tensor, prefix: int, merge_threshold: torch.Tensor, prune_threshold: torch.Tensor,
                tau: float, hard: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LTMP between attention and MLP on the tokens ``x`` after attention, with the keys ``k`` and the importance
    from it (see :meth:`LTMPBlock.ltmp_step`); returns ``x``, ``size`` and ``alive``. One FX node: what it keeps
    depends on the values."""
    assert importance is not None, "ltmp_reduce needs the attention's importance"
    tokens = x.shape[1]
    live = alive if hard else alive.detach() > 0.5
    importance = importance.masked_fill(_protected(prefix, tokens, x.device), float("inf"))
    keys = _sequence_keys(tokens, prefix, x.device)
    if hard:
        best, destination = _best_matches(k, prefix, a_blocked=~live[:, ::2], b_blocked=~live[:, 1::2])
        merged = best > merge_threshold
        x, size, importance = _merge_into_b(x * size[..., None].to(x.dtype), size, importance, destination,
                                            merged.to(size.dtype), prefix)
        unmerged = torch.cat([live[:, ::2] & ~merged, live[:, 1::2]], dim=1)
        rest = _keep_one_without_prefix(unmerged & (importance > prune_threshold), unmerged, importance, prefix)
        # the live tokens first, in [prefix, A, B] order; the dropped ones and the padding after them
        gather = ascending_order(torch.where(rest, keys[None, :], tokens))
        x = x.gather(1, gather[..., None].expand(-1, -1, x.shape[-1]))
        size, alive = size.gather(1, gather), rest.gather(1, gather)
        return x / size[..., None].to(x.dtype), size, alive
    order = ascending_order(keys)
    best, destination = _best_matches(k, prefix, weight=alive.detach().to(k.dtype))
    merge = threshold_mask(best, merge_threshold, tau)
    a_alive = alive[:, ::2]
    unmerged = torch.where(a_alive == 0, a_alive, 1 - merge)  # an A token masked before stays masked
    x, size, importance = _merge_into_b(x * size[..., None].to(x.dtype), size, importance, destination,
                                        merge.detach(), prefix)
    x, size, importance = x[:, order], size[:, order], importance[:, order]
    merged_mask = torch.cat([unmerged, alive[:, 1::2]], dim=1)[:, order]
    x = x / size[..., None].to(x.dtype)
    prune = threshold_mask(importance.float(), prune_threshold, tau).to(merged_mask.dtype)
    mask = torch.where(merged_mask != 0, prune, merged_mask)  # the official mask[mask.bool()] = prune[mask.bool()]
    if prefix == 0:
        kept, before = mask.detach() > 0.5, merged_mask.detach() > 0.5
        mask = torch.where(_keep_one_without_prefix(kept, before, importance, 0) & ~kept, torch.ones_like(mask), mask)
    return x, size, mask


torch.fx.wrap("ltmp_reduce")


class LTMPBlock(ReducibleBlock):
    """A timm ``Block`` under LTMP."""

    def ltmp_step(self, x: torch.Tensor, size: torch.Tensor, alive: torch.Tensor, prefix: int,
                  merge_threshold: torch.Tensor, prune_threshold: torch.Tensor, tau: float, proportional: bool,
                  hard: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block with LTMP between attention and MLP.

        ``hard`` (inference): ``alive`` is bool, each image's live tokens first in sequence order, padding after; the
        result is re-ordered the same way (``[prefix, unmerged A, B]`` minus the pruned, then padding), not yet
        trimmed (:func:`compact_tokens`). Otherwise (training) ``alive`` is the 0/1 float mask with straight-through
        gradients and the result keeps every token in the order ``[prefix, A, B]``. Returns ``x``, ``size`` and
        ``alive``."""
        x, k, importance = self.attend(x, size if proportional else None, alive, alive if hard else None, True)
        x, size, alive = ltmp_reduce(x, k, importance, size, alive, prefix, merge_threshold, prune_threshold, tau,
                                     hard)
        return self.feed_forward(x), size, alive


def compact_tokens(tensors: List[torch.Tensor], alive: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Trim what no image of the batch still has (each image's live tokens are already first): the sequence
    shrinks to the batch's longest. Where the live counts cannot be read (an ONNX export or ``torch.export`` graph has
    no host side: :func:`~vithub.kernels.host_values`) every token stays: the masks already leave the dropped ones
    out. Under ``torch.compile`` reading the counts is a graph break; the blocks around it compile. One FX node."""
    if torch.jit.is_scripting():
        keep = max(int(alive.sum(dim=1).amax().item()), 1)
    else:
        longest = host_values(alive.sum(dim=1).amax()[None])
        if longest is None:
            return list(tensors), alive
        keep = max(int(longest[0]), 1)
    return [tensor[:, :keep] for tensor in tensors], alive[:, :keep]


torch.fx.wrap("compact_tokens")


def ltmp_flops_ratio(entering: Sequence[torch.Tensor], leaving: Sequence[torch.Tensor], tokens: int, dim: int
                     ) -> torch.Tensor:
    """The LTMP paper's FLOPs ratio per image: the mean over blocks of ``(2 n_in d² + n_in² d + 4 n_out d²) / (6 N
    d² + N² d)``, ``n_in`` the live tokens entering a block's attention, ``n_out`` those left for its MLP, ``N`` the
    unreduced count (the linear layers, attention's two matmuls and the MLP, in units of ``2 d² N``)."""
    full = 6 * tokens * dim ** 2 + tokens ** 2 * dim
    ratios = [(2 * n_in * dim ** 2 + n_in ** 2 * dim + 4 * n_out * dim ** 2) / full
              for n_in, n_out in zip(entering, leaving)]
    return torch.stack(ratios).mean(dim=0)


def _number(options: Dict[str, Any], name: str, low: float, high: float, low_open: bool = False) -> float:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            (low < value if low_open else low <= value) and value <= high):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"ltmp: {name} must be a number in {interval}, got {value!r}")
    return float(value)


def _ltmp_settings(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(LTMP.options))
    if unknown:
        raise ValueError(f"ltmp takes the options {list(LTMP.options)}, got unknown {unknown}")
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


class LTMPTransformer(TokenReduced):
    """The ViT under LTMP: ``ltmp_tau`` and ``proportional_attention`` are its typed settings, the thresholds its
    parameters ``ltmp_merge_thresholds`` and ``ltmp_prune_thresholds``."""

    def pool_weights(self, size: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The live tokens, each once: a batched forward keeps the tokens an image dropped as size 0, and the mean
        must be the one that image alone would take over the tokens it kept."""
        if size is None:
            return None
        return size > 0

    def run_blocks(self, x: torch.Tensor, last: Optional[int] = None, take: Optional[List[int]] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        prefix = self.num_prefix_tokens
        tokens, dim = x.shape[1], x.shape[2]
        hard = not self.training
        size = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
        alive = torch.ones(x.shape[:2], dtype=torch.bool if hard else torch.float32, device=x.device)
        entering: List[torch.Tensor] = []
        leaving: List[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if last is None or index <= last:
                entering.append(alive.sum(dim=1, dtype=torch.float32))
                merge_threshold = self.ltmp_merge_thresholds[index]
                prune_threshold = self.ltmp_prune_thresholds[index]
                if torch.jit.is_scripting():
                    x, size, alive = block.ltmp_step(x, size, alive, prefix, merge_threshold, prune_threshold,
                                                     self.ltmp_tau, self.proportional_attention, hard)
                elif checkpointing(self):
                    x, size, alive = checkpoint(block.ltmp_step, x, size, alive, prefix, merge_threshold,
                                                prune_threshold, self.ltmp_tau, self.proportional_attention, hard,
                                                use_reentrant=False)
                else:
                    x, size, alive = block.ltmp_step(x, size, alive, prefix, merge_threshold, prune_threshold,
                                                     self.ltmp_tau, self.proportional_attention, hard)
                leaving.append(alive.sum(dim=1, dtype=torch.float32))
                if hard:  # what every image dropped leaves the batch: fewer tokens next
                    compacted, alive = compact_tokens([x, size], alive)
                    x, size = compacted[0], compacted[1]
        if not torch.jit.is_scripting():
            if records_statistics(x):
                self._keep_statistics(entering, leaving, tokens, dim)
        return x, size * alive.to(size.dtype), []

    def _keep_statistics(self, entering: List[torch.Tensor], leaving: List[torch.Tensor], tokens: int,
                         dim: int) -> None:
        """``token_counts`` and ``flops_ratio`` of this forward, and in training the FLOPs loss term."""
        settings = self.token_reduction
        ratio = ltmp_flops_ratio(entering, leaving, tokens, dim).mean()
        statistics = host_values(torch.cat([torch.stack(entering).mean(dim=1), ratio[None]]))
        if statistics is not None:  # Python-side statistics (an exported graph has none)
            self.token_counts, self.flops_ratio = statistics[:-1], statistics[-1]
        self.token_reduction_losses = (
            {"flops": settings["flops_weight"] * (settings["flops_ratio"] - ratio) ** 2} if self.training else {})


class LTMP(Reducer):
    """``reduce_tokens(model, "ltmp", flops_ratio=..., ...)``: adds ``ltmp_merge_thresholds`` and
    ``ltmp_prune_thresholds`` (one per block); for training (:meth:`freeze_for_training`), unless
    ``train_backbone``, every other parameter is frozen, as in the official recipe."""

    name = "ltmp"
    options = ("flops_ratio", "merge_threshold", "prune_threshold", "tau", "flops_weight", "proportional_attention",
               "train_backbone")
    input_dependent_macs = True  # how many tokens its thresholds keep depends on the image
    model_mixin = LTMPTransformer
    block_mixin = LTMPBlock

    def settings(self, vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
        return _ltmp_settings(options)

    def check_model(self, vit: nn.Module) -> None:
        if vit.global_pool not in ("token", "avg", ""):
            raise ValueError(f"ltmp: global_pool {vit.global_pool!r} would pool over dropped tokens; use 'token' or "
                             "'avg'")

    def attach(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        reference = next(vit.parameters())  # the thresholds take the model's device and dtype
        depth = len(vit.blocks)
        vit.ltmp_merge_thresholds = nn.Parameter(torch.full((depth,), settings["merge_threshold"],
                                                            device=reference.device, dtype=reference.dtype))
        vit.ltmp_prune_thresholds = nn.Parameter(torch.full((depth,), settings["prune_threshold"],
                                                            device=reference.device, dtype=reference.dtype))

    def freeze_for_training(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        if settings["train_backbone"]:
            return
        thresholds = ("ltmp_merge_thresholds", "ltmp_prune_thresholds")
        before = {name: p.requires_grad for name, p in vit.named_parameters() if name not in thresholds}
        vit.__dict__.setdefault("_requires_grad_before", before)  # what removing the reduction restores
        for name, parameter in vit.named_parameters():
            parameter.requires_grad_(name in thresholds)

    def detach(self, vit: nn.Module) -> None:
        for name in ("ltmp_merge_thresholds", "ltmp_prune_thresholds"):
            vit._parameters.pop(name, None)
        frozen = vit.__dict__.pop("_requires_grad_before", None)
        if frozen is not None:
            for name, parameter in vit.named_parameters():
                parameter.requires_grad_(frozen.get(name, parameter.requires_grad))

    def dense_refusal(self, settings: Dict[str, Any]) -> Optional[str]:
        return ("forward_intermediates / features_only: LTMP drops tokens for good, so there is no full grid to give "
                "back; use ToMe (unmerged through its source map) or Cropr with last_layer_fusion=True for dense "
                "outputs")

    def scripted_settings(self, vit: nn.Module, settings: Dict[str, Any]) -> Dict[str, Any]:
        return {"ltmp_tau": settings["tau"], "proportional_attention": settings["proportional_attention"]}
