"""EfficientViT-B and -L (Cai et al., 2023, "Multi-Scale Linear Attention for High-Resolution Dense Prediction") on
vithub's shared kernel layer.

Module names and parameter shapes are timm's ``efficientvit_b*`` / ``efficientvit_l*``, so timm's Hub weights load as
they are and give timm's outputs. The multi-scale ReLU linear attention ("LiteMLA") runs through
:func:`vithub.kernels.relu_linear_attention` (fp32 accumulation, autocast off). :meth:`EfficientVitMit.fuse` folds
every BatchNorm into its conv for inference. ``checkpoint_filter_fn`` also converts the official mit-han-lab layout.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Dict, Optional, Sequence, Set, Tuple, Type

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, GELUTanh, SelectAdaptivePool2d
from timm.models import generate_default_cfgs, register_model, register_notrace_module

from vithub.kernels import relu_linear_attention

from ._common import (
    placed_like,
    SequentialStage,
    add_residual_,
    MapLayout,
    StageHooks,
    build_hierarchical,
    conv2d,
    fuse_batchnorms,
    stage_group_matcher,
)
from ._cpu_paths import input_format

__all__ = ["EfficientVitMit", "LiteMLA", "checkpoint_filter_fn"]

Layer = Optional[Type[nn.Module]]


def _per_layer(value: Any, count: int) -> Tuple[Any, ...]:
    """Per-layer settings: a tuple as given (its last entry repeated up to ``count``), a single value repeated."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(items + [items[-1]] * (count - len(items)))


