"""Knowledge distillation in vithub train (--teacher): DeiT's losses, the frozen teacher, its own preprocessing, the
student's distillation head, bad options, and a distilled run that resumes exactly and runs under torchrun."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from vithub.train import TrainConfig, train
from vithub.train.distillation import (
    DistillationError,
    FrozenTeacher,
    TeacherInput,
    build_teacher,
    distillation_loss,
    distilling_loss,
)
from vithub.train.tasks import ClassificationTask

IMAGENET = {"input_size": (3, 40, 40), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "interpolation": "bicubic"}
HALVES = {"input_size": (3, 24, 24), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}


def _teacher_file(path: Path, name: str = "test_vit", num_classes: int = 10, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def test_hard_and_soft_losses_equal_the_formulas():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5) * 3
    hard = -torch.log_softmax(student, 1)[torch.arange(6), teacher.argmax(1)].mean()
    torch.testing.assert_close(distillation_loss(student, teacher, "hard"), hard)
    tau = 2.5
    p_teacher = torch.softmax(teacher / tau, 1)
    kl = (p_teacher * (torch.log(p_teacher) - torch.log_softmax(student / tau, 1))).sum()
    torch.testing.assert_close(distillation_loss(student, teacher, "soft", tau), kl * tau ** 2 / student.numel())
    with pytest.raises(DistillationError, match="one of"):
        distillation_loss(student, teacher, "medium")


def test_blend_takes_the_distillation_head_for_the_teacher_term():
    """(1 - alpha) label loss on the class logits + alpha teacher term on the distillation logits (a tuple), on
    the class logits alone when the student gives one tensor."""
    torch.manual_seed(1)
    images = torch.randn(4, 3, 24, 24)
    teacher_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 5))
    teacher = FrozenTeacher(teacher_model, TeacherInput(HALVES, HALVES))
    labels = torch.randint(0, 5, (4,))
    logits, distill = torch.randn(4, 5), torch.randn(4, 5)
    blended = distilling_loss(F.cross_entropy, teacher, "hard", alpha=0.3, tau=1.0)
    with torch.no_grad():
        taught = teacher_model(images).argmax(1)
    expected = 0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(distill, taught)
    torch.testing.assert_close(blended((logits, distill), labels, images), expected)
    torch.testing.assert_close(blended(logits, labels, images),
                               0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(logits, taught))


def test_teacher_input_undoes_the_students_preprocessing():
    torch.manual_seed(2)
    images = torch.randn(2, 3, 24, 24)
    adapter = TeacherInput(HALVES, IMAGENET)
    pixels = images * 0.5 + 0.5
    resized = F.interpolate(pixels, size=(40, 40), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(adapter(images), (resized - mean) / std)
    same = TeacherInput(HALVES, HALVES)
    assert same.identity and same(images) is images


def test_frozen_teacher_never_trains():
    teacher = FrozenTeacher(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)),
                            TeacherInput(HALVES, HALVES))
    teacher.train()
    assert not any(module.training for module in teacher.modules())
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    inputs = torch.randn(3, 4, requires_grad=True)
    output = teacher(inputs)
    assert not output.requires_grad
    assert torch.equal(output, teacher(inputs))  # dropout off: the same logits every time


def test_levit_student_learns_its_distillation_head_from_the_teacher(tmp_path):
    """A LeViT student in distilled training returns (class, distillation) logits; hard distillation's loss is
    the formula on them, with the teacher's argmax of its own preprocessing (224 -> test_vit's 160, other mean)."""
    task = ClassificationTask()
    config = task.resolve(TrainConfig(model="vh_levit_128s", data="folder", teacher="test_vit", seed=0,
                                      teacher_checkpoint=str(_teacher_file(tmp_path / "teacher.safetensors")),
                                      distillation_alpha=0.25, smoothing=0.0))
    data = type("Data", (), {"num_classes": 10})()
    student = task.build_model(config, data).train()
    assert student.distilled_training
    made = []
    import vithub.train.tasks as tasks

    original = tasks.build_teacher
    try:
        tasks.build_teacher = lambda *args: made.append(original(*args)) or made[-1]
        loss_fn = task.training_loss(config, data)
    finally:
        tasks.build_teacher = original
    torch.manual_seed(3)
    images, labels = torch.randn(2, 3, 224, 224), torch.randint(0, 10, (2,))
    loss = loss_fn(student, images, labels)
    torch.manual_seed(0)
    reference_teacher = timm.create_model("test_vit", num_classes=10).eval()
    teacher_config = timm.data.resolve_data_config({}, model=reference_teacher)
    student_config = timm.data.resolve_data_config({}, model=student)
    pixels = images * torch.tensor(student_config["std"]).view(1, 3, 1, 1) + torch.tensor(
        student_config["mean"]).view(1, 3, 1, 1)
    pixels = F.interpolate(pixels, size=teacher_config["input_size"][1:], mode="bicubic", antialias=True)
    with torch.no_grad():
        taught = reference_teacher((pixels - torch.tensor(teacher_config["mean"]).view(1, 3, 1, 1))
                                   / torch.tensor(teacher_config["std"]).view(1, 3, 1, 1)).argmax(1)
    torch.manual_seed(3)
    logits, distill = student(images)
    expected = 0.75 * F.cross_entropy(logits, labels) + 0.25 * F.cross_entropy(distill, taught)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    loss.backward()
    assert student.head_dist.linear.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in made[0].parameters())


def _folder(root: Path, classes: int = 10, per_class: int = 2) -> Path:
    for split in ("train", "val"):
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(
                    folder / f"{index}.png")
    return root


def test_a_distilled_run_keeps_its_teacher_frozen(tmp_path, monkeypatch):
    """Soft distillation of a student without a distillation head through a whole run: the teacher runs under
    no_grad in eval mode on every batch, its weights unchanged, the student's loss differs from the teacher-less
    run's."""
    import vithub.train.tasks as tasks

    teacher_path = _teacher_file(tmp_path / "teacher.safetensors")
    calls = []
    original = tasks.build_teacher

    def watched(*args):
        teacher = original(*args)
        teacher.teacher.register_forward_pre_hook(
            lambda module, inputs: calls.append((module.training, torch.is_grad_enabled(), inputs[0].shape)))
        calls.append(teacher)
        return teacher

    monkeypatch.setattr(tasks, "build_teacher", watched)
    common = dict(data="digits", epochs=1, batch_size=64, progress=False, seed=1)
    taught = train(TrainConfig(output=str(tmp_path / "taught"), teacher="test_vit", teacher_checkpoint=str(
        teacher_path), distillation_tau=2.0, **common))
    teacher, *seen = calls
    assert len(seen) == 1437 // 64
    assert all(training is False and grad is False and shape[-1] == 160 for training, grad, shape in seen)
    from safetensors.torch import load_file

    for key, value in load_file(str(teacher_path)).items():
        assert torch.equal(teacher.teacher.state_dict()[key], value), key
    plain = train(TrainConfig(output=str(tmp_path / "plain"), **common))
    rows = [json.loads((tmp_path / name / "metrics.jsonl").read_text()) for name in ("taught", "plain")]
    assert rows[0]["train_loss"] != rows[1]["train_loss"]
    assert taught["epochs"] == plain["epochs"] == 1


