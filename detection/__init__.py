"""Object detection and instance segmentation over any timm backbone: a feature-pyramid adapter, torchvision's
Mask R-CNN / Faster R-CNN / RetinaNet / FCOS built by :func:`create_detector`, COCO-format data and evaluation, the
``detection`` training task, converters for the official Swin/NAT/DiNAT detection checkpoints, and adapters for
Hugging Face transformers (:func:`hf_backbone_config`) and mmdet/mmseg (:mod:`vithub.detection.mm`)."""

if __name__ != "vithub.detection":  # imported under its folder name from a clone's root (see vithub.kernels._shadowing)
    raise ImportError(f"{__path__[0]} is vithub's source folder for 'vithub.detection', imported as '{__name__}' "
                      "because the repository root is on sys.path: run from another folder, or install "
                      "vithub (`pip install -e .`) and import 'vithub.detection'.", name=__name__)

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
