"""The trainer's task seam: what a task (classification here; detection and segmentation from
:mod:`vithub.detection`) supplies to the loop in :mod:`vithub.train.engine`, which keeps checkpoints, resume,
logging, W&B, DDP and AMP for every task.

A task supplies:

* ``build_data(config)``: a :class:`~vithub.train.data.DataBundle` whose loaders' batches are ``(inputs, targets,
  unreadable)`` (``collate_fn``), ``inputs`` ``None`` when every sample of the batch was unreadable;
* ``build_model(config, data)``: the model (through timm's factory);
* ``training_loss(config, data)``: a callable ``(model, inputs, targets) -> loss`` for one batch (augmentation that
  needs the targets, such as mixup, goes inside it);
* ``evaluate(model, loader, device, ...)``: metrics of a validation pass, with the task's ``primary_metric``
  (higher is better; it picks the best checkpoints);
* ``epoch_columns(metrics)`` and ``summary(history, best)``: what goes into each ``metrics.jsonl`` row and into
  ``summary.json`` besides the task-independent columns;

and may change the defaults: ``defaults_for(config)`` (epochs, batch size, lr, ... where the user left them unset),
``options`` (a dataclass of the task's own :func:`~vithub.train.config.option` fields, shown as ``vithub train``
flags and stored in ``config.task_options``), ``move_to_device``, ``build_optimizer`` and ``batch_groups`` (batches
drawn within groups, e.g. of aspect ratio).

New tasks register with :func:`register_task` and are picked with ``vithub train --task NAME``; a package can also
declare one as an entry point in the ``vithub.tasks`` group (``vithub.detection`` does), found when tasks are listed.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, fields, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Type

import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup, resolve_data_config
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from .config import DEFAULT_MODEL, SCHEDULE_DEFAULTS, TASK_DEFAULTED, TrainConfig
from .data import (DIGITS, DIGITS_SIZE, DataBundle, UnreadableLimit, build_data, collate_readable, stream_options,
                   train_augmentation)
from .distillation import build_teacher, distillation_kind, distilling_loss, has_distillation_head

_logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, torch.Tensor, Any], torch.Tensor]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit, no readable validation image); the
    last good checkpoint stays."""


