"""``vithub bench segmentation``: UPerNet (or Semantic FPN) training throughput and inference latency with vithub
backbones, side by side with the same head on timm's Swin-T features."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn.functional as F

from .detection import check_bench_arguments, format_table, speed_rows, time_training_and_inference
from .timing import device_name, report

_logger = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("vh_swin_tiny_patch4_window7_224", "vh_nat_tiny", "vh_efficientvit_b1",
                     "swin_tiny_patch4_window7_224")
REFERENCE = "swin_tiny_patch4_window7_224"  # the ratios' denominator: timm's Swin-T under the same head
NUM_CLASSES = 150  # ADE20K's


def _batch(batch_size: int, img_size: int, device: torch.device):
    """Synthetic scenes at the benchmark's size (labels shifted as ADE20K's), the same for every model."""
    from vithub.detection.segmentation.data import decode_label, synthetic_scene
    from PIL import Image

    images, labels = [], []
    for index in range(batch_size):
        pixels, mask = synthetic_scene(index, "train", img_size)
        images.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
        labels.append(torch.from_numpy(decode_label(Image.fromarray(mask), True).astype("int64")))
    return torch.stack(images).to(device), torch.stack(labels).to(device)


def bench_segmentation(backbones: Sequence[str] = DEFAULT_BACKBONES, head: str = "upernet", img_size: int = 512,
                       batch_size: int = 2, repeats: int = 3, device: str = "cpu", amp: Optional[str] = None,
                       output: Optional[str] = None) -> Dict[str, Any]:
    """Time a training step (forward, cross-entropy with the auxiliary head, backward, AdamW step; images/s) and
    batch-1 whole-image inference (ms) of ``head`` over each backbone at ``img_size``², candidates round-robin in
    one run; print the table, write JSON to ``output`` and return it."""
    from vithub.detection.segmentation import IGNORE_INDEX, create_segmentor

    check_bench_arguments(amp, batch_size, repeats)
    torch_device = torch.device(device)
    torch.manual_seed(0)
    models = {name: create_segmentor(name, NUM_CLASSES, head=head).to(torch_device) for name in backbones}
    images, labels = _batch(batch_size, img_size, torch_device)

    def loss_of(model: torch.nn.Module) -> torch.Tensor:
        outputs = model(images)
        return sum(weight * F.cross_entropy(outputs[key].float(), labels, ignore_index=IGNORE_INDEX)
                   for key, weight in (("out", 1.0), ("aux", 0.4)) if key in outputs)

    train_ms, infer_ms = time_training_and_inference(models, loss_of, lambda model: model(images[:1]), repeats,
                                                     torch_device, amp)
    reference = REFERENCE if REFERENCE in models else None
    rows = speed_rows(models, train_ms, infer_ms, batch_size, reference)
    _logger.info("%s", format_table(rows, f"{head} backbone",
                                    f"batch {batch_size} train, 1 infer, {img_size}x{img_size}"))
    payload = {"benchmark": "segmentation", "head": head, "device": device_name(torch_device),
               "torch": torch.__version__, "timm": timm.__version__, "num_classes": NUM_CLASSES,
               "dtype": f"float32 weights, autocast {amp}" if amp else "float32", "img_size": img_size,
               "batch_size": batch_size, "repeats": repeats, "reference": reference, "rows": rows}
    report(output, payload)
    return payload
