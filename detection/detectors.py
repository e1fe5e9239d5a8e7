"""torchvision's Mask R-CNN, Faster R-CNN, RetinaNet and FCOS over any timm backbone, built by one factory."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

from timm.data import resolve_data_config
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from .backbone import FeaturePyramidBackbone, anchor_sizes, check_strides

DETECTORS = ("mask_rcnn", "faster_rcnn", "retinanet", "fcos")
# Each detector's pyramid: the two-stage ones add a max-pooled level (as torchvision's and mmdet's Mask R-CNN),
# the one-stage ones P6/P7 from strided convolutions.
EXTRA_LEVELS = {"mask_rcnn": "pool", "faster_rcnn": "pool", "retinanet": "p6p7", "fcos": "p6p7"}
# The short side of the official recipes' scale (800/1333: the long side is at most 5/3 of it).
DEFAULT_SHORT_SIDE = 800
LONG_SIDE_RATIO = 5 / 3


class StridedRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with each level's scale set from the backbone's known stride.

    The stock module infers the scales on its first call from feature size / image size, rounded to a power of two,
    and keeps them: with padding to a large size divisor (128 for a stride-64 backbone with P6) a small first batch
    gives wrong scales for the rest of the run, and a resumed run (whose first batch differs) different ones."""

    def __init__(self, featmap_names: Sequence[str], output_size: int, sampling_ratio: int,
                 strides: Sequence[int]) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        if len(strides) != len(featmap_names):
            raise ValueError(f"strides: one per pooled level ({len(featmap_names)}), got {list(strides)}")
        self.scales = [1.0 / stride for stride in strides]
        self.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])),
                                          canonical_scale=self.canonical_scale,
                                          canonical_level=self.canonical_level)


def detector_has_masks(detector: str) -> bool:
    return detector == "mask_rcnn"


def scale_for(short_side: int) -> Tuple[int, int]:
    """``(min_size, max_size)`` of a detector whose training/eval scale has short side ``short_side`` (800 → 1333)."""
    if short_side < 32:
        raise ValueError(f"img_size (the short side of the detection scale) must be >= 32, got {short_side}")
    return short_side, int(math.ceil(short_side * LONG_SIDE_RATIO))


