"""How a method attaches to a timm ``VisionTransformer``: :func:`reduce_tokens` checks the model and the options,
swaps the model's class for one that mixes in the method's :class:`~.runner.TokenReduced` (its block loop) and each
block's for one that mixes in the method's :class:`~.runner.ReducibleBlock` (its step), sets the typed settings the
loop reads and lets the method add what it learns; ``method=None`` undoes all of it, bit for bit."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .cropr import Cropr
from .ltmp import LTMP
from .runner import Reducer, check_block
from .tome import ToMe

REDUCERS: Dict[str, Reducer] = {reducer.name: reducer for reducer in (ToMe(), LTMP(), Cropr())}
METHODS = tuple(REDUCERS)
_DERIVED = ("schedule",)  # settings computed from the options, not options themselves
_STATE = ("_unreduced_class", "token_reduction", "token_counts", "token_merges", "token_origin", "token_kept",
          "_token_sizes", "flops_ratio", "token_reduction_losses", "token_reduction_aux_logits", "pool_by_weights")


_MIXED_CLASSES: Dict[Tuple[type, type], type] = {}


def _mixed_class(mixin: type, base: type) -> type:
    """``base`` with ``mixin`` in front (one class per pair, so TorchScript and pickling see the same class)."""
    key = (mixin, base)
    if key not in _MIXED_CLASSES:
        _MIXED_CLASSES[key] = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"__module__": __name__})
    return _MIXED_CLASSES[key]


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
    reducer = REDUCERS[vit.token_reduction["method"]]
    reducer.detach(vit)
    for name in reducer.scripted_settings(vit, vit.token_reduction):
        vit.__dict__.pop(name, None)
    for block in vit.blocks:
        block_class = block.__dict__.pop("_unreduced_class", None)
        if block_class is not None:
            block.__class__ = block_class
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
    vit.__class__ = _mixed_class(reducer.model_mixin, base)
    if reducer.block_mixin is not None:
        for block in vit.blocks:
            block._unreduced_class = type(block)
            block.__class__ = _mixed_class(reducer.block_mixin, type(block))
    vit.token_reduction = settings
    for name, value in reducer.scripted_settings(vit, settings).items():
        setattr(vit, name, value)
    # TorchScript and FX pool by the weights in forward itself where timm's forward_head would call pool()
    vit.pool_by_weights = base.forward_head is VisionTransformer.forward_head
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
