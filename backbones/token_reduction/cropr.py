"""Token Cropr (Bergner et al., "Token Cropr: Faster ViTs for Quite a Few Tasks", CVPR 2025), with the semantics
of the official code (benbergner/cropr ``cls/cropr.py`` and ``cls/vision_transformer.py``): a router after each block
but the last one (with last-layer fusion: the last two) keeps the top-scoring tokens (``rate`` pruned per block, the
first one ``rate + 1``); its score is the sum over heads and queries of the learned queries' dot products with the
keys (unscaled logits), cheap at inference; in training the same cross-attention (on the tokens with gradients
stopped) feeds an auxiliary classifier whose loss teaches the queries (and projections) which tokens the task needs.
Last-layer fusion brings every pruned token back for the last block, so dense outputs keep the full grid.

Where vithub differs from the official code: the kept tokens stay in grid order (the official code keeps them in
descending score order, which changes no output: the blocks treat tokens alike whatever their order), the class token
and any other prefix token (distillation, registers) are always kept, and average pooling is timm's (over the patch
tokens; the official classification model's own head averages the class token in too)."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx
from timm.layers import Mlp, trunc_normal_tf_
from timm.models import register_notrace_module
from torch import nn
from torch.utils.checkpoint import checkpoint

from vithub.kernels import ascending, descending_order

from .runner import Reducer, TokenReduced, checkpointing, records_statistics, token_attention

torch.fx.wrap("token_attention")  # FX keeps it one node here too (it patches this module's name)


@register_notrace_module  # torchvision's FX node names clash on mlp.norm / mlp_norm inside it
class CroprRouter(nn.Module):
    """One Cropr pruning module, as the official ``Cropr`` (its ``CrossAttention`` and ``ClassificationHead``).

    Learned queries cross-attend to the tokens (optionally after a LayerNorm, ``pre_attn_norm``, and through query,
    key and value projections without bias, ``q_proj``/``k_proj``/``v_proj``; all off by default, as in the official
    code). At inference only the scorer runs: each token's score is its attention logit summed over heads and queries,
    one dot product with ``sum_m q_m`` (folded through ``W_k``). In training the cross-attention, an output
    projection (with more than one head), a residual MLP (``mlp``) and a LayerNorm + linear head make the auxiliary
    prediction.
    """

    def __init__(self, dim: int, num_heads: int = 1, num_queries: int = 1, num_classes: int = 1000,
                 mlp_ratio: float = 4.0, pre_attn_norm: bool = False, q_proj: bool = False, k_proj: bool = False,
                 v_proj: bool = False, mlp: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cropr: router_heads {num_heads} must divide the width {dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.queries = nn.Parameter(torch.empty(1, num_queries, dim))
        trunc_normal_tf_(self.queries, std=dim ** -0.5)
        self.norm = nn.LayerNorm(dim, eps=1e-6) if pre_attn_norm else nn.Identity()
        self.q = nn.Linear(dim, dim, bias=False) if q_proj else nn.Identity()
        self.k = nn.Linear(dim, dim, bias=False) if k_proj else nn.Identity()
        self.v = nn.Linear(dim, dim, bias=False) if v_proj else nn.Identity()
        self.proj = nn.Linear(dim, dim) if num_heads > 1 else nn.Identity()
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6) if mlp else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio)) if mlp else None
        self.head_norm = nn.LayerNorm(dim)
        self.num_classes = num_classes
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, prefix: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The scores of ``x``'s patch tokens (after the ``prefix`` ones) and, in training with a classifier, the
        auxiliary logits (else ``None``). One FX node (a timm notrace module)."""
        logits: Optional[torch.Tensor] = None
        if self.training and self.num_classes > 0:
            logits = self.auxiliary_logits(x)
        return self.scores(x[:, prefix:]), logits

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` → ``(B, N)``: sum over heads and queries of ``q_m · k_j`` (unscaled logits)."""
        query = self.q(self.queries[0]).sum(dim=0)  # (C,): the queries summed, as the score sums over them
        if hasattr(self.k, "weight"):  # a key projection: q . (W x) = (W^T q) . x
            query = self.k.weight.t() @ query.to(self.k.weight.dtype)
        return self.norm(x) @ query.to(x.dtype)

    def auxiliary_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary head's logits ``(B, classes)`` from the cross-attention over ``x`` (gradients stopped; with
        several queries, their outputs are averaged)."""
        x = self.norm(x.detach())
        batch, tokens, dim = x.shape
        queries = self.q(self.queries).expand(batch, -1, -1)
        q = queries.reshape(batch, -1, self.num_heads, self.head_dim)
        k = self.k(x).reshape(batch, tokens, self.num_heads, self.head_dim)
        v = self.v(x).reshape(batch, tokens, self.num_heads, self.head_dim)
        attended, _ = token_attention(q, k, v, self.head_dim ** -0.5, None, None, None, False)
        pooled = self.proj(attended.reshape(batch, -1, dim)).mean(dim=1)
        if self.mlp is not None:
            pooled = pooled + self.mlp(self.mlp_norm(pooled))
        return self.head(self.head_norm(pooled))

    def reset_classifier(self, num_classes: int) -> None:
        dim = self.head_norm.normalized_shape[0]
        reference = self.queries
        self.num_classes = num_classes
        self.head = (nn.Linear(dim, num_classes, device=reference.device, dtype=reference.dtype)
                     if num_classes > 0 else nn.Identity()).train(self.training)


def official_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An official Cropr classification checkpoint's keys (``cropr.{i}.cross_attn.*``, ``cropr.{i}.head.*``) as
    vithub's (``cropr_routers.{i}.*``); the ViT's own keys are timm's and stay."""
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "cropr" and len(parts) > 3:
            rest = ".".join(parts[3:])
            if parts[2] == "cross_attn":
                rest = "norm." + rest[len("attn_norm."):] if rest.startswith("attn_norm.") else rest
            elif parts[2] == "head":
                rest = {"norm": "head_norm", "head": "head"}[parts[3]] + "." + ".".join(parts[4:])
            key = f"cropr_routers.{parts[1]}.{rest}"
        renamed[key] = value
    return renamed


def cropr_schedule(rate: int, modules: int) -> List[int]:
    """Tokens each Cropr module prunes: ``rate``, the first one ``rate + 1`` (the paper's schedule); none at
    ``rate=0``."""
    if rate == 0 or modules == 0:
        return [0] * modules
    return [rate + 1] + [rate] * (modules - 1)


def grid_tokens(x: torch.Tensor, index: torch.Tensor, pruned: List[torch.Tensor], pruned_index: List[torch.Tensor],
                prefix: int, patches: int) -> torch.Tensor:
    """``x`` ``(B, prefix + kept, C)`` (kept tokens at grid positions ``index``) and the pruned tokens as they left,
    put back in grid order: ``(B, prefix + patches, C)``."""
    channels = x.shape[-1]
    grid = x.new_empty(x.shape[0], patches, channels)
    grid.scatter_(1, index[..., None].expand(-1, -1, channels), x[:, prefix:])
    for tokens, positions in zip(pruned, pruned_index):
        grid.scatter_(1, positions[..., None].expand(-1, -1, channels), tokens)
    return torch.cat([x[:, :prefix], grid], dim=1)


def prune_tokens(x: torch.Tensor, scores: torch.Tensor, index: torch.Tensor, count: int, prefix: int
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop the ``count`` lowest-scoring patch tokens of ``x`` (``scores`` ``(B, patches)``); the kept ones stay in
    grid order. Returns the kept sequence (prefix first), their grid positions, the dropped tokens and theirs."""
    tokens = x[:, prefix:]
    channels = x.shape[-1]
    order = descending_order(scores)
    kept, dropped = ascending(order[:, :tokens.shape[1] - count]), order[:, tokens.shape[1] - count:]
    kept_x = torch.cat([x[:, :prefix], tokens.gather(1, kept[..., None].expand(-1, -1, channels))], dim=1)
    return (kept_x, index.gather(1, kept), tokens.gather(1, dropped[..., None].expand(-1, -1, channels)),
            index.gather(1, dropped))


class RouterInterface(nn.Module):
    """A Cropr router as the block loop calls it (TorchScript reaches a router picked by block index through this)."""

    def forward(self, x: torch.Tensor, prefix: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        pass


with warnings.catch_warnings():  # TorchScript's deprecation notice, once per import, is for TorchScript users
    warnings.simplefilter("ignore", FutureWarning)
    RouterInterface = torch.jit.interface(RouterInterface)


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
    heads = _int_at_least("cropr", "router_heads", options.get("router_heads", 1), 1)
    queries = _int_at_least("cropr", "num_queries", options.get("num_queries", 1), 1)
    switches = {name: options.get(name, name == "mlp") for name in ("pre_attn_norm", "q_proj", "k_proj", "v_proj",
                                                                      "mlp")}
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise ValueError(f"cropr: {name} must be True or False, got {value!r}")
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
            "router_heads": heads, "mlp_ratio": float(mlp_ratio), **switches, "schedule": schedule}


class CroprTransformer(TokenReduced):
    """The ViT under Token Cropr: ``token_schedule`` (tokens each router prunes), ``last_layer_fusion`` and
    ``cropr_rate`` are its typed settings, the routers its ``cropr_routers``."""

    def run_blocks(self, x: torch.Tensor, last: Optional[int] = None, take: Optional[List[int]] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        prefix, depth = self.num_prefix_tokens, len(self.blocks)
        patches = x.shape[1] - prefix
        schedule = self.token_schedule
        if isinstance(patches, int) and sum(schedule) >= patches:  # (traced by FX, the count is known only later)
            raise ValueError(f"cropr: rate {self.cropr_rate} prunes {sum(schedule)} tokens over {len(schedule)} "
                             f"blocks, but the input has only {patches} patch tokens (lower the rate or enlarge the "
                             "image)")
        index = torch.arange(patches, device=x.device).expand(x.shape[0], -1)
        pruned: List[torch.Tensor] = []
        pruned_index: List[torch.Tensor] = []
        counts: List[int] = []
        taken: List[torch.Tensor] = []
        auxiliary: List[torch.Tensor] = []
        kept_positions: List[torch.Tensor] = []
        fused = False
        for block_index, block in enumerate(self.blocks):
            if last is None or block_index <= last:
                if self.last_layer_fusion and block_index == depth - 1 and len(pruned) > 0:
                    x = torch.cat([x] + pruned, dim=1)  # last-layer fusion: every pruned token rejoins the last block
                    index = torch.cat([index] + pruned_index, dim=1)
                    pruned, pruned_index, fused = [], [], True
                if not torch.jit.is_scripting():
                    if records_statistics(x):
                        counts.append(x.shape[1])
                if torch.jit.is_scripting():
                    x = block(x)
                elif checkpointing(self):
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
                if take is not None and block_index in take:
                    taken.append(grid_tokens(x, index, pruned, pruned_index, prefix, patches))
                if block_index < len(schedule) and schedule[block_index] > 0:
                    if torch.jit.is_scripting():  # TorchScript indexes a module list through an interface
                        router: RouterInterface = self.cropr_routers[block_index]
                        scores, logits = router.forward(x, prefix)
                    else:  # called, so FX keeps the router one node
                        scores, logits = self.cropr_routers[block_index](x, prefix)
                    if logits is not None:
                        auxiliary.append(logits)
                    x, index, dropped, dropped_index = prune_tokens(x, scores, index, schedule[block_index], prefix)
                    pruned.append(dropped)
                    pruned_index.append(dropped_index)
                    kept_positions.append(index)
        if fused:  # every token went through the last block: give them back in grid order
            x = grid_tokens(x, index, [], [], prefix, patches)
        if not torch.jit.is_scripting():
            if records_statistics(x):
                self.token_counts, self.token_kept = counts, kept_positions
                self.token_reduction_aux_logits = auxiliary
        return x, None, taken


class Cropr(Reducer):
    """``reduce_tokens(model, "cropr", rate=8, last_layer_fusion=True, ...)``: adds ``cropr_routers`` (one
    :class:`CroprRouter` per pruning block); ``model.token_reduction_aux_logits`` holds the auxiliary heads' logits of
    the last training forward, ``model.token_kept`` the patch positions ``(B, kept)`` each pruning block kept in the
    last forward (grid order)."""

    name = "cropr"
    options = ("rate", "last_layer_fusion", "num_queries", "router_heads", "mlp_ratio", "pre_attn_norm", "q_proj",
               "k_proj", "v_proj", "mlp")
    model_mixin = CroprTransformer

    def settings(self, vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
        return _cropr_settings(vit, options)

    def attach(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        reference = next(vit.parameters())  # the routers live on the model's device and dtype
        vit.cropr_routers = nn.ModuleList([
            CroprRouter(vit.embed_dim, settings["router_heads"], settings["num_queries"], vit.num_classes,
                        settings["mlp_ratio"], **{name: settings.get(name, name == "mlp") for name in (
                            "pre_attn_norm", "q_proj", "k_proj", "v_proj", "mlp")})
            for _ in settings["schedule"]]).to(reference.device, reference.dtype)

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

    def scripted_settings(self, vit: nn.Module, settings: Dict[str, Any]) -> Dict[str, Any]:
        return {"token_schedule": list(settings["schedule"]), "last_layer_fusion": settings["last_layer_fusion"],
                "cropr_rate": settings["rate"]}
