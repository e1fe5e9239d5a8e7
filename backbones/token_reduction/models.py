"""The registered token-reduced members: timm's DeiT and ViT with timm's weights and ToMe, LTMP or Token Cropr
applied (``vh_deit_small_patch16_224_tome``, ``..._ltmp``, ``..._cropr``, ...); LTMP's thresholds and Cropr's routers
start untrained."""

from __future__ import annotations

from typing import Any, Dict

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from .reduce import REDUCERS, reduce_tokens

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
    names = REDUCERS[method].options
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
