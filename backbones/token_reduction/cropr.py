"""Token Cropr (Bergner et al., "Token Cropr: Faster ViTs for Quite a Few Tasks", CVPR 2025), written from the
paper: a router after each block but the last one or two keeps the top-scoring tokens (``rate`` pruned per block,
the first one ``rate + 1``); its scorer is a learned-query dot product, cheap at inference, and in training an
auxiliary cross-attention head per router learns the scores from the task loss. Last-layer fusion brings every pruned
token back for the last block, so dense outputs keep the full grid."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import Mlp
from torch import nn

from vithub.kernels import ascending, descending_order, global_attention

from .runner import Reducer, run_step


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


def _int_at_least(method: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{method}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _cropr_settings(vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(Cropr.options))
    if unknown:
        raise ValueError(f"cropr takes the options {list(Cropr.options)}, got unknown {unknown}")
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


class Cropr(Reducer):
    """``reduce_tokens(model, "cropr", rate=8, last_layer_fusion=True, ...)``: adds ``cropr_routers`` (one
    :class:`CroprRouter` per pruning block); ``model.token_reduction_aux_logits`` holds the auxiliary heads' logits of
    the last training forward."""

    name = "cropr"
    options = ("rate", "last_layer_fusion", "num_queries", "router_heads", "mlp_ratio")

    def settings(self, vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
        return _cropr_settings(vit, options)

    def attach(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        reference = next(vit.parameters())  # the routers live on the model's device and dtype
        vit.cropr_routers = nn.ModuleList([
            CroprRouter(vit.embed_dim, settings["router_heads"], settings["num_queries"], vit.num_classes,
                        settings["mlp_ratio"]) for _ in settings["schedule"]]).to(reference.device, reference.dtype)

    def detach(self, vit: nn.Module) -> None:
        vit._modules.pop("cropr_routers", None)

    def dense_refusal(self, settings: Dict[str, Any]) -> Optional[str]:
        if settings["last_layer_fusion"]:
            return None
        return ("forward_intermediates / features_only: Cropr without last-layer fusion ends with the kept tokens "
                "only, so there is no full grid to give back; reduce with last_layer_fusion=True for dense outputs")

    def reset_classifier(self, vit: nn.Module, num_classes: int) -> None:
        for router in vit.cropr_routers:  # the auxiliary heads predict the same classes
            router.reset_classifier(num_classes)

    def run(self, vit: nn.Module, x: torch.Tensor, last: Optional[int] = None, take: Sequence[int] = ()
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        settings = vit.token_reduction
        prefix, depth = vit.num_prefix_tokens, len(vit.blocks)
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
        for block_index, block in enumerate(list(vit.blocks)[: None if last is None else last + 1]):
            if settings["last_layer_fusion"] and block_index == depth - 1 and pruned:
                x = torch.cat([x, *pruned], dim=1)  # last-layer fusion: every pruned token rejoins for the last block
                index = torch.cat([index, *pruned_index], dim=1)
                pruned, pruned_index, fused = [], [], True
            counts.append(x.shape[1])
            x = run_step(vit, block, x)
            if block_index in take:
                taken.append(grid_tokens(x, index, pruned, pruned_index, prefix, patches))
            if block_index < len(schedule) and schedule[block_index]:
                router = vit.cropr_routers[block_index]
                tokens = x[:, prefix:]
                if vit.training and vit.num_classes > 0:
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
        vit.token_counts = counts
        vit.token_reduction_aux_logits = auxiliary
        return x, None, taken