def create_detector(detector: str, backbone: str, num_classes: int, pretrained_backbone: bool = False,
                    img_size: int = DEFAULT_SHORT_SIDE, train_sizes: Optional[Sequence[int]] = None,
                    fpn_channels: int = 256, frozen_stages: int = -1, level_norm: bool = True,
                    extra_levels: Optional[str] = None, backbone_kwargs: Optional[Dict[str, Any]] = None,
                    box_head_width: int = 1024, mask_head_width: int = 256, **detector_kwargs: Any) -> nn.Module:
    """A torchvision detector over a timm backbone.

    Args:
        detector: one of :data:`DETECTORS`.
        backbone: any timm model name with ``features_only`` (ours ``vh_*`` or timm's).
        num_classes: object classes, without background (labels ``1..num_classes``; 0 is background).
        pretrained_backbone: load the backbone's timm pretrained weights.
        img_size: short side of the evaluation scale (long side at most 5/3 of it, as 800/1333).
        train_sizes: short sides drawn at random per training image (scale jitter, with ``img_size`` among
            them); default ``img_size`` only.
        fpn_channels, frozen_stages, level_norm, extra_levels: see :class:`FeaturePyramidBackbone`.
        backbone_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
        box_head_width, mask_head_width: width of the two-stage heads: the box head's two fully connected layers
            and the mask head's four convolutions (torchvision's and mmdet's 1024 and 256; the embedded CPU preset
            uses less).
        detector_kwargs: passed to the torchvision detector (e.g. ``box_detections_per_img``).

    Images go in as lists of ``(3, H, W)`` float tensors in [0, 1]; normalisation uses the backbone's pretrained
    mean/std.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes, without background), got {num_classes}")
    # One-stage heads run on every location of every level: like torchvision's and mmdet's RetinaNet/FCOS they start
    # at stride 8 (P3), which also spares the costliest map.
    min_stride = 8 if detector in ("retinanet", "fcos") else 1
    fpn = FeaturePyramidBackbone(backbone, out_channels=fpn_channels, frozen_stages=frozen_stages,
                                 level_norm=level_norm, extra_levels=extra_levels or EXTRA_LEVELS[detector],
                                 pretrained=pretrained_backbone, min_stride=min_stride, **(backbone_kwargs or {}))
    check_strides(fpn.reductions)
    min_size, max_size = scale_for(img_size)
    sizes = tuple(train_sizes) if train_sizes else (min_size,)
    for size in sizes:
        scale_for(size)
    data_config = resolve_data_config({}, model=getattr(fpn.body, "model", fpn.body))
    # torchvision draws a training short side from min_size and evaluates at its last entry.
    jitter = tuple(size for size in sizes if size != min_size) + (min_size,)
    common: Dict[str, Any] = dict(min_size=jitter, max_size=max_size,
                                  image_mean=list(data_config["mean"]), image_std=list(data_config["std"]),
                                  size_divisible=fpn.size_divisor)
    common.update(detector_kwargs)
    generator_sizes, ratios = anchor_sizes(fpn.strides, detector)
    anchors = AnchorGenerator(generator_sizes, ratios)
    classes_with_background = num_classes + 1
    if detector in ("mask_rcnn", "faster_rcnn"):
        box_pool = StridedRoIAlign(fpn.level_names, 7, 2, fpn.reductions)
        box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_width)
        box_predictor = FastRCNNPredictor(box_head_width, classes_with_background)
        if detector == "faster_rcnn":
            model: nn.Module = FasterRCNN(fpn, None, rpn_anchor_generator=anchors, box_roi_pool=box_pool,
                                          box_head=box_head, box_predictor=box_predictor, **common)
        else:
            mask_pool = StridedRoIAlign(fpn.level_names, 14, 2, fpn.reductions)
            mask_head = MaskRCNNHeads(fpn_channels, [mask_head_width] * 4, 1)
            mask_predictor = MaskRCNNPredictor(mask_head_width, mask_head_width, classes_with_background)
            model = MaskRCNN(fpn, None, rpn_anchor_generator=anchors, box_roi_pool=box_pool, box_head=box_head,
                             box_predictor=box_predictor, mask_roi_pool=mask_pool, mask_head=mask_head,
                             mask_predictor=mask_predictor, **common)
    elif detector == "retinanet":
        model = RetinaNet(fpn, classes_with_background, anchor_generator=anchors, **common)
    else:
        model = FCOS(fpn, classes_with_background, anchor_generator=anchors, **common)
    model.detector_config = {"detector": detector, "backbone": backbone, "num_classes": num_classes,
                             "img_size": img_size, "train_sizes": list(sizes) if train_sizes else None,
                             "fpn_channels": fpn_channels, "frozen_stages": frozen_stages, "level_norm": level_norm,
                             "extra_levels": fpn.extra_levels, "box_head_width": box_head_width,
                             "mask_head_width": mask_head_width, **detector_kwargs}
    return model


def detector_from_config(config: Dict[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild a detector from its ``detector_config`` (as saved next to published weights)."""
    settings = dict(config, **overrides)
    return create_detector(settings.pop("detector"), settings.pop("backbone"), settings.pop("num_classes"),
                           **settings)


def detection_param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None
                           ) -> list:
    """AdamW parameter groups of a detector as the official recipes set them: no weight decay on norms, biases and
    position-bias tables (the backbone's ``no_weight_decay`` names and every 1-D parameter), and, with
    ``layer_decay``, lr scales that shrink by that factor per backbone layer below the top (neck and heads at 1)."""
    from .backbone import layer_of_parameters

    backbone = model.backbone
    layers, num_layers = layer_of_parameters(backbone) if layer_decay is not None else ({}, 1)
    inner = getattr(backbone.body, "model", backbone.body)
    skip_names = set(inner.no_weight_decay()) if hasattr(inner, "no_weight_decay") else set()
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        local = name[len("backbone."):] if name.startswith("backbone.") else None
        short = local.split("body.model.", 1)[-1].split("body.", 1)[-1] if local else name
        no_decay = parameter.ndim <= 1 or short in skip_names or any(
            short.endswith(part) for part in ("bias_table", "rpb", "attention_biases", "pos_embed"))
        layer = layers.get(local, num_layers - 1) if local is not None else num_layers - 1
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - 1 - layer) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]
