"""How a method attaches to a timm ``VisionTransformer``: :func:`reduce_tokens` checks the model and the options,
swaps the model's class for one that mixes in :class:`TokenReduced` (whose forward runs the method's
:class:`~vithub.backbones.token_reduction.runner.Reducer`) and lets the method add what it learns; ``method=None``
undoes all of it, bit for bit."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .._common import take_indices
from .cropr import Cropr
from .ltmp import LTMP
from .runner import Reducer, check_block
from .tome import ToMe

REDUCERS: Dict[str, Reducer] = {reducer.name: reducer for reducer in (ToMe(), LTMP(), Cropr())}
METHODS = tuple(REDUCERS)
_DERIVED = ("schedule",)  # settings computed from the options, not options themselves
_STATE = ("_unreduced_class", "token_reduction", "token_counts", "token_merges", "token_origin", "token_kept",
          "_token_sizes", "flops_ratio", "token_reduction_losses", "token_reduction_aux_logits")


class TokenReduced:
    """Mixed into a timm ``VisionTransformer`` subclass by :func:`reduce_tokens`: the forward paths with the
    method's blocks and dense outputs put back on the full grid. Average pooling is timm's plain mean over the tokens
    left, as in the official ToMe code (a merged token counts once, whatever its size), over the live ones where a
    method masks tokens in a batch (:meth:`Reducer.pool_weights`)."""

    token_reduction: Dict[str, Any]
    token_counts: List[float]  # tokens entering each block in the last forward (LTMP: the mean over the batch)
    token_merges: List[int]  # ToMe: tokens merged in each block in the last forward (r after the cap)
    token_reduction_losses: Dict[str, torch.Tensor]  # terms a training step adds to its loss (LTMP: "flops")
    flops_ratio: float  # LTMP: the FLOPs ratio of the last forward, mean over the batch

    @property
    def token_reducer(self) -> Reducer:
        return REDUCERS[self.token_reduction["method"]]

    @property
    def input_dependent_macs(self) -> bool:
        """True for LTMP: how many tokens its thresholds keep, so what a forward costs, depends on the image."""
        return self.token_reducer.input_dependent_macs

    def freeze_for_training(self) -> None:
        """Freeze what the method's published recipe leaves untrained (LTMP without ``train_backbone``: all but the
        thresholds); ``vithub train`` calls it. A created model is fully trainable until then."""
        self.token_reducer.freeze_for_training(self, self.token_reduction)

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        super().reset_classifier(num_classes, *args, **kwargs)
        self.token_reducer.reset_classifier(self, num_classes)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: a token-reduced ViT takes neither (merging changes the tokens)")
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        x, self._token_sizes, _ = self.token_reducer.run(self, x)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        weights = self.token_reducer.pool_weights(getattr(self, "_token_sizes", None))
        if pool_type == "avg" and weights is not None and weights.shape[:2] == x.shape[:2]:
            start = 0 if self.pool_include_prefix else self.num_prefix_tokens
            weights = weights[:, start:, None].to(x.dtype)
            return (x[:, start:] * weights).sum(dim=1) / weights.sum(dim=1)
        return super().pool(x, pool_type)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              output_dict: bool = False, attn_mask: Optional[torch.Tensor] = None,
                              is_causal: bool = False):
        """timm's ``forward_intermediates``, with each taken block's tokens put back on the full grid (a merged
        token is copied to every position it stands for), so dense outputs keep their shape."""
        refusal = self.token_reducer.dense_refusal(self.token_reduction)
        if refusal:
            raise ValueError(refusal)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: a token-reduced ViT takes neither (merging changes the tokens)")
        take, max_index = take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        x, self._token_sizes, taken = self.token_reducer.run(self, x, max_index if stop_early else None, take)
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
        _REDUCED_CLASSES[base] = type(f"TokenReduced{base.__name__}", (TokenReduced, base), {"__module__": __name__})
    return _REDUCED_CLASSES[base]


def _find_vit(model: nn.Module) -> nn.Module:
    """The ViT itself, also inside timm's ``features_only`` wrapper."""
    inner = getattr(model, "model", None)
    if not isinstance(model, VisionTransformer) and isinstance(inner, VisionTransformer):
        return inner
    return model


def _remove_reduction(vit: nn.Module) -> None:
    original = getattr(vit, "_unreduced_class", None)
    if original is None:
        return
    REDUCERS[vit.token_reduction["method"]].detach(vit)
    vit.__class__ = original
    for name in _STATE:
        vit.__dict__.pop(name, None)


def reduce_tokens(model: nn.Module, method: Optional[str], **options: Any) -> nn.Module:
    """Apply token reduction to a timm ``VisionTransformer`` in place and return it; ``method=None`` removes it
    (the original forward, parameters and ``requires_grad`` flags, bit for bit).

    Args:
        model: a timm ``VisionTransformer`` (or subclass: DeiT distilled, ...), or its ``features_only`` wrapper.
        method: ``"tome"``, ``"ltmp"``, ``"cropr"`` or ``None``.
        options: for ToMe, ``r`` (int, one int per block, or ``(r, inflection)``; default 0) and
            ``proportional_attention`` (default True). For LTMP, ``flops_ratio`` (the target its thresholds train
            towards, required), the thresholds' starting values ``merge_threshold`` (0.9) and ``prune_threshold``
            (0.0), the straight-through temperature ``tau`` (0.1), the weight of the FLOPs loss ``flops_weight``
            (10), ``proportional_attention`` (True) and ``train_backbone`` (False: ``vithub train`` trains the
            thresholds only, through ``model.freeze_for_training()``; model creation freezes nothing).
            For Cropr, ``rate`` (8), ``last_layer_fusion`` (True), and the router's ``num_queries`` (1),
            ``router_heads`` (1), ``mlp_ratio`` (4.0), ``pre_attn_norm``, ``q_proj``, ``k_proj``, ``v_proj`` (False)
            and ``mlp`` (True), the official code's defaults.

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
    reducer = REDUCERS[method]
    settings = reducer.settings(vit, options)
    base = getattr(vit, "_unreduced_class", type(vit))
    if base.forward_features is not VisionTransformer.forward_features:
        raise ValueError(f"token reduction runs timm's VisionTransformer.forward_features; {base.__name__} "
                         "overrides it")
    if getattr(vit, "attn_pool", None) is not None:
        raise ValueError(f"{base.__name__} pools with attention (global_pool='map'), which merged tokens would "
                         "skew; use a token- or average-pooled model")
    reducer.check_model(vit)
    for index, block in enumerate(vit.blocks):
        check_block(block, index)
    _remove_reduction(vit)
    vit._unreduced_class = base
    vit.__class__ = _reduced_class(base)
    vit.token_reduction = settings
    vit.token_counts, vit.token_merges, vit.token_reduction_losses = [], [], {}
    reducer.attach(vit, settings)
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
