"""Semantic segmentation over any timm backbone: UPerNet (pyramid pooling + FPN fusion, auxiliary FCN head) and a
light Semantic-FPN head, in one :class:`Segmentor` with whole-image, sliding-window and multi-scale + flip
inference."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from timm.layers import ConvNormAct
from torch import nn

from ..backbone import LevelFeatures

HEADS = ("upernet", "fpn")
INFERENCE_MODES = ("whole", "slide")
# Families whose official segmentation results use a light head rather than UPerNet.
LIGHT_HEAD_PREFIXES = ("vh_efficientvit_b", "vh_efficientvit_l", "vh_levit", "vh_efficientvit_m", "efficientvit",
                       "levit")


def default_head(backbone: str) -> str:
    """``"fpn"`` for the small backbones whose official results use a light head (EfficientViT, LeViT), else
    ``"upernet"``."""
    return "fpn" if backbone.startswith(LIGHT_HEAD_PREFIXES) else "upernet"


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pooling module: the map average-pooled to each of ``scales``, projected, upsampled and concatenated
    with the map itself."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.stages = nn.ModuleList(ConvNormAct(in_channels, channels, 1) for _ in self.scales)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        size = x.shape[-2:]
        return [x] + [_resize(stage(F.adaptive_avg_pool2d(x, scale)), size)
                      for scale, stage in zip(self.scales, self.stages)]


class UPerHead(nn.Module):
    """UPerNet's decoder: pyramid pooling on the coarsest level, top-down FPN fusion of the others, every level
    upsampled to the finest and fused by a 3×3 convolution, then a 1×1 classifier (after dropout)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral = nn.ModuleList(ConvNormAct(width, channels, 1) for width in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        merged = [lateral(level) for lateral, level in zip(self.lateral, levels)]
        merged.append(self.ppm_bottleneck(torch.cat(self.ppm(levels[-1]), dim=1)))
        for index in range(len(merged) - 1, 0, -1):  # top-down: each level adds the upsampled coarser one
            merged[index - 1] = merged[index - 1] + _resize(merged[index], merged[index - 1].shape[-2:])
        outputs = [conv(level) for conv, level in zip(self.fpn, merged[:-1])] + [merged[-1]]
        size = outputs[0].shape[-2:]
        fused = self.fuse(torch.cat([outputs[0]] + [_resize(level, size) for level in outputs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head of the official UPerNet configs: ``num_convs`` 3×3 convolutions on one level, dropout,
    a 1×1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers = [ConvNormAct(in_channels if index == 0 else channels, channels, 3, padding=1)
                  for index in range(num_convs)]
        self.convs = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.convs(level)))


class SemanticFPNHead(nn.Module):
    """Semantic FPN (Kirillov et al.): an FPN over the levels, then per level as many 3×3 convolutions (each
    followed by a 2× upsampling, but on the finest level) as it takes to reach the finest level's stride; the sum
    goes through a 1×1 classifier."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int, fpn_channels: int = 256,
                 channels: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(width, fpn_channels, 1) for width in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in in_channels)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            steps = max(1, int(round(math.log2(stride / strides[0]))))
            layers: List[nn.Module] = []
            for step in range(steps):
                layers.append(ConvNormAct(fpn_channels if step == 0 else channels, channels, 3, padding=1))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        merged = [lateral(level) for lateral, level in zip(self.lateral, levels)]
        for index in range(len(merged) - 1, 0, -1):
            merged[index - 1] = merged[index - 1] + _resize(merged[index], merged[index - 1].shape[-2:])
        size = merged[0].shape[-2:]
        summed = None
        for smooth, head, level in zip(self.smooth, self.scale_heads, merged):
            out = head(smooth(level))
            out = out if out.shape[-2:] == size else _resize(out, size)
            summed = out if summed is None else summed + out
        return self.classifier(self.dropout(summed))


class Segmentor(nn.Module):
    """A timm backbone (:class:`~vithub.detection.backbone.LevelFeatures`: NCHW levels, a norm on each), a decode
    head and, for training, an auxiliary FCN head on the third level.

    Images go in as ``(B, 3, H, W)`` floats in [0, 1] of any size (normalised here with the backbone's pretrained
    mean/std); ``forward`` returns ``{"out": logits}`` at the input's size, plus ``"aux"`` in training mode when
    there is an auxiliary head (torchvision's segmentation convention). :meth:`predict` adds sliding-window and
    multi-scale + flip inference."""

    def __init__(self, backbone: LevelFeatures, head: nn.Module, aux_head: Optional[nn.Module], aux_level: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = head
        self.aux_head = aux_head
        self.aux_level = aux_level
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.segmentor_config: Dict[str, Any] = {}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        size = images.shape[-2:]
        levels = self.backbone((images - self.mean) / self.std)
        # Levels cover the input padded to the largest stride: upsample to the padded size, then crop.
        stride = self.backbone.reductions[0]
        full = (levels[0].shape[-2] * stride, levels[0].shape[-1] * stride)
        outputs = {"out": _resize(self.decode_head(levels), full)[..., :size[0], :size[1]]}
        if self.training and self.aux_head is not None:
            outputs["aux"] = _resize(self.aux_head(levels[self.aux_level]), full)[..., :size[0], :size[1]]
        return outputs

    @torch.no_grad()
    def predict(self, images: torch.Tensor, mode: str = "whole", crop_size: Optional[int] = None,
                stride: Optional[int] = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Class probabilities ``(B, classes, h, w)`` at ``out_size`` (default the input's): the mean over
        ``scales`` (each a resize of the input) and, with ``flip``, horizontal flips, of the softmax of
        whole-image or sliding-window logits (``crop_size`` windows every ``stride`` pixels, overlaps
        averaged)."""
        if mode not in INFERENCE_MODES:
            raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")
        if not scales or any(scale <= 0 for scale in scales):
            raise ValueError(f"scales must be positive factors, got {list(scales)}")
        height, width = images.shape[-2:]
        out_size = tuple(out_size or (height, width))
        total = None
        for scale in scales:
            scaled = images if scale == 1.0 else _resize(images, (max(1, round(height * scale)),
                                                                  max(1, round(width * scale))))
            for flipped in ((False, True) if flip else (False,)):
                batch = scaled.flip(-1) if flipped else scaled
                logits = (self.slide_logits(batch, crop_size, stride) if mode == "slide"
                          else self(batch)["out"])
                if flipped:
                    logits = logits.flip(-1)
                probabilities = _resize(logits, out_size).softmax(dim=1)
                total = probabilities if total is None else total + probabilities
        return total / (len(scales) * (2 if flip else 1))

    def slide_logits(self, images: torch.Tensor, crop_size: Optional[int], stride: Optional[int]) -> torch.Tensor:
        """Logits of overlapping ``crop_size`` windows placed every ``stride`` pixels (the last flush with the
        border), averaged where they overlap; an image side smaller than the window takes one window."""
        if not crop_size or crop_size < 1:
            raise ValueError(f"crop_size must be a positive window side for sliding-window inference, got {crop_size}")
        stride = stride or max(1, crop_size * 2 // 3)
        if not 0 < stride <= crop_size:
            raise ValueError(f"stride must be in [1, crop_size={crop_size}], got {stride}")
        height, width = images.shape[-2:]
        rows = max(height - crop_size + stride - 1, 0) // stride + 1
        cols = max(width - crop_size + stride - 1, 0) // stride + 1
        summed = count = None
        for row in range(rows):
            for col in range(cols):
                bottom, right = min(row * stride + crop_size, height), min(col * stride + crop_size, width)
                top, left = max(bottom - crop_size, 0), max(right - crop_size, 0)
                logits = self(images[..., top:bottom, left:right])["out"]
                if summed is None:
                    summed = logits.new_zeros(logits.shape[0], logits.shape[1], height, width)
                    count = logits.new_zeros(1, 1, height, width)
                summed[..., top:bottom, left:right] += logits
                count[..., top:bottom, left:right] += 1
        return summed / count


def create_segmentor(backbone: str, num_classes: int, head: Optional[str] = None, pretrained_backbone: bool = False,
                     out_indices: Optional[Sequence[int]] = None, head_channels: Optional[int] = None,
                     aux_head: bool = True, aux_channels: int = 256, frozen_stages: int = -1,
                     level_norm: bool = True, dropout: float = 0.1,
                     backbone_kwargs: Optional[Dict[str, Any]] = None) -> Segmentor:
    """A :class:`Segmentor` over a timm backbone.

    Args:
        backbone: any timm model name with ``features_only`` (ours ``vh_*`` or timm's).
        num_classes: classes predicted (labels ``0..num_classes-1``; 255 is ignored).
        head: ``"upernet"`` (UPerNet, 512 channels) or ``"fpn"`` (Semantic FPN, 256/128 channels); default by
            backbone (:func:`default_head`).
        out_indices: backbone levels used (default all).
        head_channels: channels of the decoder (UPerNet's 512; Semantic FPN's 128 per scale head, with an FPN twice
            as wide).
        aux_head: with UPerNet, the official auxiliary FCN head on the third used level (weighted in the loss).
        frozen_stages, level_norm: see :class:`~vithub.detection.backbone.LevelFeatures`.
        backbone_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    head = head or default_head(backbone)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    settings = {"backbone": backbone, "num_classes": num_classes, "head": head,
                "out_indices": list(out_indices) if out_indices is not None else None,
                "head_channels": head_channels, "aux_head": aux_head, "aux_channels": aux_channels,
                "frozen_stages": frozen_stages, "level_norm": level_norm, "dropout": dropout,
                "backbone_kwargs": dict(backbone_kwargs or {})}
    features = LevelFeatures(backbone, out_indices, frozen_stages, level_norm, pretrained_backbone,
                             **(backbone_kwargs or {}))
    channels, strides = features.in_channels, features.reductions
    if head == "upernet":
        decoder: nn.Module = UPerHead(channels, num_classes, head_channels or 512, dropout=dropout)
    else:
        width = head_channels or 128
        decoder = SemanticFPNHead(channels, strides, num_classes, fpn_channels=2 * width, channels=width,
                                  dropout=dropout)
    aux_level = min(2, len(channels) - 1)
    auxiliary = (FCNHead(channels[aux_level], num_classes, aux_channels, dropout=dropout)
                 if aux_head and head == "upernet" else None)
    body = getattr(features.body, "model", features.body)
    data_config = resolve_data_config({}, model=body)
    model = Segmentor(features, decoder, auxiliary, aux_level, data_config["mean"], data_config["std"])
    model.segmentor_config = settings
    return model


def segmentor_from_config(settings: Dict[str, Any], **overrides: Any) -> Segmentor:
    """A :class:`Segmentor` rebuilt from its ``segmentor_config`` (as saved next to its weights)."""
    return create_segmentor(**{**settings, **overrides})
