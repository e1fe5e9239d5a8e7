"""vithub.detection: the feature-pyramid adapter, the four detectors, COCO data and evaluation, the detection task
in the shared trainer (CLI, validate, kill-and-resume), official-checkpoint conversion, and the mmdet adapter."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from vithub import cli
from vithub.detection import (
    DETECTORS,
    FeaturePyramidBackbone,
    anchor_sizes,
    coco_evaluate,
    collate_detection,
    create_detector,
    decode_segmentation,
    detection_param_groups,
    encode_mask,
    parse_coco,
    predictions_to_coco,
    read_coco,
)
from vithub.detection.coco import CocoDetection, folder_reader, synthetic_split, write_coco_split
from vithub.detection.convert import load_official_detection_checkpoint
from vithub.detection.evaluation import run_detector
from vithub.train import DataError, TrainConfig, train
from vithub.train.checkpoint import load_state
from vithub.train.engine import EpochBatches, grouped_batches

SMALL = 96  # side of the test images


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """A COCO 2017-layout folder written from the synthetic generator (polygon and RLE masks, 3 classes)."""
    root = tmp_path_factory.mktemp("coco")
    for split, count in (("train", 8), ("val", 4)):
        coco, reader = synthetic_split(split, size=SMALL, num_images=count)
        write_coco_split(coco, reader, root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017")
    return root


def _batch(coco_dir, count=2, masks=True):
    split = read_coco(coco_dir / "annotations" / "instances_train2017.json")
    dataset = CocoDetection(split, folder_reader(coco_dir / "train2017", split), with_masks=masks)
    images, targets, bad = collate_detection([dataset[index] for index in range(count)])
    assert not bad
    return images, targets, split


# --- the backbone adapter -------------------------------------------------------------------------------------------

def test_pyramid_takes_any_size_and_keeps_strides():
    backbone = FeaturePyramidBackbone("vh_efficientvit_m0", out_channels=32, extra_levels="pool")
    assert backbone.reductions == [16, 32, 64] and backbone.strides == [16, 32, 64, 128]
    features = backbone(torch.randn(2, 3, 100, 150))  # neither side a multiple of the largest stride
    assert list(features) == ["0", "1", "2", "pool"]
    padded = (128, 192)  # padded to multiples of 64 at the bottom/right
    for (name, feature), stride in zip(features.items(), backbone.strides):
        assert feature.shape[:2] == (2, 32), name
        assert feature.shape[-2:] == (-(-padded[0] // stride), -(-padded[1] // stride)), name


def test_nhwc_timm_backbone_matches_timm_features_with_level_norms():
    torch.manual_seed(0)
    backbone = FeaturePyramidBackbone("swin_tiny_patch4_window7_224", out_channels=16, extra_levels="p6p7").eval()
    assert backbone.channels_last_maps and backbone.strides == [4, 8, 16, 32, 64, 128]
    for norm in backbone.norms:  # non-trivial norms, so the test sees them applied
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone.body(images)
        expected = [norm(feature.permute(0, 3, 1, 2)) for feature, norm in zip(maps, backbone.norms)]
        inner = {}
        backbone.fpn.register_forward_pre_hook(lambda module, args: inner.update(args[0]))
        backbone(images)
    for index, feature in enumerate(expected):
        torch.testing.assert_close(inner[str(index)], feature)


def test_frozen_stages_freeze_stem_and_stages_and_stay_in_eval():
    model = FeaturePyramidBackbone("vh_efficientvit_b0", frozen_stages=1, extra_levels="none")
    frozen = {name for name, parameter in model.body.named_parameters() if not parameter.requires_grad}
    assert frozen and all(name.startswith(("model.stem.", "model.stages.0.")) for name in frozen)
    assert any(name.startswith("model.stem.") for name in frozen)
    assert any(name.startswith("model.stages.0.") for name in frozen)
    assert all(parameter.requires_grad for name, parameter in model.body.named_parameters()
               if name.startswith("model.stages.1."))
    model.train()
    batch_norms = [module for name, module in model.body.named_modules()
                   if isinstance(module, torch.nn.BatchNorm2d) and name.startswith("model.stem.")]
    assert batch_norms and all(not module.training for module in batch_norms)
    with pytest.raises(ValueError, match="frozen_stages must be in"):
        FeaturePyramidBackbone("vh_efficientvit_b0", frozen_stages=7)


def test_anchor_presets_follow_the_strides():
    sizes, ratios = anchor_sizes([4, 8, 16, 32, 64], "mask_rcnn")
    assert sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)) and ratios[0] == (0.5, 1.0, 2.0)
    sizes, _ = anchor_sizes([16, 32, 64, 128], "faster_rcnn")  # LeViT / EfficientViT-M start at stride 16
    assert sizes == ((32.0,), (64.0,), (128.0,), (256.0,))
    sizes, _ = anchor_sizes([8, 16, 32, 64, 128], "retinanet")
    assert sizes[0] == pytest.approx((32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)))
    assert anchor_sizes([8, 16], "fcos")[0] == ((8.0,), (16.0,))


def test_backbone_without_features_only_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone must be a timm model name"):
        create_detector("faster_rcnn", "not_a_model", num_classes=2)
    with pytest.raises(ValueError, match=r"strides must be powers of two, got \[12, 17\]"):
        create_detector("faster_rcnn", "crossvit_tiny_240", num_classes=2)


def test_model_without_feature_maps_is_a_clear_error(monkeypatch):
    from timm.models import register_model

    @register_model
    def vhtest_plain_conv(pretrained=False, **kwargs):  # a registered model that ignores features_only
        return torch.nn.Conv2d(3, 8, 3)

    with pytest.raises(ValueError, match=r"backbone 'vhtest_plain_conv' does not support features_only"):
        FeaturePyramidBackbone("vhtest_plain_conv")


# --- the detectors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["vh_efficientvit_m0", "vh_nat_mini", "swin_tiny_patch4_window7_224"])
@pytest.mark.parametrize("detector", DETECTORS)
def test_every_detector_trains_and_evaluates(coco_dir, detector, backbone):
    torch.manual_seed(0)
    images, targets, split = _batch(coco_dir, masks=detector == "mask_rcnn")
    model = create_detector(detector, backbone, num_classes=3, img_size=SMALL, fpn_channels=32)
    optimizer = torch.optim.AdamW(detection_param_groups(model, 0.05), lr=1e-4)
    model.train()
    for _ in range(2):
        losses = model(images, targets)
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if detector == "mask_rcnn":
        assert "loss_mask" in losses
    val = read_coco(coco_dir / "annotations" / "instances_val2017.json")
    dataset = CocoDetection(val, folder_reader(coco_dir / "val2017", val))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_detection)
    results = run_detector(model, loader, torch.device("cpu"), val)
    metrics = coco_evaluate(val.ground_truth, results, ("bbox", "segm") if detector == "mask_rcnn" else ("bbox",))
    assert all(np.isfinite(value) and (0.0 <= value <= 1.0 or value == -1.0) for value in metrics.values())
    assert ("segm_ap" in metrics) == (detector == "mask_rcnn")


def test_roi_pooling_uses_the_backbone_strides_whatever_the_first_batch():
    """torchvision's pooler would infer its scales from the first batch; a small, heavily padded one (64 px padded
    to the 128 size divisor here) would fix wrong ones for the whole run."""
    model = create_detector("mask_rcnn", "vh_efficientvit_m0", num_classes=2, img_size=64, fpn_channels=16).eval()
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert pool.scales == [1 / 16, 1 / 32, 1 / 64]
        assert (pool.map_levels.k_min, pool.map_levels.k_max) == (4, 6)


def test_param_groups_skip_decay_on_norms_biases_and_bias_tables_and_decay_layers():
    model = create_detector("faster_rcnn", "vh_nat_mini", num_classes=2, fpn_channels=32)
    groups = detection_param_groups(model, weight_decay=0.05, layer_decay=0.8)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    for group in groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            no_decay = parameter.ndim <= 1 or name.endswith(".rpb")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    scale = {names[id(parameter)]: group["lr_scale"] for group in groups for parameter in group["params"]}
    assert scale["roi_heads.box_predictor.cls_score.weight"] == 1.0
    assert scale["backbone.fpn.inner_blocks.0.0.weight"] == 1.0
    stem = scale["backbone.body.model.stem.conv1.weight"]
    late = scale["backbone.body.model.stages.3.blocks.4.mlp.fc1.weight"]
    assert stem < late < 1.0


# --- COCO data ------------------------------------------------------------------------------------------------------

def test_masks_round_trip_through_rle_and_polygons():
    rng = np.random.default_rng(3)
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    assert np.array_equal(decode_segmentation(encode_mask(mask), 37, 53), mask)
    # uncompressed RLE (column-major run lengths starting with zeros), as COCO's crowd annotations store it
    flat = mask.flatten(order="F")
    assert np.array_equal(decode_segmentation({"counts": _uncompressed(flat), "size": [37, 53]}, 37, 53), mask)
    square = decode_segmentation([[10, 5, 30, 5, 30, 20, 10, 20]], 40, 40)
    expected = np.zeros((40, 40), np.uint8)
    expected[5:20, 10:30] = 1
    assert np.array_equal(square, expected)


def _uncompressed(flat):
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with a run of zeros."""
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return counts


