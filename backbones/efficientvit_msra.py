"""EfficientViT-M (Liu et al., 2023, "Memory Efficient Vision Transformer with Cascaded Group Attention") on vithub's
shared kernel layer.

Module names and parameter shapes are timm's ``efficientvit_m*``, so timm's Hub weights load as they are and give
timm's outputs. Differences from timm:

* any input size, square or not: each attention runs in windows of ``min(window, H) x min(window, W)`` (the map
  zero-padded to a window multiple, as timm and the official code pad), and a bias table trained for another window
  is resized (bicubic, antialiased, as timm's ``set_input_size`` resizes it) to the window in use; at the trained
  size nothing changes;
* each head's attention runs through :func:`vithub.kernels.table_bias_attention`;
* :meth:`EfficientVitMsra.fuse` folds every BatchNorm into the adjacent conv/linear for inference.

``checkpoint_filter_fn`` also converts the official microsoft/Cream layout.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SelectAdaptivePool2d, SqueezeExcite, to_2tuple
from timm.models import generate_default_cfgs, register_model, register_notrace_module

from vithub.kernels import table_bias_attention

from ._common import (
    placed_like,
    BiasTableMixin,
    FusableConvNorm,
    NormLinear,
    SequentialStage,
    MapLayout,
    StageHooks,
    adapt_bias_tables,
    add_residual_,
    build_hierarchical,
    conv2d,
    fuse_batchnorms,
    parameter_names,
    stage_group_matcher,
)
from ._cpu_paths import input_format

__all__ = ["CascadedGroupAttention", "EfficientVitMsra", "LocalWindowAttention", "checkpoint_filter_fn"]


class ConvNorm(FusableConvNorm):
    """Conv (no bias) + BatchNorm2d; timm names ``conv`` and ``bn``."""

    CONV = "conv"

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.conv = conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def separate(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ResidualDrop(nn.Module):
    """``x + m(x)``, dropping the branch per sample with probability ``drop`` in training (official ``Residual``)."""

    def __init__(self, m: nn.Module, drop: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop > 0:
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device).ge_(self.drop).div_(1 - self.drop)
            return add_residual_(self.m(x) * keep, x)
        return add_residual_(self.m(x), x)


class ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvNorm(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class PatchMerging(nn.Module):
    """Inverted-residual downsampling: 1x1 expand (4x), 3x3 depthwise stride 2, squeeze-excite, 1x1 project."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = dim * 4
        self.conv1 = ConvNorm(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = ConvNorm(hidden, hidden, 3, 2, 1, groups=hidden)
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = ConvNorm(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


def heads_last(x: torch.Tensor) -> torch.Tensor:
    """An NCHW map as the one-head ``(B, H, W, 1, C)`` view the attention op takes (strides as they are).

    A view and one permute, no unsqueeze: in an ONNX export the permute meets its inverse in the op's export form
    and both go, and the view merges with the form's reshape.
    """
    return x.unflatten(0, [x.shape[0], 1]).permute(0, 3, 4, 1, 2)


class CascadedGroupAttention(BiasTableMixin, nn.Module):
    """Cascaded group attention on one window (or a batch of windows, ``(B, C, wh, ww)``).

    Head ``i`` sees channel group ``i`` plus the output of head ``i-1``; its query passes a depthwise conv; logits get
    the head's row of the ``(|dy|, |dx|)`` bias table, trained for ``resolution x resolution`` windows.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0, resolution: int = 7,
                 kernels: Sequence[int] = (5, 5, 5, 5)) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.qkvs = nn.ModuleList([ConvNorm(dim // num_heads, 2 * key_dim + self.val_dim) for _ in range(num_heads)])
        self.dws = nn.ModuleList([ConvNorm(key_dim, key_dim, kernels[i], 1, kernels[i] // 2, groups=key_dim)
                                  for i in range(num_heads)])
        self.proj = nn.Sequential(nn.ReLU(inplace=True), ConvNorm(self.val_dim * num_heads, dim, bn_weight_init=0.0))
        self._init_table(num_heads, (resolution, resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.forward_heads(x))

    def forward_heads(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs concatenated along channels, as an NCHW map: the attention before its projection."""
        batch, _, height, width = x.shape
        bias = self.gathered_bias((height, width), (height, width), 1)
        groups = x.chunk(self.num_heads, dim=1)
        outputs = []
        feature = groups[0]
        for index, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if index > 0:
                feature = feature + groups[index]
            q, k, v = qkv(feature).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            # The table stays fp32 under autocast; the op takes it in the activations' dtype (a no-op in fp32).
            out = table_bias_attention(heads_last(dw(q)), heads_last(k), heads_last(v),
                                       gathered_bias=bias[index:index + 1].to(q.dtype))
            feature, kept = self._head_output(out, batch, height, width)
            outputs.append(kept)
        return self._concat_heads(outputs)

    def _head_output(self, out: torch.Tensor, batch: int, height: int, width: int
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """A head's ``(B, H, W, 1, C)`` output as the next head's NCHW input and as what :meth:`_concat_heads`
        joins: channels-last (an ONNX export keeps NCHW maps instead, :mod:`vithub.export_forms`)."""
        kept = out.reshape(batch, height, width, -1)
        return kept.permute(0, 3, 1, 2), kept

    def _concat_heads(self, outputs: List[torch.Tensor]) -> torch.Tensor:
        """Concatenated channels-last, since a channel concat of the NCHW views makes an NCHW map at batch 1 and
        everything after it would leave the channels-last kernels."""
        return torch.cat(list(outputs), dim=-1).permute(0, 3, 1, 2)


@register_notrace_module
class LocalWindowAttention(nn.Module):
    """Cascaded group attention inside non-overlapping windows of ``min(window, H) x min(window, W)``; a map that is
    not a window multiple is zero-padded at the bottom/right (the padding takes part as keys, as in timm and the
    official code) and cropped after. (An ONNX export cuts the NCHW map and projects once after stitching:
    :mod:`vithub.export_forms`.)"""

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0, resolution: int = 14,
                 window_resolution: int = 7, kernels: Sequence[int] = (5, 5, 5, 5)) -> None:
        super().__init__()
        if window_resolution < 1:
            raise ValueError(f"window_resolution must be >= 1, got {window_resolution}")
        self.window_resolution = window_resolution
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, attn_ratio, min(window_resolution, resolution),
                                           kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        wh, ww = min(self.window_resolution, height), min(self.window_resolution, width)
        if (height, width) == (wh, ww):
            return self.attn(x)
        return self._windowed(x, wh, ww)

    def _windowed(self, x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
        """The attention on each ``wh x ww`` window of the zero-padded map, cropped back."""
        batch, channels, height, width = x.shape
        pad_b, pad_r = (-height) % wh, (-width) % ww
        # Windows are cut and stitched in the channels-last view, so a channels-last map (the model's layout) stays
        # channels-last: its 1x1 convs keep their matmul path and its depthwise convs oneDNN's NHWC kernels.
        x = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pad_r, 0, pad_b))
        rows, cols = (height + pad_b) // wh, (width + pad_r) // ww
        x = x.reshape(batch, rows, wh, cols, ww, channels).transpose(2, 3).reshape(batch * rows * cols, wh, ww,
                                                                                   channels)
        x = self.attn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x.reshape(batch, rows, cols, wh, ww, channels).transpose(2, 3).reshape(batch, rows * wh, cols * ww,
                                                                                   channels)
        return x[:, :height, :width].permute(0, 3, 1, 2)


class EfficientVitBlock(nn.Module):
    """Depthwise conv and FFN, window attention, depthwise conv and FFN, each residual ("sandwich" layout)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 window_resolution: int, kernels: Sequence[int], drop_path: float = 0.0) -> None:
        super().__init__()
        self.dw0 = ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0), drop_path)
        self.ffn0 = ResidualDrop(ConvMlp(dim, dim * 2), drop_path)
        self.mixer = ResidualDrop(LocalWindowAttention(dim, key_dim, num_heads, attn_ratio, resolution,
                                                       window_resolution, kernels), drop_path)
        self.dw1 = ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0), drop_path)
        self.ffn1 = ResidualDrop(ConvMlp(dim, dim * 2), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


def _local_residuals(dim: int, drop_path: float) -> nn.Sequential:
    return nn.Sequential(ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim), drop_path),
                         ResidualDrop(ConvMlp(dim, dim * 2), drop_path))


class EfficientVitStage(SequentialStage):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, downsample: bool, num_heads: int,
                 attn_ratio: float, resolution: int, window_resolution: int, kernels: Sequence[int], depth: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(OrderedDict([
                ("res1", _local_residuals(in_dim, drop_path)),
                ("patchmerge", PatchMerging(in_dim, out_dim)),
                ("res2", _local_residuals(out_dim, drop_path)),
            ]))
            resolution = (resolution - 1) // 2 + 1
        else:
            if in_dim != out_dim:
                raise ValueError(f"a stage without downsampling keeps its width: in_dim {in_dim} != out_dim {out_dim}")
            self.downsample = nn.Identity()
        self.resolution = resolution
        self.blocks = nn.Sequential(*[
            EfficientVitBlock(out_dim, key_dim, num_heads, attn_ratio, resolution, window_resolution, kernels,
                              drop_path)
            for _ in range(depth)
        ])


class PatchEmbedding(nn.Sequential):
    """Four stride-2 3x3 ConvNorms with ReLUs between them (image to 1/16)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        for index in range(4):
            self.add_module(f"conv{index + 1}", ConvNorm(widths[index], widths[index + 1], 3, 2, 1))
            if index < 3:
                self.add_module(f"relu{index + 1}", nn.ReLU(inplace=True))


class EfficientVitMsra(StageHooks, nn.Module):
    """EfficientViT-M classifier and backbone (three stages at strides 16, 32, 64).

    Args:
        img_size: the size the attention windows and bias tables are built for (the smaller side sets each stage's
            trained window, as in timm); any other input size works.
        embed_dim, key_dim, depth, num_heads, window_size, kernels: the official architecture arguments.
        drop_path_rate: per-sample residual drop (the official ``Residual(drop)``), the same in every block.
    """

    map_layout: ClassVar[MapLayout] = "NCHW"  # layout of the stage maps and of forward_features


    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (64, 128, 192),
        key_dim: Sequence[int] = (16, 16, 16),
        depth: Sequence[int] = (1, 2, 3),
        num_heads: Sequence[int] = (4, 4, 4),
        window_size: Sequence[int] = (7, 7, 7),
        kernels: Sequence[int] = (5, 5, 5, 5),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(embed_dim) == len(key_dim) == len(depth) == len(num_heads) == len(window_size)):
            raise ValueError("embed_dim, key_dim, depth, num_heads and window_size need one entry per stage")
        if not global_pool and num_classes > 0:
            raise ValueError("global_pool must be set when there is a classifier (num_classes > 0)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.patch_embed = PatchEmbedding(in_chans, embed_dim[0])
        resolution = min(to_2tuple(img_size)) // 16
        stride = 16
        self.feature_info = []
        stages = []
        in_dim = embed_dim[0]
        for index, dim in enumerate(embed_dim):
            attn_ratio = dim / (key_dim[index] * num_heads[index])
            stage = EfficientVitStage(in_dim, dim, key_dim[index], index > 0, num_heads[index], attn_ratio,
                                      resolution, window_size[index], kernels, depth[index], drop_path_rate)
            stages.append(stage)
            resolution = stage.resolution
            if index > 0:
                stride *= 2
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{index}"))
            in_dim = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.num_features = embed_dim[-1]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return NormLinear(self.head_hidden_size, num_classes, drop=self.drop_rate)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last maps run the many small convs through oneDNN's faster NHWC kernels on CPU; every layer keeps
        # the format, and the window attention's NCHW-to-heads-last permutes become nearly free.
        memory_format = torch.channels_last
        if not torch.jit.is_scripting():  # NCHW (the twin's layout) where it measures faster on this CPU
            memory_format = input_format(self, x, self.forward_features)
        return self.patch_embed(x.contiguous(memory_format=memory_format))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer-wise LR decay groups: ``patch_embed``, then per stage its downsample and each block, ``norm`` last."""
        return stage_group_matcher(coarse, stem="patch_embed", stages="stages", stage_preamble=("downsample",))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The attention bias tables are not weight-decayed."""
        return parameter_names(self, "attention_biases")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.linear if isinstance(self.head, NormLinear) else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        if num_classes > 0 and not self.global_pool.pool_type:
            raise ValueError("global_pool must be set when there is a classifier (num_classes > 0)")
        self.num_classes = num_classes
        self.head = placed_like(self._make_head(num_classes), self)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.head(x)

    def fuse(self) -> "EfficientVitMsra":
        """Fold every BatchNorm into its conv/linear (eval mode, in place) for faster inference; returns ``self``."""
        return fuse_batchnorms(self)


# --- checkpoint conversion ----------------------------------------------------------------------------------------

def _from_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """microsoft/Cream: ``patch_embed.{0,2,4,6}``, ``blocks{1,2,3}`` (a stage's downsampling as its first three
    entries), ``c``/``l`` for conv/linear."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attention_bias_idxs"):
            continue
        key = re.sub(r"\.c\.(weight|bias)$", r".conv.\1", key)
        key = re.sub(r"^head\.l\.", "head.linear.", key)
        match = re.match(r"^patch_embed\.(\d+)\.(.+)$", key)
        if match:
            key = f"patch_embed.conv{int(match.group(1)) // 2 + 1}.{match.group(2)}"
        match = re.match(r"^blocks(\d+)\.(\d+)\.(.+)$", key)
        if match:
            stage, index, rest = int(match.group(1)) - 1, int(match.group(2)), match.group(3)
            if stage == 0:
                key = f"stages.0.blocks.{index}.{rest}"
            elif index < 3:
                key = f"stages.{stage}.downsample.{('res1', 'patchmerge', 'res2')[index]}.{rest}"
            else:
                key = f"stages.{stage}.blocks.{index - 3}.{rest}"
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: EfficientVitMsra) -> Dict[str, torch.Tensor]:
    """Convert timm ``efficientvit_m*`` or official Cream state dicts to this layout (ours passes through); bias
    tables trained for another window are resized to this model's."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    if any(key.startswith("blocks1.") for key in state_dict):
        state_dict = _from_official(state_dict)
    return adapt_bias_tables(state_dict, model)


# --- registration -------------------------------------------------------------------------------------------------

def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    kwargs.setdefault("out_indices", (0, 1, 2))
    return build_hierarchical(EfficientVitMsra, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (4, 4),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1.conv",
        "classifier": "head.linear",
        "license": "mit",
        "origin_url": "https://github.com/microsoft/Cream/tree/main/EfficientViT",
        "paper_ids": "arXiv:2305.07027",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    f"vh_efficientvit_m{index}.r224_in1k": _cfg(hf_hub_id=f"timm/efficientvit_m{index}.r224_in1k")
    for index in range(6)
})

