"""Any timm model with ``features_only`` as a detection backbone: NCHW maps, a norm per level, a feature pyramid
(:class:`torchvision.ops.FeaturePyramidNetwork`) with extra levels, frozen stages, any input size, and anchor
sizes that follow the backbone's strides."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

EXTRA_LEVELS = ("none", "pool", "p6p7")


def create_feature_extractor(model_name: str, pretrained: bool = False, out_indices: Optional[Sequence[int]] = None,
                             **model_kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, features_only=True)`` for any input size: transformers whose patch embedding
    checks the size (timm's Swin) get ``strict_img_size=False`` when they accept it. Raises ``ValueError`` naming the
    model when it has no ``features_only`` support."""
    kwargs: Dict[str, Any] = dict(model_kwargs)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if model_name not in timm.list_models() and model_name not in timm.list_models(pretrained=True):
        raise ValueError(f"backbone must be a timm model name (e.g. vh_swin_tiny_patch4_window7_224), got "
                         f"{model_name!r}")
    try:
        try:
            model = timm.create_model(model_name, pretrained=pretrained, features_only=True, strict_img_size=False,
                                      **kwargs)
        except TypeError as error:  # the model has no strict_img_size switch: it takes any size anyway
            if "strict_img_size" not in str(error):
                raise
            model = timm.create_model(model_name, pretrained=pretrained, features_only=True, **kwargs)
    except (RuntimeError, AssertionError, NotImplementedError, TypeError) as error:
        raise ValueError(f"backbone {model_name!r} does not support features_only (timm could not build its "
                         f"feature maps: {error}); pick a model with stages, e.g. vh_swin_tiny_patch4_window7_224"
                         ) from error
    if not hasattr(model, "feature_info"):
        raise ValueError(f"backbone {model_name!r} does not support features_only: timm built it without "
                         "feature_info; pick a model with stages, e.g. vh_swin_tiny_patch4_window7_224")
    return model


def _parameter_prefix(body: nn.Module, module_name: str) -> str:
    """The parameter-name prefix of a timm feature module inside a ``features_only`` wrapper: ``model.stages.0.``
    (getter wrappers), ``layers_0.`` (flattened list wrappers) or ``layers.0.``."""
    names = [name for name, _ in body.named_parameters()]
    for prefix in (f"model.{module_name}.", module_name.replace(".", "_") + ".", f"{module_name}."):
        if any(name.startswith(prefix) for name in names):
            return prefix
    raise ValueError(f"cannot find the parameters of feature module {module_name!r}")


def stage_of_parameters(body: nn.Module) -> Dict[str, int]:
    """For each parameter of a ``features_only`` model, the stage it belongs to, in registration order: 0 for
    everything before the first feature level (the stem), ``i + 1`` for the module of level ``i`` and whatever sits
    between it and the previous level (a downsampling layer); anything after the last level takes the last stage."""
    names = [name for name, _ in body.named_parameters()]
    prefixes = [_parameter_prefix(body, module) for module in body.feature_info.module_name()]
    first = next(index for index, name in enumerate(names) if name.startswith(prefixes[0]))
    last_of_level = [max(index for index, name in enumerate(names) if name.startswith(prefix)) for prefix in prefixes]
    stages: Dict[str, int] = {}
    for index, name in enumerate(names):
        if index < first:
            stages[name] = 0
        else:
            stages[name] = next((level + 1 for level, last in enumerate(last_of_level) if index <= last),
                                len(prefixes))
    return stages


def levels_from_stride(model_name: str, min_stride: int, **model_kwargs: Any) -> List[int]:
    """The feature levels of ``model_name`` whose stride is at least ``min_stride`` (at least the last one), read
    from a model built on the meta device (no weights are made)."""
    with torch.device("meta"):
        probe = create_feature_extractor(model_name, **model_kwargs)
    reductions = probe.feature_info.reduction()
    levels = [index for index, stride in enumerate(reductions) if stride >= min_stride]
    return levels or [len(reductions) - 1]


