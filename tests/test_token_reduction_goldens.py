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


# --- Token Cropr --------------------------------------------------------------------------------------------------

CROPR = GOLDEN / "cropr_official.safetensors"


def _cropr_golden():
    with safe_open(str(CROPR), "pt") as handle:
        return json.loads(handle.metadata()["config"]), {key: handle.get_tensor(key) for key in handle.keys()}


CROPR_CONFIG, CROPR_TENSORS = _cropr_golden()


def _cropr_model(case: str):
    from vithub.backbones.token_reduction import official_state_dict

    spec = CROPR_CONFIG[case]
    cfg, kwargs = spec["cropr_cfg"], dict(spec["vit_kwargs"])
    kwargs.pop("drop_path_rate")
    model = VisionTransformer(**kwargs, qkv_bias=True)
    vithub.reduce_tokens(model, "cropr", rate=cfg["pruning_rate"], last_layer_fusion=cfg["llf"],
                         num_queries=cfg["num_queries"], router_heads=cfg["num_heads"],
                         mlp_ratio=float(cfg["mlp_ratio"]), pre_attn_norm=cfg["pre_attn_norm"], q_proj=cfg["q_proj"],
                         k_proj=cfg["k_proj"], v_proj=cfg["v_proj"], mlp=cfg["mlp"])
    prefix = f"{case}.state_dict."
    official = {key[len(prefix):]: value for key, value in CROPR_TENSORS.items() if key.startswith(prefix)}
    model.load_state_dict(official_state_dict(official))  # strict: every official key has its place
    return model, spec


@pytest.mark.parametrize("case", sorted(CROPR_CONFIG))
def test_cropr_inference_equals_the_official_code(case):
    """Router scores of every token, the tokens each module keeps (as sets of grid positions: the official code
    keeps them in score order, vithub in grid order), the logits, and with last-layer fusion every output token."""
    model, spec = _cropr_model(case)
    model.eval()
    images = CROPR_TENSORS["images"]
    scores = []
    for router in model.cropr_routers:  # the scores each router gives, in the order of the tokens it sees
        original = router.scores
        router.scores = lambda tokens, original=original: scores.append(original(tokens)) or scores[-1]
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits, CROPR_TENSORS[f"{case}.eval.logits"], rtol=0, atol=1e-5)
    assert len(model.token_kept) == spec["modules"]
    seen = torch.arange(model.patch_embed.num_patches).expand(images.shape[0], -1)
    for module, kept in enumerate(model.token_kept):
        official_scores = CROPR_TENSORS[f"{case}.eval.scores.{module}"]
        official_positions = CROPR_TENSORS[f"{case}.eval.positions.{module}"]  # 0: the class token
        # the official scores re-ordered to grid positions, against ours in the order vithub's tokens have
        by_grid = torch.zeros(images.shape[0], model.patch_embed.num_patches).scatter(
            1, official_positions[:, 1:] - 1, official_scores[:, 1:])
        torch.testing.assert_close(scores[module], by_grid.gather(1, seen), rtol=1e-5, atol=1e-5)
        official_kept = CROPR_TENSORS[f"{case}.eval.kept.{module}"]
        assert torch.equal(official_kept[:, 0], torch.zeros_like(official_kept[:, 0]))  # the class token stays
        assert torch.equal(kept, (official_kept[:, 1:] - 1).sort(dim=1).values)
        seen = kept
    if spec["cropr_cfg"]["llf"]:
        with torch.no_grad():
            features = model.forward_features(images)  # grid order after fusion
        tokens, positions = CROPR_TENSORS[f"{case}.eval.final_tokens"], CROPR_TENSORS[f"{case}.eval.final_positions"]
        official_grid = torch.zeros_like(tokens).scatter(1, positions[..., None].expand_as(tokens), tokens)
        torch.testing.assert_close(features, official_grid, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CROPR_CONFIG))
def test_cropr_training_forward_equals_the_official_code(case):
    """Training mode: the logits and every auxiliary head's predictions."""
    model, _ = _cropr_model(case)
    model.train()
    logits = model(CROPR_TENSORS["images"])
    torch.testing.assert_close(logits, CROPR_TENSORS[f"{case}.train.logits"], rtol=0, atol=1e-5)
    auxiliary = torch.stack(model.token_reduction_aux_logits, 1)
    torch.testing.assert_close(auxiliary, CROPR_TENSORS[f"{case}.train.aux_logits"], rtol=0, atol=1e-5)
