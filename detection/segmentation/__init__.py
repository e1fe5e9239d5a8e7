"""Semantic segmentation over any timm backbone: UPerNet and Semantic FPN heads (:func:`create_segmentor`),
ADE20K-format and image/mask folder data with mmseg's pipeline, mIoU from a split-wide confusion matrix, and the
``segmentation`` training task."""

from .data import (
    IGNORE_INDEX,
    SegmentationDataset,
    SegmentationSplit,
    ade20k_split,
    collate_segmentation,
    folder_split,
    read_class_names,
    synthetic_split,
    write_ade20k_folder,
)
from .metrics import ConfusionMatrix, segmentation_scores
from .models import HEADS, FCNHead, SemanticFPNHead, Segmentor, UPerHead, create_segmentor, segmentor_from_config
from .task import SegmentationOptions, SegmentationTask

__all__ = [
    "HEADS", "IGNORE_INDEX", "ConfusionMatrix", "FCNHead", "SegmentationDataset", "SegmentationOptions",
    "SegmentationSplit", "SegmentationTask", "SemanticFPNHead", "Segmentor", "UPerHead", "ade20k_split",
    "collate_segmentation", "create_segmentor", "folder_split", "read_class_names", "segmentation_scores",
    "segmentor_from_config", "synthetic_split", "write_ade20k_folder",
]