class LevelFeatures(nn.Module):
    """A timm ``features_only`` model with a norm on each level: ``forward(images)`` gives the levels as NCHW maps.

    Args:
        model_name: any timm model with ``features_only`` (ours ``vh_*`` or timm's, NCHW or NHWC maps).
        out_indices: which feature levels to return (default all, or those of at least ``min_stride``).
        frozen_stages: ``-1`` trains everything; ``0`` freezes the stem; ``k`` also stages ``0..k-1`` (as the
            official Swin/NAT detection backbones). Frozen modules stay in eval mode.
        level_norm: a LayerNorm over channels on each level (the official backbones' ``norm0..norm3``).
        pretrained: load the backbone's timm pretrained weights.
        min_stride: with ``out_indices`` unset, use the levels of at least this stride (one-stage detectors start
            at stride 8, as RetinaNet's P3); the coarsest level is kept in any case.

    Any input size works: the batch is zero-padded at the bottom/right to a multiple of the largest stride.
    """

    def __init__(self, model_name: str, out_indices: Optional[Sequence[int]] = None, frozen_stages: int = -1,
                 level_norm: bool = True, pretrained: bool = False, min_stride: int = 1,
                 **model_kwargs: Any) -> None:
        super().__init__()
        self.model_name = model_name
        if out_indices is None and min_stride > 1:
            out_indices = levels_from_stride(model_name, min_stride, **model_kwargs)
        self.body = create_feature_extractor(model_name, pretrained, out_indices, **model_kwargs)
        info = self.body.feature_info
        self.in_channels: List[int] = list(info.channels())
        self.reductions: List[int] = list(info.reduction())
        self.channels_last_maps = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self.norms = nn.ModuleList(LayerNorm2d(channels) if level_norm else nn.Identity()
                                   for channels in self.in_channels)
        num_stages = len(self.in_channels)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {num_stages}] for {model_name}, got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self._frozen_modules: List[nn.Module] = []
        if frozen_stages >= 0:
            self._freeze(frozen_stages)

    def _freeze(self, frozen_stages: int) -> None:
        stages = stage_of_parameters(self.body)
        frozen = {name for name, stage in stages.items() if stage <= frozen_stages}
        for name, parameter in self.body.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
        for module in self.body.modules():
            parameters = list(module.parameters())
            if parameters and all(not parameter.requires_grad for parameter in parameters):
                self._frozen_modules.append(module)

    def train(self, mode: bool = True) -> "LevelFeatures":
        super().train(mode)
        for module in self._frozen_modules:  # frozen norms keep their statistics
            module.eval()
        return self

    def levels(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The normed NCHW maps of ``images`` (padded to a multiple of the largest stride first)."""
        height, width = images.shape[-2:]
        divisor = max(self.reductions)
        pad_h, pad_w = (-height) % divisor, (-width) % divisor
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        maps = []
        for feature, norm in zip(self.body(images), self.norms):
            if self.channels_last_maps:
                feature = feature.permute(0, 3, 1, 2)
            maps.append(norm(feature.contiguous()))
        return maps

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        return self.levels(images)


class FeaturePyramidBackbone(LevelFeatures):
    """:class:`LevelFeatures` followed by a feature pyramid (:class:`torchvision.ops.FeaturePyramidNetwork`).

    Args (besides :class:`LevelFeatures`'):
        out_channels: channels of every pyramid level.
        extra_levels: ``"pool"`` (max-pooled P6, as Mask R-CNN), ``"p6p7"`` (strided convs, as RetinaNet/FCOS) or
            ``"none"``.

    ``forward(images)`` returns an ``OrderedDict`` ``{"0": P_first, ..., "pool"|"p6","p7"}``, as torchvision's
    detectors expect.
    """

    def __init__(self, model_name: str, out_channels: int = 256, out_indices: Optional[Sequence[int]] = None,
                 extra_levels: str = "pool", frozen_stages: int = -1, level_norm: bool = True,
                 pretrained: bool = False, min_stride: int = 1, **model_kwargs: Any) -> None:
        if extra_levels not in EXTRA_LEVELS:
            raise ValueError(f"extra_levels must be one of {EXTRA_LEVELS}, got {extra_levels!r}")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        super().__init__(model_name, out_indices, frozen_stages, level_norm, pretrained, min_stride, **model_kwargs)
        extra = {"pool": LastLevelMaxPool(), "p6p7": LastLevelP6P7(out_channels, out_channels), "none": None}
        self.fpn = FeaturePyramidNetwork(self.in_channels, out_channels, extra_blocks=extra[extra_levels])
        self.out_channels = out_channels
        self.extra_levels = extra_levels
        self.level_names: List[str] = [str(index) for index in range(len(self.in_channels))]
        extra_count = {"pool": 1, "p6p7": 2, "none": 0}[extra_levels]
        last = self.reductions[-1]
        self.strides: List[int] = self.reductions + [last * 2 ** (index + 1) for index in range(extra_count)]

    @property
    def size_divisor(self) -> int:
        """Input sides padded to a multiple of this keep every level's stride exact."""
        return max(self.strides)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict(zip(self.level_names, self.levels(images))))


def anchor_sizes(strides: Sequence[int], detector: str) -> Tuple[Tuple[Tuple[float, ...], ...],
                                                                  Tuple[Tuple[float, ...], ...]]:
    """Anchor ``(sizes, aspect_ratios)`` per pyramid level from the levels' strides.

    Two-stage detectors: level ``i`` gets one anchor side ``max(32·2^i, 2·stride)``, ratios 0.5/1/2: Mask R-CNN's
    32..512 for strides 4..64, and 32, 64, 128, ... for backbones whose first level is at stride 16 (LeViT,
    EfficientViT-M), so small objects still have anchors. RetinaNet: three octave scales from ``max(32·2^i,
    4·stride)`` (32, 40, 50 at stride 8). FCOS: one point per location with side = stride (torchvision's convention,
    from which FCOS derives each level's range of object sizes)."""
    if detector == "fcos":
        return tuple((float(stride),) for stride in strides), ((1.0,),) * len(strides)
    if detector == "retinanet":
        bases = [max(32.0 * 2 ** level, 4.0 * stride) for level, stride in enumerate(strides)]
        sizes = tuple(tuple(base * 2 ** (octave / 3) for octave in range(3)) for base in bases)
        return sizes, ((0.5, 1.0, 2.0),) * len(strides)
    sizes = tuple((max(32.0 * 2 ** level, 2.0 * stride),) for level, stride in enumerate(strides))
    return sizes, ((0.5, 1.0, 2.0),) * len(strides)


def layer_of_parameters(backbone: FeaturePyramidBackbone) -> Tuple[Dict[str, int], int]:
    """Layer ids for layer-wise lr decay: the backbone model's own ``group_matcher`` (fine-grained, per block) when it
    has one, else its stages; returns ``({parameter name in the backbone: layer}, number of layers)``. Parameters
    outside ``backbone.body`` (norms, pyramid, heads) take the top layer."""
    inner = getattr(backbone.body, "model", None)
    if inner is not None and hasattr(inner, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(inner, inner.group_matcher(coarse=False), reverse=True)
        layers = {f"body.model.{name}": layer for name, layer in groups.items()}
        top = max(layers.values()) + 1 if layers else 0
    else:
        stages = stage_of_parameters(backbone.body)
        layers = {f"body.{name}": stage for name, stage in stages.items()}
        top = max(stages.values()) + 1
    return layers, top + 1


def check_strides(strides: Sequence[int]) -> None:
    """Strides must be powers of two (RoI pooling infers each level's scale as one)."""
    for stride in strides:
        if stride < 1 or 2 ** int(round(math.log2(stride))) != stride:
            raise ValueError(f"backbone feature strides must be powers of two, got {list(strides)}")
