"""``vithub train --task segmentation``: UPerNet or Semantic FPN over any timm backbone, trained by the shared loop of
:mod:`vithub.train.engine` (checkpoints, exact resume, metrics files, W&B, DDP, AMP) and evaluated with mIoU."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vithub.train.checkpoint import atomic_write
from vithub.train.config import TrainConfig, option
from vithub.train.data import DataBundle, DataError, UnreadableLimit
from vithub.train.tasks import LossFn, Task, TrainingError, optimizer_options

from ..detectors import detection_param_groups
from .data import (
    IGNORE_INDEX,
    SYNTHETIC_CLASSES,
    SYNTHETIC_IMAGES,
    SYNTHETIC_SIZE,
    SegmentationDataset,
    ade20k_split,
    collate_segmentation,
    folder_split,
    is_ade20k_folder,
    pair_reader,
    read_class_names,
    synthetic_split,
)
from .metrics import ConfusionMatrix
from .models import HEADS, INFERENCE_MODES, create_segmentor

DEFAULT_SEGMENTATION_BACKBONE = "vh_efficientvit_b0"
DEFAULT_CROP = 512


@dataclass
class SegmentationOptions:
    """The flags of ``vithub train --task segmentation`` besides the shared ones (``--model`` is the backbone,
    ``--img-size`` the crop size, ``--data`` an ADE20K-layout folder)."""

    head: Optional[str] = option(None, "decoder: upernet (with the auxiliary FCN head) or fpn (Semantic FPN); "
                                 "default fpn for EfficientViT/LeViT, upernet otherwise", choices=HEADS)
    classes: Optional[str] = option(None, "class names, one per line (or ADE20K's objectInfo150.txt); needed for "
                                    "--train-images/--val-images folders; an ADE20K folder reads its own")
    train_images: Optional[str] = option(None, "image folder of the training split (instead of an ADE20K --data)")
    train_masks: Optional[str] = option(None, "mask folder of the training split: NAME.png per image NAME.*, "
                                        "single-channel class indices, 255 ignored")
    val_images: Optional[str] = option(None, "image folder of the validation split")
    val_masks: Optional[str] = option(None, "mask folder of the validation split")
    reduce_zero_label: bool = option(False, "in --train-masks/--val-masks, 0 means 'other' (ignored) and classes "
                                     "start at 1 (always on for ADE20K)")
    aux_weight: float = option(0.4, "weight of the auxiliary head's loss (UPerNet)")
    head_channels: Optional[int] = option(None, "decoder channels (default: upernet 512, fpn 128; 64 on the "
                                          "embedded scenes)")
    cat_max_ratio: float = option(0.75, "training crops: retry (up to 10 times) while one class covers more than "
                                  "this fraction of the labelled pixels")
    frozen_stages: int = option(-1, "freeze the stem (0) and the first N stages (N); -1 trains all")
    inference: str = option("whole", "evaluation: whole image, or slide (windows of --img-size)",
                            choices=INFERENCE_MODES)
    slide_stride: Optional[int] = option(None, "sliding-window step (default 2/3 of --img-size)")
    eval_scales: Optional[List[float]] = option(None, "evaluate at these scales of the test size and average "
                                                "(multi-scale; e.g. 0.5 0.75 1.0 1.25 1.5 1.75); default 1.0")
    eval_flip: bool = option(False, "also average horizontally flipped predictions")
    per_class: Optional[str] = option(None, "where to write per-class IoU/accuracy of each evaluation (default in "
                                      "training: OUTPUT/per_class_val.json)")


class SegmentationTask(Task):
    """Semantic segmentation on ADE20K-format data, image/mask folder pairs, or the embedded synthetic scenes."""

    name = "segmentation"
    primary_metric = "miou"
    curve_metrics = ("miou", "macc")
    curve_label = "percent"
    collate_fn = staticmethod(collate_segmentation)
    options = SegmentationOptions
    class_names: List[str] = []
    eval_settings: Dict[str, Any] = {}
    per_class_file: Optional[str] = None

    def defaults_for(self, config: TrainConfig) -> Dict[str, Any]:
        schedule = {"sched": "poly", "min_lr": 0.0, "decay_rate": 1.0}
        if self._embedded(config):  # a CPU-sized run: about three minutes on two cores
            return {"model": DEFAULT_SEGMENTATION_BACKBONE, "epochs": 16, "batch_size": 8, "lr": 2e-3,
                    "weight_decay": 0.01, "warmup_epochs": 1, **schedule}
        # The official UPerNet recipe: AdamW, lr 6e-5, weight decay 0.01, poly (power 1) to 0 after a warmup, 160k
        # iterations of 16 crops: 127 epochs of ADE20K's 20,210 training images.
        return {"model": DEFAULT_SEGMENTATION_BACKBONE, "epochs": 127, "batch_size": 16, "lr": 6e-5,
                "weight_decay": 0.01, "warmup_epochs": 1, **schedule}

    @staticmethod
    def _embedded(config: TrainConfig) -> bool:
        options = config.task_options or {}
        return config.data is None and not any(options.get(key) for key in ("train_images", "val_images"))

    def crop_size(self, config: TrainConfig) -> int:
        return config.img_size or (SYNTHETIC_SIZE if self._embedded(config) else DEFAULT_CROP)

    def _options(self, config: TrainConfig) -> SegmentationOptions:
        return SegmentationOptions(**self.task_options(config))

    def resolve(self, config: TrainConfig) -> TrainConfig:
        resolved = super().resolve(config)
        options = SegmentationOptions(**resolved.task_options)
        if options.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {options.aux_weight}")
        if not 0.0 < options.cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {options.cat_max_ratio}")
        if options.eval_scales is not None and (not options.eval_scales or min(options.eval_scales) <= 0):
            raise ValueError(f"eval_scales must be positive factors, got {options.eval_scales}")
        crop = self.crop_size(resolved)
        if options.slide_stride is not None and not 0 < options.slide_stride <= crop:
            raise ValueError(f"slide_stride must be in [1, img_size={crop}], got {options.slide_stride}")
        return resolved

    def splits(self, config: TrainConfig, options: SegmentationOptions):
        """The train and val splits with their readers and source names."""
        if self._embedded(config):
            return synthetic_split("train"), synthetic_split("val")
        names = read_class_names(Path(options.classes)) if options.classes else None
        if options.train_images or options.val_images:
            missing = [flag for flag, value in (("--train-images", options.train_images),
                                                ("--train-masks", options.train_masks),
                                                ("--val-images", options.val_images),
                                                ("--val-masks", options.val_masks)) if not value]
            if missing or names is None:
                raise DataError("image/mask folders need --train-images, --train-masks, --val-images, --val-masks "
                                f"and --classes; missing: {missing + ([] if names else ['--classes'])}")
            made = [folder_split(Path(images), Path(masks), names, options.reduce_zero_label)
                    for images, masks in ((options.train_images, options.train_masks),
                                          (options.val_images, options.val_masks))]
        else:
            root = Path(config.data)
            if not is_ade20k_folder(root):
                raise DataError(f"data must be an ADE20K-layout folder (images/training, images/validation, "
                                f"annotations/training, annotations/validation), got {root}; for other layouts "
                                "give --train-images/--train-masks/--val-images/--val-masks/--classes")
            made = [ade20k_split(root, split, names) for split in ("train", "val")]
        return [(split, pair_reader(split), None) for split in made]

    def build_data(self, config: TrainConfig) -> DataBundle:
        options = self._options(config)
        (train_split, train_reader, train_names), (val_split, val_reader, val_names) = self.splits(config, options)
        if train_split.class_names != val_split.class_names:
            raise DataError(f"{train_split.source} and {val_split.source} have different class lists")
        crop = self.crop_size(config)
        self.class_names = list(train_split.class_names)
        self.eval_settings = {"mode": options.inference, "crop_size": crop, "stride": options.slide_stride,
                              "scales": tuple(options.eval_scales or (1.0,)), "flip": options.eval_flip}
        self.per_class_file = options.per_class
        if self._embedded(config):
            description = (f"embedded synthetic scenes ({SYNTHETIC_IMAGES['train']} train / "
                           f"{SYNTHETIC_IMAGES['val']} val, {len(SYNTHETIC_CLASSES)} classes)")
        else:
            description = f"{train_split.source} / {val_split.source} ({len(self.class_names)} classes)"
        train = SegmentationDataset(train_split, train_reader, crop, train=True, cat_max_ratio=options.cat_max_ratio,
                                    seed=config.seed, sources=train_names)
        val = SegmentationDataset(val_split, val_reader, crop, train=False, sources=val_names)
        return DataBundle(train, val, len(self.class_names), list(self.class_names), description, (3, crop, crop))

    def build_model(self, config: TrainConfig, data: DataBundle) -> torch.nn.Module:
        options = self._options(config)
        backbone_kwargs = {"drop_path_rate": config.drop_path} if config.drop_path is not None else {}
        head_channels = options.head_channels or (64 if self._embedded(config) else None)
        return create_segmentor(config.model, data.num_classes, head=options.head,
                                pretrained_backbone=config.pretrained, head_channels=head_channels,
                                aux_channels=min(256, 2 * head_channels) if head_channels else 256,
                                frozen_stages=options.frozen_stages, backbone_kwargs=backbone_kwargs)

    def build_optimizer(self, config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
        from timm.optim import create_optimizer_v2

        groups = detection_param_groups(model, config.weight_decay, config.layer_decay)
        return create_optimizer_v2(groups, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                   **optimizer_options(config))

    def move_to_device(self, inputs: Any, targets: Any, device: torch.device) -> Any:
        if isinstance(inputs, list):
            return [image.to(device) for image in inputs], [label.to(device) for label in targets]
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def training_loss(self, config: TrainConfig, data: DataBundle) -> LossFn:
        aux_weight = self._options(config).aux_weight

        def loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if isinstance(images, list):
                raise ValueError("segmentation training takes equal-size crops; got images of different sizes")
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(images)
            total = F.cross_entropy(outputs["out"].float(), labels, ignore_index=IGNORE_INDEX)
            if "aux" in outputs and aux_weight > 0:
                total = total + aux_weight * F.cross_entropy(outputs["aux"].float(), labels,
                                                             ignore_index=IGNORE_INDEX)
            return total

        return loss

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
                 unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
        """mIoU, mAcc and aAcc (percent) over the whole validation split from one confusion matrix; per-class IoU
        and accuracy go to the ``per_class`` option's file (in training, ``OUTPUT/per_class_val.json``)."""
        model.eval()
        dataset = loader.dataset
        names = self.class_names or list(dataset.split.class_names)
        settings = self.eval_settings or {"mode": "whole", "crop_size": dataset.crop_size, "stride": None,
                                          "scales": (1.0,), "flip": False}
        matrix = ConfusionMatrix(len(names))
        seen = 0
        for images, labels, bad in loader:
            if bad and unreadable is not None:
                unreadable.record("val", bad)
            if images is None:
                continue
            pairs = zip(images, labels) if isinstance(images, list) else [(images, labels)]
            for image, label in pairs:
                batch = (image if image.dim() == 4 else image[None]).to(device)
                label = label.to(device)
                probabilities = model.predict(batch, out_size=tuple(label.shape[-2:]), **settings)
                matrix.update(probabilities.argmax(dim=1).view(label.shape), label)
                seen += batch.shape[0]
        if seen == 0:
            raise TrainingError("evaluation: no readable validation image")
        scores = matrix.scores(names)
        path = (Path(self.per_class_file) if self.per_class_file
                else self.output / "per_class_val.json" if self.output is not None else None)
        if path is not None:
            text = json.dumps({"mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
                               "per_class": scores["per_class"]}, indent=1)
            atomic_write(path, lambda temporary: Path(temporary).write_text(text))
        return {"miou": scores["mIoU"], "macc": scores["mAcc"], "aacc": scores["aAcc"]}

    def epoch_columns(self, metrics: Dict[str, float]) -> Dict[str, float]:
        return dict(metrics)

    def summary(self, history: List[Dict[str, Any]], best: List[Dict[str, Any]]) -> Dict[str, Any]:
        last = history[-1]
        return {"miou": last["miou"], "macc": last["macc"], "aacc": last["aacc"],
                "best_miou": best[0]["miou"] if best else last["miou"]}
