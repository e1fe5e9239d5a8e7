"""vithub backbones inside Hugging Face transformers' detectors and segmenters (DETR, Deformable DETR, RT-DETR,
Mask2Former, UperNet) through ``TimmBackboneConfig``."""

from __future__ import annotations

from typing import Any, Sequence

import timm
import torch

from .backbone import create_feature_extractor


def hf_backbone_config(name: str, out_indices: Sequence[int] = (1, 2, 3), **kwargs: Any):
    """A ``transformers.TimmBackboneConfig`` for the timm model ``name`` (ours or timm's) giving feature levels
    ``out_indices``; pass it as ``backbone_config=`` to e.g. ``DetrConfig``, ``DeformableDetrConfig``,
    ``RTDetrConfig``, ``Mask2FormerConfig`` or ``UperNetConfig``. The config names the backbone itself, so nothing
    asks the Hub for it (a bare ``backbone="..."`` name would). Importing ``vithub`` (which importing this module
    does) registers the ``vh_*`` models that transformers then builds through timm, also when loading a saved model.

    Raises ``ValueError`` for an unknown model, one without ``features_only``, or levels it does not have."""
    try:
        from transformers import TimmBackboneConfig
    except ImportError as error:
        raise ImportError("hf_backbone_config needs transformers: pip install 'vithub[transformers]'") from error
    if name not in timm.list_models():
        raise ValueError(f"name must be a timm model name (e.g. vh_nat_tiny), got {name!r}")
    with torch.device("meta"):  # the model's levels and layout only: no weights are made
        probe = create_feature_extractor(name)
    levels = len(probe.feature_info)
    indices = [int(index) for index in out_indices]
    if not indices or any(not -levels <= index < levels for index in indices):
        raise ValueError(f"out_indices must pick among the {levels} feature levels of {name} "
                         f"(0..{levels - 1}), got {list(out_indices)}")
    if str(getattr(probe, "output_fmt", "NCHW")).endswith("NHWC"):
        raise ValueError(f"{name} gives channels-last (NHWC) feature maps, which transformers' detectors do not "
                         "take; use the vithub twin (vh_*) of this model")
    return TimmBackboneConfig(backbone=name, out_indices=indices, features_only=True, num_channels=3, **kwargs)
