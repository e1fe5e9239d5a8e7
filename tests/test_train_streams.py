"""Hugging Face datasets in streaming mode (--data hfids/NAME, vithub.train.streams), on local Parquet and image
folders the tests write: a deterministic order per epoch, each global batch split among the ranks, repeated
augmentation, training and evaluation, the stream position in checkpoints, a killed run that resumes bit for bit,
two torchrun processes that see every record once per epoch, and bad input named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from vithub import cli  # noqa: E402
from vithub.train import DataError, TrainConfig, train  # noqa: E402
from vithub.train.checkpoint import load_state  # noqa: E402
from vithub.train.streams import StreamBatches, StreamSamples, StreamSplit  # noqa: E402

SCRIPT = Path(__file__).parent / "epoch_check.py"
CLASSES = ["ant", "bee", "cat"]


def write_stream(root: Path, train: int = 23, val: int = 7, shards: int = 3, seed: int = 0,
                 corrupt: Optional[int] = None, class_label: bool = True) -> Path:
    """A dataset folder of Parquet shards (``data/<split>-0000k-of-0000n.parquet``) with an ``image`` column, a
    ``label`` column (a ClassLabel unless ``class_label`` is false) and a ``name`` column naming each record;
    ``corrupt``: that training record's image bytes are not an image."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=CLASSES) if class_label else
                         Value("int64"), "name": Value("string")})
    (root / "data").mkdir(parents=True)
    for split, count, pieces in (("train", train, shards), ("validation", val, 1)):
        images: List[dict] = []
        for index in range(count):
            buffer = __import__("io").BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
            payload = b"not an image" if split == "train" and index == corrupt else buffer.getvalue()
            images.append({"bytes": payload, "path": None})
        table = Dataset.from_dict({"image": images, "label": [index % 3 for index in range(count)],
                                   "name": [f"{split}{index}" for index in range(count)]}, features=features)
        for piece in range(pieces):
            table.shard(pieces, piece, contiguous=True).to_parquet(
                str(root / "data" / f"{split}-{piece:05d}-of-{pieces:05d}.parquet"))
    return root


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory) -> Path:
    return write_stream(tmp_path_factory.mktemp("stream") / "ds")


def _names(batches) -> List[List[str]]:
    return [[item.record["name"] for item in batch] for batch in batches]