def _coco(**changes):
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                       {"id": 2, "file_name": "b.png", "height": 20, "width": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8]},
                            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 10, 20, 20]},
                            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 30, 20], "iscrowd": 1}],
            "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}]}
    coco.update(changes)
    return coco


def test_coco_parsing_keeps_empty_images_ignores_crowds_and_clips():
    split = parse_coco(_coco(), "test.json")
    assert [image["id"] for image in split.images] == [1, 2] and split.annotations[2] == []
    assert split.category_ids == [5, 7] and split.label_of == {5: 1, 7: 2}
    boxes = [annotation["clipped"] for annotation in split.annotations[1]]
    assert boxes == [[2.0, 3.0, 12.0, 11.0], [20.0, 10.0, 30.0, 20.0]]  # the crowd region is not a target
    assert [annotation["iscrowd"] for annotation in split.ground_truth["annotations"]] == [0, 0, 1]


@pytest.mark.parametrize("coco, message", [
    ([1, 2], "JSON object"),
    ({"images": []}, r"missing key\(s\) \['annotations', 'categories'\]"),
    (_coco(images=[]), "the split is empty"),
    (_coco(annotations=[{"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}]),
     r"annotation 9 has category_id 3, which is not in 'categories'"),
    (_coco(annotations=[{"id": 9, "image_id": 4, "category_id": 5, "bbox": [1, 1, 2, 2]}]),
     r"annotation 9 refers to image_id 4"),
    (_coco(annotations=[{"id": 9, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2]}]), r"bbox must be"),
])
def test_bad_coco_files_are_clear_errors(coco, message):
    with pytest.raises(DataError, match=message):
        parse_coco(coco, "bad.json")


def test_degenerate_boxes_are_dropped_and_counted_up_to_the_limit():
    annotations = [{"id": index, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]} for index in range(1, 100)]
    annotations.append({"id": 100, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 5]})
    split = parse_coco(_coco(annotations=annotations), "x.json", max_dropped=0.01)
    assert len(split.dropped_boxes) == 1 and "annotation 100" in split.dropped_boxes[0]
    assert len(split.annotations[1]) == 99
    annotations.append({"id": 101, "image_id": 1, "category_id": 5, "bbox": [40, 30, 5, 5]})  # outside the image
    with pytest.raises(DataError, match=r"2 of 101 boxes are degenerate"):
        parse_coco(_coco(annotations=annotations), "x.json", max_dropped=0.01)


