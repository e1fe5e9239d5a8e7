"""--pretrained-path (and --pretrained-head-rows): a run starts from a weights file read the way the model's
pretrained weights are, through timm's loading and the model's checkpoint filter: position embeddings and bias
tables resized to the model's input and window, the classifier kept when its classes match and started fresh when
they do not, rows of a larger classifier picked by a file, and anything else that does not fit named."""

from __future__ import annotations


import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import vithub  # noqa: F401  (registers the vh_* models)
from vithub.train import TrainConfig
from vithub.train.tasks import ClassificationTask, model_from_weights


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10)
    path = tmp_path_factory.mktemp("weights") / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    return source, path


def _same(model, source, prefix: str) -> bool:
    theirs = source.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in model.state_dict().items() if key.startswith(prefix))


def test_the_position_embedding_is_resized_and_a_matching_classifier_kept(vit_weights):
    source, path = vit_weights
    model = model_from_weights("vit_tiny_patch16_384", str(path), num_classes=10)
    assert model.pos_embed.shape == (1, 1 + 24 * 24, 192)
    assert _same(model, source, "blocks.") and torch.equal(model.head.weight, source.head.weight)
    expected = timm.layers.resample_abs_pos_embed(source.pos_embed, (24, 24), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, expected)


def test_a_classifier_for_other_classes_starts_fresh_or_takes_the_listed_rows(vit_weights, tmp_path):
    source, path = vit_weights
    fresh = model_from_weights("vit_tiny_patch16_384", str(path), num_classes=3)
    assert fresh.head.weight.shape == (3, 192) and _same(fresh, source, "blocks.")
    rows = tmp_path / "rows.txt"
    rows.write_text("7\n2\n9\n")
    picked = model_from_weights("vit_tiny_patch16_384", str(path), str(rows), num_classes=3)
    assert torch.equal(picked.head.weight, source.head.weight[[7, 2, 9]])
    assert torch.equal(picked.head.bias, source.head.bias[[7, 2, 9]])
    rows.write_text("7\n2\n")
    with pytest.raises(ValueError, match="pretrained_head_rows: .* lists 2 rows for 3 classes"):
        model_from_weights("vit_tiny_patch16_384", str(path), str(rows), num_classes=3)
    rows.write_text("7\n2\n10\n")
    with pytest.raises(ValueError, match="rows outside the checkpoint's 10 classes"):
        model_from_weights("vit_tiny_patch16_384", str(path), str(rows), num_classes=3)


def test_weights_of_another_model_and_missing_files_are_named(vit_weights, tmp_path):
    _, path = vit_weights
    with pytest.raises(ValueError, match=r"does not fit vit_small_patch16_384 beyond its classifier: size mismatch "
                                         r"for cls_token"):
        model_from_weights("vit_small_patch16_384", str(path), num_classes=3)
    with pytest.raises(ValueError, match="pretrained_path: .*nope.safetensors is not a file"):
        model_from_weights("vit_tiny_patch16_384", str(tmp_path / "nope.safetensors"), num_classes=3)
    with pytest.raises(ValueError, match="pretrained_head_rows picks rows of the classifier in --pretrained-path"):
        ClassificationTask().resolve(TrainConfig(pretrained_head_rows=str(tmp_path / "rows.txt"))).check()


def test_swin_bias_tables_are_resized_to_the_new_window(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("vh_swin_tiny_patch4_window7_224", num_classes=5)
    path = tmp_path / "swin.safetensors"
    save_file(source.state_dict(), str(path))
    model = model_from_weights("vh_swin_tiny_patch4_window7_224", str(path), num_classes=5, img_size=384,
                               window_size=12)
    tables = [key for key in model.state_dict() if key.endswith("attn.rpb")]  # (heads, 2w - 1, 2w - 1)
    assert tables and all(model.state_dict()[key].shape[-2:] == (23, 23) for key in tables)
    assert source.state_dict()[tables[0]].shape[-2:] == (13, 13)
    assert _same(model, source, "layers.0.blocks.0.mlp.") and torch.equal(model.head.fc.weight, source.head.fc.weight)


def test_a_run_starts_from_the_file(vit_weights, tmp_path):
    """The classification task's model, built from a config with --pretrained-path, holds the file's weights."""
    source, path = vit_weights
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (20, 20), (30, 60, 90)).save(folder / "0.png")
    task = ClassificationTask()
    config = task.resolve(TrainConfig(model="vit_tiny_patch16_384", pretrained_path=str(path), data=str(
        tmp_path / "data"), img_size=32))
    config.check()
    model = task.build_model(config, task.build_data(config))
    assert model.head.weight.shape == (2, 192) and _same(model, source, "blocks.")
