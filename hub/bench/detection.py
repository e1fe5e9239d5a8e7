"""``vithub bench detection``: Mask R-CNN training throughput and inference latency with vithub backbones, side by
side with the same detector on timm's Swin-T features and torchvision's own ``maskrcnn_resnet50_fpn_v2``."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torchvision

from .timing import device_name, measure, report

_logger = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("vh_swin_tiny_patch4_window7_224", "vh_nat_tiny", "vh_efficientvit_b1",
                     "swin_tiny_patch4_window7_224")
TORCHVISION = "torchvision maskrcnn_resnet50_fpn_v2"
REFERENCE = "swin_tiny_patch4_window7_224"  # the ratios' denominator: timm's Swin-T in the same detector


def _detectors(backbones: Sequence[str], img_size: int, num_classes: int) -> Dict[str, torch.nn.Module]:
    from vithub.detection import create_detector
    from vithub.detection.detectors import scale_for

    models: Dict[str, torch.nn.Module] = {name: create_detector("mask_rcnn", name, num_classes, img_size=img_size)
                                          for name in backbones}
    min_size, max_size = scale_for(img_size)
    models[TORCHVISION] = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, min_size=min_size, max_size=max_size)
    return models


def _batch(batch_size: int, img_size: int, device: torch.device):
    """Synthetic shapes at the benchmark's scale, with boxes and masks made from the shapes directly (no COCO mask
    codec needed), the same for every detector."""
    from vithub.detection.coco import render_synthetic, shape_boxes_and_masks

    images, targets = [], []
    for image_id in range(1, batch_size + 1):
        pixels = torch.from_numpy(render_synthetic(image_id, "train", img_size)).permute(2, 0, 1).float() / 255
        boxes, labels, masks = shape_boxes_and_masks(image_id, "train", img_size)
        images.append(pixels.to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def bench_detection(backbones: Sequence[str] = DEFAULT_BACKBONES, img_size: int = 320, batch_size: int = 2,
                    repeats: int = 3, device: str = "cpu", amp: Optional[str] = None,
                    output: Optional[str] = None) -> Dict[str, Any]:
    """Time a Mask R-CNN training step (forward, backward, AdamW step; images/s) and batch-1 inference (ms) for
    each backbone and torchvision's ResNet-50 FPN v2, candidates round-robin in one run; print the table, write
    JSON to ``output`` and return it. ``img_size`` is the short side of the scale (800 on COCO)."""
    check_bench_arguments(amp, batch_size, repeats)
    torch_device = torch.device(device)
    torch.manual_seed(0)
    models = {name: model.to(torch_device) for name, model in _detectors(backbones, img_size, 80).items()}
    images, targets = _batch(batch_size, img_size, torch_device)
    train_ms, infer_ms = time_training_and_inference(
        models, lambda model: sum(model(images, targets).values()), lambda model: model(images[:1]), repeats,
        torch_device, amp)
    reference = REFERENCE if REFERENCE in models else None
    rows = speed_rows(models, train_ms, infer_ms, batch_size, reference)
    _logger.info("%s", format_table(rows, "Mask R-CNN backbone",
                                    f"batch {batch_size} train, 1 infer, short side {img_size}"))
    payload = {"benchmark": "detection", "detector": "mask_rcnn", "device": device_name(torch_device),
               "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
               "dtype": f"float32 weights, autocast {amp}" if amp else "float32", "img_size": img_size,
               "max_size": int(math.ceil(img_size * 5 / 3)), "batch_size": batch_size, "repeats": repeats,
               "reference": reference, "rows": rows}
    report(output, payload)
    return payload


def check_bench_arguments(amp: Optional[str], batch_size: int, repeats: int) -> None:
    if amp not in (None, "bfloat16", "float16"):
        raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {amp!r}")
    if batch_size < 1 or repeats < 1:
        raise ValueError("batch_size and repeats must be >= 1")


def time_training_and_inference(models: Dict[str, torch.nn.Module], loss_of: Callable[[torch.nn.Module], Any],
                                infer: Callable[[torch.nn.Module], Any], repeats: int, device: torch.device,
                                amp: Optional[str]) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Median ms per model of a training step (``loss_of(model)``, backward, AdamW step) and of ``infer(model)``
    without gradients, each under autocast in ``amp`` when set; candidates round-robin (``timing.measure``)."""
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    dtype = getattr(torch, amp) if amp else torch.float32

    def train_step(name: str) -> Callable[[], None]:
        def step() -> None:
            models[name].train()
            with torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
                loss = loss_of(models[name])
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
        return step

    def inference(name: str) -> Callable[[], None]:
        def run() -> None:
            models[name].eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
                infer(models[name])
        return run

    train_ms = measure({name: train_step(name) for name in models}, repeats, warmup=1, device=device)
    infer_ms = measure({name: inference(name) for name in models}, repeats, warmup=1, device=device)
    return train_ms, infer_ms


def speed_rows(models: Dict[str, torch.nn.Module], train_ms: Dict[str, float], infer_ms: Dict[str, float],
               batch_size: int, reference: Optional[str]) -> List[Dict[str, Any]]:
    """One row per model: step and inference times, images/s, parameters and, with a ``reference`` model, the
    speed ratios against it (>1: faster)."""
    rows: List[Dict[str, Any]] = []
    for name in models:
        row = {"backbone": name, "train_step_ms": train_ms[name],
               "train_images_per_second": round(1e3 * batch_size / train_ms[name], 3),
               "inference_ms": infer_ms[name],
               "parameters_m": round(sum(p.numel() for p in models[name].parameters()) / 1e6, 2)}
        if reference:
            row["train_speed_vs_timm_swin"] = round(train_ms[reference] / train_ms[name], 3)
            row["inference_speed_vs_timm_swin"] = round(infer_ms[reference] / infer_ms[name], 3)
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict[str, Any]], title: str, note: str) -> str:
    header = (f"{title:<38}{'params M':>9}{'train img/s':>13}{'vs timm':>9}{'infer ms':>10}"
              f"{'vs timm':>9}   ({note})")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['backbone']:<38}{row['parameters_m']:>9.1f}{row['train_images_per_second']:>13.2f}"
                     f"{row.get('train_speed_vs_timm_swin', float('nan')):>9.2f}{row['inference_ms']:>10.1f}"
                     f"{row.get('inference_speed_vs_timm_swin', float('nan')):>9.2f}")
    return "\n".join(lines)
