"""Object detection and instance segmentation over any timm backbone: a feature-pyramid adapter, torchvision's
Mask R-CNN / Faster R-CNN / RetinaNet / FCOS built by :func:`create_detector`, COCO-format data and evaluation, the
``detection`` training task, converters for the official Swin/NAT/DiNAT detection checkpoints, and adapters for
Hugging Face transformers (:func:`hf_backbone_config`) and mmdet/mmseg (:mod:`vithub.detection.mm`)."""

from .backbone import FeaturePyramidBackbone, anchor_sizes, create_feature_extractor
from .coco import CocoDetection, CocoSplit, collate_detection, decode_segmentation, encode_mask, parse_coco, read_coco
from .detectors import DETECTORS, create_detector, detection_param_groups, detector_from_config
from .evaluation import coco_evaluate, predictions_to_coco
from .hf import hf_backbone_config
from .task import DetectionOptions, DetectionTask

__all__ = [
    "DETECTORS", "CocoDetection", "CocoSplit", "DetectionOptions", "DetectionTask", "FeaturePyramidBackbone",
    "anchor_sizes", "coco_evaluate", "collate_detection", "create_detector", "create_feature_extractor",
    "decode_segmentation", "detection_param_groups", "detector_from_config", "encode_mask", "hf_backbone_config",
    "parse_coco",
    "predictions_to_coco", "read_coco",
]