class Task(ABC):
    """Base of the training tasks; see the module docstring for what each method supplies."""

    name: str = ""
    primary_metric: str = ""
    collate_fn: Callable = staticmethod(collate_readable)
    options: ClassVar[Optional[type]] = None  # a dataclass of option() fields: the task's own flags
    output: Optional[Path] = None  # the run folder, set by the trainer (validation alone has none)
    curve_metrics: ClassVar[Sequence[str]] = ()  # the evaluate() metrics that curves.png plots
    curve_label: ClassVar[str] = ""
    distills: ClassVar[bool] = False  # whether --teacher works (the loss takes a teacher's term)

    def defaults_for(self, config: TrainConfig) -> Dict[str, Any]:
        """Values for the options in :data:`~vithub.train.config.TASK_DEFAULTED` that ``config`` leaves unset (the
        schedule's, when left out: :data:`~vithub.train.config.SCHEDULE_DEFAULTS`)."""
        return {"model": DEFAULT_MODEL, "epochs": 6, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05,
                "warmup_epochs": 1}

    def resolve(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the task's defaults filled in and its ``task_options`` checked and completed."""
        defaults = {**SCHEDULE_DEFAULTS, **self.defaults_for(config)}
        filled = {name: defaults[name] for name in TASK_DEFAULTED if getattr(config, name) is None}
        return replace(config, **filled, task_options=self.task_options(config))

    def task_options(self, config: TrainConfig) -> Dict[str, Any]:
        """``config.task_options`` completed with the defaults of :attr:`options`; unknown names raise
        ``ValueError``."""
        given = dict(config.task_options or {})
        if self.options is None:
            if given:
                raise ValueError(f"task {self.name!r} takes no task options, got {sorted(given)}")
            return {}
        known = {option_field.name for option_field in fields(self.options)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"task {self.name!r} has no option(s) {unknown}; it has {sorted(known)}")
        return asdict(self.options(**given))

    def move_to_device(self, inputs: Any, targets: Any, device: torch.device) -> Any:
        """A batch's ``(inputs, targets)`` on ``device`` (asynchronously from pinned memory on CUDA)."""
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def build_optimizer(self, config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
        """timm's optimizer (no weight decay on 1-D parameters and the model's ``no_weight_decay`` names; layer
        decay through its ``group_matcher``)."""
        return create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                   layer_decay=config.layer_decay, **optimizer_options(config))

    def batch_groups(self, dataset: Any) -> Optional[Sequence[int]]:
        """A group id per training sample when batches must not mix groups; ``None``: any mix."""
        return None

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
        """Metrics of one validation pass, including :attr:`primary_metric` (and ``loss`` where the task has
        one)."""

    @abstractmethod
    def epoch_columns(self, metrics: Dict[str, float]) -> Dict[str, float]:
        """The task's columns of one ``metrics.jsonl`` row, from :meth:`evaluate`'s metrics."""

    @abstractmethod
    def summary(self, history: List[Dict[str, Any]], best: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The task's part of ``summary.json``."""


def apply_model_transform(group_name: str, model: torch.nn.Module, spec: Optional[str]) -> torch.nn.Module:
    """Apply the installed transform ``group_name`` (an entry point of the ``vithub.model_transforms`` group, e.g.
    ``token_reduction`` from ``vithub.backbones``) to ``model`` with ``spec``; the trainer reaches it by name, as it
    reaches tasks, and never imports the package that provides it."""
    if not spec:
        return model
    found = [entry for entry in entry_points(group="vithub.model_transforms") if entry.name == group_name]
    if not found:
        raise ValueError(f"{group_name}: no installed package provides it (the vithub.model_transforms entry point; "
                         "reinstall vithub)")
    return found[0].load()(model, spec)


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def auxiliary_loss(model: torch.nn.Module, loss: torch.Tensor, criterion: Optional[Callable] = None,
                   targets: Any = None) -> torch.Tensor:
    """``loss`` plus what the model's last training forward asked for: the terms in ``token_reduction_losses``
    (LTMP's FLOPs target) and ``criterion(logits, targets)`` for each of its ``token_reduction_aux_logits``
    (Cropr's auxiliary heads, trained on the task's own loss); ``loss`` unchanged for any other model."""
    inner = unwrapped(model)
    for term in (getattr(inner, "token_reduction_losses", None) or {}).values():
        loss = loss + term.to(loss.dtype)
    if criterion is not None:
        for logits in getattr(inner, "token_reduction_aux_logits", None) or []:
            loss = loss + criterion(logits, targets).to(loss.dtype)
    return loss


def optimizer_options(config: TrainConfig) -> Dict[str, Any]:
    """The keywords of timm's ``create_optimizer_v2`` beyond lr and weight decay: ``--momentum``, and ``--opt-eps``
    and ``--opt-betas`` where given (else the optimizer's own)."""
    options: Dict[str, Any] = {"momentum": config.momentum}
    if config.opt_eps is not None:
        options["eps"] = config.opt_eps
    if config.opt_betas is not None:
        options["betas"] = tuple(config.opt_betas)
    return options


def model_from_weights(name: str, path: str, head_rows: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
    """timm model ``name`` (with ``kwargs``) starting from the weights in ``path``, loaded the way its pretrained
    weights are: timm's pretrained loading and the model's checkpoint filter (official layouts converted, position
    embeddings and bias tables resized to this model's input and window; a checkpoint's EMA weights when it holds
    them). The classifier is kept when its shape fits and started fresh when only its class count differs; any
    other mismatch is an error naming the keys. ``head_rows``: a text file of classifier row indices, one per line,
    that picks the checkpoint's rows for the data's classes (Swin's ``map22kto1k.txt`` for a 22k checkpoint
    fine-tuned on 1k classes). Files load as safetensors or with ``weights_only=True``."""
    import re

    if not Path(path).is_file():
        raise ValueError(f"pretrained_path: {path} is not a file (expected .safetensors or a weights-only torch file)")
    try:
        state = timm.models.load_state_dict(str(path))  # safetensors, or torch.load(weights_only=True)
    except Exception as error:
        raise ValueError(f"pretrained_path: cannot read {path}: {error}") from error
    heads = getattr(timm.models.get_pretrained_cfg(name), "classifier", None) or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    if head_rows:
        state = _pick_head_rows(state, heads, head_rows, kwargs.get("num_classes", 1000))
    try:  # this model's class count as the file's: timm keeps the classifier and loads strictly
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={
            "state_dict": dict(state), "num_classes": kwargs.get("num_classes", 1000)}, **kwargs)
    except RuntimeError as error:
        message = str(error)
        if "Error(s) in loading state_dict" not in message:
            raise ValueError(f"pretrained_path: cannot load {path} into {name}: {message}") from error
    mismatched = re.findall(r"size mismatch for ([\w.]+):", message)
    other = [key for key in mismatched if key.rsplit(".", 1)[0] not in heads]
    if other or not mismatched or "Missing key(s)" in message or "Unexpected key(s)" in message:
        raise ValueError(f"pretrained_path: {path} does not fit {name} beyond its classifier: "
                         f"{message.partition(':')[2].strip()[:2000]}")
    _logger.info("pretrained_path: the classifier of %s has another class count; it starts fresh", path)
    # a class count unlike the model's makes timm drop the classifier keys (every other key was shown to fit)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": dict(state),
                                                                           "num_classes": -1}, **kwargs)


