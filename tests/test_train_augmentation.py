"""vithub train's ImageNet-recipe options under timm's names and meanings: the augmentation reaches the train
transform, mixup and the loss are the ones timm would build, the lr scales with the global batch as in timm's
train.py, the optimizer and schedule take their extra settings, repeated augmentation deals each image's copies to
different processes and resumes exactly, and bad values are named."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchvision import transforms as tv

import vithub  # noqa: F401  (registers the vh_* models)
from vithub.train import TrainConfig, cli
from vithub.train.config import scaled_lr
from vithub.train.engine import EpochBatches, repeated_batches
from vithub.train.tasks import ClassificationTask, criterion_for, mixup_for, optimizer_options


def _folder(root: Path) -> Path:
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(3):
                Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(
                    folder / f"{index}.png")
    return root


def _train_transforms(tmp_path: Path, **options) -> list:
    task = ClassificationTask()
    config = task.resolve(TrainConfig(model="vh_efficientvit_m0", data=str(_folder(tmp_path / "data")), img_size=32,
                                      **options))
    config.check()
    transform = task.build_data(config).train.transform
    return list(transform.transforms)


def test_augmentation_options_reach_the_train_transform(tmp_path):
    parts = _train_transforms(tmp_path, aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=2,
                              scale=[0.5, 1.0], ratio=[0.8, 1.25], hflip=0.3, vflip=0.1,
                              train_interpolation="bicubic")
    crop = next(part for part in parts if isinstance(part, RandomResizedCropAndInterpolation))
    assert crop.scale == (0.5, 1.0) and crop.ratio == (0.8, 1.25)
    assert crop.interpolation == tv.InterpolationMode.BICUBIC
    assert [part.p for part in parts if isinstance(part, tv.RandomHorizontalFlip)] == [0.3]
    assert [part.p for part in parts if isinstance(part, tv.RandomVerticalFlip)] == [0.1]
    (augment,) = [part for part in parts if isinstance(part, RandAugment)]
    assert augment.num_layers == 2 and {op.magnitude for op in augment.ops} == {9}
    assert {op.magnitude_std for op in augment.ops} == {0.5}
    assert not any(isinstance(part, tv.ColorJitter) for part in parts)  # timm leaves it out under an AA policy
    (erasing,) = [part for part in parts if isinstance(part, RandomErasing)]
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.25, "pixel", 2)


def test_default_augmentation_is_unchanged(tmp_path):
    """Without the new flags the train transform is timm's default one (colour jitter 0.4, no RandAugment, no
    erasing, horizontal flips at 0.5), as before these options existed."""
    parts = _train_transforms(tmp_path)
    (jitter,) = [part for part in parts if isinstance(part, tv.ColorJitter)]
    assert jitter.brightness == (0.6, 1.4)
    assert not any(isinstance(part, (RandAugment, RandomErasing, tv.RandomVerticalFlip)) for part in parts)
    assert [part.p for part in parts if isinstance(part, tv.RandomHorizontalFlip)] == [0.5]


def test_mixup_and_the_loss_are_the_ones_timm_builds():
    config = TrainConfig(mixup=0.8, cutmix=1.0, mixup_prob=0.7, mixup_switch_prob=0.4, mixup_mode="elem",
                         smoothing=0.2)
    mixup = mixup_for(config, 10)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob, mixup.mode,
            mixup.label_smoothing, mixup.num_classes) == (0.8, 1.0, 0.7, 0.4, "elem", 0.2, 10)
    assert mixup_for(TrainConfig(cutmix_minmax=[0.2, 0.8]), 10).cutmix_minmax == (0.2, 0.8)
    assert mixup_for(TrainConfig(), 10) is None
    assert isinstance(criterion_for(config, mixed=True), SoftTargetCrossEntropy)
    bce = criterion_for(TrainConfig(bce_loss=True, bce_target_thresh=0.2), mixed=True)
    assert isinstance(bce, BinaryCrossEntropy) and bce.target_threshold == 0.2  # mixup made the soft targets
    smoothed = criterion_for(TrainConfig(bce_loss=True, smoothing=0.1), mixed=False)
    assert isinstance(smoothed, BinaryCrossEntropy) and smoothed.smoothing == 0.1
    assert isinstance(criterion_for(TrainConfig(smoothing=0.1), mixed=False), LabelSmoothingCrossEntropy)
    assert type(criterion_for(TrainConfig(smoothing=0.0, bce_loss=True), mixed=False)) is torch.nn.CrossEntropyLoss


def test_lr_base_scales_with_the_global_batch_as_timm_does():
    config = TrainConfig(batch_size=64, grad_accum_steps=2, lr_base=1e-3, lr_base_size=512, opt="sgd")
    assert scaled_lr(config, world=2) == pytest.approx(1e-3 * 256 / 512)  # linear for SGD
    adamw = TrainConfig(batch_size=64, grad_accum_steps=2, lr_base=1e-3, lr_base_size=512, opt="adamw")
    assert scaled_lr(adamw, world=2) == pytest.approx(1e-3 * math.sqrt(256 / 512))  # sqrt for ada*, lamb
    forced = TrainConfig(batch_size=64, lr_base=1e-3, lr_base_size=512, opt="adamw", lr_base_scale="linear")
    assert scaled_lr(forced, world=1) == pytest.approx(1e-3 * 64 / 512)


def test_optimizer_takes_eps_betas_and_momentum():
    model = torch.nn.Linear(4, 2)
    adamw = ClassificationTask().build_optimizer(
        TrainConfig(opt="adamw", lr=1e-3, weight_decay=0.05, opt_eps=1e-6, opt_betas=[0.8, 0.95]), model)
    assert {(group["eps"], group["betas"]) for group in adamw.param_groups} == {(1e-6, (0.8, 0.95))}
    sgd = ClassificationTask().build_optimizer(TrainConfig(opt="sgd", lr=0.1, weight_decay=0.0, momentum=0.7), model)
    assert {group["momentum"] for group in sgd.param_groups} == {0.7}
    assert optimizer_options(TrainConfig()) == {"momentum": 0.9}


def test_warmup_lr_cooldown_drop_and_sync_bn_reach_the_run(tmp_path, monkeypatch):
    """Through the trainer's own setup (two processes simulated: DDP's wrapper stands aside)."""
    from vithub.train import engine

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model: model)
    task = ClassificationTask()
    config = task.resolve(TrainConfig(output=str(tmp_path / "run"), epochs=3, cooldown_epochs=2, warmup_epochs=1,
                                      warmup_lr=1e-4, drop=0.3, sync_bn=True, batch_size=32))
    config.check()
    run = engine.setup(config, task, torch.device("cpu"), rank=0, world=2)
    assert run.scheduler.warmup_lr_init == 1e-4 and config.total_epochs == 5
    assert [module.p for module in run.model.modules() if isinstance(module, torch.nn.Dropout)] == [0.3]
    assert any(isinstance(module, torch.nn.SyncBatchNorm) for module in run.model.modules())
    assert not any(type(module) is torch.nn.BatchNorm2d for module in run.model.modules())


def test_cooldown_epochs_lengthen_the_run(tmp_path):
    from vithub.train import train

    summary = train(TrainConfig(output=str(tmp_path / "run"), epochs=1, cooldown_epochs=1, batch_size=256,
                                progress=False, img_size=16))
    assert summary["epochs"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_repeated_augmentation_deals_each_images_copies_to_different_processes():
    order = list(range(100, 124))  # 24 images, batch 3 on 2 processes: 4 global batches
    per_rank = [repeated_batches(order, 3, 3, rank, 2) for rank in range(2)]
    assert [len(batches) for batches in per_rank] == [4, 4]
    entries = [entry for batches in per_rank for batch in batches for entry in batch]
    seen = [index for index, _ in entries]
    counts = {index: seen.count(index) for index in set(seen)}
    assert len(seen) == 24 and sorted(counts) == order[:8] and set(counts.values()) == {3}
    for index in counts:  # three copies over two processes: never all on one; each copy has its own number
        assert {rank for rank in range(2) for batch in per_rank[rank] for entry in batch if entry[0] == index} == {0, 1}
        assert sorted(copy for seen_index, copy in entries if seen_index == index) == [0, 1, 2]
    # the sampler draws the same order for a resumed epoch and skips what was seen
    full = EpochBatches(24, 3, seed=5, epoch=2, rank=1, world=2, repeats=3)
    assert EpochBatches(24, 3, seed=5, epoch=2, start=2, rank=1, world=2, repeats=3).batches == full.batches[2:]
    assert len(full) == len(EpochBatches(24, 3, seed=5, epoch=2, rank=1, world=2))  # the epoch keeps its length
    with pytest.raises(ValueError, match="aug_repeats: repeated augmentation does not combine"):
        EpochBatches(24, 3, seed=5, epoch=2, groups=[0, 1] * 12, repeats=3)


def test_repeated_copies_of_an_image_are_augmented_apart_and_each_copy_alike_on_resume(tmp_path):
    """The loader's keys carry the copy number to the dataset, whose draws come from (seed, epoch, index, copy):
    two copies of one image differ (random crop, flip, RandAugment, erasing), one copy read twice (as after a
    resume, or in another worker) is the same, and a key without a copy is copy 0."""
    from vithub.train.loader import CurrentEpoch, KeyedByEpoch

    task = ClassificationTask()
    config = task.resolve(TrainConfig(model="vh_efficientvit_m0", data=str(_folder(tmp_path / "data")), img_size=32,
                                      aa="rand-m9-mstd0.5-inc1", reprob=0.25, aug_repeats=3))
    config.check()
    keyed = KeyedByEpoch(task.build_data(config).train)
    sampler = CurrentEpoch()
    batches = EpochBatches(len(keyed), 3, seed=config.seed, epoch=1, repeats=3).batches
    sampler.set(1, batches)
    keys = [key for batch in sampler for key in batch]
    assert keys[:3] == [(1, batches[0][0][0], copy) for copy in range(3)]  # one image's three copies, in a row
    first, second, third = (keyed[key][0] for key in keys[:3])
    assert not torch.equal(first, second) and not torch.equal(second, third)
    assert torch.equal(keyed[keys[1]][0], second)
    assert torch.equal(keyed[(1, keys[0][1])][0], first)


@pytest.mark.parametrize("options, message", [
    (dict(aa="rand-zz9"), "aa: 'rand-zz9' is not an AutoAugment policy"),
    (dict(reprob=1.5), "reprob must be a probability"),
    (dict(scale=[1.0, 0.5]), "scale takes two numbers MIN MAX"),
    (dict(opt_betas=[0.9]), "opt_betas takes two numbers"),
    (dict(recount=0), "recount must be >= 1"),
])
def test_bad_augmentation_values_are_named(options, message):
    config = ClassificationTask().resolve(TrainConfig(**options))
    with pytest.raises(ValueError, match=message):
        config.check()


def test_cli_takes_the_options_with_timms_names(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_train_arguments(parser)
    args = parser.parse_args(["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--scale", "0.35", "1",
                              "--mixup-switch-prob", "0.3", "--opt-betas", "0.9", "0.99", "--lr-base", "5e-4",
                              "--cooldown-epochs", "10", "--sync-bn", "--bce-loss", "--aug-repeats", "3"])
    config = cli.task_config_from_args(vars(args))
    assert (config.aa, config.reprob, config.scale, config.mixup_switch_prob, config.opt_betas, config.lr_base,
            config.cooldown_epochs, config.sync_bn, config.bce_loss, config.aug_repeats) == (
        "rand-m9-mstd0.5-inc1", 0.25, [0.35, 1.0], 0.3, [0.9, 0.99], 5e-4, 10, True, True, 3)
    assert cli.main(["--aa", "nonsense", "--output", str(tmp_path / "run")]) == 2
    assert "aa: 'nonsense' is not an AutoAugment policy" in capsys.readouterr().err


def test_clip_mode_takes_timms_clipping(monkeypatch, tmp_path):
    """--clip-mode reaches timm's dispatch_clip_grad, with the head left out for AGC as timm's train.py does."""
    from vithub.train import engine, train

    calls = []
    monkeypatch.setattr(engine, "dispatch_clip_grad",
                        lambda parameters, value, mode: calls.append((len(list(parameters)), value, mode)))
    train(TrainConfig(output=str(tmp_path / "run"), epochs=1, batch_size=512, progress=False, img_size=16,
                      clip_grad=0.02, clip_mode="agc"))
    model_parameters = len(list(timm.create_model("vh_efficientvit_m0", num_classes=10).parameters()))
    assert calls and calls[0] == (model_parameters - 2, 0.02, "agc")