def test_files_that_are_not_json_or_missing_images_are_clear_errors(tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"instances.json: not a JSON file"):
        read_coco(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_coco()))
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"2 image\(s\) of .*good.json are missing from .*images: \['a.png', 'b.png'\]"):
        folder_reader(tmp_path / "images", read_coco(good))


def test_flip_and_crop_keep_boxes_on_their_masks(coco_dir):
    split = read_coco(coco_dir / "annotations" / "instances_train2017.json")
    dataset = CocoDetection(split, folder_reader(coco_dir / "train2017", split), with_masks=True, augment=True,
                            crop_probability=1.0)
    torch.manual_seed(1)
    checked = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape[-2:] == target["masks"].shape[-2:]
        for box, mask in zip(target["boxes"], target["masks"]):
            rows, cols = np.nonzero(mask.numpy())
            if len(rows) == 0:
                continue
            # the mask's extent sits inside its (clipped) box, within a pixel of its edges
            assert cols.min() >= box[0] - 1 and cols.max() + 1 <= box[2] + 1
            assert rows.min() >= box[1] - 1 and rows.max() + 1 <= box[3] + 1
            checked += 1
    assert checked > 5


def test_aspect_ratio_groups_make_single_group_batches():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    batches = grouped_batches(order, groups, 2)
    assert all(len({groups[index] for index in batch}) == 1 for batch in batches)
    assert len(batches) == 4 + 2 - 1  # 6 of group 1 -> 3 batches, 4 of group 0 -> 2 batches
    sampler = EpochBatches(10, 2, seed=3, epoch=0, groups=groups)
    assert list(sampler) == list(EpochBatches(10, 2, seed=3, epoch=0, groups=groups))
    assert list(EpochBatches(10, 2, seed=3, epoch=0, start=2, groups=groups)) == list(sampler)[2:]


