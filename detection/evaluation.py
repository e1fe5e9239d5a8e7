"""COCO evaluation of detector outputs: bbox and segm AP, AP50, AP75, APs/m/l and AR, with faster-coco-eval
(pycocotools' numbers, faster), pycocotools as the fallback; predictions as a COCO results list."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from vithub.train.checkpoint import atomic_write

from .coco import CocoSplit, encode_mask

# The order of COCOeval's ``stats``.
STAT_NAMES = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l", "ar1", "ar10", "ar100", "ar_s", "ar_m", "ar_l")


def _coco_classes():
    """``(COCO, COCOeval)`` classes: faster-coco-eval's when installed, else pycocotools'."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    except ImportError:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError as error:
            raise ImportError("COCO evaluation needs faster-coco-eval or pycocotools: pip install "
                              "'vithub[detection]'") from error
        return COCO, COCOeval


def predictions_to_coco(outputs: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                        category_ids: Sequence[int], mask_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """COCO results entries (``image_id``, ``category_id``, ``bbox`` as xywh, ``score`` and, for mask outputs,
    ``segmentation`` as compressed RLE) of torchvision detector outputs; labels ``1..N`` map back to
    ``category_ids``."""
    results: List[Dict[str, Any]] = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().float().cpu()
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        masks = output.get("masks")
        if masks is not None:
            masks = (masks.detach().float().cpu()[:, 0] > mask_threshold).numpy()
        for index, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            x1, y1, x2, y2 = box
            entry = {"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                     "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                     "score": round(float(score), 5)}
            if masks is not None:
                entry["segmentation"] = encode_mask(masks[index])
            results.append(entry)
    return results


def coco_evaluate(ground_truth: Dict[str, Any], results: List[Dict[str, Any]],
                  iou_types: Sequence[str] = ("bbox",)) -> Dict[str, float]:
    """COCO metrics (fractions in [0, 1], as COCOeval's ``stats``) named ``{iou_type}_{stat}``: ``bbox_ap``,
    ``bbox_ap50``, ``bbox_ap75``, ``bbox_ap_s/m/l``, ``bbox_ar1/10/100``, ``bbox_ar_s/m/l``, and the same for
    ``segm``. As in COCOeval, a size range without ground-truth objects scores -1; no prediction at all scores 0."""
    COCO, COCOeval = _coco_classes()
    metrics: Dict[str, float] = {}
    for iou_type in iou_types:
        usable = [entry for entry in results if iou_type == "bbox" or "segmentation" in entry]
        if not usable:
            metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
            continue
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        detections = gt.loadRes(copy.deepcopy(usable))
        evaluator = COCOeval(gt, detections, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats = [float(value) for value in evaluator.stats[:len(STAT_NAMES)]]
        metrics.update({f"{iou_type}_{name}": value for name, value in zip(STAT_NAMES, stats)})
    return metrics


def write_results(path: Path, results: List[Dict[str, Any]]) -> None:
    """A COCO results JSON file, written atomically."""
    text = json.dumps(results)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


@torch.no_grad()
def run_detector(model: torch.nn.Module, loader: Any, device: torch.device, split: CocoSplit,
                 unreadable: Optional[Any] = None, channels_last: bool = False) -> List[Dict[str, Any]]:
    """The detector's COCO results over a loader of :func:`~vithub.detection.coco.collate_detection` batches;
    unreadable images are recorded under ``"val"`` and skipped."""
    model.eval()
    results: List[Dict[str, Any]] = []
    seen = 0
    for images, targets, bad in loader:
        if bad and unreadable is not None:
            unreadable.record("val", bad)
        if images is None:
            continue
        images = [image.to(device) for image in images]
        outputs = model(images)
        results.extend(predictions_to_coco(outputs, [target["image_id"] for target in targets], split.category_ids))
        seen += len(images)
    if seen == 0:
        from vithub.train.tasks import TrainingError

        raise TrainingError("evaluation: no readable validation image")
    return results

