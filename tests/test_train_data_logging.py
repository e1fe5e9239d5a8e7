"""vithub train's reports and its other data sources: curves.png, a W&B run written offline (its records read back),
timm dataset specs (torch/mnist from idx files the test writes) and unreadable images skipped, counted and
limited."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vithub import cli
from vithub.train import DataError, TrainConfig, train, validate
from vithub.train.data import ReadableSamples, Unreadable, build_data, collate_readable
from vithub.train.reporting import WandbUnavailableError, curves_figure

def _wandb_records(run_file: Path):
    """The protobuf records of a W&B ``.wandb`` transaction log: a 7-byte file header, then 32 KiB blocks of
    records, each with a 7-byte header (crc32, little-endian length, type: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending, records = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", "not a W&B run file"
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(entries):
    return {(entry.key or ".".join(entry.nested_key)): json.loads(entry.value_json) for entry in entries}


def _run_cli(output: Path, *extra: str, env=None):
    environment = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", **(env or {}))
    return subprocess.run([sys.executable, "-m", "vithub.train", "--output", str(output), "--epochs", "2",
                           "--seed", "3", *extra], check=True, env=environment, capture_output=True, text=True,
                          timeout=600)


def test_wandb_offline_run_files_hold_config_metrics_and_summary(tmp_path):
    pytest.importorskip("wandb", reason="wandb is in the [dev] extra; pip install 'vithub[dev]'")
    output = tmp_path / "run"
    _run_cli(output, "--wandb", "--wandb-project", "vh-test", "--wandb-name", "digits-m0", "--wandb-tags", "ci",
             "offline")
    run_files = sorted(output.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    records = _wandb_records(run_files[0])
    kinds = [record.WhichOneof("record_type") for record in records]
    run = next(record.run for record in records if record.WhichOneof("record_type") == "run")
    assert run.project == "vh-test" and run.display_name == "digits-m0" and list(run.tags) == ["ci", "offline"]
    config = _items(run.config.update)
    assert config["model"] == "vh_efficientvit_m0" and config["epochs"] == 2 and config["seed"] == 3
    assert config["num_classes"] == 10 and config["train_images"] == 1437 and config["parameters"] > 1e6

    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    logged = [_items(record.history.item) for record in records if record.WhichOneof("record_type") == "history"]
    assert [entry["epoch"] for entry in logged] == [1, 2]
    for entry, row in zip(logged, rows):
        for key in ("train_loss", "val_loss", "top1", "top5", "lr"):
            assert entry[key] == pytest.approx(row[key], rel=1e-12), key
    summary = json.loads((output / "summary.json").read_text())
    final = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            final.update(_items(record.summary.update))
    assert final["best_top1"] == pytest.approx(summary["best_top1"]) and final["model"] == "vh_efficientvit_m0"
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0
    assert summary["wandb_run_id"] == run.run_id

    # A resumed run continues the same W&B run (its id is in the training state).
    _run_cli(output, "--wandb", "--wandb-project", "vh-test", "--resume", "auto")
    assert json.loads((output / "summary.json").read_text())["wandb_run_id"] == run.run_id


def test_curves_png_plots_the_history(tmp_path):
    summary = train(TrainConfig(output=str(tmp_path / "run"), epochs=2, progress=False))
    curves = tmp_path / "run" / summary["curves"]
    with Image.open(curves) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loss_axes, accuracy_axes = curves_figure(rows).axes
    plotted = {line.get_label(): list(line.get_ydata()) for axes in (loss_axes, accuracy_axes)
               for line in axes.get_lines()}
    assert plotted == {"train loss": [row["train_loss"] for row in rows], "val loss": [row["val_loss"] for row in rows],
                       "val top1": [row["top1"] for row in rows], "val top5": [row["top5"] for row in rows]}


def test_wandb_missing_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes "import wandb" fail
    with pytest.raises(WandbUnavailableError, match=r"pip install 'vithub\[wandb\]'"):
        train(TrainConfig(output=str(tmp_path / "run"), wandb=True, progress=False))
    assert not (tmp_path / "run").exists()


def test_wandb_without_login_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb", reason="wandb is in the [dev] extra; pip install 'vithub[dev]'")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_MODE", "online")
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert cli.main(["train", "--epochs", "1", "--wandb", "--output", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "W&B could not start a run" in error and "WANDB_MODE=offline" in error and "Traceback" not in error


def _write_idx(path: Path, array: torch.Tensor, kind: int) -> None:
    header = struct.pack(">HBB", 0, kind, array.dim()) + b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(header + array.numpy().tobytes())


def _mnist_files(root: Path, train_images: int = 40, test_images: int = 16) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", train_images), ("t10k", test_images)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8), 8)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (count,), dtype=torch.uint8), 8)
    return root


def test_timm_dataset_spec_trains_and_validates(tmp_path):
    root = _mnist_files(tmp_path / "mnist")
    summary = train(TrainConfig(data="torch/mnist", data_dir=str(root), output=str(tmp_path / "run"), img_size=32,
                                epochs=1, batch_size=8, progress=False))
    from torchvision.datasets import MNIST

    assert summary["data"] == "torch/mnist" and summary["classes"] == MNIST.classes
    assert summary["unreadable_images"] == {"train": 0, "val": 0}
    metrics = validate(summary["model"], str(tmp_path / "run" / summary["best_checkpoint"]), "torch/mnist",
                       img_size=32, data_dir=str(root))
    assert metrics["top1"] == pytest.approx(summary["top1"])

    bundle = build_data("torch/mnist", 32, {"input_size": (3, 32, 32), "interpolation": "bilinear",
                                            "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0},
                        str(root), "train", "test")
    image, label = bundle.val[3]
    assert image.shape == (3, 32, 32) and len(bundle.train) == 40 and len(bundle.val) == 16
    assert torch.equal(image[0], image[1]), "grey MNIST images become three equal channels"


@pytest.mark.parametrize("spec,data_dir,message", [
    ("torch/mnist", None, "needs --data-dir"),
    ("torch/mnist", "empty", "cannot open torch/mnist"),
    ("tfds/some-data", "empty", "TensorFlow dataset stream"),
    ("wds/some-shards", "empty", "have no split 'train'"),
    ("wds/some-shards", None, "needs --data-dir"),
])
def test_bad_dataset_specs_are_named(tmp_path, spec, data_dir, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=message):
        train(TrainConfig(data=spec, data_dir=str(tmp_path / data_dir) if data_dir else None,
                          output=str(tmp_path / "run"), img_size=32, epochs=1, progress=False))


def _folder_with_bad_images(root: Path, bad_train: int, bad_val: int = 0, per_class: int = 6) -> Path:
    for split, bad in (("train", bad_train), ("val", bad_val)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
        for index in range(bad):  # one garbage file, then truncated JPEGs
            target = root / split / "cat" / f"{index}.jpg"
            target.write_bytes(b"not an image" if index == 0 else target.read_bytes()[:200])
    return root


def test_unreadable_images_are_dropped_not_replaced(tmp_path):
    root = _folder_with_bad_images(tmp_path / "data", bad_train=2)
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 1.0}
    samples = build_data(str(root), 16, config).train
    assert isinstance(samples, ReadableSamples)
    loaded = [samples[index] for index in range(len(samples))]
    bad = [sample for sample in loaded if isinstance(sample, Unreadable)]
    assert sorted(Path(sample.source).name for sample in bad) == ["0.jpg", "1.jpg"]
    assert all(Path(sample.source).parent.name == "cat" for sample in bad)
    assert "cannot identify image" in bad[0].reason or "truncated" in bad[0].reason
    images, labels, dropped = collate_readable(loaded)
    assert images.shape == (len(samples) - 2, 3, 16, 16) and labels.shape == (len(samples) - 2,)
    assert dropped == bad


def test_an_unreadable_image_without_a_file_name_is_named_by_index():
    import io

    class Reader:  # like timm's base reader: no file names
        def __getitem__(self, index):
            return io.BytesIO(b"not an image"), 0

    class RowsWithoutPaths(torch.utils.data.Dataset):
        reader, input_img_mode = Reader(), "RGB"

        def __len__(self):
            return 3

        def filename(self, index, basename=False, absolute=False):
            return None

    sample = ReadableSamples(RowsWithoutPaths())[2]
    assert isinstance(sample, Unreadable) and sample.source == "sample 2" and sample.index == 2


def test_unreadable_images_are_counted_and_limited(tmp_path, caplog):
    root = _folder_with_bad_images(tmp_path / "data", bad_train=2, bad_val=1)
    summary = train(TrainConfig(data=str(root), output=str(tmp_path / "ok"), img_size=32, epochs=2, batch_size=4,
                                max_unreadable=0.2, progress=False))
    assert summary["unreadable_images"] == {"train": 2, "val": 1}
    assert sorted(Path(name).name for name in summary["unreadable_files"]["train"]) == ["0.jpg", "1.jpg"]
    rows = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert [(row["unreadable_train"], row["unreadable_val"]) for row in rows] == [(2, 1), (2, 1)]
    warnings = [record for record in caplog.records if record.name == "vithub.train.data"
                and record.levelname == "WARNING" and "skipped unreadable" in record.getMessage()]
    assert len(warnings) == 3  # each file reported once, not every epoch

    with pytest.raises(DataError, match=r"2 of the 12 train images are unreadable.*max_unreadable=0.1 allows \(1\)"):
        train(TrainConfig(data=str(root), output=str(tmp_path / "stopped"), img_size=32, epochs=1, batch_size=12,
                          max_unreadable=0.1, progress=False))
    with pytest.raises(ValueError, match="max_unreadable must be a fraction"):
        train(TrainConfig(data=str(root), output=str(tmp_path / "x"), max_unreadable=2.0, progress=False))


def test_a_batch_left_with_one_image_is_skipped(tmp_path):
    root = _folder_with_bad_images(tmp_path / "data", bad_train=6)  # every cat: some batches of two keep one dog
    summary = train(TrainConfig(data=str(root), output=str(tmp_path / "run"), img_size=32, epochs=1, batch_size=2,
                                max_unreadable=1.0, progress=False))  # BatchNorm would fail on a batch of one
    assert summary["unreadable_images"]["train"] == 6
    assert all(str(root) in name for name in summary["unreadable_files"]["train"])


def test_torchrun_ranks_merge_their_unreadable_images_and_stop_together(tmp_path):
    """Two gloo ranks: the unreadable files only rank 1 sees reach rank 0's summary; past the limit both ranks stop
    (neither waits forever for the other)."""
    from vithub.train.engine import EpochBatches

    root = _folder_with_bad_images(tmp_path / "data", bad_train=0, per_class=8)
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 1.0}
    samples = build_data(str(root), 16, config).train
    rank1_first_batch = EpochBatches(len(samples), 8, 42, epoch=0, rank=1, world=2).batches[0]
    corrupted = [Path(samples.source(index)) for index in rank1_first_batch[:2]]
    for path in corrupted:
        path.write_bytes(b"not an image")

    def torchrun(output: Path, *extra: str):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "vithub.train", "--data", str(root), "--output", str(output), "--epochs", "1", "--batch-size",
                   "8", "--img-size", "32", "--seed", "42", "--device", "cpu", *extra]
        return subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=300)

    finished = torchrun(tmp_path / "ok", "--max-unreadable", "0.2")
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["unreadable_images"]["train"] == 2
    assert sorted(summary["unreadable_files"]["train"]) == sorted(str(path) for path in corrupted)

    stopped = torchrun(tmp_path / "stopped", "--max-unreadable", "0")
    assert stopped.returncode != 0
    assert "unreadable, more than max_unreadable=0 allows (0)" in stopped.stderr
    assert "another process stopped the run" in stopped.stderr
