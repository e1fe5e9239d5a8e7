"""NAT / DiNAT: architecture facts, equality with from-scratch float64 computations, checkpoint conversion.

The external key layouts are spelled out here by hand (official SHI-Labs code and Hugging Face transformers), not
derived from the converter, and the full-model oracle reads the official layout directly.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2

import vithub  # noqa: F401  (registers the models)
from vithub.backbones.nat import NATBlock, checkpoint_filter_fn
from vithub.kernels import use_backend
from vithub.catalog import count_macs, count_params_m

from oracles import loop_attention

# A tiny configuration that still has every feature: dilation, layer scale, padding of small maps (stages 3 and 4).
TINY = dict(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
            dilations=((1, 2), (1,), (1,), (1,)), mlp_ratio=2.0)


def _randn(gen: torch.Generator, *shape: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def official_state_dict(cfg: Dict, layer_scale: bool, num_classes: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights under the official SHI-Labs NAT/DiNAT key names."""
    gen = torch.Generator().manual_seed(seed)
    embed, depths, heads, kernel = cfg["embed_dim"], cfg["depths"], cfg["num_heads"], cfg["kernel_size"]
    sd = {
        "patch_embed.proj.0.weight": _randn(gen, embed // 2, 3, 3, 3),
        "patch_embed.proj.0.bias": _randn(gen, embed // 2),
        "patch_embed.proj.1.weight": _randn(gen, embed, embed // 2, 3, 3),
        "patch_embed.proj.1.bias": _randn(gen, embed),
        "patch_embed.norm.weight": 1 + _randn(gen, embed),
        "patch_embed.norm.bias": _randn(gen, embed),
    }
    for i, depth in enumerate(depths):
        dim = embed * 2 ** i
        hidden = int(dim * cfg["mlp_ratio"])
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}."
            sd.update({
                p + "norm1.weight": 1 + _randn(gen, dim), p + "norm1.bias": _randn(gen, dim),
                p + "attn.qkv.weight": _randn(gen, 3 * dim, dim), p + "attn.qkv.bias": _randn(gen, 3 * dim),
                p + "attn.rpb": _randn(gen, heads[i], 2 * kernel - 1, 2 * kernel - 1, scale=1.0),
                p + "attn.proj.weight": _randn(gen, dim, dim), p + "attn.proj.bias": _randn(gen, dim),
                p + "norm2.weight": 1 + _randn(gen, dim), p + "norm2.bias": _randn(gen, dim),
                p + "mlp.fc1.weight": _randn(gen, hidden, dim), p + "mlp.fc1.bias": _randn(gen, hidden),
                p + "mlp.fc2.weight": _randn(gen, dim, hidden), p + "mlp.fc2.bias": _randn(gen, dim),
            })
            if layer_scale:
                sd[p + "gamma1"] = 1 + _randn(gen, dim)
                sd[p + "gamma2"] = 1 + _randn(gen, dim)
        if i < len(depths) - 1:
            sd[f"levels.{i}.downsample.reduction.weight"] = _randn(gen, 2 * dim, dim, 3, 3)
            sd[f"levels.{i}.downsample.norm.weight"] = 1 + _randn(gen, 2 * dim)
            sd[f"levels.{i}.downsample.norm.bias"] = _randn(gen, 2 * dim)
    final = embed * 2 ** (len(depths) - 1)
    sd.update({"norm.weight": 1 + _randn(gen, final), "norm.bias": _randn(gen, final),
               "head.weight": _randn(gen, num_classes, final), "head.bias": _randn(gen, num_classes)})
    return sd



NAT_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), kernel_size=7, mlp_ratio=3.0)


def official_dense_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """An official NAT-Mini detection/segmentation backbone in the mmdet/mmseg layout: the classifier's weights
    under ``backbone.`` (without its final norm and head) and an output LayerNorm ``backbone.norm{i}`` per level."""
    classification = official_state_dict(NAT_MINI, layer_scale=False, num_classes=10, seed=seed)
    state = {f"backbone.{key}": value.float().contiguous() for key, value in classification.items()
             if not key.startswith(("norm.", "head."))}
    gen = torch.Generator().manual_seed(seed + 1)
    for index, channels in enumerate([64, 128, 256, 512]):
        state[f"backbone.norm{index}.weight"] = torch.randn(channels, generator=gen)
        state[f"backbone.norm{index}.bias"] = torch.randn(channels, generator=gen)
    return state