# --- evaluation -----------------------------------------------------------------------------------------------------

def _perfect_results(split, masks=True):
    results = []
    for annotation in split.ground_truth["annotations"]:
        image = next(image for image in split.images if image["id"] == annotation["image_id"])
        entry = {"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                 "bbox": list(annotation["bbox"]), "score": 0.9}
        if masks:
            entry["segmentation"] = encode_mask(decode_segmentation(annotation["segmentation"], image["height"],
                                                                    image["width"]))
        results.append(entry)
    return results


def test_perfect_predictions_score_one_and_shuffled_ones_lower():
    split, _ = synthetic_split("val", size=SMALL, num_images=12)
    perfect = _perfect_results(split)
    metrics = coco_evaluate(split.ground_truth, perfect, ("bbox", "segm"))
    assert metrics["bbox_ap"] == pytest.approx(1.0) and metrics["segm_ap"] == pytest.approx(1.0)
    assert metrics["bbox_ap50"] == pytest.approx(1.0) and metrics["bbox_ar100"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    shuffled = [dict(entry, image_id=int(rng.choice([image["id"] for image in split.images])))
                for entry in perfect]
    worse = coco_evaluate(split.ground_truth, shuffled, ("bbox", "segm"))
    assert worse["bbox_ap"] < 0.5 and worse["segm_ap"] < 0.5
    assert coco_evaluate(split.ground_truth, [], ("bbox",))["bbox_ap"] == 0.0


def test_faster_coco_eval_and_pycocotools_agree(monkeypatch):
    split, _ = synthetic_split("val", size=SMALL, num_images=12)
    rng = np.random.default_rng(1)
    noisy = []
    for entry in _perfect_results(split, masks=False):
        x, y, w, h = entry["bbox"]
        noisy.append(dict(entry, bbox=[x + rng.normal(0, 3), y + rng.normal(0, 3), w * rng.uniform(0.8, 1.2),
                                       h * rng.uniform(0.8, 1.2)], score=float(rng.random())))
    fast = coco_evaluate(split.ground_truth, noisy)
    import vithub.detection.evaluation as evaluation
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    monkeypatch.setattr(evaluation, "_coco_classes", lambda: (COCO, COCOeval))
    reference = coco_evaluate(split.ground_truth, noisy)
    assert 0.1 < reference["bbox_ap"] < 0.95
    for name, value in reference.items():
        assert fast[name] == pytest.approx(value, abs=1e-6), name


def test_predictions_map_labels_back_to_category_ids():
    output = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0]]), "scores": torch.tensor([0.75]),
              "labels": torch.tensor([2]), "masks": torch.zeros(1, 1, 10, 12)}
    output["masks"][0, 0, 2:5, 3:9] = 0.9
    (entry,) = predictions_to_coco([output], [42], category_ids=[5, 7])
    assert entry["image_id"] == 42 and entry["category_id"] == 7 and entry["bbox"] == [1.0, 2.0, 10.0, 5.0]
    mask = decode_segmentation(entry["segmentation"], 10, 12)
    assert mask.sum() == 18 and mask[2:5, 3:9].all()


# --- the detection task in the trainer ------------------------------------------------------------------------------

def _detect_args(coco_dir, output, *extra):
    return ["train", "--task", "detection", "--data", str(coco_dir), "--output", str(output), "--detector",
            "faster_rcnn", "--model", "vh_efficientvit_m0", "--img-size", str(SMALL), "--epochs", "1", "-b", "2",
            "--fpn-channels", "32", *extra]


