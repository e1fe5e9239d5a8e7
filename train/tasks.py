"""The trainer's task seam: what a task (classification today; detection and segmentation next) supplies to the loop
in :mod:`vithub.train.engine`, which keeps checkpoints, resume, logging, W&B, DDP and AMP for every task.

A task supplies:

* ``build_data(config)``: a :class:`~vithub.train.data.DataBundle` whose loaders' batches are ``(inputs, targets,
  unreadable)`` (``collate_fn``), ``inputs`` ``None`` when every sample of the batch was unreadable;
* ``build_model(config, data)``: the model (through timm's factory);
* ``training_loss(config, data)``: a callable ``(model, inputs, targets) -> loss`` for one batch (augmentation that
  needs the targets, such as mixup, goes inside it);
* ``evaluate(model, loader, device, ...)``: metrics of a validation pass, with ``loss`` and the task's
  ``primary_metric`` (higher is better; it picks the best checkpoints);
* ``epoch_columns(metrics)`` and ``summary(history, best)``: what goes into each ``metrics.jsonl`` row and into
  ``summary.json`` besides the task-independent columns.

New tasks register with :func:`register_task` and are picked with ``vithub train --task NAME``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Optional, Type

import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from .config import TrainConfig
from .data import DIGITS, DIGITS_SIZE, DataBundle, UnreadableLimit, build_data, collate_readable

LossFn = Callable[[torch.nn.Module, torch.Tensor, Any], torch.Tensor]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit, no readable validation image); the
    last good checkpoint stays."""


class Task(ABC):
    """Base of the training tasks; see the module docstring for what each method supplies."""

    name: str = ""
    primary_metric: str = ""
    collate_fn: Callable = staticmethod(collate_readable)

    @abstractmethod
    def build_data(self, config: TrainConfig) -> DataBundle:
        """Train and validation sets, class names and a description."""

    @abstractmethod
    def build_model(self, config: TrainConfig, data: DataBundle) -> torch.nn.Module:
        """The model to train, through timm's factory."""

    @abstractmethod
    def training_loss(self, config: TrainConfig, data: DataBundle) -> LossFn:
        """A callable ``(model, inputs, targets) -> loss`` for one batch."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
                 unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
        """Metrics of one validation pass, including ``loss`` and :attr:`primary_metric`."""

    @abstractmethod
    def epoch_columns(self, metrics: Dict[str, float]) -> Dict[str, float]:
        """The task's columns of one ``metrics.jsonl`` row, from :meth:`evaluate`'s metrics."""

    @abstractmethod
    def summary(self, history: List[Dict[str, Any]], best: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The task's part of ``summary.json``."""


def data_config_for(config: TrainConfig) -> Dict[str, Any]:
    """The preprocessing of a run, as a timm data config: image folders and dataset specs take the model's pretrained
    cfg (read from a model built on the meta device: no weights are made or downloaded for it), with ``img_size``
    overriding the size; the embedded digits have their own fixed preprocessing."""
    if config.data in (None, DIGITS):
        size = config.img_size or DIGITS_SIZE
        return {"input_size": (3, size, size), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}
    with torch.device("meta"):
        probe = timm.create_model(config.model)
    size = {"input_size": (3, config.img_size, config.img_size)} if config.img_size else {}
    return resolve_data_config(size, model=probe)


class ClassificationTask(Task):
    """Image classification: class-folder data, the embedded digits or timm dataset specs; cross-entropy (label
    smoothing, mixup/cutmix); top-1/top-5."""

    name = "classification"
    primary_metric = "top1"

    def build_data(self, config: TrainConfig) -> DataBundle:
        return build_data(config.data, config.img_size or 0, data_config_for(config), config.data_dir,
                          config.train_split, config.val_split, config.dataset_download)

    def build_model(self, config: TrainConfig, data: DataBundle) -> torch.nn.Module:
        kwargs: Dict[str, Any] = {"num_classes": data.num_classes}
        if config.drop_path is not None:
            kwargs["drop_path_rate"] = config.drop_path
        return timm.create_model(config.model, pretrained=config.pretrained, **kwargs)

    def training_loss(self, config: TrainConfig, data: DataBundle) -> LossFn:
        mixup = (Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                       num_classes=data.num_classes) if config.mixup > 0 or config.cutmix > 0 else None)
        criterion = SoftTargetCrossEntropy() if mixup else (
            LabelSmoothingCrossEntropy(config.smoothing) if config.smoothing > 0 else torch.nn.CrossEntropyLoss())

        def loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if mixup is not None:
                images, labels = mixup(images, labels)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            return criterion(model(images), labels)

        return loss

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
                 unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
        """Top-1 / top-5 accuracy (percent) and mean cross-entropy over ``loader``. Batches may carry a third item,
        the unreadable samples (:func:`vithub.train.data.collate_readable`): those are skipped and recorded in
        ``unreadable`` under ``"val"``."""
        model.eval()
        correct1 = correct5 = seen = 0
        loss_sum = 0.0
        for images, labels, *rest in loader:
            if rest and unreadable is not None:
                unreadable.record("val", rest[0])
            if images is None:
                continue
            images, labels = images.to(device), labels.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(dim=1).sum().item()
            seen += len(labels)
        if seen == 0:
            raise TrainingError("evaluation: no readable validation image")
        return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen}

    def epoch_columns(self, metrics: Dict[str, float]) -> Dict[str, float]:
        return {"val_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"]}

    def summary(self, history: List[Dict[str, Any]], best: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"top1": history[-1]["top1"], "top5": history[-1]["top5"],
                "best_top1": best[0]["top1"] if best else history[-1]["top1"]}


_TASKS: Dict[str, Type[Task]] = {}


def register_task(task_cls: Type[Task]) -> Type[Task]:
    """Make ``task_cls`` available as ``vithub train --task <task_cls.name>`` (usable as a class decorator)."""
    if not task_cls.name or not task_cls.primary_metric:
        raise ValueError(f"{task_cls.__name__} must set name and primary_metric")
    _TASKS[task_cls.name] = task_cls
    return task_cls


def task_names() -> List[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as ``name``."""
    if name not in _TASKS:
        raise ValueError(f"task must be one of {task_names()}, got {name!r}")
    return _TASKS[name]()


register_task(ClassificationTask)
