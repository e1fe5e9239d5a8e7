"""Weights of the official Swin / NAT / DiNAT detection and segmentation checkpoints (mmdet / mmseg layout:
``backbone.*`` with ``norm0..norm3`` on the outputs, ``neck.lateral_convs`` / ``neck.fpn_convs``; UPerNet's
``decode_head`` / ``auxiliary_head``) in a vithub detector (backbone and pyramid) or UPerNet segmentor (all of it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from vithub.train.checkpoint import read_state_dict


def _unwrap(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    for key in ("state_dict", "model"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return dict(state_dict[key])
    return dict(state_dict)


def convert_official_detection_checkpoint(state_dict: Mapping[str, Any], backbone: nn.Module
                                          ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map an official mmdet/mmseg checkpoint onto ``backbone`` (a :class:`FeaturePyramidBackbone` of the same
    family, or a :class:`~vithub.detection.mm.VithubBackbone`): ``backbone.norm{i}`` → ``norms.{i}``, the backbone
    proper through its family's ``checkpoint_filter_fn`` (Swin's downsample move and bias-table transpose, NAT's key names),
    ``neck.lateral_convs.{i}.conv`` / ``neck.fpn_convs.{i}.conv`` → the pyramid's ``inner_blocks`` /
    ``layer_blocks``. Returns ``(state dict for backbone, keys left unconverted)`` (the detection heads, whose
    layout differs between mmdet and torchvision)."""
    state_dict = _unwrap(state_dict)
    inner = getattr(backbone.body, "model", None)
    if inner is None:
        raise ValueError("official checkpoints convert onto vithub backbones (vh_swin_*, vh_nat_*, vh_dinat_*), whose "
                         f"features come from the model itself; {backbone.model_name} is not one")
    family = sys.modules[type(inner).__module__]
    if not hasattr(family, "checkpoint_filter_fn"):
        raise ValueError(f"{backbone.model_name}: its family module has no checkpoint_filter_fn")
    body: Dict[str, torch.Tensor] = {}
    out: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    for key, value in state_dict.items():
        norm = re.match(r"^backbone\.norm(\d+)\.(weight|bias)$", key)
        neck = re.match(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$", key)
        if norm:
            out[f"norms.{norm.group(1)}.{norm.group(2)}"] = value
        elif neck:
            blocks = "inner_blocks" if neck.group(1) == "lateral_convs" else "layer_blocks"
            out[f"fpn.{blocks}.{neck.group(2)}.0.{neck.group(3)}"] = value
        elif key.startswith("backbone."):
            body[key[len("backbone."):]] = value
        else:
            unused.append(key)
    own = inner.state_dict()
    converted = family.checkpoint_filter_fn(body, inner)
    for key, value in converted.items():
        if key in own:
            out[f"body.model.{key}"] = value
        else:
            unused.append(f"backbone.{key}")
    return out, unused


def _check_coverage(own: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor], required: List[str],
                    what: str) -> None:
    """Every ``required`` key converted, and every converted key that the model has with the model's shape."""
    missing = [key for key in required if key not in converted]
    if missing:
        raise ValueError(f"the checkpoint does not cover {what}: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)} keys)")
    wrong = [f"{key}: checkpoint {tuple(value.shape)}, model {tuple(own[key].shape)}"
             for key, value in converted.items() if key in own and value.shape != own[key].shape]
    if wrong:
        raise ValueError(f"shapes differ (another model size or class count?): {wrong[:5]}")


def load_official_detection_checkpoint(model: nn.Module, source: Union[str, Path, Mapping[str, Any]]) -> List[str]:
    """Load an official Swin/NAT/DiNAT detection or segmentation checkpoint (a file: safetensors, or a pickle read
    with ``weights_only=True``; or a state dict) into ``model.backbone`` of a vithub detector. Every backbone
    parameter and output norm must be found (the pyramid is optional: segmentation checkpoints have none); returns
    the checkpoint keys that were not used."""
    state_dict = read_state_dict(Path(source)) if isinstance(source, (str, Path)) else source
    backbone = model.backbone if hasattr(model, "backbone") else model
    converted, unused = convert_official_detection_checkpoint(state_dict, backbone)
    own = backbone.state_dict()
    _check_coverage(own, converted, [key for key in own if key.startswith(("body.", "norms."))],
                    f"the backbone {backbone.model_name}")
    backbone.load_state_dict(converted, strict=False)
    return unused


# mmseg's UPerHead / FCNHead module names → Segmentor's.
_SEGMENTATION_HEAD_NAMES = (
    (r"^decode_head\.psp_modules\.(\d+)\.1\.", r"decode_head.ppm.stages.\1."),
    (r"^decode_head\.bottleneck\.", "decode_head.ppm_bottleneck."),
    (r"^decode_head\.lateral_convs\.(\d+)\.", r"decode_head.lateral.\1."),
    (r"^decode_head\.fpn_convs\.(\d+)\.", r"decode_head.fpn.\1."),
    (r"^decode_head\.fpn_bottleneck\.", "decode_head.fuse."),
    (r"^decode_head\.conv_seg\.", "decode_head.classifier."),
    (r"^auxiliary_head\.convs\.(\d+)\.", r"aux_head.convs.\1."),
    (r"^auxiliary_head\.conv_seg\.", "aux_head.classifier."),
)


def convert_official_segmentation_checkpoint(state_dict: Mapping[str, Any], segmentor: nn.Module
                                             ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map an official mmseg UPerNet checkpoint (Swin / NAT / DiNAT on ADE20K: ``backbone.*`` with ``norm0..3``,
    ``decode_head.*`` = UPerHead, ``auxiliary_head.*`` = FCNHead, ConvModules as ``conv``/``bn``) onto a
    :class:`~vithub.detection.segmentation.Segmentor` with the ``upernet`` head. Returns ``(state dict for the
    segmentor, keys left unconverted)``."""
    state_dict = _unwrap(state_dict)
    backbone_part = {key: value for key, value in state_dict.items() if key.startswith("backbone.")}
    converted_backbone, unused = convert_official_detection_checkpoint(backbone_part, segmentor.backbone)
    out = {f"backbone.{key}": value for key, value in converted_backbone.items()}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        for pattern, replacement in _SEGMENTATION_HEAD_NAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unused.append(key)
    return out, unused


def load_official_segmentation_checkpoint(segmentor: nn.Module, source: Union[str, Path, Mapping[str, Any]]
                                          ) -> List[str]:
    """Load an official UPerNet segmentation checkpoint (a file: safetensors, or a pickle read with
    ``weights_only=True``; or a state dict) into a vithub UPerNet segmentor of the same backbone and class count.
    Every parameter and buffer must be found, with its shape; returns the checkpoint keys that were not used."""
    state_dict = read_state_dict(Path(source)) if isinstance(source, (str, Path)) else source
    converted, unused = convert_official_segmentation_checkpoint(state_dict, segmentor)
    own = segmentor.state_dict()
    _check_coverage(own, converted, list(own), "the segmentor")
    unused += [key for key in converted if key not in own]
    segmentor.load_state_dict({key: value for key, value in converted.items() if key in own})
    return unused
