"""vithub.detection.segmentation: heads, whole / sliding-window / multi-scale inference, ADE20K and folder data with
mmseg's pipeline, confusion-matrix metrics, the segmentation task in the shared trainer (CLI, validate,
kill-and-resume), publishing, official UPerNet checkpoints, the mmseg config and the benchmark."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vithub import cli
from vithub.detection.convert import load_official_segmentation_checkpoint
from vithub.detection.segmentation import (
    ConfusionMatrix,
    SegmentationDataset,
    SegmentationTask,
    ade20k_split,
    collate_segmentation,
    create_segmentor,
    folder_split,
    read_class_names,
    write_ade20k_folder,
)
from vithub.detection.segmentation.data import decode_label, pair_reader, synthetic_scene
from vithub.detection.segmentation.models import default_head
from vithub.train import DataError, TrainConfig, train
from vithub.train.checkpoint import load_state

sys.path.insert(0, str(Path(__file__).parent))
from resume_check import kill_and_resume, torchrun_two_cpu_processes  # noqa: E402

SMALL = 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ade_dir(tmp_path_factory):
    """An ADE20K-layout folder (JPEG images, PNG masks with 0 = other, classes.txt) of the synthetic scenes."""
    return write_ade20k_folder(tmp_path_factory.mktemp("ade"), num_train=8, num_val=4, size=SMALL)


# --- metrics ----------------------------------------------------------------------------------------------------

def _per_image_reference(pairs, num_classes, ignore=255):
    """mIoU / mAcc / aAcc written out directly: per class, sum intersections and unions over all images (the
    dataset-wide definition), then average over the classes whose union (IoU) or label area (Acc) is non-zero."""
    intersection = np.zeros(num_classes)
    union = np.zeros(num_classes)
    area = np.zeros(num_classes)
    correct = labelled = 0
    for prediction, label in pairs:
        valid = label != ignore
        for cls in range(num_classes):
            in_label = (label == cls) & valid
            in_prediction = (prediction == cls) & valid
            intersection[cls] += np.logical_and(in_label, in_prediction).sum()
            union[cls] += np.logical_or(in_label, in_prediction).sum()
            area[cls] += in_label.sum()
        correct += ((prediction == label) & valid).sum()
        labelled += valid.sum()
    iou = [intersection[c] / union[c] for c in range(num_classes) if union[c] > 0]
    acc = [intersection[c] / area[c] for c in range(num_classes) if area[c] > 0]
    return 100 * np.mean(iou), 100 * np.mean(acc), 100 * correct / labelled, intersection, union


def test_confusion_matrix_matches_a_direct_computation_with_absent_classes_and_ignored_pixels():
    rng = np.random.default_rng(3)
    num_classes = 6
    pairs = []
    for shape in ((7, 9), (5, 5), (11, 4)):
        label = rng.integers(0, 4, size=shape)  # classes 4 and 5 never occur in the labels
        label[rng.random(shape) < 0.2] = 255
        prediction = rng.integers(0, 5, size=shape)  # class 4 is predicted but never labelled; 5 is nowhere
        pairs.append((prediction, label))
    matrix = ConfusionMatrix(num_classes)
    for prediction, label in pairs:
        matrix.update(torch.from_numpy(prediction), torch.from_numpy(label))
    scores = matrix.scores([f"c{index}" for index in range(num_classes)])
    miou, macc, aacc, intersection, union = _per_image_reference(pairs, num_classes)
    assert scores["mIoU"] == pytest.approx(miou) and scores["mAcc"] == pytest.approx(macc)
    assert scores["aAcc"] == pytest.approx(aacc)
    per_class = scores["per_class"]
    assert per_class[4]["iou"] == 0.0 and per_class[4]["acc"] is None  # predicted, never labelled
    assert per_class[5]["iou"] is None and per_class[5]["acc"] is None  # nowhere: left out of the means
    assert per_class[0]["iou"] == pytest.approx(100 * intersection[0] / union[0])
    # averaging per-image mIoUs would give another number: the matrix must be split-wide
    per_image = np.mean([_per_image_reference([pair], num_classes)[0] for pair in pairs])
    assert abs(per_image - scores["mIoU"]) > 1e-3


def test_perfect_predictions_score_100_and_bad_labels_are_refused():
    label = torch.tensor([[0, 1, 2], [2, 255, 1]])
    matrix = ConfusionMatrix(3)
    matrix.update(label.clone().masked_fill(label == 255, 0), label)
    scores = matrix.scores()
    assert scores["mIoU"] == scores["mAcc"] == scores["aAcc"] == 100.0
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\) or 255"):
        matrix.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 3], [1, 1]]))
    with pytest.raises(ValueError, match="same shape"):
        matrix.update(torch.zeros(2, 3), torch.zeros(3, 2))


# --- models -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["upernet", "fpn"])
@pytest.mark.parametrize("backbone", ["vh_efficientvit_b0", "vh_nat_mini", "swin_tiny_patch4_window7_224"])
def test_every_head_trains_on_every_kind_of_backbone(head, backbone):
    """NCHW (EfficientViT), our NHWC transformer (NAT) and timm's own NHWC Swin; odd input sizes."""
    torch.manual_seed(0)
    model = create_segmentor(backbone, 4, head=head, head_channels=32, aux_channels=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.rand(2, 3, 72, 88), torch.randint(0, 4, (2, 72, 88))
    labels[:, :5] = 255
    losses = []
    for _ in range(3):
        outputs = model(images)
        assert outputs["out"].shape == (2, 4, 72, 88)
        assert ("aux" in outputs) == (head == "upernet")
        loss = sum(torch.nn.functional.cross_entropy(value, labels, ignore_index=255) for value in outputs.values())
        optimizer.zero_grad()
        loss.backward()
        assert all(parameter.grad is not None for parameter in model.backbone.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    assert set(model(images)) == {"out"}


def test_default_head_is_light_for_the_small_families():
    assert default_head("vh_efficientvit_b1") == default_head("vh_levit_128s") == "fpn"
    assert default_head("vh_nat_tiny") == default_head("vh_swin_tiny_patch4_window7_224") == "upernet"
    assert create_segmentor("vh_efficientvit_b0", 3).segmentor_config["head"] == "fpn"
    with pytest.raises(ValueError, match="head must be one of"):
        create_segmentor("vh_efficientvit_b0", 3, head="deeplab")
    with pytest.raises(ValueError, match="does not support features_only|must be a timm model name"):
        create_segmentor("not_a_model", 3)


@pytest.fixture(scope="module")
def small_segmentor():
    torch.manual_seed(1)
    model = create_segmentor("vh_efficientvit_b0", 5, head="upernet", head_channels=32, aux_channels=16)
    return model.eval()


def test_sliding_window_equals_whole_image_when_one_window_covers_it(small_segmentor):
    images = torch.rand(2, 3, 60, 76)
    whole = small_segmentor.predict(images)
    torch.testing.assert_close(small_segmentor.predict(images, mode="slide", crop_size=80), whole)
    torch.testing.assert_close(small_segmentor.predict(images, mode="slide", crop_size=76, stride=50), whole)


def test_sliding_windows_average_their_overlaps(small_segmentor):
    images = torch.rand(1, 3, 40, 70)
    with torch.no_grad():
        logits = small_segmentor.slide_logits(images, crop_size=40, stride=20)
        # windows at x = 0, 20 and the last flush with the border, 30: columns 0-19 one window, 20-29 two,
        # 30-39 three, 40-59 two, 60-69 one
        windows = [small_segmentor(images[..., :, left:left + 40])["out"] for left in (0, 20, 30)]
    expected = torch.zeros_like(logits)
    count = torch.zeros(70)
    for left, window in zip((0, 20, 30), windows):
        expected[..., left:left + 40] += window
        count[left:left + 40] += 1
    torch.testing.assert_close(logits, expected / count)
    assert count.tolist()[:20] == [1] * 20 and count.tolist()[35] == 3


def test_multiscale_and_flip_average_the_probabilities(small_segmentor):
    images = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        plain = small_segmentor(images)["out"].softmax(1)
        flipped = small_segmentor(images.flip(-1))["out"].flip(-1).softmax(1)
        half = torch.nn.functional.interpolate(
            small_segmentor(torch.nn.functional.interpolate(images, size=(24, 32), mode="bilinear",
                                                            align_corners=False))["out"],
            size=(48, 64), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(small_segmentor.predict(images, flip=True), (plain + flipped) / 2)
    torch.testing.assert_close(small_segmentor.predict(images, scales=(0.5, 1.0)), (half + plain) / 2)
    out = small_segmentor.predict(images, out_size=(30, 20))
    assert out.shape == (1, 5, 30, 20) and torch.allclose(out.sum(1), torch.ones(1, 30, 20))
    with pytest.raises(ValueError, match="crop_size must be a positive window side"):
        small_segmentor.predict(images, mode="slide")
    with pytest.raises(ValueError, match="scales must be positive"):
        small_segmentor.predict(images, scales=(0.0,))


# --- data -------------------------------------------------------------------------------------------------------

def test_ade20k_layout_reduces_zero_label_and_reads_class_lists(ade_dir, tmp_path):
    split = ade20k_split(ade_dir, "train")
    assert len(split) == 8 and split.class_names == ["sky", "ground", "square", "disk", "triangle"]
    image, label = pair_reader(split)(0)
    raw = np.asarray(Image.open(split.pairs[0][1]))
    assert (label[raw == 0] == 255).all() and (label[raw > 0] == raw[raw > 0] - 1).all()
    assert label.shape == (image.height, image.width)
    info = tmp_path / "objectInfo150.txt"
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t1\t1\tname{i};synonym" for i in range(1, 151)]
    info.write_text("\n".join(rows))
    names = read_class_names(info)
    assert len(names) == 150 and names[:2] == ["name1", "name2"]


def test_folder_pairs_and_their_bad_inputs(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    for index in range(3):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            images / f"a{index}.png")
        Image.fromarray(np.full((20, 30), index, dtype=np.uint8)).save(masks / f"a{index}.png")
    split = folder_split(images, masks, ["x", "y", "z"])
    assert [image.name for image, _ in split.pairs] == ["a0.png", "a1.png", "a2.png"]
    assert (pair_reader(split)(2)[1] == 2).all()
    # label values outside the class list
    with pytest.raises(DataError, match=r"a2.png: label value\(s\) \[2\] are outside the 2 classes"):
        pair_reader(folder_split(images, masks, ["x", "y"]))(2)
    # a mask whose size differs from its image
    Image.fromarray(np.zeros((10, 30), dtype=np.uint8)).save(masks / "a1.png")
    with pytest.raises(DataError, match=r"a1.png: the mask is 30x10, its image .*a1.png is 30x20"):
        pair_reader(split)(1)
    # unmatched files and empty splits
    (images / "lonely.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"1 image\(s\) without a mask \['lonely.jpg'\]"):
        folder_split(images, masks, ["x"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no image/mask pair"):
        folder_split(empty, empty, ["x"])
    with pytest.raises(DataError, match="mask folder .* does not exist"):
        folder_split(images, tmp_path / "nowhere", ["x"])
    # RGB masks are colour pictures, not class indices
    with pytest.raises(ValueError, match="single-channel image of class indices"):
        decode_label(Image.new("RGB", (4, 4)), False)


def test_unreadable_images_are_counted_and_skipped(ade_dir, tmp_path):
    split = ade20k_split(ade_dir, "val")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    split.pairs[1] = (broken, split.pairs[1][1])
    dataset = SegmentationDataset(split, pair_reader(split), SMALL)
    images, labels, bad = collate_segmentation([dataset[index] for index in range(3)])
    assert len(bad) == 1 and bad[0].index == 1 and bad[0].source == str(broken)
    assert len(images) == 2


def test_training_pipeline_keeps_labels_on_their_pixels_and_is_deterministic():
    """Each label's pixels have their own colour: after resize, crop, flip and padding, every labelled pixel must
    still show its class's colour (nearest labels, bilinear images: checked two pixels away from class borders)."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    label = np.zeros((90, 120), dtype=np.uint8)
    label[:, 40:80] = 1
    label[30:60, 90:] = 2
    label[:5] = 255
    image = colours[np.where(label == 255, 0, label)]
    from vithub.detection.segmentation import SegmentationSplit

    split = SegmentationSplit("colours", ["r", "g", "b"], False, [(Path("x"), Path("y"))] * 6)
    dataset = SegmentationDataset(split, lambda index: (Image.fromarray(image), label), 64, train=True,
                                  photometric=False, seed=4)
    for index in range(6):
        picture, target = dataset[index]
        assert picture.shape == (3, 64, 64) and target.shape == (64, 64) and target.dtype == torch.int64
        for cls in range(3):
            inside = target == cls
            eroded = -torch.nn.functional.max_pool2d(-inside[None].float(), 5, 1, 2)[0] > 0  # 2-pixel erosion
            if eroded.any():
                pixels = picture[:, eroded].T * 255
                assert (pixels - torch.from_numpy(colours[cls]).float()).abs().max() < 40, (index, cls)
        again, again_target = dataset[index]
        assert torch.equal(again, picture) and torch.equal(again_target, target)
    dataset.set_epoch(1)
    assert not all(torch.equal(dataset[index][1], SegmentationDataset(
        split, lambda _: (Image.fromarray(image), label), 64, train=True, photometric=False, seed=4)[index][1])
        for index in range(6))
    dataset.set_copy(1)  # a repeated-augmentation copy draws apart from copy 0, and alike when read again
    copies = [dataset[index][1] for index in range(6)]
    assert [torch.equal(dataset[index][1], copy) for index, copy in enumerate(copies)] == [True] * 6
    dataset.set_copy(0)
    assert not all(torch.equal(dataset[index][1], copy) for index, copy in enumerate(copies))


def test_crops_respect_the_category_ratio_cap():
    label = np.zeros((200, 200), dtype=np.uint8)
    label[120:, 120:] = 1  # one corner of class 1
    from vithub.detection.segmentation import SegmentationSplit

    split = SegmentationSplit("corner", ["a", "b"], False, [(Path("x"), Path("y"))] * 20)
    image = Image.fromarray(np.zeros((200, 200, 3), dtype=np.uint8))

    def crops_under_cap(cap):
        """How many of 20 crops (50 px of the 100 px image) have no class above 75 % of their pixels."""
        dataset = SegmentationDataset(split, lambda _: (image, label), 50, train=True, ratio_range=(2.0, 2.0),
                                      cat_max_ratio=cap, photometric=False)
        under = 0
        for index in range(20):
            target = dataset[index][1]
            counts = torch.bincount(target[target != 255].flatten(), minlength=2)
            under += int(counts.max().item() / counts.sum().item() < 0.75)
        return under

    assert crops_under_cap(0.75) > crops_under_cap(1.0) + 5


def test_evaluation_keeps_the_label_size_and_resizes_the_image(tmp_path):
    split_root = write_ade20k_folder(tmp_path, 1, 2, size=48)
    split = ade20k_split(split_root, "val")
    dataset = SegmentationDataset(split, pair_reader(split), 96)
    image, label = dataset[0]
    assert image.shape == (3, 96, 96) and label.shape == (48, 48)


# --- the task ---------------------------------------------------------------------------------------------------

def _segment_args(ade_dir, output, *extra):
    return ["train", "--task", "segmentation", "--data", str(ade_dir), "--model", "vh_efficientvit_b0",
            "--head", "upernet", "--head-channels", "16", "--img-size", "48", "--epochs", "1", "--batch-size", "4",
            "--output", str(output), *extra]


def test_cli_trains_and_validates_a_segmentor(ade_dir, tmp_path, capsys):
    output = tmp_path / "run"
    assert cli.main(_segment_args(ade_dir, output)) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["classes"] == ["sky", "ground", "square", "disk",
                                                                        "triangle"]
    for name in ("miou", "macc", "aacc", "best_miou"):
        assert 0.0 <= summary[name] <= 100.0, name
    per_class = json.loads((output / "per_class_val.json").read_text())
    assert [row["class"] for row in per_class["per_class"]][:2] == ["sky", "ground"]
    assert per_class["mIoU"] == pytest.approx(summary["miou"])
    config = load_state(output / "last.state.pt")["config"]
    assert (config["sched"], config["decay_rate"], config["min_lr"], config["lr"]) == ("poly", 1.0, 0.0, 6e-5)
    capsys.readouterr()
    assert cli.main(["validate", "--task", "segmentation", "--data", str(ade_dir), "--model", "vh_efficientvit_b0",
                     "--head", "upernet", "--head-channels", "16", "--img-size", "48",
                     "--checkpoint", str(output / summary["best_checkpoint"])]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["miou"] == pytest.approx(summary["best_miou"])
    # sliding-window validation with a window covering the (resized) image gives the same numbers
    assert cli.main(["validate", "--task", "segmentation", "--data", str(ade_dir), "--model", "vh_efficientvit_b0",
                     "--head", "upernet", "--head-channels", "16", "--img-size", "48", "--inference", "slide",
                     "--slide-stride", "32", "--checkpoint", str(output / summary["best_checkpoint"])]) == 0
    sliding = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sliding["miou"] == pytest.approx(metrics["miou"])


def test_folder_pair_options_train(ade_dir, tmp_path):
    summary = train(TrainConfig(task="segmentation", model="vh_efficientvit_b0", img_size=48, epochs=1,
                                batch_size=4, output=str(tmp_path / "run"), progress=False,
                                task_options={"train_images": str(ade_dir / "images" / "training"),
                                              "train_masks": str(ade_dir / "annotations" / "training"),
                                              "val_images": str(ade_dir / "images" / "validation"),
                                              "val_masks": str(ade_dir / "annotations" / "validation"),
                                              "classes": str(ade_dir / "classes.txt"), "reduce_zero_label": True,
                                              "head": "fpn", "eval_scales": [0.75, 1.0], "eval_flip": True}))
    assert summary["num_classes"] == 5 and 0.0 <= summary["miou"] <= 100.0


def test_cli_bad_segmentation_input_exits_2(ade_dir, tmp_path, capsys):
    code = cli.main(["train", "--task", "segmentation", "--data", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2 and "ADE20K-layout folder" in capsys.readouterr().err
    code = cli.main(["train", "--task", "segmentation", "--train-images", str(ade_dir / "images" / "training"),
                     "--output", str(tmp_path / "o")])
    assert code == 2 and "missing: ['--train-masks', '--val-images', '--val-masks', '--classes']" in \
        capsys.readouterr().err
    code = cli.main(["train", "--task", "segmentation", "--data", str(ade_dir), "--slide-stride", "900",
                     "--output", str(tmp_path / "o")])
    assert code == 2 and "slide_stride must be in [1, img_size=512]" in capsys.readouterr().err


def test_tasks_share_flags_but_keep_their_own_defaults():
    from vithub.train.cli import add_train_arguments, task_config_from_args
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    detection = task_config_from_args(vars(parser.parse_args(["--task", "detection", "--frozen-stages", "1"])))
    segmentation = task_config_from_args(vars(parser.parse_args(["--task", "segmentation"])))
    assert detection.task_options == {"frozen_stages": 1}
    assert segmentation.task_options == {}
    resolved = SegmentationTask().resolve(segmentation)
    assert resolved.task_options["frozen_stages"] == -1 and resolved.task_options["aux_weight"] == 0.4
    assert (resolved.epochs, resolved.batch_size, resolved.sched) == (16, 8, "poly")


@pytest.mark.slow
def test_embedded_default_learns_the_scenes(tmp_path):
    """The README's main segmentation job, shortened to 6 of its 16 epochs (about 25 s on two cores)."""
    summary = train(TrainConfig(task="segmentation", epochs=6, output=str(tmp_path / "run"), progress=False))
    assert summary["model"] == "vh_efficientvit_b0" and summary["num_classes"] == 5
    assert summary["miou"] > 55 and summary["aacc"] > 85


def _train_command(ade_dir, output, *extra):
    return [sys.executable, "-m", "vithub.train", *_segment_args(ade_dir, output, "--epochs", "2",
                                                                  "--batch-size", "2", "--checkpoint-every", "1",
                                                                  "--seed", "5")[1:], *extra]


def test_segmentation_kill_and_resume_matches_an_unbroken_run(ade_dir, tmp_path):
    summaries = kill_and_resume(lambda output, *extra: _train_command(ade_dir, output, *extra), tmp_path / "unbroken",
                                tmp_path / "broken", total_updates=8)  # 8 images, batch 2, 2 epochs
    assert summaries["broken"]["miou"] == summaries["unbroken"]["miou"]


def test_segmentation_under_torchrun_two_cpu_processes(ade_dir, tmp_path):
    """DDP (gloo) through the shared loop with the auxiliary head's dict output: both ranks end identical."""
    output = tmp_path / "ddp"
    summary = torchrun_two_cpu_processes(_segment_args(ade_dir, output, "--device", "cpu", "--batch-size", "2")[1:],
                                         output)
    assert 0.0 <= summary["miou"] <= 100.0
    assert load_state(output / "last.state.pt")["num_updates"] == 2  # 8 images, global batch 2 x 2


# --- publishing, official checkpoints, mmseg, benchmark ---------------------------------------------------------

def test_segmentation_run_pushes_and_loads_back(ade_dir, tmp_path, test_hub, monkeypatch, capsys):
    import vithub
    from vithub.detection.publishing import load_dense_model, save_dense_model

    monkeypatch.setenv("HF_TOKEN", "hf_vithub_test_write_token")
    output = tmp_path / "run"
    assert cli.main(_segment_args(ade_dir, output)) == 0
    capsys.readouterr()
    assert cli.main(["push", str(output), "tester/upernet-demo"]) == 0
    pushed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pushed["architecture"] == "upernet:vh_efficientvit_b0" and "miou" in pushed["metrics"]
    assert cli.main(["pull", "tester/upernet-demo"]) == 0
    pulled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pulled["num_classes"] == 5
    folder = Path(pulled["path"])
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "vithub-segmentor" and config["label_names"][0] == "sky"
    assert "pipeline_tag: image-segmentation" in (folder / "README.md").read_text()
    model = vithub.load("tester/upernet-demo").eval()
    best = load_file(output / json.loads((output / "summary.json").read_text())["best_checkpoint"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0, msg=key)
    images = torch.rand(1, 3, 40, 56)
    again = load_dense_model(save_dense_model(model, tmp_path / "saved")).eval()
    torch.testing.assert_close(again.predict(images), model.predict(images), rtol=0, atol=0)
    assert test_hub.state.unhandled == []


def _official_upernet_names(segmentor):
    """Our segmentor's state dict under the official mmseg names (written from mmseg's module layout)."""
    renames = [("decode_head.ppm.stages.", "decode_head.psp_modules.", ".1."),
               ("decode_head.ppm_bottleneck.", "decode_head.bottleneck.", None),
               ("decode_head.lateral.", "decode_head.lateral_convs.", None),
               ("decode_head.fpn.", "decode_head.fpn_convs.", None),
               ("decode_head.fuse.", "decode_head.fpn_bottleneck.", None),
               ("decode_head.classifier.", "decode_head.conv_seg.", None),
               ("aux_head.classifier.", "auxiliary_head.conv_seg.", None),
               ("aux_head.convs.", "auxiliary_head.convs.", None)]
    official = {}
    for key, value in segmentor.state_dict().items():
        if key.startswith("backbone."):
            continue
        for ours, theirs, psp in renames:
            if key.startswith(ours):
                rest = key[len(ours):]
                if psp:  # psp_modules.{i} is (pool, ConvModule): the conv is item 1
                    index, rest = rest.split(".", 1)
                    rest = f"{index}{psp}{rest}"
                official[theirs + rest] = torch.randn_like(value.float()).to(value.dtype)
                break
        else:
            raise AssertionError(f"no official name for {key}")
    return official


def test_official_upernet_checkpoint_loads_into_a_segmentor(tmp_path):
    """An official NAT-Mini UPerNet checkpoint (the official NAT backbone layout from test_nat's generator, norm0..3,
    UPerHead and FCNHead under mmseg's names) loads completely; the model then computes what its parts compute."""
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).parent))
    from test_nat import official_dense_state

    torch.manual_seed(0)
    segmentor = create_segmentor("vh_nat_mini", 7, head="upernet")
    official = official_dense_state(seed=2)
    heads = _official_upernet_names(segmentor)
    official.update(heads)
    official["decode_head.loss_decode.weight"] = torch.ones(1)  # not part of the model: reported as unused
    save_file({key: value.contiguous() for key, value in official.items()}, str(tmp_path / "upernet.safetensors"))
    unused = load_official_segmentation_checkpoint(segmentor, tmp_path / "upernet.safetensors")
    assert unused == ["decode_head.loss_decode.weight"]
    state = segmentor.state_dict()
    torch.testing.assert_close(state["decode_head.ppm.stages.2.conv.weight"],
                               heads["decode_head.psp_modules.2.1.conv.weight"])
    torch.testing.assert_close(state["decode_head.fuse.bn.running_var"],
                               heads["decode_head.fpn_bottleneck.bn.running_var"])
    torch.testing.assert_close(state["aux_head.classifier.weight"], heads["auxiliary_head.conv_seg.weight"])
    torch.testing.assert_close(state["backbone.norms.1.weight"], official["backbone.norm1.weight"])
    torch.testing.assert_close(segmentor.backbone.body.model.stages[2].blocks[1].attn.qkv.weight,
                               official["backbone.levels.2.blocks.1.attn.qkv.weight"])
    with pytest.raises(ValueError, match="shapes differ"):
        load_official_segmentation_checkpoint(create_segmentor("vh_nat_mini", 9, head="upernet"),
                                              tmp_path / "upernet.safetensors")
    del official["decode_head.fpn_bottleneck.conv.weight"]
    with pytest.raises(ValueError, match=r"missing \['decode_head.fuse.conv.weight'\]"):
        load_official_segmentation_checkpoint(segmentor, official)


def test_mmseg_config_matches_the_backbone_and_official_recipe():
    config = runpy.run_path(str(ROOT / "docs" / "mmseg" / "upernet_vh_512x512_160k_ade20k.py"))
    from vithub.detection.mm import VithubBackbone

    backbone = config["model"]["backbone"]
    with torch.device("meta"):
        built = VithubBackbone(backbone["model_name"], backbone["out_indices"])
    assert config["model"]["decode_head"]["in_channels"] == built.out_channels
    assert config["model"]["auxiliary_head"]["in_channels"] == built.out_channels[2]
    optimizer = config["optim_wrapper"]["optimizer"]
    assert (optimizer["type"], optimizer["lr"], optimizer["weight_decay"]) == ("AdamW", 6e-5, 0.01)
    assert config["param_scheduler"][1]["end"] == 160000 and config["param_scheduler"][1]["power"] == 1.0


def test_segmentation_bench_writes_table_and_json(tmp_path, capsys):
    output = tmp_path / "segmentation.json"
    assert cli.main(["bench", "segmentation", "--backbones", "vh_efficientvit_b0", "swin_tiny_patch4_window7_224",
                     "--seg-img-size", "64", "--repeats", "1", "--output", str(output)]) == 0
    assert "upernet backbone" in capsys.readouterr().out
    payload = json.loads(output.read_text())
    assert payload["benchmark"] == "segmentation" and payload["reference"] == "swin_tiny_patch4_window7_224"
    rows = {row["backbone"]: row for row in payload["rows"]}
    assert rows["swin_tiny_patch4_window7_224"]["train_speed_vs_timm_swin"] == 1.0
    for row in rows.values():
        assert row["train_images_per_second"] > 0 and row["inference_ms"] > 0


def test_synthetic_scenes_are_fixed_and_labelled_ade_style():
    image, mask = synthetic_scene(3, "val")
    again_image, again_mask = synthetic_scene(3, "val")
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 5} and (mask == 0).any() and (mask >= 3).any()
