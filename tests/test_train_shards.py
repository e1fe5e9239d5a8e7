"""Tar shards: vithub data pack round-trips an image folder, vithub train reads the shards (a folder or wds/NAME),
bad shards are named, an unreadable image inside one is skipped and counted, a killed run resumes bit for bit, and
two torchrun processes see every sample exactly once per epoch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from vithub import cli
from vithub.train import DataError, TrainConfig, train
from vithub.train.shards import INFO_FILE, ShardSplit, pack_image_folder

SCRIPT = Path(__file__).parent / "epoch_check.py"


def _folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 6, size: int = 20) -> Path:
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
                suffix = ".png" if index % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{name}{index}{suffix}")
    return root


@pytest.fixture
def packed(tmp_path):
    source = _folder(tmp_path / "images")
    output = tmp_path / "shards"
    assert cli.main(["data", "pack", str(source), str(output), "--shard-size", "4"]) == 0
    return source, output


def test_pack_round_trips_an_image_folder(packed):
    """Every image comes back byte for byte with its class, in timm's folder order; shards hold at most 4."""
    source, output = packed
    info = json.loads((output / INFO_FILE).read_text())
    assert info["classes"] == ["ant", "bee", "cat"]
    assert info["splits"]["train"]["num_samples"] == 18 and info["splits"]["train"]["shard_lengths"] == [4] * 4 + [2]
    assert info["splits"]["validation"]["filenames"][0] == "validation-000000.tar"
    split = ShardSplit(output, "train")
    from timm.data.readers.reader_image_folder import find_images_and_targets

    files, _ = find_images_and_targets(str(source / "train"))
    assert len(split) == len(files) == 18
    for index, (path, label) in enumerate(files):
        handle, target = split.reader[index]
        assert handle.read() == Path(path).read_bytes() and target == label
    assert split.filename(3).startswith("train-000000.tar:train_00000003")


def test_training_on_shards_equals_training_on_the_folder(packed, tmp_path):
    """The same images in the same order: a run on the shards ends with the weights of a run on the folder."""
    source, output = packed
    common = dict(epochs=1, batch_size=4, img_size=16, workers=0, seed=3, progress=False, aa="rand-m9-mstd0.5-inc1",
                  reprob=0.25)
    folder_run = train(TrainConfig(data=str(source), output=str(tmp_path / "folder"), val_split="val", **common))
    shard_run = train(TrainConfig(data=str(output), output=str(tmp_path / "shard"), **common))
    assert shard_run["classes"] == folder_run["classes"] == ["ant", "bee", "cat"]
    from safetensors.torch import load_file

    expected, actual = (load_file(tmp_path / name / "last.safetensors") for name in ("folder", "shard"))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    spec_run = train(TrainConfig(data="wds/images", data_dir=str(output), output=str(tmp_path / "spec"), **common))
    assert spec_run["top1"] == shard_run["top1"]


def _rewrite(shard: Path, drop_suffix: str = "", corrupt_key: str = "") -> None:
    with tarfile.open(shard) as archive:
        members = [(member, archive.extractfile(member).read()) for member in archive if member.isfile()]
    with tarfile.open(shard, "w") as archive:
        for member, payload in members:
            if drop_suffix and member.name.endswith(drop_suffix) and member.name.startswith("train_00000001"):
                continue
            if corrupt_key and member.name.startswith(corrupt_key) and not member.name.endswith(".cls"):
                payload = b"not an image"
                member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"shard .*train-000000.tar is truncated: member train_00000003.cls ends at byte"),
    ("garbage", r"shard .*train-000000.tar is not a readable tar"),
    ("no_label", r"shard .*train-000000.tar, sample 'train_00000001' has no label member"),
    ("no_image", r"shard .*train-000000.tar, sample 'train_00000001' has no image member"),
    ("bad_split", r"no split 'nope'"),
])
def test_bad_shards_exit_2_naming_shard_and_sample(packed, tmp_path, capsys, damage, message):
    _, output = packed
    shard = output / "train-000000.tar"
    extra = []
    if damage == "truncate":  # cut inside the last member's data: the tar headers alone still read fine
        with tarfile.open(shard) as archive:
            last = archive.getmembers()[-1]
        shard.write_bytes(shard.read_bytes()[:last.offset_data + last.size - 1])
    elif damage == "garbage":
        shard.write_bytes(b"\x00garbage" * 100)
    elif damage == "no_label":
        _rewrite(shard, drop_suffix=".cls")
    elif damage == "no_image":
        _rewrite(shard, drop_suffix=".jpg")
        _rewrite(shard, drop_suffix=".png")
    else:
        extra = ["--train-split", "nope"]
    if damage in ("no_label", "no_image"):  # the info's count would name the change first; drop it
        info = json.loads((output / INFO_FILE).read_text())
        del info["splits"]["train"]["shard_lengths"]
        (output / INFO_FILE).write_text(json.dumps(info))
    code = cli.main(["train", "--data", str(output), "--output", str(tmp_path / "run"), "--epochs", "1", *extra])
    assert code == 2
    error = capsys.readouterr().err
    import re

    assert re.search(message, error), error


def test_an_unreadable_image_in_a_shard_is_skipped_and_counted(packed, tmp_path):
    _, output = packed
    _rewrite(output / "train-000001.tar", corrupt_key="train_00000005")
    summary = train(TrainConfig(data=str(output), output=str(tmp_path / "run"), epochs=1, batch_size=3, img_size=16,
                                workers=0, progress=False, max_unreadable=0.1))
    assert summary["unreadable_images"]["train"] == 1
    assert summary["unreadable_files"]["train"][0].endswith("train-000001.tar:train_00000005")


def _command(data: Path):
    def command(output: Path, *extra: str):
        return [sys.executable, "-m", "vithub.train", "--data", str(data), "--output", str(output), "--epochs", "2",
                "-b", "4", "--img-size", "16", "--checkpoint-every", "2", "--seed", "5", "--workers", "2",
                "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", *extra]
    return command


def test_shard_run_killed_and_resumed_equals_an_unbroken_one(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import kill_and_resume

    output = tmp_path / "shards"
    pack_image_folder(_folder(tmp_path / "images", per_class=12), output, shard_size=5)
    kill_and_resume(_command(output), tmp_path / "unbroken", tmp_path / "broken", total_updates=2 * (36 // 4))


def test_two_torchrun_processes_see_every_shard_sample_once_per_epoch(tmp_path):
    """The trainer's own loader under torchrun (gloo, 2 processes, 2 workers each): per epoch, the samples the two
    ranks read are disjoint and together all of the epoch's full global batches; each epoch has its own order."""
    output = tmp_path / "shards"
    pack_image_folder(_folder(tmp_path / "images", per_class=7), output, shard_size=4)  # 21 samples
    report = tmp_path / "seen.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
               str(output), str(report)]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(report.read_text())
    names = {f"train-{index // 4:06d}.tar:train_{index:08d}" for index in range(21)}
    orders = []
    for epoch in ("0", "1"):
        ranks = seen[epoch]
        assert not set(ranks[0]) & set(ranks[1])
        together = ranks[0] + ranks[1]
        assert len(together) == len(set(together)) == (21 // 4) * 4  # full global batches of 2 x 2
        assert set(together) <= names
        orders.append(ranks[0])
    assert orders[0] != orders[1]
