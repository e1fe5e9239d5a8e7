"""Knowledge distillation for ``vithub train --teacher MODEL``, with the semantics of DeiT's ``DistillationLoss``
(facebookresearch/deit ``losses.py``, which LeViT and EfficientViT-M reuse unchanged):

``loss = (1 - alpha) * base_loss(class logits, labels) + alpha * distillation_loss(student's distillation logits,
teacher logits)`` where the distillation logits come from the student's distillation head when it has one (a timm
model with ``set_distilled_training``: DeiT's distillation token, LeViT's ``head_dist``) and from its class logits
otherwise. ``hard``: cross-entropy against the teacher's argmax; ``soft``: KL divergence of the temperature-scaled
distributions, times ``tau**2``, summed and divided by the number of logits (DeiT's normalisation, kept so that
``alpha`` and ``tau`` mean what the published recipes mean).

The teacher is frozen: eval mode it cannot leave (:class:`FrozenTeacher`), no gradients, run under ``no_grad`` in the
student's autocast dtype, on the student's (mixed) batch, re-preprocessed when its input size or normalisation
differs (:class:`TeacherInput`). It holds no state a checkpoint must carry: a resumed run rebuilds it from the same
options, so DDP and exact resume need nothing more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config

from .checkpoint import UnsafeWeightsError, read_state_dict, state_dict_mismatch

__all__ = ["DISTILLATION_KINDS", "DistillationError", "FrozenTeacher", "TeacherInput", "build_teacher", "distillation_kind",
           "distillation_loss", "distilling_loss", "has_distillation_head"]

DISTILLATION_KINDS = ("hard", "soft")


class DistillationError(ValueError):
    """A teacher or distillation option that cannot work; the message names the option."""


def has_distillation_head(model: torch.nn.Module) -> bool:
    """Whether ``model`` trains a distillation head of its own (timm's ``set_distilled_training`` protocol: DeiT's
    distilled models, LeViT)."""
    return callable(getattr(model, "set_distilled_training", None))


def distillation_kind(requested: Optional[str], student: torch.nn.Module, model_name: str) -> str:
    """The distillation a student gets: ``requested``, or by default hard where the student has a distillation head
    (DeiT's and LeViT's recipes) and soft otherwise. Hard distillation without such a head is refused."""
    has_head = has_distillation_head(student)
    kind = requested or ("hard" if has_head else "soft")
    if kind not in DISTILLATION_KINDS:
        raise DistillationError(f"distillation must be one of {DISTILLATION_KINDS}, got {kind!r}")
    if kind == "hard" and not has_head:
        raise DistillationError(
            f"distillation: hard distillation trains the student's distillation head, and {model_name} has none "
            "(models with one: deit_*_distilled_*, vh_levit_*, levit_*); use --distillation soft")
    return kind


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, tau: float = 1.0
                      ) -> torch.Tensor:
    """DeiT's distillation term: ``hard``, cross-entropy of ``student_logits`` against the teacher's argmax;
    ``soft``, ``KL(teacher/tau || student/tau) * tau**2`` summed over the batch and divided by
    ``student_logits.numel()``."""
    if kind == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))
    if kind == "soft":
        student_log = F.log_softmax(student_logits.float() / tau, dim=1)
        teacher_log = F.log_softmax(teacher_logits.float() / tau, dim=1)
        return F.kl_div(student_log, teacher_log, reduction="sum", log_target=True) * (tau * tau) / \
            student_logits.numel()
    raise DistillationError(f"distillation must be one of {DISTILLATION_KINDS}, got {kind!r}")


class TeacherInput(torch.nn.Module):
    """The student's preprocessed batch as the teacher expects it: un-normalised with the student's mean/std,
    resized to the teacher's input size (its interpolation) and normalised with the teacher's mean/std. The
    identity when both agree."""

    def __init__(self, student_config: Dict[str, Any], teacher_config: Dict[str, Any]) -> None:
        super().__init__()
        self.size = tuple(teacher_config["input_size"][-2:])
        self.resize = tuple(student_config["input_size"][-2:]) != self.size
        self.renormalise = (tuple(student_config["mean"]) != tuple(teacher_config["mean"])
                            or tuple(student_config["std"]) != tuple(teacher_config["std"]))
        self.mode = "bicubic" if teacher_config.get("interpolation") == "bicubic" else "bilinear"
        for name, config in (("student", student_config), ("teacher", teacher_config)):
            self.register_buffer(f"{name}_mean", torch.tensor(config["mean"]).view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"{name}_std", torch.tensor(config["std"]).view(1, -1, 1, 1), persistent=False)

    @property
    def identity(self) -> bool:
        return not (self.resize or self.renormalise)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return images
        if self.renormalise:
            images = images * self.student_std.to(images.dtype) + self.student_mean.to(images.dtype)
        if self.resize:
            images = F.interpolate(images, size=self.size, mode=self.mode, align_corners=False, antialias=True)
        if self.renormalise:
            images = (images - self.teacher_mean.to(images.dtype)) / self.teacher_std.to(images.dtype)
        return images


class FrozenTeacher(torch.nn.Module):
    """A teacher that stays in eval mode (``train()`` cannot switch it back), has no trainable parameters and runs
    under ``no_grad`` on its own preprocessing of the student's batch."""

    def __init__(self, teacher: torch.nn.Module, preprocess: TeacherInput) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.preprocess = preprocess
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Ignored: the teacher is always in eval mode (no dropout, BatchNorm running statistics)."""
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.teacher(self.preprocess(images))
        if isinstance(logits, (tuple, list)):  # a distilled teacher in train mode cannot happen; be explicit anyway
            logits = logits[0]
        return logits


def _model_data_config(model: torch.nn.Module) -> Dict[str, Any]:
    return resolve_data_config({}, model=model)


def build_teacher(name: str, num_classes: int, student_config: Dict[str, Any], pretrained: bool = False,
                  checkpoint: Optional[str] = None) -> FrozenTeacher:
    """The teacher ``name`` (any timm model, ``vh_*`` included) with its weights: ``checkpoint`` (safetensors or a
    weights-only torch file, for a teacher built with ``num_classes`` outputs, as DeiT loads its RegNetY), else the
    ``pretrained`` weights, whose classifier must have ``num_classes`` outputs. ``student_config``: the student's
    timm data config, from which the teacher's input is re-preprocessed where its own differs."""
    if not checkpoint and not pretrained:
        raise DistillationError(f"teacher: {name} needs weights: pass --teacher-checkpoint PATH or "
                                "--teacher-pretrained (a randomly initialised teacher teaches nothing)")
    try:
        if checkpoint:
            teacher = timm.create_model(name, num_classes=num_classes)
        else:
            teacher = timm.create_model(name, pretrained=True)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        raise DistillationError(f"teacher: unknown model {name!r} (any timm model name; ours: vh_*)") from None
    if checkpoint:
        try:
            state_dict = read_state_dict(Path(checkpoint))
        except (UnsafeWeightsError, OSError) as error:
            raise DistillationError(f"teacher_checkpoint: {error}") from error
        mismatch = state_dict_mismatch(teacher, state_dict)
        if mismatch:
            raise DistillationError(f"teacher_checkpoint: {checkpoint} does not fit {name} with {num_classes} "
                                    f"classes (the student's):\n{mismatch}")
        teacher.load_state_dict(state_dict)
    teacher_classes = getattr(teacher, "num_classes", None)
    if teacher_classes != num_classes:
        raise DistillationError(f"teacher: {name} predicts {teacher_classes} classes, the student's data has "
                                f"{num_classes}; give --teacher-checkpoint weights trained on the same classes")
    return FrozenTeacher(teacher, TeacherInput(student_config, _model_data_config(teacher)))


def distilling_loss(base_criterion: Callable[[torch.Tensor, Any], torch.Tensor], teacher: FrozenTeacher, kind: str,
                    alpha: float, tau: float
                    ) -> Callable[[Union[torch.Tensor, Sequence[torch.Tensor]], Any, torch.Tensor], torch.Tensor]:
    """``loss(outputs, targets, images)``: ``(1 - alpha) * base_criterion(class logits, targets) + alpha *``
    :func:`distillation_loss` of the distillation logits (the second output of a student in distilled training,
    else the class logits) against the teacher's logits on ``images`` (the batch the student saw, mixed or not)."""

    def loss(outputs: Union[torch.Tensor, Sequence[torch.Tensor]], targets: Any, images: torch.Tensor
             ) -> torch.Tensor:
        logits, distill_logits = _split_outputs(outputs)
        teacher_logits = teacher(images)
        return (1.0 - alpha) * base_criterion(logits, targets) + alpha * distillation_loss(
            distill_logits, teacher_logits, kind, tau)

    return loss


def _split_outputs(outputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return outputs, outputs
    logits, distill_logits = outputs
    return logits, distill_logits
