"""Token reduction equal to the official implementations, on goldens the official code computed (how they were made:
``tests/golden/README.md``). ToMe: facebookresearch/ToMe's timm patch on small random ViTs (class token, class +
distillation token, average pooling without a class token; proportional attention on and off; int, list and
``(r, inflection)`` schedules; r past the cap), logits within 1e-5 and its traced sources equal to ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import vithub

GOLDEN = Path(__file__).with_name("golden")
TOME = GOLDEN / "tome_official.safetensors"
CLASSES = {"VisionTransformer": VisionTransformer, "VisionTransformerDistilled": VisionTransformerDistilled}


def _tome_golden():
    with safe_open(str(TOME), "pt") as handle:
        config = json.loads(handle.metadata()["config"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return config, tensors


TOME_CONFIG, TOME_TENSORS = _tome_golden()


def _tome_model(model_name: str):
    spec = TOME_CONFIG["models"][model_name]
    model = CLASSES[spec["class"]](**spec["kwargs"]).eval()
    prefix = f"{model_name}.state_dict."
    model.load_state_dict({key[len(prefix):]: value for key, value in TOME_TENSORS.items() if key.startswith(prefix)})
    return model


@pytest.mark.parametrize("case", sorted(TOME_CONFIG["cases"]))
def test_tome_equals_the_official_code(case):
    spec = TOME_CONFIG["cases"][case]
    r = tuple(spec["r"]) if spec["r_form"] == "tuple" else spec["r"]
    model = _tome_model(spec["model"])
    vithub.reduce_tokens(model, "tome", r=r, proportional_attention=spec["prop_attn"])
    with torch.no_grad():
        logits = model(TOME_TENSORS["images"])
    torch.testing.assert_close(logits, TOME_TENSORS[f"{case}.logits"], rtol=0, atol=1e-5)
    source = TOME_TENSORS.get(f"{case}.source")
    if source is not None:  # (B, tokens out, tokens in): which input tokens each output token holds
        ours = torch.nn.functional.one_hot(model.token_origin, source.shape[1]).transpose(1, 2).to(source.dtype)
        assert torch.equal(ours, source)


def test_the_goldens_tell_the_old_partition_apart():
    """The goldens are sensitive to the partition: splitting only the tokens after the class token (vithub's
    earlier rule) misses them by more than ten times the tolerance."""
    from vithub.backbones.token_reduction import tome

    original = tome.merge_tokens

    def after_prefix_only(x, size, origin, r, prefix, metric):  # the tokens' origin is not followed here
        body_origin = torch.arange(x.shape[1] - prefix).expand(x.shape[0], -1)
        new_x, new_size, _ = original(x[:, prefix:], size[:, prefix:], body_origin, r, 0, metric[:, prefix:])
        kept = torch.cat([x[:, :prefix], new_x], 1)
        return kept, torch.cat([size[:, :prefix], new_size], 1), origin.clamp(max=kept.shape[1] - 1)

    model = _tome_model("cls")
    vithub.reduce_tokens(model, "tome", r=6)
    tome.merge_tokens = after_prefix_only
    try:
        with torch.no_grad():
            logits = model(TOME_TENSORS["images"])
    finally:
        tome.merge_tokens = original
    assert (logits - TOME_TENSORS["cls_r6.logits"]).abs().max() > 1e-4  # ten times the tolerance


# --- LTMP -------------------------------------------------------------------------------------------------------

LTMP = GOLDEN / "ltmp_official.safetensors"


def _ltmp_model():
    with safe_open(str(LTMP), "pt") as handle:
        config = json.loads(handle.metadata()["config"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model = VisionTransformer(**config["model"]["kwargs"])
    model.load_state_dict({key[len("state_dict."):]: value for key, value in tensors.items()
                           if key.startswith("state_dict.")})
    vithub.reduce_tokens(model, "ltmp", flops_ratio=0.5, tau=config["tau"])
    with torch.no_grad():
        model.ltmp_merge_thresholds.copy_(torch.tensor(config["merge_thresholds"]))
        model.ltmp_prune_thresholds.copy_(torch.tensor(config["prune_thresholds"]))
    return model, config, tensors


def test_ltmp_inference_equals_the_official_code_image_by_image():
    """The official inference model runs one image at a time; vithub's batched run (each image keeps a different
    number of tokens) gives each image's official logits, and alone each image keeps the official token counts."""
    model, config, tensors = _ltmp_model()
    model.eval()
    with torch.no_grad():
        logits = model(tensors["images"])
    torch.testing.assert_close(logits, tensors["inference.logits"], rtol=0, atol=1e-5)
    counts = config["inference_token_counts"]
    assert len({tuple(count) for count in counts}) == len(counts), "every image should reduce differently"
    for index, expected in enumerate(counts):
        with torch.no_grad():
            model(tensors["images"][index:index + 1])
        assert model.token_counts == [float(count) for count in expected[:-1]]


def test_ltmp_training_forward_equals_the_official_code():
    """The training forward (every token kept, straight-through masks): logits, and the gradients of the thresholds
    that the logits' sum sends back."""
    model, _, tensors = _ltmp_model()
    model.train()
    logits = model(tensors["images"])
    torch.testing.assert_close(logits, tensors["training.logits"], rtol=0, atol=1e-5)
    logits.sum().backward()
    torch.testing.assert_close(model.ltmp_merge_thresholds.grad, tensors["training.merge_threshold_grad"],
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.ltmp_prune_thresholds.grad, tensors["training.prune_threshold_grad"],
                               rtol=1e-4, atol=1e-6)
