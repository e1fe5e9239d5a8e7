"""LTMP (Bonnaerens & Dambre, "Learned Thresholds Token Merging and Pruning for Vision Transformers", TMLR 2023),
written from the paper: per block, a learned merge threshold (on ToMe's similarity) and prune threshold (on the
attention a token receives, averaged over heads and live queries). Training keeps every token and masks the dropped
ones out of attention with straight-through masks, so only the thresholds learn (loss: task + λ·(target − FLOPs
ratio)², the paper's FLOPs ratio); inference removes tokens for real and runs batched (padding with key and query
masks), each image's result equal to running it alone. ``model.flops_ratio`` reports the last forward."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from vithub.kernels import host_values

from .runner import Reducer, attend, feed_forward, run_step

LTMP_DEFAULTS: Dict[str, Any] = {"merge_threshold": 0.9, "prune_threshold": 0.0, "tau": 0.1, "flops_weight": 10.0,
                                 "proportional_attention": True, "train_backbone": False}


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
    tokens = x.shape[1]
    live = alive if hard else alive.detach() > 0.5
    x, k, importance = attend(block, x, size if proportional else None, key_mask=alive, query_mask=live,
                              return_importance=True)
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
    return feed_forward(block, x), size, alive


@torch.compiler.disable  # data-dependent sizes: runs eagerly, the blocks around it compile (with graph breaks)
def compact_tokens(tensors: Sequence[torch.Tensor], alive: torch.Tensor, prefix: int, a_count: int
                   ) -> Tuple[List[torch.Tensor], torch.Tensor, int]:
    """Drop what no image of the batch still has: within A and within B, each image's live tokens move to the front
    in their order and both parts shrink to the batch's longest; the rest is padding (``alive`` False). Returns the
    gathered ``tensors`` (``(B, N, ...)``), ``alive`` and the new size of A. Where the live counts cannot be read
    (an ONNX export has no host side) every token stays: the masks already leave the dropped ones out."""
    bounds = ((prefix, prefix + a_count), (prefix + a_count, alive.shape[1]))
    longest = host_values(torch.stack([alive[:, start:stop].sum(dim=1).amax() if stop > start
                                       else torch.zeros((), dtype=torch.long, device=alive.device)
                                       for start, stop in bounds]))
    if longest is None:
        return list(tensors), alive, a_count
    parts = [(~alive[:, start:stop]).to(torch.uint8).argsort(dim=1, stable=True)[:, :keep] + start
             for (start, stop), keep in zip(bounds, longest)]
    new_a = longest[0]
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


class LTMP(Reducer):
    """``reduce_tokens(model, "ltmp", flops_ratio=..., ...)``: adds ``ltmp_merge_thresholds`` and
    ``ltmp_prune_thresholds`` (one per block) and, unless ``train_backbone``, freezes every other parameter."""

    name = "ltmp"
    options = ("flops_ratio", "merge_threshold", "prune_threshold", "tau", "flops_weight", "proportional_attention",
               "train_backbone")
    input_dependent_macs = True  # how many tokens its thresholds keep depends on the image

    def settings(self, vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
        return _ltmp_settings(options)

    def check_model(self, vit: nn.Module) -> None:
        if vit.global_pool not in ("token", "avg", ""):
            raise ValueError(f"ltmp: global_pool {vit.global_pool!r} would pool over dropped tokens; use 'token' or "
                             "'avg'")

    def attach(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        reference = next(vit.parameters())  # the thresholds live on the model's device
        depth = len(vit.blocks)
        if not settings["train_backbone"]:
            vit._requires_grad_before = {name: p.requires_grad for name, p in vit.named_parameters()}
            vit.requires_grad_(False)
        vit.ltmp_merge_thresholds = nn.Parameter(torch.full((depth,), settings["merge_threshold"],
                                                            device=reference.device))
        vit.ltmp_prune_thresholds = nn.Parameter(torch.full((depth,), settings["prune_threshold"],
                                                            device=reference.device))

    def detach(self, vit: nn.Module) -> None:
        for name in ("ltmp_merge_thresholds", "ltmp_prune_thresholds"):
            vit._parameters.pop(name, None)
        frozen = vit.__dict__.pop("_requires_grad_before", None)
        if frozen is not None:
            for name, parameter in vit.named_parameters():
                parameter.requires_grad_(frozen[name])

    def pool_weights(self, size: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The live tokens, each once: a batched forward keeps the tokens an image dropped as size 0, and the mean
        must be the one that image alone would take over the tokens it kept."""
        return None if size is None else (size > 0)

    def dense_refusal(self, settings: Dict[str, Any]) -> Optional[str]:
        return ("forward_intermediates / features_only: LTMP drops tokens for good, so there is no full grid to give "
                "back; use ToMe (unmerged through its source map) or Cropr with last_layer_fusion=True for dense "
                "outputs")

    def run(self, vit: nn.Module, x: torch.Tensor, last: Optional[int] = None, take: Sequence[int] = ()
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        settings = vit.token_reduction
        prefix = vit.num_prefix_tokens
        tokens, dim = x.shape[1], x.shape[2]
        x, a_count = ltmp_layout(x, prefix)
        hard = not vit.training
        size = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
        alive = torch.ones(x.shape[:2], dtype=torch.bool if hard else torch.float32, device=x.device)
        entering, leaving = [], []
        merge_thresholds, prune_thresholds = vit.ltmp_merge_thresholds, vit.ltmp_prune_thresholds
        for index, block in enumerate(list(vit.blocks)[: None if last is None else last + 1]):
            entering.append(alive.sum(dim=1, dtype=torch.float32))
            x, size, alive = run_step(vit, ltmp_block_forward, block, x, size, alive, a_count, prefix,
                                      merge_thresholds[index], prune_thresholds[index], settings["tau"],
                                      settings["proportional_attention"], hard)
            leaving.append(alive.sum(dim=1, dtype=torch.float32))
            if hard:  # what every image dropped leaves the batch: fewer tokens next
                (x, size), alive, a_count = compact_tokens((x, size), alive, prefix, a_count)
        ratio = ltmp_flops_ratio(entering, leaving, tokens, dim).mean()
        statistics = host_values(torch.cat([torch.stack(entering).mean(dim=1), ratio[None]]))
        if statistics is not None:  # Python-side statistics (an exported graph has none)
            vit.token_counts, vit.flops_ratio = statistics[:-1], statistics[-1]
        vit.token_reduction_losses = (
            {"flops": settings["flops_weight"] * (settings["flops_ratio"] - ratio) ** 2} if vit.training else {})
        return x, size * alive.to(size.dtype), []
