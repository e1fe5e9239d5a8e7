"""``vithub train --task detection``: torchvision detectors over any timm backbone, trained by the shared loop of
:mod:`vithub.train.engine` (checkpoints, exact resume, metrics files, W&B, DDP, AMP) and evaluated with COCO AP."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from vithub.train.config import TrainConfig, option
from vithub.train.data import DataBundle, DataError, UnreadableLimit
from vithub.train.tasks import LossFn, Task, optimizer_options

from .coco import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_IMAGES,
    SYNTHETIC_SIZE,
    CocoDetection,
    collate_detection,
    folder_reader,
    read_coco,
    synthetic_split,
)
from .detectors import DEFAULT_SHORT_SIDE, DETECTORS, create_detector, detection_param_groups, detector_has_masks
from .evaluation import STAT_NAMES, coco_evaluate, run_detector, write_results

_logger = logging.getLogger(__name__)

DEFAULT_DETECTION_BACKBONE = "vh_efficientvit_b0"


@dataclass
class DetectionOptions:
    """The flags of ``vithub train --task detection`` besides the shared ones (``--model`` is the backbone,
    ``--img-size`` the short side of the scale, ``--data`` a COCO 2017 folder)."""

    detector: str = option("mask_rcnn", "torchvision detector over the --model backbone", choices=DETECTORS)
    train_ann: Optional[str] = option(None, "COCO annotation file of the training split (default: "
                                      "DATA/annotations/instances_train2017.json)")
    train_images: Optional[str] = option(None, "image folder of the training split (default: DATA/train2017)")
    val_ann: Optional[str] = option(None, "COCO annotation file of the validation split (default: "
                                    "DATA/annotations/instances_val2017.json)")
    val_images: Optional[str] = option(None, "image folder of the validation split (default: DATA/val2017)")
    train_sizes: Optional[List[int]] = option(
        None, "short sides drawn per training image (scale jitter; --img-size is always among them); default: "
        "multiples of 32 from 0.6x to 1x --img-size (480..800 at 800, the official 3x recipe's); giving only "
        "--img-size turns jitter off")
    fpn_channels: Optional[int] = option(None, "channels of each pyramid level (default 256; 64 on the embedded "
                                         "shapes, whose CPU preset also narrows the heads)")
    frozen_stages: int = option(-1, "freeze the stem (0) and the first N stages (N); -1 trains all")
    predictions: Optional[str] = option(
        None, "where to write the COCO results JSON of each evaluation (default in training: "
        "OUTPUT/predictions_val.json)")


def embedded_preset(detector: str) -> Dict[str, Any]:
    """Detector settings for the embedded shapes on a CPU: narrower pyramid and heads, fewer sampled regions, and
    at most 20 detections per image (each image has at most three shapes)."""
    if detector in ("retinanet", "fcos"):
        return {"fpn_channels": 64, "detections_per_img": 20}
    return {"fpn_channels": 64, "box_head_width": 256, "mask_head_width": 64, "box_batch_size_per_image": 128,
            "rpn_post_nms_top_n_train": 500, "box_detections_per_img": 20}


def default_train_sizes(short_side: int) -> List[int]:
    """Multiples of 32 from 0.6× to 1× ``short_side``, ending at ``short_side`` (480..800 for 800)."""
    low = max(32, int(round(0.6 * short_side / 32)) * 32)
    sizes = list(range(low, short_side, 32))
    return sizes + [short_side]


class DetectionTask(Task):
    """Object detection and instance segmentation on COCO-format data (or the embedded synthetic shapes)."""

    name = "detection"
    primary_metric = "bbox_ap"
    curve_metrics = ("bbox_ap", "bbox_ap50", "segm_ap")
    curve_label = "COCO AP (0-1)"
    collate_fn = staticmethod(collate_detection)
    options = DetectionOptions
    predictions_file: Optional[str] = None  # the predictions option, set by build_data
    category_ids: Sequence[int] = ()  # the COCO ids of labels 1..N, set by build_data

    def defaults_for(self, config: TrainConfig) -> Dict[str, Any]:
        if self._embedded(config):  # a CPU-sized run: a few minutes on two cores
            return {"model": DEFAULT_DETECTION_BACKBONE, "epochs": 4, "batch_size": 8, "lr": 2e-3,
                    "weight_decay": 0.05, "warmup_epochs": 1}
        # The official Swin/NAT Mask R-CNN recipe: AdamW, lr 1e-4, weight decay 0.05, 1x schedule of 12 epochs.
        return {"model": DEFAULT_DETECTION_BACKBONE, "epochs": 12, "batch_size": 2, "lr": 1e-4, "weight_decay": 0.05,
                "warmup_epochs": 1}

    @staticmethod
    def _embedded(config: TrainConfig) -> bool:
        options = config.task_options or {}
        return config.data is None and not any(options.get(key) for key in ("train_ann", "val_ann"))

    def short_side(self, config: TrainConfig) -> int:
        return config.img_size or (SYNTHETIC_SIZE if self._embedded(config) else DEFAULT_SHORT_SIDE)

    def _options(self, config: TrainConfig) -> DetectionOptions:
        return DetectionOptions(**self.task_options(config))

    def build_data(self, config: TrainConfig) -> DataBundle:
        options = self._options(config)
        with_masks = detector_has_masks(options.detector)
        if self._embedded(config):
            train_split, train_reader = synthetic_split("train")
            val_split, val_reader = synthetic_split("val")
            description = (f"embedded synthetic shapes ({SYNTHETIC_IMAGES['train']} train / "
                           f"{SYNTHETIC_IMAGES['val']} val images, {len(SYNTHETIC_CLASSES)} classes)")
        else:
            paths = self.split_paths(config, options)
            train_split = read_coco(Path(paths["train_ann"]), config.max_unreadable)
            val_split = read_coco(Path(paths["val_ann"]), config.max_unreadable)
            if train_split.category_ids != val_split.category_ids:
                raise DataError(f"{paths['train_ann']} and {paths['val_ann']} list different categories")
            train_reader = folder_reader(Path(paths["train_images"]), train_split)
            val_reader = folder_reader(Path(paths["val_images"]), val_split)
            description = f"COCO-format {paths['train_ann']} / {paths['val_ann']}"
        for split in (train_split, val_split):
            if split.dropped_boxes:
                _logger.info("%s: dropped %d degenerate box(es): %s", split.source, len(split.dropped_boxes),
                             split.dropped_boxes[:3])
        self.category_ids = list(train_split.category_ids)
        self.predictions_file = options.predictions
        size = self.short_side(config)
        bundle = DataBundle(CocoDetection(train_split, train_reader, with_masks, augment=True, seed=config.seed),
                            CocoDetection(val_split, val_reader, with_masks=False),
                            len(train_split.category_ids), list(train_split.category_names), description,
                            (3, size, size))
        return bundle

    @staticmethod
    def split_paths(config: TrainConfig, options: DetectionOptions) -> Dict[str, str]:
        """The four paths of a run: explicit options first, else the COCO 2017 layout under ``--data``."""
        layout = {"train_ann": "annotations/instances_train2017.json", "train_images": "train2017",
                  "val_ann": "annotations/instances_val2017.json", "val_images": "val2017"}
        paths = {}
        for key, relative in layout.items():
            given = getattr(options, key)
            if given:
                paths[key] = given
            elif config.data:
                if not Path(config.data).is_dir():
                    raise DataError(f"data must be a COCO folder ({', '.join(layout.values())}), got {config.data}")
                paths[key] = str(Path(config.data) / relative)
            else:
                raise DataError(f"--{key.replace('_', '-')} is needed when --data names no COCO folder")
        return paths

    def build_model(self, config: TrainConfig, data: DataBundle) -> torch.nn.Module:
        options = self._options(config)
        size = self.short_side(config)
        backbone_kwargs = {"drop_path_rate": config.drop_path} if config.drop_path is not None else {}
        preset = embedded_preset(options.detector) if self._embedded(config) else {}
        if options.fpn_channels:
            preset["fpn_channels"] = options.fpn_channels
        return create_detector(options.detector, config.model, data.num_classes,
                               pretrained_backbone=config.pretrained, img_size=size,
                               train_sizes=options.train_sizes or default_train_sizes(size),
                               frozen_stages=options.frozen_stages, backbone_kwargs=backbone_kwargs, **preset)

    def build_optimizer(self, config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
        from timm.optim import create_optimizer_v2

        groups = detection_param_groups(model, config.weight_decay, config.layer_decay)
        return create_optimizer_v2(groups, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                   **optimizer_options(config))

    def batch_groups(self, dataset: Any) -> Optional[Sequence[int]]:
        return dataset.aspect_groups()

    def move_to_device(self, inputs: Any, targets: Any, device: torch.device) -> Any:
        images = [image.to(device, non_blocking=True) for image in inputs]
        moved = [{key: value.to(device) if torch.is_tensor(value) else value for key, value in target.items()}
                 for target in targets]
        return images, moved

    def training_loss(self, config: TrainConfig, data: DataBundle) -> LossFn:
        def loss(model: torch.nn.Module, images: List[torch.Tensor], targets: List[Dict[str, Any]]) -> torch.Tensor:
            losses = model(images, targets)
            return sum(losses.values())

        return loss

    def evaluate(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
                 unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
        """COCO bbox (and, for Mask R-CNN, segm) metrics of ``model`` on the validation split; the predictions go
        to the ``predictions`` option's file (in training, ``OUTPUT/predictions_val.json``)."""
        split = loader.dataset.split
        results = run_detector(model, loader, device, split, unreadable)
        path = (Path(self.predictions_file) if self.predictions_file
                else self.output / "predictions_val.json" if self.output is not None else None)
        if path is not None:
            write_results(path, results)
        has_masks = getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)()
        return coco_evaluate(split.ground_truth, results, ("bbox", "segm") if has_masks else ("bbox",))

    def epoch_columns(self, metrics: Dict[str, float]) -> Dict[str, float]:
        return dict(metrics)

    def summary(self, history: List[Dict[str, Any]], best: List[Dict[str, Any]]) -> Dict[str, Any]:
        last = history[-1]
        names = [f"{kind}_{stat}" for kind in ("bbox", "segm") for stat in STAT_NAMES if f"{kind}_{stat}" in last]
        return {**{name: last[name] for name in names},
                "best_bbox_ap": best[0]["bbox_ap"] if best else last["bbox_ap"],
                "category_ids": list(self.category_ids)}
