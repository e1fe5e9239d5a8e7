"""Semantic segmentation metrics from one confusion matrix accumulated over a whole split (mmseg's definitions):
aAcc (pixel accuracy), mIoU and mAcc (means over the classes present in the labels or the predictions), per-class
IoU and accuracy; all in percent."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from .data import IGNORE_INDEX


class ConfusionMatrix:
    """``matrix[label, prediction]`` pixel counts for ``num_classes`` classes; pixels labelled ``ignore_index`` are
    not counted."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image's (or a batch's) predicted class map and label map, of the same shape."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction and label must have the same shape, got {tuple(prediction.shape)} and "
                             f"{tuple(label.shape)}")
        keep = label != self.ignore_index
        labels, predictions = label[keep].long().cpu(), prediction[keep].long().cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"label values must be class indices in [0, {self.num_classes}) or "
                             f"{self.ignore_index}, got {labels.min().item()}..{labels.max().item()}")
        counts = torch.bincount(labels * self.num_classes + predictions, minlength=self.num_classes ** 2)
        self.matrix += counts.view(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def scores(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """``aAcc``, ``mIoU``, ``mAcc`` (percent) and ``per_class`` (name → IoU and Acc in percent, ``None`` where
        undefined): a class absent from both labels and predictions has no IoU; absent from the labels, no
        accuracy. Means skip the undefined values."""
        return segmentation_scores(self.matrix, class_names)


def segmentation_scores(matrix: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """See :meth:`ConfusionMatrix.scores`."""
    matrix = matrix.double()
    intersection = matrix.diag()
    label_area = matrix.sum(dim=1)
    union = label_area + matrix.sum(dim=0) - intersection
    iou = intersection / union  # NaN where union == 0
    accuracy = intersection / label_area
    total = label_area.sum().item()
    names = list(class_names) if class_names is not None else [str(index) for index in range(len(matrix))]
    if len(names) != len(matrix):
        raise ValueError(f"class_names: {len(names)} names for {len(matrix)} classes")

    def mean(values: torch.Tensor) -> float:
        defined = values[~values.isnan()]
        return 100.0 * defined.mean().item() if defined.numel() else float("nan")

    def percent(value: float) -> Optional[float]:
        return None if math.isnan(value) else 100.0 * value

    per_class: List[Dict[str, object]] = [
        {"class": name, "iou": percent(iou[index].item()), "acc": percent(accuracy[index].item()),
         "pixels": int(label_area[index].item())} for index, name in enumerate(names)]
    return {"aAcc": 100.0 * intersection.sum().item() / total if total else float("nan"), "mIoU": mean(iou),
            "mAcc": mean(accuracy), "per_class": per_class}