def test_cli_trains_and_validates_a_detector(coco_dir, tmp_path, capsys):
    output = tmp_path / "run"
    assert cli.main(_detect_args(coco_dir, output)) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["num_classes"] == 3
    assert summary["classes"] == ["square", "disk", "triangle"]
    for name in ("bbox_ap", "bbox_ap50", "bbox_ap75", "bbox_ar100", "best_bbox_ap"):
        assert 0.0 <= summary[name] <= 1.0, name
    predictions = json.loads((output / "predictions_val.json").read_text())
    assert isinstance(predictions, list) and all(entry["category_id"] in (1, 2, 3) for entry in predictions)
    state = load_state(output / "last.state.pt")
    assert state["config"]["lr"] == 1e-4 and state["config"]["task_options"]["detector"] == "faster_rcnn"
    capsys.readouterr()
    assert cli.main(["validate", "--task", "detection", "--data", str(coco_dir), "--detector", "faster_rcnn",
                     "--model", "vh_efficientvit_m0", "--img-size", str(SMALL), "--fpn-channels", "32",
                     "--checkpoint", str(output / summary["best_checkpoint"])]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["bbox_ap"] == pytest.approx(summary["best_bbox_ap"])


def test_cli_bad_detection_data_exits_2(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text("[]")
    code = cli.main(["train", "--task", "detection", "--data", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "instances_train2017.json: a COCO file holds a JSON object" in capsys.readouterr().err
    code = cli.main(["train", "--task", "detection", "--data", str(tmp_path / "nowhere"), "--output",
                     str(tmp_path / "o")])
    assert code == 2 and "COCO folder" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_default_learns_the_shapes(tmp_path):
    """The README's main detection job, shortened to two of its four epochs (about 80 s on two cores): the
    defaults (embedded shapes, Mask R-CNN on vh_efficientvit_b0, the CPU preset) must already detect."""
    summary = train(TrainConfig(task="detection", epochs=2, output=str(tmp_path / "run"), progress=False))
    assert summary["model"] == "vh_efficientvit_b0" and summary["num_classes"] == 3
    assert summary["bbox_ap"] > 0.15 and summary["segm_ap"] > 0.15 and summary["bbox_ap50"] > 0.4
    config = load_state(tmp_path / "run" / "last.state.pt")["config"]
    assert (config["lr"], config["batch_size"], config["task_options"]["detector"]) == (2e-3, 8, "mask_rcnn")


def test_unknown_task_option_is_refused():
    with pytest.raises(ValueError, match=r"has no option\(s\) \['anchors'\]"):
        train(TrainConfig(task="detection", task_options={"anchors": 3}, progress=False))


def _train_command(coco_dir, output, *extra):
    return [sys.executable, "-m", "vithub.train", *_detect_args(coco_dir, output, "--epochs", "2",
                                                                  "--checkpoint-every", "1", "--seed", "5")[1:],
            *extra]


def test_detection_kill_and_resume_matches_an_unbroken_run(coco_dir, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import kill_and_resume

    summaries = kill_and_resume(lambda output, *extra: _train_command(coco_dir, output, *extra),
                                tmp_path / "unbroken", tmp_path / "broken", total_updates=4)
    assert summaries["broken"]["bbox_ap"] == summaries["unbroken"]["bbox_ap"]


def test_detection_under_torchrun_two_cpu_processes(coco_dir, tmp_path):
    """DDP (gloo) through the shared loop: both ranks end with the same detector, rank 0 evaluates."""
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_check import torchrun_two_cpu_processes

    output = tmp_path / "ddp"
    summary = torchrun_two_cpu_processes(_detect_args(coco_dir, output, "--device", "cpu")[1:], output)
    assert 0.0 <= summary["bbox_ap"] <= 1.0
    assert load_state(output / "last.state.pt")["num_updates"] == 2  # 8 images, global batch 2 x 2


# --- official checkpoints and mmdet ---------------------------------------------------------------------------------

def _official_swin_detection_state(seed=0):
    """timm's swin_tiny weights rearranged into the official mmdet Swin layout (downsample at the end of each
    stage, query-minus-key bias tables), with norm0..3 and an FPN neck; returns it and the timm model."""
    torch.manual_seed(seed)
    reference = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, strict_img_size=False).eval()
    official = {}
    for key, value in reference.state_dict().items():
        key = key.replace("layers_", "layers.")
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        moved = key.split(".")
        if moved[0] == "layers" and moved[2] == "downsample":  # timm: start of stage i; official: end of i-1
            moved[1] = str(int(moved[1]) - 1)
        value = value.clone()
        if key.endswith("relative_position_bias_table"):
            value.normal_()
        official["backbone." + ".".join(moved)] = value
    for index, channels in enumerate([96, 192, 384, 768]):
        official[f"backbone.norm{index}.weight"] = torch.randn(channels)
        official[f"backbone.norm{index}.bias"] = torch.randn(channels)
        official[f"neck.lateral_convs.{index}.conv.weight"] = torch.randn(256, channels, 1, 1)
        official[f"neck.lateral_convs.{index}.conv.bias"] = torch.randn(256)
        official[f"neck.fpn_convs.{index}.conv.weight"] = torch.randn(256, 256, 3, 3)
        official[f"neck.fpn_convs.{index}.conv.bias"] = torch.randn(256)
    official["rpn_head.rpn_conv.weight"] = torch.randn(256, 256, 3, 3)
    timm_layout = {}
    for key, value in official.items():
        if key.startswith("backbone.layers."):
            parts = key[len("backbone."):].split(".")
            if parts[2] == "downsample":
                parts[1] = str(int(parts[1]) + 1)
            timm_layout[".".join(parts).replace("layers.", "layers_", 1)] = value
        elif key.startswith("backbone.patch_embed"):
            timm_layout[key[len("backbone."):]] = value
    reference.load_state_dict(timm_layout, strict=False)
    return official, reference


def test_official_swin_detection_checkpoint_loads_and_matches_timm(tmp_path):
    official, reference = _official_swin_detection_state()
    model = create_detector("mask_rcnn", "vh_swin_tiny_patch4_window7_224", num_classes=80).eval()
    path = tmp_path / "mask_rcnn_swin_tiny.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": official}, path)
    unused = load_official_detection_checkpoint(model, path)
    assert unused == ["rpn_head.rpn_conv.weight"]
    torch.testing.assert_close(model.backbone.norms[2].weight, official["backbone.norm2.weight"])
    torch.testing.assert_close(model.backbone.fpn.inner_blocks[1][0].weight,
                               official["neck.lateral_convs.1.conv.weight"])
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone.body(images)
        theirs = reference(images)
    for mine, timms in zip(ours, theirs):
        torch.testing.assert_close(mine, timms.permute(0, 3, 1, 2), atol=2e-4, rtol=1e-4)


def test_official_nat_detection_checkpoint_loads(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_nat import NAT_MINI, official_dense_state, official_state_dict

    classification = official_state_dict(NAT_MINI, layer_scale=False, num_classes=10)
    official = official_dense_state()
    model = create_detector("faster_rcnn", "vh_nat_mini", num_classes=3)
    assert load_official_detection_checkpoint(model, official) == []
    reference = timm.create_model("vh_nat_mini", num_classes=10)
    reference.load_state_dict(_nat_filter(classification, reference))
    reference.eval()
    model.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, intermediates_only=True)
        ours = model.backbone.body(images)
    for mine, theirs in zip(ours, expected):
        torch.testing.assert_close(mine, theirs)
    partial = {key: value for key, value in official.items() if "levels.3" not in key}
    with pytest.raises(ValueError, match="does not cover the backbone vh_nat_mini"):
        load_official_detection_checkpoint(create_detector("faster_rcnn", "vh_nat_mini", num_classes=3), partial)


def _nat_filter(classification, model):
    from vithub.backbones.nat import checkpoint_filter_fn

    return {key: value.float() for key, value in checkpoint_filter_fn(dict(classification), model).items()}


def test_mm_backbone_registers_and_returns_normed_nchw_levels(monkeypatch):
    registered = {}
    fake = types.ModuleType("mmdet.registry")
    fake.MODELS = types.SimpleNamespace(register_module=lambda name, module, force: registered.update({name: module}))
    monkeypatch.setitem(sys.modules, "mmdet", types.ModuleType("mmdet"))
    monkeypatch.setitem(sys.modules, "mmdet.registry", fake)
    from vithub.detection import mm

    assert mm.register(("mmdet", "mmseg_missing")) == ["mmdet"] and registered["VithubBackbone"] is mm.VithubBackbone
    backbone = mm.VithubBackbone("vh_efficientvit_b0", out_indices=(1, 2, 3), frozen_stages=0).eval()
    outputs = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(output.shape) for output in outputs] == [(1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    assert backbone.out_channels == [32, 64, 128]



def test_mm_backbone_loads_an_official_checkpoint_in_init_weights(tmp_path):
    from safetensors.torch import save_file

    from test_nat import official_dense_state
    from vithub.detection.mm import VithubBackbone

    official = official_dense_state(seed=4)
    path = tmp_path / "official_nat_mini.safetensors"
    save_file(official, str(path))
    backbone = VithubBackbone("vh_nat_mini", checkpoint=str(path))
    backbone.init_weights()
    torch.testing.assert_close(backbone.norms[3].bias, official["backbone.norm3.bias"])
    torch.testing.assert_close(backbone.body.model.stages[2].blocks[1].attn.qkv.weight,
                               official["backbone.levels.2.blocks.1.attn.qkv.weight"])


# --- Hugging Face transformers --------------------------------------------------------------------------------------

def _hf_cases():
    import transformers as hf

    from vithub.detection import hf_backbone_config

    small = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                 encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8, num_labels=3)
    return {
        "detr": lambda: hf.DetrForObjectDetection(hf.DetrConfig(
            backbone_config=hf_backbone_config("vh_efficientvit_b0", (3,)), **small)),
        "deformable_detr": lambda: hf.DeformableDetrForObjectDetection(hf.DeformableDetrConfig(
            backbone_config=hf_backbone_config("vh_efficientvit_b0", (1, 2, 3)), encoder_n_points=2,
            decoder_n_points=2, **small)),
        "rt_detr": lambda: hf.RTDetrForObjectDetection(hf.RTDetrConfig(
            backbone_config=hf_backbone_config("vh_efficientvit_b0", (1, 2, 3)), encoder_hidden_dim=32,
            d_model=32, encoder_ffn_dim=32, decoder_ffn_dim=32, decoder_layers=1, num_queries=8, num_labels=3,
            num_denoising=4, encoder_in_channels=[32, 64, 128], decoder_in_channels=[32, 32, 32])),
        "mask2former": lambda: hf.Mask2FormerForUniversalSegmentation(hf.Mask2FormerConfig(
            backbone_config=hf_backbone_config("vh_efficientvit_b0", (0, 1, 2, 3)), hidden_dim=32,
            mask_feature_size=32, feature_size=32, encoder_feedforward_dim=32, dim_feedforward=32,
            encoder_layers=1, decoder_layers=2, num_queries=8, num_labels=3, num_attention_heads=2)),
        "upernet": lambda: hf.UperNetForSemanticSegmentation(hf.UperNetConfig(
            backbone_config=hf_backbone_config("vh_efficientvit_b0", (0, 1, 2, 3)), hidden_size=32,
            auxiliary_in_channels=64, auxiliary_channels=32, num_labels=3)),
    }


def _hf_labels(kind, size):
    generator = torch.Generator().manual_seed(0)
    if kind == "upernet":
        return {"labels": torch.randint(0, 3, (2, size, size), generator=generator)}
    if kind == "mask2former":
        masks = torch.zeros(2, size, size)
        masks[0, 4:20, 6:30] = 1
        masks[1, 30:50, 10:40] = 1
        return {"mask_labels": [masks, masks.flip(-1)], "class_labels": [torch.tensor([0, 2]), torch.tensor([1, 2])]}
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])  # normalised cx, cy, w, h
    return {"labels": [{"class_labels": torch.tensor([1, 2]), "boxes": boxes},
                       {"class_labels": torch.tensor([0]), "boxes": boxes[:1]}]}


