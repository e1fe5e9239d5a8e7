"""What vithub saves and pushes loads in Hugging Face transformers (offline): AutoModelForImageClassification through
its TimmWrapper classes with our outputs, the image-classification pipeline with the run's label names, and
AutoImageProcessor with the model's own preprocessing; the previous config format's TypeError there, and that
vithub still loads that format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import vithub  # noqa: F401  (registers the vh_* architectures, which transformers builds through timm)
from vithub.publishing import load, save_pretrained

import contract

transformers = pytest.importorskip("transformers")

LABELS = ["cat", "dog", "eel"]
# one model per family, and a token-reduced member
MODELS = ["vh_nat_mini", "vh_dinat_mini", "vh_swin_tiny_patch4_window7_224", "vh_fastervit_0_224", "vh_levit_128s",
          "vh_efficientvit_m0", "vh_efficientvit_b0", "vh_deit_tiny_patch16_224_tome"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _saved(name, folder):
    model = contract.make_model(name, num_classes=len(LABELS), drop_path_rate=0.0).eval()
    save_pretrained(model, folder, label_names=LABELS)
    return model


def _image(seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (250, 270, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", MODELS)
def test_auto_model_equals_ours_and_the_pipeline_names_the_labels(name, tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    model = _saved(name, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "num_classes" not in config.get("model_args", {})  # transformers passes it itself
    assert not (set(config.get("model_args", {})) & (set(config) - {"model_args"}))  # nothing said twice
    hf = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label == dict(enumerate(LABELS))
    images = contract.random_images(2, contract.contract_input(name))
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=images).logits, model(images), rtol=1e-5, atol=1e-5)
    classify = pipeline("image-classification", model=str(tmp_path))
    answers = classify(_image())
    assert {answer["label"] for answer in answers} == set(LABELS)


@pytest.mark.parametrize("name", ["vh_nat_mini", "vh_levit_128s"])
def test_auto_image_processor_gives_the_models_own_preprocessing(name, tmp_path):
    from transformers import AutoImageProcessor

    model = _saved(name, tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = _image(1)
    ours = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))(image)
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_the_previous_config_format_fails_in_transformers_and_still_loads_in_vithub(tmp_path):
    """Before, config.json's model_args repeated num_classes (and the top level repeated global_pool):
    transformers' TimmWrapper then calls create_model with num_classes twice."""
    from transformers import AutoModelForImageClassification

    model = _saved("vh_nat_mini", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_args"]["num_classes"] = config["num_classes"]
    config["global_pool"] = config["model_args"]["global_pool"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TypeError, match="multiple values for keyword argument 'num_classes'"):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    loaded = load(tmp_path).eval()
    images = contract.random_images(1, (64, 64))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    assert loaded.pretrained_cfg["label_names"] == LABELS


def test_a_token_reduced_members_options_travel_in_model_args(tmp_path):
    """A member reduced with other options than its defaults (ToMe r=2 here, the default being 13) is rebuilt with
    them by any loader that calls create_model: transformers as well as vithub."""
    from transformers import AutoModelForImageClassification

    model = contract.make_model("vh_deit_tiny_patch16_224_tome", num_classes=3).eval()
    vithub.reduce_tokens(model, "tome", r=2)
    save_pretrained(model, tmp_path, label_names=LABELS)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"]["r"] == [2, 2, 2]
    hf = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    images = contract.random_images(2, (64, 64))
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(hf(pixel_values=images).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load(tmp_path).eval()(images), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_synset_labels_carry_their_descriptions(tmp_path):
    """An ImageNet folder's classes are synsets: the config gets WordNet's descriptions as timm's label_descriptions
    (timm's pretrained_cfg carries both), transformers keeps the synsets as id2label; other names get none, and
    descriptions of names the model lacks are refused."""
    from transformers import AutoConfig

    from vithub.publishing import HubError

    synsets = ["n01440764", "n01443537", "n01484850"]
    model = contract.make_model("vh_nat_mini", num_classes=3).eval()
    save_pretrained(model, tmp_path / "in", label_names=synsets)
    config = json.loads((tmp_path / "in" / "config.json").read_text())
    assert config["label_descriptions"]["n01440764"] == "tench, Tinca tinca"
    assert config["label_descriptions"]["n01484850"].startswith("great white shark")
    created = timm.create_model(f"local-dir:{tmp_path / 'in'}", pretrained=True)
    assert created.pretrained_cfg["label_descriptions"] == config["label_descriptions"]
    assert created.pretrained_cfg["label_names"] == synsets
    assert AutoConfig.from_pretrained(tmp_path / "in").id2label == dict(enumerate(synsets))
    save_pretrained(model, tmp_path / "plain", label_names=LABELS)
    assert "label_descriptions" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    with pytest.raises(HubError, match="label_descriptions"):
        save_pretrained(model, tmp_path / "bad", label_names=LABELS, label_descriptions={"owl": "a bird"})


def test_the_model_card_shows_both_ways_to_load(tmp_path):
    _saved("vh_nat_mini", tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert 'timm.create_model("local-dir:' in card
    assert "AutoModelForImageClassification.from_pretrained(" in card and 'pipeline("image-classification"' in card


def test_token_reduced_cards_say_how_their_reduction_trains(tmp_path):
    """Cropr's routers get no gradient from a plain loss on the logits (timm's backward test exempts them): the card
    says what trains them; LTMP's says what the official recipe freezes; a plain model's card has no such section."""
    cropr = contract.make_model("vh_deit_tiny_patch16_224_cropr", num_classes=3)
    save_pretrained(cropr, tmp_path / "cropr")
    card = (tmp_path / "cropr" / "README.md").read_text()
    assert "## Training" in card and "token_reduction_aux_logits" in card
    ltmp = contract.make_model("vh_deit_tiny_patch16_224_ltmp", num_classes=3)
    save_pretrained(ltmp, tmp_path / "ltmp")
    assert "freeze_for_training()" in (tmp_path / "ltmp" / "README.md").read_text()
    _saved("vh_nat_mini", tmp_path / "nat")
    assert "## Training" not in (tmp_path / "nat" / "README.md").read_text()


@pytest.mark.parametrize("name, out_indices", [
    ("vh_nat_mini", (1, 2, 3)), ("vh_swin_tiny_patch4_window7_224", (1, 2, 3)), ("vh_fastervit_0_224", (1, 2, 3)),
    ("vh_levit_128s", (0, 1, 2)), ("vh_efficientvit_m0", (0, 1, 2)), ("vh_efficientvit_b0", (1, 2, 3))])
def test_timm_backbone_gives_our_feature_maps(name, out_indices):
    """transformers' TimmBackbone (what its detectors and segmentors take as backbone_config) over a vh model gives
    NCHW maps equal to timm's features_only of the same model with the same weights, channel-last families too."""
    from transformers import TimmBackbone

    from vithub.detection.hf import hf_backbone_config

    backbone = TimmBackbone(hf_backbone_config(name, out_indices=out_indices)).eval()
    ours = timm.create_model(name, features_only=True, out_indices=out_indices).eval()
    ours.load_state_dict(backbone._backbone.state_dict())
    images = contract.random_images(1, (64, 64))
    with torch.no_grad():
        maps = backbone(pixel_values=images).feature_maps
        expected = ours(images)
    assert list(backbone.channels) == [info["num_chs"] for info in ours.feature_info.get_dicts()]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)
