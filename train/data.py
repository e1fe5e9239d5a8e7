"""Data for ``vithub train``: the embedded default (scikit-learn's bundled handwritten digits) or an ImageNet-style
folder read through ``timm.data``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS = "digits"
DIGITS_VAL_EVERY = 5  # every 5th image (by index) is validation: 360 of 1797, all ten classes


class DataError(ValueError):
    """The data argument names something that cannot be trained on; the message says what and where."""


class DigitsDataset(Dataset):
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels, ten classes), shipped inside the package: no
    download. Images are scaled to ``image_size`` (bilinear), repeated to three channels and normalised to [-1, 1].
    ``split``: ``"train"`` (1437 images) or ``"val"`` (360, every fifth by index)."""

    num_classes = 10

    def __init__(self, split: str, image_size: int = 32) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        is_val = torch.arange(len(labels)) % DIGITS_VAL_EVERY == 0
        keep = is_val if split == "val" else ~is_val
        images = F.interpolate(images[keep][:, None], size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
        self.images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
        self.labels = labels[keep]
        self.classes = [str(index) for index in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    classes: List[str]
    description: str
    input_size: Tuple[int, int, int]


def _image_folder_classes(split_dir: Path) -> List[str]:
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image files>)")
    return classes


def build_data(data: Optional[str], image_size: int, data_config: Dict[str, Any]) -> DataBundle:
    """``data``: ``None`` or ``"digits"`` for the embedded default, else a folder holding ``train/`` and ``val/``
    with one sub-folder of images per class (the classes of both must match)."""
    if data in (None, DIGITS):
        size = image_size or 32
        return DataBundle(DigitsDataset("train", size), DigitsDataset("val", size), 10,
                          [str(i) for i in range(10)], DIGITS, (3, size, size))
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data: {root} is not a directory (expected a folder with train/ and val/, or 'digits')")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"data: {root} has no {split}/ folder (expected {root}/{split}/<class>/<images>)")
    classes = _image_folder_classes(root / "train")
    val_classes = _image_folder_classes(root / "val")
    if val_classes != classes:
        raise DataError(f"data: class folders differ between {root}/train ({len(classes)}) and {root}/val "
                        f"({len(val_classes)}): {sorted(set(classes) ^ set(val_classes))[:5]}")
    from timm.data import create_dataset, create_transform

    datasets = {}
    for split, is_training in (("train", True), ("val", False)):
        transform = create_transform(**dict(data_config, is_training=is_training))
        try:
            dataset = create_dataset("", root=str(root / split), is_training=is_training, transform=transform)
        except RuntimeError as error:  # timm's folder reader refuses a tree without images
            if "Found 0 images" not in str(error):
                raise
            raise DataError(f"data: {root}/{split} holds no images in its class folders ({error})") from error
        if len(dataset) == 0:
            raise DataError(f"data: {root}/{split} holds no images in its class folders")
        datasets[split] = dataset
    return DataBundle(datasets["train"], datasets["val"], len(classes), classes, str(root),
                      tuple(data_config["input_size"]))
