"""vithub train / validate: the embedded default end to end, kill-and-resume equal to an unbroken run, and bad
input (data folders, checkpoints that do not fit, a non-finite loss)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vithub import cli
from vithub.train import DataError, TrainConfig, TrainingError, train, validate
from vithub.train.checkpoint import load_state
from vithub.train.engine import WALL_CLOCK_COLUMNS

QUICK = dict(epochs=2, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("digits_run")
    summary = train(TrainConfig(output=str(output), checkpoint_every=5, **QUICK))
    return output, summary


def test_embedded_default_trains_end_to_end(digits_run):
    output, summary = digits_run
    for key in ("top1", "top5", "best_top1", "epochs", "seconds", "images_per_second", "model", "data"):
        assert key in summary, key
    assert summary["data"] == "digits" and summary["epochs"] == 2 and summary["num_classes"] == 10
    assert summary["top1"] > 60.0  # two epochs from scratch; the README's six reach about 98%
    assert json.loads((output / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert (output / "metrics.csv").read_text().count("\n") == 3
    state = load_state(output / "last.state.pt")  # weights_only load: plain tensors and numbers only
    assert state["epoch"] == 2 and state["num_updates"] == 2 * (1437 // 64)
    best = output / summary["best_checkpoint"]
    metrics = validate(summary["model"], str(best), None)
    assert metrics["top1"] == pytest.approx(summary["best_top1"])


def _train_command(output: Path, *extra: str):
    return [sys.executable, "-m", "vithub.train", "--output", str(output), "--epochs", "2", "--checkpoint-every", "3",
            "--seed", "7", *extra]


def test_kill_and_resume_matches_an_unbroken_run(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import kill_and_resume

    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    summaries = kill_and_resume(_train_command, unbroken, broken, total_updates=2 * (1437 // 64))
    # The metrics (train loss included, a step checkpoint carries the running epoch loss) match too, but for the
    # wall-clock column.
    def metrics(run):
        return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_COLUMNS}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert metrics(broken) == metrics(unbroken)
    assert summaries["broken"]["top1"] == summaries["unbroken"]["top1"]


def _image_folder(root: Path, classes=("cat", "dog"), images_per_class=4, splits=("train", "val")):
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(images_per_class):
                pixels = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_image_folder_trains(tmp_path):
    data = _image_folder(tmp_path / "data")
    summary = train(TrainConfig(model="vh_efficientvit_m0", data=str(data), output=str(tmp_path / "run"),
                                img_size=32, epochs=1, batch_size=4, progress=False))
    assert summary["num_classes"] == 2 and summary["classes"] == ["cat", "dog"]


@pytest.mark.parametrize("make,message", [
    (lambda root: root / "missing", "is not a directory"),
    (lambda root: root, "has no train/ folder"),
    (lambda root: _image_folder(root, splits=("train",)), "has no val/ folder"),
    (lambda root: _image_folder(root, images_per_class=0), "holds no images"),
    (lambda root: (_image_folder(root, classes=("a", "b"), splits=("train",)),
                   _image_folder(root, classes=("a", "c"), splits=("val",)))[0], "class folders differ"),
])
def test_bad_data_folders_are_named(tmp_path, make, message):
    data = make(tmp_path / "data")
    data.mkdir(parents=True, exist_ok=True) if not data.name == "missing" else None
    with pytest.raises(DataError, match=message):
        train(TrainConfig(data=str(data), output=str(tmp_path / "run"), img_size=32, **QUICK))


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "run")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "0", "--output", str(tmp_path / "run")]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_initial_checkpoint_that_does_not_fit(tmp_path, digits_run):
    output, _ = digits_run
    weights = load_file(output / "last.safetensors")
    weights["head.linear.weight"] = torch.zeros(3, weights["head.linear.weight"].shape[1])
    path = tmp_path / "other_classes.safetensors"
    save_file(weights, str(path))
    with pytest.raises(TrainingError, match=r"shape mismatches \(1\):\n  head.linear.weight: weights \(3, "):
        train(TrainConfig(initial_checkpoint=str(path), output=str(tmp_path / "run"), **QUICK))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from timm.loss import LabelSmoothingCrossEntropy

    calls = {"n": 0}
    original = LabelSmoothingCrossEntropy.forward

    def poisoned(self, x, target):
        calls["n"] += 1
        loss = original(self, x, target)
        return loss * float("nan") if calls["n"] > 1437 // 64 + 3 else loss  # in epoch 2

    monkeypatch.setattr(LabelSmoothingCrossEntropy, "forward", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at epoch 1"):
        train(TrainConfig(output=str(tmp_path), **QUICK))
    assert load_state(tmp_path / "last.state.pt")["epoch"] == 1


def test_resume_with_other_settings_is_refused(tmp_path, digits_run):
    import shutil

    output, _ = digits_run
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    with pytest.raises(TrainingError, match=r"batch_size: checkpoint 64, now 32"):
        train(TrainConfig(output=str(copy), resume="auto", **dict(QUICK, batch_size=32)))
    with pytest.raises(TrainingError, match=r"resume: .* does not exist"):
        train(TrainConfig(output=str(copy), resume=str(copy / "nope.state.pt"), **QUICK))


def _torchrun(output: Path, *extra: str):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "vithub.train", "--output", str(output), "--epochs", "1", "--batch-size", "32",
               "--checkpoint-every", "5", "--device", "cpu", *extra]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "summary.json").read_text())


def test_torchrun_two_cpu_processes_and_resume(tmp_path):
    """DDP (gloo): two ranks end with the same parameters; a run resumed from its last step checkpoint under
    torchrun ends where the unbroken run did."""
    output = tmp_path / "ddp"
    summary = _torchrun(output)
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    assert load_state(output / "last.state.pt")["num_updates"] == 1437 // 64  # global batch 2 x 32
    unbroken = load_file(output / "last.safetensors")
    # What a kill just after the step checkpoint at update 20 leaves: drop everything written later.
    for name in ("last.safetensors", "last.state.pt", "summary.json", "metrics.csv", "metrics.jsonl"):
        (output / name).unlink()
    for best in output.glob("best-*.safetensors"):
        best.unlink()
    assert load_state(output / "step.state.pt")["num_updates"] == 20
    resumed = _torchrun(output, "--resume", "auto")
    assert resumed["resumed_from"].endswith("step.state.pt") and resumed["ranks_identical"] is True
    final = load_file(output / "last.safetensors")
    for key in unbroken:
        torch.testing.assert_close(final[key], unbroken[key], rtol=0, atol=0, msg=key)