def transformers_state_dict(official: Dict[str, torch.Tensor], cfg: Dict, prefix: str) -> Dict[str, torch.Tensor]:
    """The same weights under Hugging Face transformers' NatForImageClassification / DinatForImageClassification
    names: separate query/key/value, layer scale as one (2, dim) tensor."""
    sd = {
        f"{prefix}.embeddings.patch_embeddings.projection.0.weight": official["patch_embed.proj.0.weight"],
        f"{prefix}.embeddings.patch_embeddings.projection.0.bias": official["patch_embed.proj.0.bias"],
        f"{prefix}.embeddings.patch_embeddings.projection.1.weight": official["patch_embed.proj.1.weight"],
        f"{prefix}.embeddings.patch_embeddings.projection.1.bias": official["patch_embed.proj.1.bias"],
        f"{prefix}.embeddings.norm.weight": official["patch_embed.norm.weight"],
        f"{prefix}.embeddings.norm.bias": official["patch_embed.norm.bias"],
        f"{prefix}.layernorm.weight": official["norm.weight"],
        f"{prefix}.layernorm.bias": official["norm.bias"],
        "classifier.weight": official["head.weight"],
        "classifier.bias": official["head.bias"],
    }
    for i, depth in enumerate(cfg["depths"]):
        for j in range(depth):
            o = f"levels.{i}.blocks.{j}."
            h = f"{prefix}.encoder.levels.{i}.layers.{j}."
            q_w, k_w, v_w = official[o + "attn.qkv.weight"].chunk(3, dim=0)
            q_b, k_b, v_b = official[o + "attn.qkv.bias"].chunk(3, dim=0)
            sd.update({
                h + "layernorm_before.weight": official[o + "norm1.weight"],
                h + "layernorm_before.bias": official[o + "norm1.bias"],
                h + "attention.self.rpb": official[o + "attn.rpb"],
                h + "attention.self.query.weight": q_w, h + "attention.self.query.bias": q_b,
                h + "attention.self.key.weight": k_w, h + "attention.self.key.bias": k_b,
                h + "attention.self.value.weight": v_w, h + "attention.self.value.bias": v_b,
                h + "attention.output.dense.weight": official[o + "attn.proj.weight"],
                h + "attention.output.dense.bias": official[o + "attn.proj.bias"],
                h + "layernorm_after.weight": official[o + "norm2.weight"],
                h + "layernorm_after.bias": official[o + "norm2.bias"],
                h + "intermediate.dense.weight": official[o + "mlp.fc1.weight"],
                h + "intermediate.dense.bias": official[o + "mlp.fc1.bias"],
                h + "output.dense.weight": official[o + "mlp.fc2.weight"],
                h + "output.dense.bias": official[o + "mlp.fc2.bias"],
            })
            if o + "gamma1" in official:
                sd[h + "layer_scale_parameters"] = torch.stack([official[o + "gamma1"], official[o + "gamma2"]])
        if i < len(cfg["depths"]) - 1:
            sd[f"{prefix}.encoder.levels.{i}.downsample.reduction.weight"] = \
                official[f"levels.{i}.downsample.reduction.weight"]
            sd[f"{prefix}.encoder.levels.{i}.downsample.norm.weight"] = official[f"levels.{i}.downsample.norm.weight"]
            sd[f"{prefix}.encoder.levels.{i}.downsample.norm.bias"] = official[f"levels.{i}.downsample.norm.bias"]
    return sd


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def scratch_attention(x: torch.Tensor, qkv_w, qkv_b, rpb, proj_w, proj_b, heads: int, kernel: int,
                      dilation: int) -> torch.Tensor:
    """The original NA module: zero-pad small maps (bottom/right) to K*d, qkv, per-query loop, crop, projection."""
    batch, height, width, dim = x.shape
    window = kernel * dilation
    padded = F.pad(x, (0, 0, 0, max(0, window - width), 0, max(0, window - height)))
    qkv = padded @ qkv_w.T + qkv_b
    q, k, v = qkv.view(batch, padded.shape[1], padded.shape[2], 3, heads, dim // heads).unbind(3)
    out = loop_attention(q, k, v, (kernel, kernel), (dilation, dilation), rpb, (dim // heads) ** -0.5)
    out = out.reshape(batch, padded.shape[1], padded.shape[2], dim)[:, :height, :width]
    return out @ proj_w.T + proj_b


def official_forward(sd: Dict[str, torch.Tensor], cfg: Dict, images: torch.Tensor) -> torch.Tensor:
    """The official NAT forward, written out in float64 from the official code's structure and key names
    (downsampler at the end of each level, gamma1/gamma2 layer scale, mean-pooled final norm, linear head)."""
    x = F.conv2d(images, sd["patch_embed.proj.0.weight"], sd["patch_embed.proj.0.bias"], stride=2, padding=1)
    x = F.conv2d(x, sd["patch_embed.proj.1.weight"], sd["patch_embed.proj.1.bias"], stride=2, padding=1)
    x = _layer_norm(x.permute(0, 2, 3, 1), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
    for i, depth in enumerate(cfg["depths"]):
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}."
            h = _layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
            h = scratch_attention(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"], sd[p + "attn.rpb"],
                                  sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"], cfg["num_heads"][i],
                                  cfg["kernel_size"], cfg["dilations"][i][j])
            x = x + (sd[p + "gamma1"] * h if p + "gamma1" in sd else h)
            h = _layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            h = _gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
            h = h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
            x = x + (sd[p + "gamma2"] * h if p + "gamma2" in sd else h)
        if f"levels.{i}.downsample.reduction.weight" in sd:
            x = F.conv2d(x.permute(0, 3, 1, 2), sd[f"levels.{i}.downsample.reduction.weight"], stride=2, padding=1)
            x = _layer_norm(x.permute(0, 2, 3, 1), sd[f"levels.{i}.downsample.norm.weight"],
                            sd[f"levels.{i}.downsample.norm.bias"])
    x = _layer_norm(x, sd["norm.weight"], sd["norm.bias"]).mean(dim=(1, 2))
    return x @ sd["head.weight"].T + sd["head.bias"]


def _images(*size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- architecture facts -------------------------------------------------------------------------------------------

# name: (params M, GMACs at the default size) as published by SHI-Labs.
PUBLISHED = {
    "vh_nat_mini": (20, 2.7), "vh_nat_tiny": (28, 4.3), "vh_nat_small": (51, 7.8), "vh_nat_base": (90, 13.7),
    "vh_dinat_mini": (20, 2.7), "vh_dinat_tiny": (28, 4.3), "vh_dinat_small": (51, 7.8),
    "vh_dinat_base": (90, 13.7), "vh_dinat_large": (200, 30.6), "vh_dinat_large_384": (200, 89.7),
    "vh_dinat_large_384_11x11": (200, 92.4),
}


def test_every_published_variant_is_registered():
    assert sorted(PUBLISHED) == sorted(timm.list_models("vh_*nat*"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_macs_match_the_published_numbers(name):
    params, gmacs = PUBLISHED[name]
    cfg = timm.get_pretrained_cfg(name)
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    # The papers round to whole millions (20M, 28M, ...): 1% of that, plus the rounding.
    assert abs(count_params_m(model) - params) <= 0.01 * params + 0.5
    assert abs(count_macs(model, cfg.input_size) / 1e9 - gmacs) <= 0.05 * gmacs


def _stage_blocks(model):
    return [list(stage.blocks) for stage in model.stages]


# name: embed_dim, depths, heads, mlp ratio, layer scale, kernel, stage-1 and stage-3 dilation schedules.
ARCHITECTURES = {
    "vh_nat_mini": (64, [3, 4, 6, 5], [2, 4, 8, 16], 3, False, 7, [1, 1, 1], [1] * 6),
    "vh_nat_tiny": (64, [3, 4, 18, 5], [2, 4, 8, 16], 3, False, 7, [1, 1, 1], [1] * 18),
    "vh_nat_small": (96, [3, 4, 18, 5], [3, 6, 12, 24], 2, True, 7, [1, 1, 1], [1] * 18),
    "vh_nat_base": (128, [3, 4, 18, 5], [4, 8, 16, 32], 2, True, 7, [1, 1, 1], [1] * 18),
    "vh_dinat_mini": (64, [3, 4, 6, 5], [2, 4, 8, 16], 3, False, 7, [1, 8, 1], [1, 2, 1, 2, 1, 2]),
    "vh_dinat_tiny": (64, [3, 4, 18, 5], [2, 4, 8, 16], 3, False, 7, [1, 8, 1], [1, 2] * 9),
    "vh_dinat_small": (96, [3, 4, 18, 5], [3, 6, 12, 24], 2, False, 7, [1, 8, 1], [1, 2] * 9),
    "vh_dinat_base": (128, [3, 4, 18, 5], [4, 8, 16, 32], 2, True, 7, [1, 8, 1], [1, 2] * 9),
    "vh_dinat_large": (192, [3, 4, 18, 5], [6, 12, 24, 48], 2, False, 7, [1, 8, 1], [1, 2] * 9),
    "vh_dinat_large_384": (192, [3, 4, 18, 5], [6, 12, 24, 48], 2, False, 7, [1, 13, 1], [1, 3] * 9),
    "vh_dinat_large_384_11x11": (192, [3, 4, 18, 5], [6, 12, 24, 48], 2, False, 11, [1, 8, 1], [1, 2] * 9),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_matches_the_official_config(name):
    embed, depths, heads, ratio, layer_scale, kernel, dil1, dil3 = ARCHITECTURES[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    blocks = _stage_blocks(model)
    assert [len(b) for b in blocks] == depths
    assert [b[0].attn.num_heads for b in blocks] == heads
    assert model.stem.conv2.out_channels == embed and model.stem.conv1.out_channels == embed // 2
    assert blocks[0][0].mlp.fc1.out_features == embed * ratio
    assert all(hasattr(blk.ls1, "gamma") == layer_scale for stage in blocks for blk in stage)
    assert all(blk.attn.kernel_size == (kernel, kernel) for stage in blocks for blk in stage)
    assert [blk.attn.dilation[0] for blk in blocks[0]] == dil1
    assert [blk.attn.dilation[0] for blk in blocks[2]] == dil3
    assert [blk.attn.dilation[0] for blk in blocks[3]] == [1] * depths[3]
    assert model.stages[0].downsample.__class__.__name__ == "Identity"
    assert all(stage.downsample.conv.bias is None for stage in model.stages[1:])


def test_pretrained_cfgs_point_at_the_official_checkpoints():
    cfg = timm.get_pretrained_cfg("vh_nat_tiny")
    assert cfg.url == "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth"
    assert (cfg.crop_pct, cfg.interpolation, cfg.input_size) == (0.875, "bicubic", (3, 224, 224))
    cfg = timm.get_pretrained_cfg("vh_dinat_large_384_11x11")
    assert cfg.url == ("https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/"
                       "dinat_large_in22k_in1k_384_11x11.pth")
    assert (cfg.crop_pct, cfg.input_size) == (1.0, (3, 384, 384))
    assert all(timm.get_pretrained_cfg(n).license == "mit" for n in PUBLISHED)


# --- equality with from-scratch computations ----------------------------------------------------------------------

@pytest.mark.parametrize("size, dilation", [((6, 7), 1), ((9, 11), 2), ((12, 13), 2)])
def test_one_block_equals_a_per_query_float64_computation(size, dilation):
    """Includes maps smaller than K*d (9 < 5*2), which the block pads like the original module."""
    torch.manual_seed(0)
    dim, heads, kernel = 12, 3, 5
    block = NATBlock(dim, heads, kernel, dilation, mlp_ratio=2.0, layer_scale=0.7).double().eval()
    with torch.no_grad():
        for param in block.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    x = _images(2, *size, dim)
    a = block.attn
    h = scratch_attention(_layer_norm(x, block.norm1.weight, block.norm1.bias), a.qkv.weight, a.qkv.bias, a.rpb,
                          a.proj.weight, a.proj.bias, heads, kernel, dilation)
    x1 = x + block.ls1.gamma * h
    h = _layer_norm(x1, block.norm2.weight, block.norm2.bias)
    h = _gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    expected = x1 + block.ls2.gamma * h
    with torch.no_grad():
        for backend in ("torch", "reference"):
            with use_backend(backend):
                torch.testing.assert_close(block(x), expected.detach(), rtol=1e-10, atol=1e-10)


def _load(name: str, state_dict: Dict[str, torch.Tensor], **kwargs) -> torch.nn.Module:
    model = timm.create_model(name, **kwargs).double().eval()
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    return model


@pytest.mark.parametrize("name, layer_scale", [("vh_dinat_base", True), ("vh_nat_mini", False)])
def test_official_layout_converts_to_identical_outputs(name, layer_scale):
    kwargs = dict(TINY, layer_scale=0.5 if layer_scale else None, num_classes=5)
    sd = official_state_dict(TINY, layer_scale, num_classes=5)
    model = _load(name, sd, **kwargs)
    # Tensors land where they belong (spot checks across the renames and the downsampler index shift).
    ours = model.state_dict()
    assert torch.equal(ours["stem.conv2.weight"], sd["patch_embed.proj.1.weight"])
    assert torch.equal(ours["stages.2.downsample.conv.weight"], sd["levels.1.downsample.reduction.weight"])
    assert torch.equal(ours["stages.0.blocks.1.attn.rpb"], sd["levels.0.blocks.1.attn.rpb"])
    assert torch.equal(ours["head.fc.weight"], sd["head.weight"])
    if layer_scale:
        assert torch.equal(ours["stages.3.blocks.0.ls2.gamma"], sd["levels.3.blocks.0.gamma2"])
    images = _images(2, 3, 32, 40)  # stage maps 8x10, 4x5, 2x3 (padded to 3x3), 1x2 (padded)
    with torch.no_grad():
        torch.testing.assert_close(model(images), official_forward(sd, TINY, images), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, prefix", [("vh_nat_small", "nat"), ("vh_dinat_tiny", "dinat")])
def test_transformers_layout_converts_to_the_same_weights(name, prefix):
    layer_scale = name == "vh_nat_small"
    kwargs = dict(TINY, layer_scale=0.5 if layer_scale else None, num_classes=5)
    official = official_state_dict(TINY, layer_scale, num_classes=5, seed=3)
    from_official = _load(name, official, **kwargs)
    from_hf = _load(name, transformers_state_dict(official, TINY, prefix), **kwargs)
    for key, value in from_official.state_dict().items():
        assert torch.equal(value, from_hf.state_dict()[key]), key
    images = _images(1, 3, 36, 29)
    with torch.no_grad():
        torch.testing.assert_close(from_hf(images), official_forward(official, TINY, images), rtol=1e-9, atol=1e-9)


def test_transformers_layout_without_head_prefix_loads_into_a_headless_model():
    official = official_state_dict(TINY, False, num_classes=5)
    hf = transformers_state_dict(official, TINY, "nat")
    bare = {k[len("nat."):]: v for k, v in hf.items() if k.startswith("nat.")}  # NatModel.state_dict()
    model = _load("vh_nat_mini", bare, **dict(TINY, num_classes=0))
    assert torch.equal(model.state_dict()["stem.norm.weight"], official["patch_embed.norm.weight"])


def test_incomplete_query_key_value_is_a_clear_error():
    official = official_state_dict(TINY, False, num_classes=5)
    hf = transformers_state_dict(official, TINY, "nat")
    del hf["nat.encoder.levels.0.layers.0.attention.self.key.weight"]
    model = timm.create_model("vh_nat_mini", **dict(TINY, num_classes=5))
    with pytest.raises(ValueError, match="stages.0.blocks.0 has \\['query', 'value'\\] weights"):
        checkpoint_filter_fn(hf, model)


def test_pretrained_loading_through_timm_from_local_files(tmp_path):
    """`pretrained=True` with a local file runs timm's loader (weights_only / safetensors) and our filter."""
    kwargs = dict(TINY, layer_scale=None)
    # float32 files, as released checkpoints are: timm loads into a float32 model, cast to float64 afterwards.
    official = {k: v.float() for k, v in official_state_dict(TINY, False, num_classes=1000, seed=5).items()}
    expected_model = _load("vh_dinat_tiny", official, **kwargs)
    pth = tmp_path / "dinat_tiny_in1k_224.pth"
    torch.save(official, pth)
    safetensors_path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in transformers_state_dict(official, TINY, "dinat").items()},
              str(safetensors_path))
    images = _images(1, 3, 40, 40)
    with torch.no_grad():
        expected = expected_model(images)
        for path in (pth, safetensors_path):
            model = timm.create_model("vh_dinat_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                      **kwargs).double().eval()
            torch.testing.assert_close(model(images), expected, rtol=1e-9, atol=1e-9)
        # A new head: timm drops the 1000-class classifier, the backbone weights still load.
        model = timm.create_model("vh_dinat_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(pth)),
                                  num_classes=3, **kwargs).double().eval()
        torch.testing.assert_close(model.forward_features(images), expected_model.forward_features(images))


def test_rpb_of_another_kernel_size_is_resized_bicubically():
    """How the official 11x11 weights were made from 7x7 ones; a per-head constant table stays constant."""
    sd = official_state_dict(TINY, False, num_classes=5)
    for key in [k for k in sd if k.endswith(".rpb")]:
        heads = sd[key].shape[0]
        sd[key] = torch.arange(heads, dtype=torch.float64)[:, None, None].expand(heads, 5, 5).clone()
    model = _load("vh_nat_mini", sd, **dict(TINY, num_classes=5))  # built with kernel 3: tables are 5x5 ...
    kwargs = dict(TINY, kernel_size=5, num_classes=5)
    bigger = _load("vh_nat_mini", checkpoint_filter_fn(dict(model.state_dict()), model), **kwargs)
    rpb = bigger.stages[1].blocks[0].attn.rpb
    assert rpb.shape == (2, 9, 9)
    torch.testing.assert_close(rpb, torch.arange(2, dtype=torch.float64)[:, None, None].expand(2, 9, 9))


# --- features and input sizes -------------------------------------------------------------------------------------

def _stage_sizes(height: int, width: int) -> Sequence[tuple]:
    sizes = []
    h, w = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
    for i in range(4):
        if i:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("name", ["vh_nat_tiny", "vh_dinat_tiny"])
@pytest.mark.parametrize("size", [(200, 300), (32, 32)])
def test_features_at_non_square_and_tiny_inputs(name, size):
    kwargs = dict(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 4))
    if name.startswith("vh_dinat"):
        kwargs["dilations"] = ((8,), (1, 4), (1, 2), (1,))
    classifier = timm.create_model(name, **kwargs).eval()
    features = timm.create_model(name, features_only=True, **kwargs).eval()
    missing, unexpected = features.model.load_state_dict(classifier.state_dict(), strict=False)
    assert not missing and all(k.startswith(("head.", "norm.")) for k in unexpected)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = features(images)
        _, intermediates = classifier.forward_intermediates(images)
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    assert features.feature_info.channels() == [16, 32, 64, 128]
    assert [tuple(m.shape) for m in maps] == [(1, 16 * 2 ** i, *hw) for i, hw in enumerate(_stage_sizes(*size))]
    for got, expected in zip(maps, intermediates):
        torch.testing.assert_close(got, expected)
    assert all(torch.isfinite(m).all() for m in maps)


def test_torch_and_reference_backends_agree_on_a_whole_model():
    model = timm.create_model("vh_dinat_mini", **dict(TINY, num_classes=10)).double().eval()
    images = _images(1, 3, 50, 38)
    with torch.no_grad():
        with use_backend("torch"):
            fast = model(images)
        with use_backend("reference"):
            slow = model(images)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


# --- training hooks -----------------------------------------------------------------------------------------------

def test_rpb_is_excluded_from_weight_decay_and_layer_decay_groups_are_ordered():
    model = timm.create_model("vh_dinat_tiny", **dict(TINY, num_classes=5))
    rpb_names = {n for n, _ in model.named_parameters() if n.endswith("attn.rpb")}
    assert model.no_weight_decay() == rpb_names and len(rpb_names) == 5
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert all(group_of[id(params[n])]["weight_decay"] == 0.0 for n in rpb_names)
    assert group_of[id(params["stages.0.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.05
    scale = {n: group_of[id(p)]["lr_scale"] for n, p in params.items()}
    assert scale["stem.conv1.weight"] < scale["stages.0.blocks.0.attn.qkv.weight"] \
        < scale["stages.0.blocks.1.attn.qkv.weight"] < scale["stages.3.blocks.0.mlp.fc1.weight"] \
        < scale["head.fc.weight"] == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dilations=((1,), (1,), (1,), (1,))), "dilations must hold one list per stage"),
        (dict(num_heads=(2, 4, 8)), "num_heads must have one entry per stage"),
        (dict(embed_dim=30, num_heads=(4, 4, 8, 16)), "num_heads \\(4\\) must divide the channel count dim \\(30\\)"),
        (dict(attn_drop_rate=0.1), "attn_drop_rate must be 0"),
        (dict(kernel_size=0), "kernel_size must be >= 1 in each axis"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        with torch.device("meta"):
            timm.create_model("vh_nat_tiny", **kwargs)
