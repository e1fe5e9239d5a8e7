"""``vithub bench data``: what skipping-and-counting unreadable images costs. ``vithub train``'s
``ReadableSamples`` (opens each image itself, so a bad file is reported instead of replaced) against timm's
``ImageDataset`` on the same JPEG folder and eval transform, read side by side (round-robin, median of repeats)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from timm.data import create_dataset, create_transform

from vithub.train.data import ReadableSamples

from .timing import device_name, measure, report

_logger = logging.getLogger(__name__)


def _make_folder(root: Path, images: int, size: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    for index in range(images):
        folder = root / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return root


def _read_all(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def run_data_bench(output: Optional[str] = None, images: int = 256, size: int = 256, repeats: int = 5) -> dict:
    """Time both readers over ``images`` random JPEGs of ``size``², print a table, write JSON to ``output``."""
    transform = create_transform(input_size=(3, 224, 224), is_training=False, interpolation="bicubic",
                                 crop_pct=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with tempfile.TemporaryDirectory() as tmp:
        root = _make_folder(Path(tmp), images, size)
        timm_dataset = create_dataset("", root=str(root), transform=transform)
        ours = ReadableSamples(create_dataset("", root=str(root)), transform)
        for index in (0, len(ours) - 1):  # same tensors, or the comparison means nothing
            torch.testing.assert_close(ours[index][0], timm_dataset[index][0], rtol=0, atol=0)
        ms = measure({"timm ImageDataset": lambda: _read_all(timm_dataset),
                      "ReadableSamples": lambda: _read_all(ours)}, repeats, warmup=1)
    ratio = ms["ReadableSamples"] / ms["timm ImageDataset"]
    _logger.info(f"{images} JPEGs {size}x{size}, eval transform to 224, 1 process, median of {repeats}")
    _logger.info(f"{'reader':<20}{'seconds':>10}{'images/s':>12}")
    for name, value in ms.items():
        _logger.info(f"{name:<20}{value / 1e3:>10.3f}{images * 1e3 / value:>12.1f}")
    _logger.info(f"ReadableSamples / timm time: {ratio:.3f}")
    payload = {"benchmark": "data", "device": device_name("cpu"), "images": images, "size": size,
               "repeats": repeats, "median_ms": ms, "time_ratio_ours_over_timm": round(ratio, 4),
               "torch_threads": torch.get_num_threads()}
    report(output, payload)
    return payload