def _pick_head_rows(state: Dict[str, torch.Tensor], heads: Sequence[str], rows_file: str, num_classes: int
                    ) -> Dict[str, torch.Tensor]:
    """``state`` with the classifier's rows (its timm name, or ``head`` as official layouts name it) cut to the
    indices listed in ``rows_file``."""
    path = Path(rows_file)
    if not path.is_file():
        raise ValueError(f"pretrained_head_rows: {rows_file} is not a file (one classifier row index per line)")
    try:
        rows = [int(line) for line in path.read_text().split()]
    except ValueError as error:
        raise ValueError(f"pretrained_head_rows: {rows_file} holds something other than row indices: {error}") from None
    if len(rows) != num_classes:
        raise ValueError(f"pretrained_head_rows: {rows_file} lists {len(rows)} rows for {num_classes} classes")
    names = set(heads) | {"head"}
    keys = [key for key in state if key.rsplit(".", 1)[0] in names and key.rsplit(".", 1)[-1] in ("weight", "bias")]
    if not keys:
        raise ValueError(f"pretrained_head_rows: the checkpoint has no classifier named {sorted(names)}")
    picked = dict(state)
    for key in keys:
        count = state[key].shape[0]
        if not all(0 <= row < count for row in rows):
            raise ValueError(f"pretrained_head_rows: {rows_file} has rows outside the checkpoint's {count} classes")
        picked[key] = state[key][rows]
    return picked


def mixup_for(config: TrainConfig, num_classes: int) -> Optional[Mixup]:
    """timm's ``Mixup`` for the run (``--mixup``, ``--cutmix``, ``--cutmix-minmax``, ``--mixup-prob``,
    ``--mixup-switch-prob``, ``--mixup-mode``; label smoothing goes into its soft targets), or ``None`` when off."""
    if not (config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None):
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
                 cutmix_minmax=tuple(config.cutmix_minmax) if config.cutmix_minmax else None,
                 prob=config.mixup_prob, switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                 label_smoothing=config.smoothing, num_classes=num_classes)


def criterion_for(config: TrainConfig, mixed: bool) -> torch.nn.Module:
    """The training loss timm's ``train.py`` picks: soft-target cross-entropy (or BCE) after mixup, which carries
    the smoothing; else label smoothing (or BCE with it); else plain cross-entropy (``--bce-loss`` included)."""
    if mixed:
        return (BinaryCrossEntropy(target_threshold=config.bce_target_thresh) if config.bce_loss
                else SoftTargetCrossEntropy())
    if config.smoothing > 0:
        return (BinaryCrossEntropy(smoothing=config.smoothing, target_threshold=config.bce_target_thresh)
                if config.bce_loss else LabelSmoothingCrossEntropy(config.smoothing))
    return torch.nn.CrossEntropyLoss()


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


def teacher_loss_for(config: TrainConfig, num_classes: int, criterion: Callable) -> Optional[Callable]:
    """With ``--teacher``: ``loss(outputs, targets, images)``, ``criterion`` blended with the teacher's
    distillation term (:func:`vithub.train.distillation.distilling_loss`), the teacher moved to the batch's device
    on first use; ``None`` without a teacher."""
    if not config.teacher:
        return None
    with torch.device("meta"):  # which distillation the student can take, read from a weightless probe
        kind = distillation_kind(config.distillation, timm.create_model(config.model), config.model)
    teacher = build_teacher(config.teacher, num_classes, data_config_for(config), config.teacher_pretrained,
                            config.teacher_checkpoint)
    blended = distilling_loss(criterion, teacher, kind, config.distillation_alpha, config.distillation_tau)
    placed: List[torch.device] = []

    def loss(outputs: Any, targets: Any, images: torch.Tensor) -> torch.Tensor:
        if placed != [images.device]:
            teacher.to(images.device)
            placed[:] = [images.device]
        return blended(outputs, targets, images)

    return loss