_ARCHS: List[Dict[str, Any]] = [
    dict(embed_dim=(64, 128, 192), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(5, 5, 5, 5)),
    dict(embed_dim=(128, 144, 192), depth=(1, 2, 3), num_heads=(2, 3, 3), kernels=(7, 5, 3, 3)),
    dict(embed_dim=(128, 192, 224), depth=(1, 2, 3), num_heads=(4, 3, 2), kernels=(7, 5, 3, 3)),
    dict(embed_dim=(128, 240, 320), depth=(1, 2, 3), num_heads=(4, 3, 4), kernels=(5, 5, 5, 5)),
    dict(embed_dim=(128, 256, 384), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(7, 5, 3, 3)),
    dict(embed_dim=(192, 288, 384), depth=(1, 3, 4), num_heads=(3, 3, 4), kernels=(7, 5, 3, 3)),
]


@register_model
def vh_efficientvit_m0(pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    """EfficientViT-M0: 2.4M params."""
    return _create("vh_efficientvit_m0", pretrained, **dict(_ARCHS[0], **kwargs))


@register_model
def vh_efficientvit_m1(pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    """EfficientViT-M1: 3.0M params."""
    return _create("vh_efficientvit_m1", pretrained, **dict(_ARCHS[1], **kwargs))


@register_model
def vh_efficientvit_m2(pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    """EfficientViT-M2: 4.2M params."""
    return _create("vh_efficientvit_m2", pretrained, **dict(_ARCHS[2], **kwargs))


@register_model
def vh_efficientvit_m3(pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    """EfficientViT-M3: 6.9M params."""
    return _create("vh_efficientvit_m3", pretrained, **dict(_ARCHS[3], **kwargs))


@register_model
def vh_efficientvit_m4(pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    """EfficientViT-M4: 8.8M params."""
    return _create("vh_efficientvit_m4", pretrained, **dict(_ARCHS[4], **kwargs))


@register_model
def vh_efficientvit_m5(pretrained: bool = False, **kwargs: Any) -> EfficientVitMsra:
    """EfficientViT-M5: 12.5M params."""
    return _create("vh_efficientvit_m5", pretrained, **dict(_ARCHS[5], **kwargs))