@pytest.mark.parametrize("kind", ["detr", "deformable_detr", "rt_detr", "mask2former", "upernet"])
def test_hf_models_train_and_round_trip_on_a_vithub_backbone(kind, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = _hf_cases()[kind]()
    backbone = _vithub_backbone(model)
    size = 128  # Deformable DETR's extra level halves the last map once more: keep it above 1x1
    pixels = torch.rand(2, 3, size, size)  # two images: UperNet's pooling branch has BatchNorm on 1x1 maps
    model.train()
    output = model(pixel_values=pixels, **_hf_labels(kind, size))
    assert torch.isfinite(output.loss)
    output.loss.backward()
    grads = [parameter.grad for parameter in backbone.parameters() if parameter.grad is not None]
    assert grads and any(grad.abs().sum() > 0 for grad in grads)  # the loss reaches our backbone
    model.eval()
    model.save_pretrained(tmp_path / kind)
    reloaded = type(model).from_pretrained(tmp_path / kind).eval()
    with torch.no_grad():
        first, second = model(pixel_values=pixels), reloaded(pixel_values=pixels)
    name = "logits" if hasattr(first, "logits") and first.logits is not None else "class_queries_logits"
    torch.testing.assert_close(getattr(second, name), getattr(first, name))


def _vithub_backbone(model):
    """The timm feature wrapper around our EfficientViT inside a transformers model (DETR holds it directly,
    the others through TimmBackbone)."""
    found = [module for module in model.modules() if type(module).__name__ == "FeatureGetterNet"
             and type(module.model).__module__.startswith("vithub.backbones")]
    assert len(found) == 1, [type(module).__name__ for module in model.modules()][:20]
    return found[0]


def test_hf_backbone_config_refuses_bad_input():
    pytest.importorskip("transformers")
    from vithub.detection import hf_backbone_config

    with pytest.raises(ValueError, match="out_indices must pick among the 4 feature levels"):
        hf_backbone_config("vh_nat_mini", (2, 4))
    with pytest.raises(ValueError, match="name must be a timm model name"):
        hf_backbone_config("nat-mini")
    with pytest.raises(ValueError, match="channels-last"):
        hf_backbone_config("swin_tiny_patch4_window7_224")


# --- publishing -----------------------------------------------------------------------------------------------------

def test_detection_run_pushes_and_loads_back_with_its_config(coco_dir, tmp_path, test_hub, monkeypatch, capsys):
    import vithub
    from vithub.detection.publishing import load_dense_model, save_dense_model

    monkeypatch.setenv("HF_TOKEN", "hf_vithub_test_write_token")
    output = tmp_path / "run"
    assert cli.main(_detect_args(coco_dir, output, "--detector", "mask_rcnn")) == 0
    capsys.readouterr()
    assert cli.main(["push", str(output), "tester/mask-rcnn-demo"]) == 0
    pushed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pushed["architecture"] == "mask_rcnn:vh_efficientvit_m0" and "bbox_ap" in pushed["metrics"]
    assert cli.main(["pull", "tester/mask-rcnn-demo"]) == 0
    pulled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pulled["num_classes"] == 3 and pulled["architecture"] == "mask_rcnn:vh_efficientvit_m0"
    config = json.loads((Path(pulled["path"]) / "config.json").read_text())
    assert config["label_names"] == ["square", "disk", "triangle"] and config["category_ids"] == [1, 2, 3]
    assert config["detector_config"]["img_size"] == SMALL and config["detector_config"]["fpn_channels"] == 32

    model = vithub.load("tester/mask-rcnn-demo").eval()
    best = load_file(output / json.loads((output / "summary.json").read_text())["best_checkpoint"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0, msg=key)
    images = [torch.rand(3, 80, 112)]
    folder = save_dense_model(model, tmp_path / "saved", label_names=["a", "b", "c"])
    card = (folder / "README.md").read_text()
    assert "vithub.load(" in card and "not with Hugging Face transformers' Auto classes" in card
    loading = json.loads((folder / "config.json").read_text())["loading"]
    assert "not with Hugging Face transformers' Auto classes" in loading
    again = load_dense_model(folder).eval()
    with torch.no_grad():
        first, second = model(images)[0], again(images)[0]
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0)
    assert test_hub.state.unhandled == []


def test_detection_bench_writes_table_and_json(tmp_path, capsys):
    output = tmp_path / "detection.json"
    assert cli.main(["bench", "detection", "--backbones", "vh_efficientvit_m0", "swin_tiny_patch4_window7_224",
                     "--det-img-size", "64", "--det-batch-size", "1", "--repeats", "1",
                     "--output", str(output)]) == 0
    table = capsys.readouterr().out
    assert "torchvision maskrcnn_resnet50_fpn_v2" in table and "vh_efficientvit_m0" in table
    payload = json.loads(output.read_text())
    assert payload["benchmark"] == "detection" and payload["reference"] == "swin_tiny_patch4_window7_224"
    rows = {row["backbone"]: row for row in payload["rows"]}
    assert set(rows) == {"vh_efficientvit_m0", "swin_tiny_patch4_window7_224", "torchvision maskrcnn_resnet50_fpn_v2"}
    assert rows["swin_tiny_patch4_window7_224"]["train_speed_vs_timm_swin"] == 1.0
    for row in rows.values():
        assert row["train_images_per_second"] > 0 and row["inference_ms"] > 0
        assert row["train_speed_vs_timm_swin"] == pytest.approx(
            rows["swin_tiny_patch4_window7_224"]["train_step_ms"] / row["train_step_ms"], rel=1e-2)