class ClassificationTask(Task):
    """Image classification: class-folder data, the embedded digits or timm dataset specs; cross-entropy (label
    smoothing, mixup/cutmix), knowledge distillation from a teacher; top-1/top-5."""

    name = "classification"
    primary_metric = "top1"
    distills = True
    curve_metrics = ("top1", "top5")
    curve_label = "accuracy (%)"

    def build_data(self, config: TrainConfig) -> DataBundle:
        return build_data(config.data, config.img_size or 0, data_config_for(config), config.data_dir,
                          config.train_split, config.val_split, config.dataset_download, train_augmentation(config),
                          config.seed, stream_options(config))

    def build_model(self, config: TrainConfig, data: DataBundle) -> torch.nn.Module:
        kwargs: Dict[str, Any] = {"num_classes": data.num_classes}
        if config.drop:
            kwargs["drop_rate"] = config.drop
        if config.drop_path is not None:
            kwargs["drop_path_rate"] = config.drop_path
        if config.pretrained_path:
            model = model_from_weights(config.model, config.pretrained_path, config.pretrained_head_rows, **kwargs)
        else:
            model = timm.create_model(config.model, pretrained=config.pretrained, **kwargs)
        if config.teacher and has_distillation_head(model):  # train mode returns (class, distillation) logits
            model.set_distilled_training(True)
        model = apply_model_transform("token_reduction", model, config.token_reduction)
        freeze = getattr(model, "freeze_for_training", None)  # what the model's recipe leaves untrained (LTMP)
        if callable(freeze):
            freeze()
        return model

    def training_loss(self, config: TrainConfig, data: DataBundle) -> LossFn:
        mixup = mixup_for(config, data.num_classes)
        criterion = criterion_for(config, mixup is not None)
        distilling = teacher_loss_for(config, data.num_classes, criterion)

        def loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if mixup is not None:
                images, labels = mixup(images, labels)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(images)
            value = criterion(outputs, labels) if distilling is None else distilling(outputs, labels, images)
            return auxiliary_loss(model, value, criterion, labels)

        return loss

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
                 unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
        """Top-1 / top-5 accuracy (percent) and mean cross-entropy over ``loader``. Batches may carry a third item,
        the unreadable samples (:func:`vithub.train.data.collate_readable`): those are skipped and recorded in
        ``unreadable`` under ``"val"``."""
        model.eval()
        correct1 = correct5 = seen = 0
        loss_sum = flops_sum = 0.0
        for images, labels, *rest in loader:
            if rest and unreadable is not None:
                unreadable.record("val", rest[0])
            if images is None:
                continue
            images, labels = images.to(device), labels.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images)
            flops_sum += getattr(unwrapped(model), "flops_ratio", 1.0) * len(labels)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(dim=1).sum().item()
            seen += len(labels)
        if seen == 0:
            raise TrainingError("evaluation: no readable validation image")
        metrics = {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen}
        if hasattr(unwrapped(model), "flops_ratio"):  # a token-reduced model (LTMP): the FLOPs it kept
            metrics["flops_ratio"] = flops_sum / seen
        return metrics

    def epoch_columns(self, metrics: Dict[str, float]) -> Dict[str, float]:
        columns = {"val_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"]}
        if "flops_ratio" in metrics:
            columns["flops_ratio"] = metrics["flops_ratio"]
        return columns

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


_PLUGINS_LOADED = False


def _load_task_plugins() -> None:
    """Register the tasks that installed packages declare in the ``vithub.tasks`` entry-point group (once). A
    plugin that fails to import is reported and left out."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for entry in entry_points(group="vithub.tasks"):
        if entry.name in _TASKS:
            continue
        try:
            register_task(entry.load())
        except Exception as error:  # a broken optional plugin must not take classification down with it
            _logger.warning("task %r (%s) is unavailable: %s: %s", entry.name, entry.value, type(error).__name__, error)


def task_names() -> List[str]:
    _load_task_plugins()
    return sorted(_TASKS)


def task_classes() -> List[Type[Task]]:
    """The registered task classes, by name."""
    _load_task_plugins()
    return [_TASKS[name] for name in sorted(_TASKS)]


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as ``name``."""
    _load_task_plugins()
    if name not in _TASKS:
        raise ValueError(f"task must be one of {task_names()}, got {name!r}")
    return _TASKS[name]()


register_task(ClassificationTask)