class ConvNormAct(nn.Module):
    """Dropout, conv ("same" padding), optional norm, optional activation (timm/official ``ConvLayer``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 bias: bool = False, dropout: float = 0.0, norm_layer: Layer = nn.BatchNorm2d,
                 act_layer: Layer = nn.ReLU) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.conv = conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.norm = norm_layer(out_channels) if norm_layer else nn.Identity()
        self.act = act_layer(inplace=True) if act_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.dropout(x))))

    def fused(self) -> nn.Module:
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv, self.norm)
            self.norm = nn.Identity()
        return self


class DSConv(nn.Module):
    """Depthwise then pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_bias: Any = False, norm_layer: Any = nn.BatchNorm2d, act_layer: Any = (nn.ReLU6, None)) -> None:
        super().__init__()
        use_bias, norm_layer, act_layer = (_per_layer(v, 2) for v in (use_bias, norm_layer, act_layer))
        self.depth_conv = ConvNormAct(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                                      bias=use_bias[0], norm_layer=norm_layer[0], act_layer=act_layer[0])
        self.point_conv = ConvNormAct(in_channels, out_channels, 1, bias=use_bias[1], norm_layer=norm_layer[1],
                                      act_layer=act_layer[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class ConvBlock(nn.Module):
    """Two full 3x3 convs (the L-series stem)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 1, use_bias: Any = False, norm_layer: Any = nn.BatchNorm2d,
                 act_layer: Any = (nn.ReLU6, None)) -> None:
        super().__init__()
        use_bias, norm_layer, act_layer = (_per_layer(v, 2) for v in (use_bias, norm_layer, act_layer))
        mid = round(in_channels * expand_ratio)
        self.conv1 = ConvNormAct(in_channels, mid, kernel_size, stride, bias=use_bias[0], norm_layer=norm_layer[0],
                                 act_layer=act_layer[0])
        self.conv2 = ConvNormAct(mid, out_channels, kernel_size, 1, bias=use_bias[1], norm_layer=norm_layer[1],
                                 act_layer=act_layer[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 6, use_bias: Any = False, norm_layer: Any = nn.BatchNorm2d,
                 act_layer: Any = (nn.ReLU6, nn.ReLU6, None)) -> None:
        super().__init__()
        use_bias, norm_layer, act_layer = (_per_layer(v, 3) for v in (use_bias, norm_layer, act_layer))
        mid = round(in_channels * expand_ratio)
        self.inverted_conv = ConvNormAct(in_channels, mid, 1, bias=use_bias[0], norm_layer=norm_layer[0],
                                         act_layer=act_layer[0])
        self.depth_conv = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, bias=use_bias[1],
                                      norm_layer=norm_layer[1], act_layer=act_layer[1])
        self.point_conv = ConvNormAct(mid, out_channels, 1, bias=use_bias[2], norm_layer=norm_layer[2],
                                      act_layer=act_layer[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    """Inverted residual with the expansion and spatial conv in one full conv (L-series early stages)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 6, use_bias: Any = False, norm_layer: Any = nn.BatchNorm2d,
                 act_layer: Any = (nn.ReLU6, None)) -> None:
        super().__init__()
        use_bias, norm_layer, act_layer = (_per_layer(v, 2) for v in (use_bias, norm_layer, act_layer))
        mid = round(in_channels * expand_ratio)
        self.spatial_conv = ConvNormAct(in_channels, mid, kernel_size, stride, bias=use_bias[0],
                                        norm_layer=norm_layer[0], act_layer=act_layer[0])
        self.point_conv = ConvNormAct(mid, out_channels, 1, bias=use_bias[1], norm_layer=norm_layer[1],
                                      act_layer=act_layer[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


@register_notrace_module
class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention: q/k/v from a 1x1 conv, extra scales from depthwise + grouped 1x1 convs on
    them, every (scale, head) group attends over the whole map, then a 1x1 projection with BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, heads_ratio: float = 1.0, dim: int = 8,
                 norm_layer: Layer = nn.BatchNorm2d, scales: Sequence[int] = (5,), eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        heads = int(in_channels // dim * heads_ratio)
        total_dim = heads * dim
        self.qkv = ConvNormAct(in_channels, 3 * total_dim, 1, bias=False, norm_layer=None, act_layer=None)
        self.aggreg = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3 * total_dim, 3 * total_dim, scale, padding=scale // 2, groups=3 * total_dim, bias=False),
                nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=False),
            )
            for scale in scales
        ])
        self.proj = ConvNormAct(total_dim * (1 + len(scales)), out_channels, 1, bias=False, norm_layer=norm_layer,
                                act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        qkv = self.qkv(x)
        multi_scale = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        return self.proj(self._attend(multi_scale, batch, height, width))

    def _attend(self, multi_scale: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        """Every (scale, head) group's attention over the map, as the NCHW map the projection takes. Channel ``c``
        belongs to group ``c // (3 * dim)`` and holds that group's ``[q, k, v]``; the op sees its heads-last view.
        (An ONNX export splits them channel-major: :mod:`vithub.export_forms`.)"""
        groups = multi_scale.permute(0, 2, 3, 1).reshape(batch, height, width, -1, 3 * self.dim)
        q, k, v = groups.split(self.dim, dim=-1)
        out = relu_linear_attention(q, k, v, eps=self.eps)
        return out.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """``main(x)``, plus ``x`` when there is a shortcut (the residual branch may be dropped per sample)."""

    def __init__(self, main: nn.Module, shortcut: Optional[nn.Module] = None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pre_norm = nn.Identity()
        self.main = main
        self.shortcut = shortcut
        self.drop_path = DropPath(drop_path) if drop_path > 0 and shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(self.pre_norm(x))
        if self.shortcut is not None:
            out = add_residual_(self.drop_path(out), self.shortcut(x))
        return out


class EfficientVitBlock(nn.Module):
    """LiteMLA (context) then MBConv (local), each residual."""

    def __init__(self, in_channels: int, heads_ratio: float = 1.0, head_dim: int = 32, expand_ratio: float = 4,
                 norm_layer: Type[nn.Module] = nn.BatchNorm2d, act_layer: Type[nn.Module] = nn.Hardswish,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.context_module = ResidualBlock(
            LiteMLA(in_channels, in_channels, heads_ratio, head_dim, norm_layer=norm_layer), nn.Identity(), drop_path)
        self.local_module = ResidualBlock(
            MBConv(in_channels, in_channels, expand_ratio=expand_ratio, use_bias=(True, True, False),
                   norm_layer=(None, None, norm_layer), act_layer=(act_layer, act_layer, None)),
            nn.Identity(), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


def build_local_block(in_channels: int, out_channels: int, stride: int, expand_ratio: float, norm_layer: Any,
                      act_layer: Any, fewer_norm: bool = False, block_type: str = "default") -> nn.Module:
    """The official block choice: DSConv/ConvBlock at expansion 1, else MBConv/FusedMBConv ("fewer norm" drops the
    norms before the last conv and gives those convs biases)."""
    if block_type not in ("default", "large", "fused"):
        raise ValueError(f"block_type must be 'default', 'large' or 'fused', got {block_type!r}")
    if expand_ratio == 1:
        block_cls = DSConv if block_type == "default" else ConvBlock
        return block_cls(in_channels, out_channels, stride=stride,
                         use_bias=(True, False) if fewer_norm else False,
                         norm_layer=(None, norm_layer) if fewer_norm else norm_layer, act_layer=(act_layer, None))
    if block_type == "default":
        return MBConv(in_channels, out_channels, stride=stride, expand_ratio=expand_ratio,
                      use_bias=(True, True, False) if fewer_norm else False,
                      norm_layer=(None, None, norm_layer) if fewer_norm else norm_layer,
                      act_layer=(act_layer, act_layer, None))
    return FusedMBConv(in_channels, out_channels, stride=stride, expand_ratio=expand_ratio,
                       use_bias=(True, False) if fewer_norm else False,
                       norm_layer=(None, norm_layer) if fewer_norm else norm_layer, act_layer=(act_layer, None))


class Stem(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, depth: int, norm_layer: Any, act_layer: Any,
                 block_type: str = "default", drop_path: float = 0.0) -> None:
        super().__init__()
        self.add_module("in_conv", ConvNormAct(in_chs, out_chs, 3, 2, norm_layer=norm_layer, act_layer=act_layer))
        for index in range(depth):
            block = build_local_block(out_chs, out_chs, 1, 1, norm_layer, act_layer, block_type=block_type)
            self.add_module(f"res{index}", ResidualBlock(block, nn.Identity(), drop_path))


class EfficientVitStage(SequentialStage):
    """A strided first block (no shortcut), then either local blocks or (``vit_stage``) LiteMLA blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, norm_layer: Any, act_layer: Any, head_dim: int,
                 vit_stage: bool, large: bool, fewer_norm: bool, expand_ratio: float = 4,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.downsample = nn.Identity()  # the strided first block is blocks.0 (timm/official layout)
        if large:
            first_expand = 24 if vit_stage else 16
            block_type = "default" if fewer_norm else "fused"
            local_expand, vit_expand, local_count = 4, 6, depth
        else:
            first_expand = local_expand = vit_expand = expand_ratio
            block_type, local_count = "default", depth - 1
        blocks = [ResidualBlock(build_local_block(in_chs, out_chs, 2, first_expand, norm_layer, act_layer,
                                                  fewer_norm=vit_stage or (large and fewer_norm),
                                                  block_type=block_type), None)]
        if vit_stage:
            blocks += [EfficientVitBlock(out_chs, head_dim=head_dim, expand_ratio=vit_expand, norm_layer=norm_layer,
                                         act_layer=act_layer, drop_path=drop_path) for _ in range(depth)]
        else:
            blocks += [ResidualBlock(build_local_block(out_chs, out_chs, 1, local_expand, norm_layer, act_layer,
                                                       fewer_norm=large and fewer_norm, block_type=block_type),
                                     nn.Identity(), drop_path) for _ in range(local_count)]
        self.blocks = nn.Sequential(*blocks)


class ClassifierHead(nn.Module):
    """1x1 conv, pooling, then linear, LayerNorm, activation, dropout, linear (timm/official)."""

    def __init__(self, in_channels: int, widths: Sequence[int], num_classes: int = 1000, dropout: float = 0.0,
                 norm_layer: Any = nn.BatchNorm2d, act_layer: Type[nn.Module] = nn.Hardswish,
                 pool_type: str = "avg", norm_eps: float = 1e-5) -> None:
        super().__init__()
        if not pool_type:
            raise ValueError("pool_type must name a pooling ('avg', 'max', ...): this head cannot run unpooled")
        self.num_features = widths[-1]
        self.in_conv = ConvNormAct(in_channels, widths[0], 1, norm_layer=norm_layer, act_layer=act_layer)
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=True)
        self.classifier = nn.Sequential(
            nn.Linear(widths[0], widths[1], bias=False),
            nn.LayerNorm(widths[1], eps=norm_eps),
            act_layer(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(widths[1], num_classes) if num_classes > 0 else nn.Identity(),
        )

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.in_conv(x))
        # linear, norm, activation, dropout (written out: TorchScript cannot call a slice of a Sequential)
        x = self.classifier[3](self.classifier[2](self.classifier[1](self.classifier[0](x))))
        return x if pre_logits else self.classifier[4](x)


class EfficientVitMit(StageHooks, nn.Module):
    """EfficientViT-B (``large=False``) / -L (``large=True``) classifier and backbone: a stride-2 stem and four
    stages at strides 4, 8, 16, 32, LiteMLA in the last two (B) or the last one (L).

    Args:
        widths, depths: stem then per-stage widths and depths (five entries each).
        head_dim: per-head width of the linear attention.
        head_widths: widths of the classifier head's 1x1 conv and hidden linear.
        act_layer / norm_eps: defaults per series (B: hard-swish, 1e-5; L: tanh-GELU, 1e-7).
    """

    map_layout: ClassVar[MapLayout] = "NCHW"  # layout of the stage maps and of forward_features


    def __init__(
        self,
        in_chans: int = 3,
        widths: Sequence[int] = (),
        depths: Sequence[int] = (),
        head_dim: int = 32,
        expand_ratio: float = 4,
        large: bool = False,
        act_layer: Optional[Type[nn.Module]] = None,
        norm_eps: Optional[float] = None,
        global_pool: str = "avg",
        head_widths: Sequence[int] = (),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError(f"widths and depths need 5 entries (stem + 4 stages), got {widths} and {depths}")
        if len(head_widths) != 2:
            raise ValueError(f"head_widths needs 2 entries (head conv, hidden linear), got {head_widths}")
        self.large = large
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        act_layer = act_layer or (GELUTanh if large else nn.Hardswish)
        self.norm_eps = norm_eps if norm_eps is not None else (1e-7 if large else 1e-5)
        eps = self.norm_eps

        def norm_layer(channels: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(channels, eps=eps)

        self.stem = Stem(in_chans, widths[0], depths[0], norm_layer, act_layer,
                         block_type="large" if large else "default", drop_path=drop_path_rate)
        stride = 2
        self.feature_info = []
        stages = []
        in_channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths[1:], depths[1:])):
            stages.append(EfficientVitStage(
                in_channels, width, depth, norm_layer, act_layer, head_dim,
                vit_stage=index >= (3 if large else 2), large=large, fewer_norm=large and index >= 2,
                expand_ratio=expand_ratio, drop_path=drop_path_rate))
            stride *= 2
            in_channels = width
            self.feature_info.append(dict(num_chs=width, reduction=stride, module=f"stages.{index}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.num_features = in_channels
        self.head_widths = tuple(head_widths)
        self._head_act = act_layer
        self.head = self._make_head(num_classes, global_pool)
        self.head_hidden_size = self.head.num_features

    def _make_head(self, num_classes: int, global_pool: str) -> ClassifierHead:
        # The head's BatchNorm keeps PyTorch's eps in both series (timm and official); only its LayerNorm takes
        # the series' norm_eps.
        return ClassifierHead(self.num_features, self.head_widths, num_classes, self.drop_rate,
                              act_layer=self._head_act, pool_type=global_pool, norm_eps=self.norm_eps)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last maps take oneDNN's faster NHWC conv kernels on CPU; the attention's heads-last view is free.
        memory_format = torch.channels_last
        if not torch.jit.is_scripting():  # NCHW (the twin's layout) where it measures faster on this CPU
            memory_format = input_format(self, x, self.forward_features)
        return self.stem(x.contiguous(memory_format=memory_format))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer-wise LR decay groups: ``stem``, then per stage its downsample and each block, ``norm`` last."""
        return stage_group_matcher(coarse, stem="stem", stages="stages", stage_preamble=("downsample",))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Nothing is exempt from weight decay (no position biases)."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.classifier[-1]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier with ``num_classes`` outputs (0: pre-logits features). ``global_pool=""`` (timm's "no
        pooling", used when pruning for features) drops the whole head: ``forward_head`` then returns the map."""
        self.num_classes = num_classes
        if global_pool == "":
            self.global_pool = ""
            self.head = nn.Identity()
            self.head_hidden_size = self.num_features
            return
        if global_pool is not None:
            self.global_pool = global_pool
        if isinstance(self.head, ClassifierHead):
            self.head.classifier[-1] = placed_like(nn.Linear(self.head_widths[1], num_classes) if num_classes > 0
                                                   else nn.Identity(), self)
            if global_pool is not None:
                self.head.global_pool = placed_like(SelectAdaptivePool2d(pool_type=global_pool, flatten=True), self)
        else:
            self.head = placed_like(self._make_head(num_classes, self.global_pool), self)
        self.head_hidden_size = self.head.num_features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if isinstance(self.head, nn.Identity):
            return x
        return self.head(x, pre_logits=pre_logits)

    def fuse(self) -> "EfficientVitMit":
        """Fold every BatchNorm into its conv (eval mode, in place) for faster inference; returns ``self``."""
        return fuse_batchnorms(self)


# --- checkpoint conversion ----------------------------------------------------------------------------------------

def _from_official(state_dict: Dict[str, torch.Tensor], large: bool) -> Dict[str, torch.Tensor]:
    """mit-han-lab/efficientvit: ``backbone.input_stem`` (B) or ``backbone.stages.0`` (L) as the stem,
    ``backbone.stages.N.op_list.M`` blocks, ``head.op_list.{0,2,3}``."""
    head_map = {"head.op_list.0.": "head.in_conv.", "head.op_list.2.linear.": "head.classifier.0.",
                "head.op_list.2.norm.": "head.classifier.1.", "head.op_list.3.linear.": "head.classifier.4."}
    out = {}
    for key, value in state_dict.items():
        new = key
        for old_prefix, new_prefix in head_map.items():
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix):]
        stem = re.match(r"^backbone\.input_stem\.op_list\.(\d+)\.(.+)$", key)
        if large:
            stem = stem or re.match(r"^backbone\.stages\.0\.op_list\.(\d+)\.(.+)$", key)
        if stem:
            index = int(stem.group(1))
            new = f"stem.{'in_conv' if index == 0 else f'res{index - 1}'}.{stem.group(2)}"
        else:
            stage = re.match(r"^backbone\.stages\.(\d+)\.op_list\.(\d+)\.(.+)$", key)
            if stage:
                new = f"stages.{int(stage.group(1)) - (1 if large else 0)}.blocks.{stage.group(2)}.{stage.group(3)}"
        out[new] = value
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: EfficientVitMit) -> Dict[str, torch.Tensor]:
    """Convert timm ``efficientvit_b*/l*`` (passes through, as does ours) or official MIT state dicts."""
    for wrapper in ("state_dict", "model"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    if any(key.startswith("backbone.") for key in state_dict):
        state_dict = _from_official(state_dict, model.large)
    return state_dict


# --- registration -------------------------------------------------------------------------------------------------

def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    return build_hierarchical(EfficientVitMit, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(tag: str, size: int = 224, crop_pct: float = 0.95, **kwargs: Any) -> Dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, size, size),
        "pool_size": (size // 32, size // 32),
        "crop_pct": crop_pct,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.in_conv.conv",
        "classifier": "head.classifier.4",
        "license": "apache-2.0",
        "origin_url": "https://github.com/mit-han-lab/efficientvit",
        "paper_ids": "arXiv:2205.14756",
        "hf_hub_id": f"timm/{tag}",
        **kwargs,
    }


def _cfgs() -> Dict[str, Dict[str, Any]]:
    sizes = {"b0": (224,), "b1": (224, 256, 288), "b2": (224, 256, 288), "b3": (224, 256, 288),
             "l1": (224,), "l2": (224, 256, 288, 384), "l3": (224, 256, 320, 384)}
    cfgs = {}
    for name, resolutions in sizes.items():
        for size in resolutions:
            crop = 1.0 if name.startswith("l") or size > 224 else 0.95
            cfgs[f"vh_efficientvit_{name}.r{size}_in1k"] = _cfg(f"efficientvit_{name}.r{size}_in1k", size, crop)
    return cfgs


default_cfgs = generate_default_cfgs(_cfgs())

_ARCHS: Dict[str, Dict[str, Any]] = {
    "b0": dict(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16, head_widths=(1024, 1280)),
    "b1": dict(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16, head_widths=(1536, 1600)),
    "b2": dict(widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32, head_widths=(2304, 2560)),
    "b3": dict(widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32, head_widths=(2304, 2560)),
    "l1": dict(widths=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 6), head_widths=(3072, 3200), large=True),
    "l2": dict(widths=(32, 64, 128, 256, 512), depths=(1, 2, 2, 8, 8), head_widths=(3072, 3200), large=True),
    "l3": dict(widths=(64, 128, 256, 512, 1024), depths=(1, 2, 2, 8, 8), head_widths=(6144, 6400), large=True),
}

@register_model
def vh_efficientvit_b0(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-B0: 3.4M params."""
    return _create("vh_efficientvit_b0", pretrained, **dict(_ARCHS["b0"], **kwargs))


@register_model
def vh_efficientvit_b1(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-B1: 9.1M params."""
    return _create("vh_efficientvit_b1", pretrained, **dict(_ARCHS["b1"], **kwargs))


@register_model
def vh_efficientvit_b2(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-B2: 24.3M params."""
    return _create("vh_efficientvit_b2", pretrained, **dict(_ARCHS["b2"], **kwargs))


@register_model
def vh_efficientvit_b3(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-B3: 48.7M params."""
    return _create("vh_efficientvit_b3", pretrained, **dict(_ARCHS["b3"], **kwargs))


@register_model
def vh_efficientvit_l1(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-L1: 52.7M params."""
    return _create("vh_efficientvit_l1", pretrained, **dict(_ARCHS["l1"], **kwargs))


@register_model
def vh_efficientvit_l2(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-L2: 63.7M params."""
    return _create("vh_efficientvit_l2", pretrained, **dict(_ARCHS["l2"], **kwargs))


@register_model
def vh_efficientvit_l3(pretrained: bool = False, **kwargs: Any) -> EfficientVitMit:
    """EfficientViT-L3: 246.0M params."""
    return _create("vh_efficientvit_l3", pretrained, **dict(_ARCHS["l3"], **kwargs))