def test_token_reduction_students_distil(tmp_path):
    """A ToMe-reduced DeiT distils from a teacher (soft: it has no distillation head); its loss still carries the
    reduction."""
    summary = train(TrainConfig(model="deit_tiny_patch16_224", data=str(_folder(tmp_path / "data", 2, 2)),
                                epochs=1, batch_size=4, token_reduction="tome:r=(8,-1)", output=str(tmp_path / "run"),
                                teacher="test_vit", progress=False, teacher_checkpoint=str(
                                    _teacher_file(tmp_path / "teacher.safetensors", num_classes=2))))
    assert summary["epochs"] == 1
    from vithub.train.checkpoint import load_state

    config = load_state(tmp_path / "run" / "last.state.pt")["config"]
    assert config["teacher"] == "test_vit" and config["token_reduction"] == "tome:r=(8,-1)"


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "no_such_net", "--teacher-pretrained"], "teacher: unknown model 'no_such_net'"),
    (["--teacher", "test_vit"], "teacher: test_vit needs weights"),
    (["--distillation", "soft"], "need a teacher"),
    (["--teacher", "test_vit", "--teacher-checkpoint", "T1000", "--distillation", "soft"],
     "teacher_checkpoint: .* does not fit test_vit with 10 classes"),
    (["--teacher", "test_vit", "--teacher-checkpoint", "T10", "--distillation", "hard"],
     "hard distillation .* vh_efficientvit_m0 has none"),
    (["--teacher", "test_vit", "--teacher-checkpoint", "T10", "--distillation-alpha", "1.5"], "distillation_alpha"),
    (["--teacher", "test_vit", "--teacher-checkpoint", "T10", "--task", "detection"], "does not distil"),
])
def test_bad_distillation_options_exit_2_naming_the_option(tmp_path, capsys, extra, message):
    from vithub.train.cli import main

    files = {"T10": _teacher_file(tmp_path / "t10.safetensors"),
             "T1000": _teacher_file(tmp_path / "t1000.safetensors", num_classes=1000)}
    extra = [str(files.get(item, item)) for item in extra]
    assert main(["--output", str(tmp_path / "run"), "--epochs", "1", *extra]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error


def _distilled_command(teacher: Path):
    def command(output: Path, *extra: str):
        return [sys.executable, "-m", "vithub.train", "--output", str(output), "--epochs", "1", "--checkpoint-every",
                "3", "--seed", "7", "--teacher", "test_vit", "--teacher-checkpoint", str(teacher),
                "--mixup", "0.8", "--cutmix", "1.0", *extra]
    return command


def test_distilled_run_killed_and_resumed_equals_an_unbroken_one(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import kill_and_resume

    teacher = _teacher_file(tmp_path / "teacher.safetensors")
    kill_and_resume(_distilled_command(teacher), tmp_path / "unbroken", tmp_path / "broken",
                    total_updates=1437 // 64)


def test_distillation_under_torchrun(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import torchrun_two_cpu_processes

    data = _folder(tmp_path / "data", 2, 8)
    teacher = _teacher_file(tmp_path / "teacher.safetensors", num_classes=2)
    output = tmp_path / "ddp"
    summary = torchrun_two_cpu_processes(["--data", str(data), "--output", str(output), "--epochs", "1", "-b", "4",
                                          "--teacher", "test_vit", "--teacher-checkpoint", str(teacher),
                                          "--img-size", "32"], output)
    assert summary["epochs"] == 1