def test_epoch_order_is_drawn_per_epoch_and_each_global_batch_is_split_among_the_ranks(stream_root):
    split = StreamSplit(str(stream_root), "train", shuffle_size=8)
    assert len(split) == 23 and split.classes == CLASSES and split.num_shards == 3
    epoch0 = [_names(StreamBatches(split, 0, seed=4, batch_size=3, count=3, rank=rank, world=2)) for rank in (0, 1)]
    assert [len(batches) for batches in epoch0] == [3, 3]
    together = [name for batches in epoch0 for batch in batches for name in batch]
    assert len(together) == len(set(together)) == 18  # 3 global batches of 2 x 3, no record twice
    order = [record["name"] for record in split.records(0, 4)]
    assert sorted(order) == sorted(f"train{index}" for index in range(23))
    assert len({int(name[5:]) // 8 for name in order[:6]}) == 3  # the buffer mixes the three shards (8, 8, 7)
    for batch in range(3):  # global batch g is the order's records 6g..6g+5, rank r the r-th half of it
        assert epoch0[0][batch] + epoch0[1][batch] == order[6 * batch:6 * batch + 6]
    assert [record["name"] for record in split.records(0, 4)] == order  # the same epoch, the same order
    assert [record["name"] for record in split.records(1, 4)] != order  # another epoch, another
    resumed = _names(StreamBatches(split, 0, seed=4, batch_size=3, count=3, start=2, rank=1, world=2))
    assert resumed == epoch0[1][2:]
    repeated = [list(StreamBatches(split, 0, seed=4, batch_size=3, count=3, rank=rank, world=2, repeats=3))
                for rank in (0, 1)]
    copies = {}
    for rank, batches in enumerate(repeated):
        for item in (item for batch in batches for item in batch):
            copies.setdefault(item.record["name"], []).append((rank, item.copy))
    assert sum(map(len, copies.values())) == 18 and list(copies) == order[:6]  # the epoch keeps its length
    assert all({rank for rank, _ in entries} == {0, 1} and sorted(copy for _, copy in entries) == [0, 1, 2]
               for entries in copies.values())
    val = StreamSplit(str(stream_root), "validation")
    assert _names(StreamBatches(val, 0, None, 4, None)) == [[f"validation{i}" for i in range(4)],
                                                           [f"validation{i}" for i in range(4, 7)]]


def test_a_stream_trains_evaluates_and_checkpoints_its_position(stream_root, tmp_path):
    summary = train(TrainConfig(data=f"hfids/{stream_root}", output=str(tmp_path / "run"), epochs=1, batch_size=4,
                                img_size=16, workers=2, checkpoint_every=2, seed=3, progress=False,
                                aa="rand-m9-mstd0.5-inc1"))
    assert summary["classes"] == CLASSES and summary["unreadable_images"] == {"train": 0, "val": 0}
    assert 0.0 <= summary["top1"] <= 100.0
    step = load_state(tmp_path / "run" / "step.state.pt")
    assert step["stream"] == {"dataset": str(stream_root), "split": "train", "shards": 3, "epoch": 0,
                              "global_batches": 4, "records": 16}
    assert load_state(tmp_path / "run" / "last.state.pt")["stream"]["epoch"] == 1


def test_an_unreadable_record_is_skipped_and_counted_once_over_epochs(tmp_path):
    root = write_stream(tmp_path / "ds", corrupt=5)
    summary = train(TrainConfig(data=f"hfids/{root}", output=str(tmp_path / "run"), epochs=2, batch_size=4,
                                img_size=16, workers=0, progress=False, max_unreadable=0.1))
    assert summary["unreadable_images"]["train"] == 1  # seen in both epochs (at other positions), counted once
    assert "hfids/" in summary["unreadable_files"]["train"][0]


def _command(root: Path):
    def command(output: Path, *extra: str):
        return [sys.executable, "-m", "vithub.train", "--data", f"hfids/{root}", "--output", str(output),
                "--epochs", "2", "-b", "4", "--img-size", "16", "--checkpoint-every", "2", "--seed", "5",
                "--workers", "2", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--stream-shuffle-size", "8",
                *extra]
    return command


def test_stream_run_killed_and_resumed_equals_an_unbroken_one(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import kill_and_resume

    root = write_stream(tmp_path / "ds", train=36, shards=4)
    kill_and_resume(_command(root), tmp_path / "unbroken", tmp_path / "broken", total_updates=2 * (36 // 4))


def test_two_torchrun_processes_see_every_record_once_per_epoch(stream_root, tmp_path):
    """The trainer's own loader under torchrun (gloo, 2 processes, 2 workers each): per epoch, the records the two
    ranks read are disjoint and together the epoch's full global batches; each epoch has its own order."""
    report = tmp_path / "seen.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
               f"hfids/{stream_root}", str(report)]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(report.read_text())
    orders = []
    for epoch in ("0", "1"):
        ranks = seen[epoch]
        assert not set(ranks[0]) & set(ranks[1])
        together = ranks[0] + ranks[1]
        assert len(together) == len(set(together)) == (23 // 4) * 4  # full global batches of 2 x 2
        assert set(together) <= {f"train{index}" for index in range(23)}
        orders.append(together)
    assert orders[0] != orders[1]


def test_changed_stream_refuses_the_resume(stream_root, tmp_path):
    split = StreamSamples(StreamSplit(str(stream_root), "train"))
    saved = split.position(1, 2, 4, 1)
    assert saved["records"] == 8
    split.check_position(saved, "step.state.pt")
    with pytest.raises(DataError, match=r"another stream \(shards 5 -> 3\)"):
        split.check_position(dict(saved, shards=5), "step.state.pt")
    with pytest.raises(DataError, match="not written by a run on a streamed dataset"):
        split.check_position(None, "step.state.pt")


def _image_folder_stream(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split, count in (("train", 4), ("validation", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_a_stream_that_does_not_say_its_length_takes_it_from_the_options(tmp_path, capsys):
    root = _image_folder_stream(tmp_path / "folder")
    base = ["train", "--data", f"hfids/{root}", "--output", str(tmp_path / "run"), "--epochs", "1", "-b", "4",
            "--img-size", "16", "--workers", "0"]
    assert cli.main(base) == 2
    assert "does not say how many records its 'train' split has; give --train-num-samples N" in capsys.readouterr().err
    assert cli.main(base + ["--train-num-samples", "12", "--val-num-samples", "6"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["classes"] == CLASSES


@pytest.mark.parametrize("extra, message", [
    (["--input-key", "picture"], r"has no column 'picture' \(--input-key\); its columns: \['image', 'label', 'name'\]"),
    (["--target-key", "name"], r"column 'name' \(--target-key\) holds .*string.*, not class labels"),
    (["--train-num-samples", "40"], r"ended after 23 records in epoch 0, before the 40 of the epoch's 10 batches .*"
                                    r"--train-num-samples"),
    (["--train-split", "nope"], r"cannot stream hfids/.* split 'nope'"),
])
def test_bad_stream_input_exits_2_naming_the_option(stream_root, tmp_path, capsys, extra, message):
    code = cli.main(["train", "--data", f"hfids/{stream_root}", "--output", str(tmp_path / "run"), "--epochs", "1",
                     "-b", "4", "--img-size", "16", "--workers", "0", *extra])
    assert code == 2
    import re

    error = capsys.readouterr().err
    assert re.search(message, error), error


def test_labels_must_be_class_labels_and_an_empty_folder_is_named(tmp_path):
    root = write_stream(tmp_path / "ds", train=6, val=3, shards=1, class_label=False)
    with pytest.raises(DataError, match=r"column 'label' \(--target-key\) holds .*int64.*not class labels"):
        StreamSplit(str(root), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"cannot stream hfids/.*empty split 'train': .* doesn't contain any data"):
        StreamSplit(str(tmp_path / "empty"), "train")


def test_stream_records_reach_the_transform_decoded(stream_root):
    """Items decode in the process that reads them; the same (epoch, position, copy) gives the same augmentation."""
    from timm.data import create_transform

    samples = StreamSamples(StreamSplit(str(stream_root), "train"),
                            create_transform(16, is_training=True, auto_augment="rand-m9-mstd0.5-inc1"), seed=2)
    item = next(iter(StreamBatches(samples.dataset, 0, 2, 2, 1)))[0]
    image, label = samples[item]
    again, _ = samples[item]
    assert image.shape == (3, 16, 16) and torch.equal(image, again) and label == item.record["label"]


def test_validate_reads_a_streamed_validation_split(stream_root):
    from vithub.train.engine import validate

    metrics = validate("vh_efficientvit_m0", None, f"hfids/{stream_root}", batch_size=4, img_size=16)
    assert set(metrics) >= {"top1", "top5", "unreadable_images"} and metrics["unreadable_images"] == 0
    assert 0.0 <= metrics["top1"] <= 100.0
