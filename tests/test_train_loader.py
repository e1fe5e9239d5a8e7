"""The input pipeline of vithub train: worker defaults, persistent workers that get each epoch, augmentation drawn
from (seed, epoch, index) so that a resume with workers is exact, and the data-wait fraction of each epoch."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from vithub.train import TrainConfig, train
from vithub.train.data import ReadableSamples, build_data, sample_rng
from vithub.train.engine import resolve_config
from vithub.train.loader import MAX_DEFAULT_WORKERS, CurrentEpoch, KeyedByEpoch, data_loader, default_workers


def _folder(root: Path, classes: int = 2, per_class: int = 12, size: int = 24) -> Path:
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(pixels.numpy()).save(folder / f"{index}.png")
    return root


def test_workers_default_to_the_cpus_shared_among_the_nodes_processes(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers("/data/imagenet") == max(1, min(MAX_DEFAULT_WORKERS, cpus))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus * 4))
    assert default_workers("/data/imagenet") == 1
    assert default_workers(None) == 0 and default_workers("digits") == 0
    assert resolve_config(TrainConfig()).workers == 0
    assert resolve_config(TrainConfig(workers=0, data="x")).workers == 0  # 0 stays available


def test_an_augmented_sample_depends_on_seed_epoch_and_index_only(tmp_path):
    """RandAugment + random erasing + random-resized crop: the same (seed, epoch, index) gives the same tensor
    whatever was read before and whatever the global generators hold; another epoch gives another one; the global
    generators are left as they were."""
    data = build_data(str(_folder(tmp_path)), 0, {"input_size": (3, 16, 16), "interpolation": "bicubic",
                                                  "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0},
                      train_augmentation={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5}, seed=3)
    train_set = data.train
    first = train_set[5][0]
    torch.manual_seed(123)
    random.seed(9)
    np.random.seed(4)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    train_set[7]
    assert torch.equal(train_set[5][0], first)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    train_set.set_epoch(1)
    assert not torch.equal(train_set[5][0], first)
    unseeded = ReadableSamples(train_set.dataset, train_set.transform)
    assert not torch.equal(unseeded[5][0], unseeded[5][0])  # without a seed: the process's generators
    with sample_rng(3, 0, 5):
        a = torch.rand(3)
    with sample_rng(3, 0, 5):
        assert torch.equal(torch.rand(3), a)


class _WhoReads(Dataset):
    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return torch.tensor([index, self.epoch, os.getpid()])


def test_persistent_workers_read_each_epoch_with_its_epoch():
    """One loader for the run: its two workers stay (same processes in both epochs) and each sample is read with the
    epoch of the batch (a set_epoch call in the main process would not reach a persistent worker's copy)."""
    config = TrainConfig(workers=2, seed=0)
    sampler = CurrentEpoch()
    loader = data_loader(KeyedByEpoch(_WhoReads()), config, torch.device("cpu"), torch.stack, batch_sampler=sampler)
    assert loader.persistent_workers and loader.prefetch_factor == 2 and not loader.pin_memory
    seen = {}
    for epoch in (0, 1):
        sampler.set(epoch, [[0, 1], [2, 3], [7, 6]])
        rows = torch.cat(list(loader))
        assert rows[:, 0].tolist() == [0, 1, 2, 3, 7, 6] and set(rows[:, 1].tolist()) == {epoch}
        seen[epoch] = set(rows[:, 2].tolist())
    assert seen[0] == seen[1] and os.getpid() not in seen[0] and len(seen[0]) == 2


def test_epochs_report_the_fraction_spent_waiting_for_data(tmp_path, capsys):
    output = tmp_path / "run"
    train(TrainConfig(data=str(_folder(tmp_path / "data")), epochs=2, batch_size=4, img_size=16, workers=1,
                      output=str(output), progress=True))
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 < row["data_wait"] < 1.0 for row in rows)
    assert "data_wait" in (output / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "data=" in capsys.readouterr().err  # the progress bar shows it


def _folder_command(data: Path):
    def command(output: Path, *extra: str):
        return [sys.executable, "-m", "vithub.train", "--data", str(data), "--output", str(output), "--epochs", "2",
                "-b", "4", "--img-size", "16", "--checkpoint-every", "2", "--seed", "5", "--workers", "2",
                "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0", *extra]
    return command


def test_folder_run_with_workers_killed_and_resumed_equals_an_unbroken_one(tmp_path):
    """RandAugment, random erasing and mixup with two loader workers: a run killed mid-epoch (SIGKILL) and resumed
    ends with the unbroken run's weights, bit for bit."""
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import kill_and_resume

    data = _folder(tmp_path / "data", classes=2, per_class=24)
    kill_and_resume(_folder_command(data), tmp_path / "unbroken", tmp_path / "broken", total_updates=2 * (48 // 4))


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "v0", "augmix-m5"])
def test_posterize_at_zero_bits_gives_a_black_image_instead_of_stopping_the_run(tmp_path, policy):
    """timm passes 0 bits to Pillow's posterize at full RandAugment magnitude (and low v0 levels), which Pillow 13
    refuses; the training transform keeps older Pillow's result, a black image."""
    from PIL import ImageOps
    from timm.data import auto_augment

    data = build_data(str(_folder(tmp_path)), 0, {"input_size": (3, 16, 16), "interpolation": "bilinear",
                                                  "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0},
                      train_augmentation={"auto_augment": policy}, seed=0)
    steps = data.train.transform.transforms
    augment = next(step for step in steps if hasattr(step, "ops") or hasattr(step, "policy"))
    ops = list(getattr(augment, "ops", [])) + [op for sub in getattr(augment, "policy", []) for op in sub]
    posterizing = [op for op in ops if "Posterize" in op.name]
    assert posterizing and all(op.aug_fn is not auto_augment.posterize for op in posterizing)
    image = Image.fromarray(torch.randint(1, 256, (8, 8, 3), dtype=torch.uint8).numpy())
    assert np.asarray(posterizing[0].aug_fn(image, 0)).max() == 0
    assert np.array_equal(np.asarray(posterizing[0].aug_fn(image, 3)), np.asarray(ImageOps.posterize(image, 3)))
    if tuple(int(part) for part in Image.__version__.split(".")[:1]) >= (13,):  # why the fix exists
        with pytest.raises(ValueError):
            auto_augment.posterize(image, 0)
