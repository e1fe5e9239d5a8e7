"""Token reduction on timm ViTs. ToMe: identity at r=0 over the ViT variants, exact undo, proportional attention as
duplication, bipartite matching against a per-token loop, caps and schedules, dense outputs, bad input, the
registered members and the global-attention op it runs on. LTMP: identity when the thresholds keep everything,
batched inference equal to each image alone, the training path equal to inference in its forward, gradients for the
thresholds only, the paper's FLOPs ratio, training and publishing. Cropr: identity at rate 0, the top-scoring tokens
kept, last-layer fusion back on the grid, auxiliary heads training the routers only, segmentation, training and
publishing."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import Attention, ParallelScalingBlock

import vithub
from vithub.backbones.token_reduction import merge_schedule, merge_tokens
from vithub.kernels import global_attention

# Small timm ViTs covering: class token, distillation token, register tokens + average pooling, LayerScale (DeiT-3,
# no_embed_class), qk-norm without class token, CLIP pre-norm, gated attention with a scale norm.
SMALL = dict(img_size=64, embed_dim=48, depth=3, num_heads=3)
VARIANTS = {
    "deit": ("deit_small_patch16_224", {}),
    "deit_distilled": ("deit_small_distilled_patch16_224", {}),
    "registers_avg": ("vit_base_patch16_reg4_gap_256", {}),
    "deit3_layerscale": ("deit3_small_patch16_224", {}),
    "qk_norm_no_cls_avg": ("vit_small_patch16_224", dict(qk_norm=True, class_token=False, global_pool="avg")),
    "clip_pre_norm": ("vit_base_patch16_clip_224", {}),
    "gated_scale_norm": ("vit_small_patch16_224", dict(attn_layer="gated", scale_attn_norm=True)),
}


class GatedAttention(Attention):
    """timm's Attention with its output gate on (timm builds it only through a class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, gated=True, **kwargs)


def _vit(variant, **extra):
    name, kwargs = VARIANTS[variant]
    if kwargs.get("attn_layer") == "gated":
        kwargs = dict(kwargs, attn_layer=GatedAttention)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**SMALL, **kwargs, **extra}).eval()
    with torch.no_grad():  # random LayerScale gammas (DeiT-3 starts them at 1e-6, which would hide the branches)
        for module in model.modules():
            if hasattr(module, "gamma"):
                module.gamma.normal_()
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_r0_is_the_unreduced_model_and_none_undoes_it_bit_for_bit(variant):
    model = _vit(variant)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        expected_features = model.forward_intermediates(images, intermediates_only=True)
        vithub.reduce_tokens(model, "tome", r=0)
        torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-6)
        for ours, theirs in zip(model.forward_intermediates(images, intermediates_only=True), expected_features):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert model.token_counts == [16 + model.num_prefix_tokens] * 3 and model.token_merges == [0, 0, 0]
        vithub.reduce_tokens(model, "tome", r=5)
        reduced = model(images)
        assert not torch.allclose(reduced, expected)
        vithub.reduce_tokens(model, None)
        assert torch.equal(model(images), expected) and not hasattr(model, "token_reduction")
    assert type(model).__name__ == timm.create_model(VARIANTS[variant][0], **SMALL).__class__.__name__


def test_proportional_attention_is_exact_duplication():
    """A key of size s with log(s) added to its logits acts as s copies of that key (and value)."""
    torch.manual_seed(1)
    q = torch.randn(1, 6, 2, 8, dtype=torch.float64)
    k = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    v = torch.randn(1, 5, 2, 3, dtype=torch.float64)
    sizes = torch.tensor([[1, 3, 2, 1, 4]])
    duplicated_k = k.repeat_interleave(sizes[0], dim=1)
    duplicated_v = v.repeat_interleave(sizes[0], dim=1)
    for backend in ("reference", "torch"):
        merged = global_attention(q, k, v, key_bias=sizes.double().log(), backend=backend)
        expected = global_attention(q, duplicated_k, duplicated_v, backend="reference")
        torch.testing.assert_close(merged, expected)


def test_global_attention_backends_agree_and_soft_masks_have_finite_gradients():
    torch.manual_seed(2)
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 7, 3, 8, dtype=torch.float64), torch.randn(2, 7, 3, 5, dtype=torch.float64)
    bias = torch.randn(2, 7, dtype=torch.float64)
    weights = torch.rand(2, 7, dtype=torch.float64)
    weights[:, 2] = 0.0
    weights.requires_grad_(True)
    keep = torch.rand(2, 7) > 0.3
    keep[:, 0] = True
    for kwargs in ({}, {"key_bias": bias}, {"key_mask": weights}, {"key_mask": keep, "key_bias": bias}):
        torch.testing.assert_close(global_attention(q, k, v, backend="torch", **kwargs),
                                   global_attention(q, k, v, backend="reference", **kwargs))
    # a zero-weight key is left out exactly; its weight still gets a finite gradient
    out = global_attention(q, k, v, key_mask=weights, backend="torch")
    dropped = global_attention(q, k[:, [0, 1, 3, 4, 5, 6]], v[:, [0, 1, 3, 4, 5, 6]],
                               key_mask=weights.detach()[:, [0, 1, 3, 4, 5, 6]], backend="reference")
    torch.testing.assert_close(out, dropped)
    out.sum().backward()
    assert torch.isfinite(weights.grad).all() and weights.grad[:, 2].abs().sum() > 0
    with pytest.raises(ValueError, match=r"key_bias must be a tensor of shape \(B, tokens\) = \(2, 7\)"):
        global_attention(q, k, v, key_bias=bias[:, :3])
    with pytest.raises(ValueError, match="key_mask must be bool"):
        global_attention(q, k, v, key_mask=keep.long())


def _loop_merge(x, sizes, metric, r, prefix):
    """ToMe written per token, the official way: A = even, B = odd positions of the whole sequence; A positions below
    the prefix never merge, B positions below it never receive; each A token's best B by cosine similarity; the r A
    tokens with the highest best similarity (ties: lower index first) merge into their best B by size-weighted
    average. Output: the prefix, the kept A tokens (ascending with a prefix, by descending best similarity without
    one), the non-prefix B tokens. Returns tokens, sizes and, per original token, the index of the token it ended in."""
    batch, tokens, _ = x.shape
    out_x, out_size, out_origin = [], [], []
    for image in range(batch):
        a_set, b_set = list(range(0, tokens, 2)), list(range(1, tokens, 2))
        receivers = [j for j in b_set if j >= prefix]
        best = {}
        for i in a_set:
            if i < prefix:
                continue
            sims = [torch.nn.functional.cosine_similarity(metric[image, i], metric[image, j], dim=0).item()
                    for j in receivers]
            top = max(range(len(receivers)), key=lambda n: (sims[n], -n))
            best[i] = (sims[top], receivers[top])
        ranked = sorted(best, key=lambda i: (-best[i][0], i))
        merging = set(ranked[:r])
        kept = sorted(i for i in best if i not in merging) if prefix else [i for i in ranked[r:]]
        groups = [[i] for i in range(prefix)] + [[i] for i in kept] + [[j] for j in receivers]
        for i in merging:
            groups[prefix + len(kept) + receivers.index(best[i][1])].append(i)
        weight = lambda group: sum(sizes[image, g] for g in group)  # noqa: E731
        out_x.append(torch.stack([sum(x[image, g] * sizes[image, g] for g in group) / weight(group)
                                  for group in groups]))
        out_size.append(torch.stack([weight(group) for group in groups]))
        where = torch.empty(tokens, dtype=torch.long)
        for position, group in enumerate(groups):
            where[group] = position
        out_origin.append(where)
    return torch.stack(out_x), torch.stack(out_size), torch.stack(out_origin)


@pytest.mark.parametrize("prefix, tokens", [(0, 19), (0, 20), (1, 20), (1, 21), (2, 21), (2, 22), (5, 24)])
def test_bipartite_merging_matches_a_per_token_loop(prefix, tokens):
    """Class token (1), class + distillation (2), register tokens (5), none (0); odd and even counts."""
    torch.manual_seed(prefix * 100 + tokens)
    x = torch.randn(2, tokens, 6, dtype=torch.float64)
    metric = torch.randn(2, tokens, 4, dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, tokens)).double()
    origin = torch.arange(tokens).expand(2, -1)
    merged, merged_size, where = merge_tokens(x, sizes, origin, 5, prefix, metric)
    expected, expected_size, expected_where = _loop_merge(x, sizes, metric, 5, prefix)
    torch.testing.assert_close(merged, expected)
    torch.testing.assert_close(merged_size, expected_size)
    assert torch.equal(where, expected_where)
    assert torch.equal(merged[:, :prefix], x[:, :prefix])  # the prefix never merges and never receives
    torch.testing.assert_close(merged_size.sum(dim=1), sizes.sum(dim=1))


def test_r_is_capped_at_half_the_non_prefix_tokens_and_reported():
    model = _vit("deit_distilled", depth=4)
    vithub.reduce_tokens(model, "tome", r=100)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    # 16 patches + class + distillation token: 8, then 4, 2, 1 merges
    assert model.token_merges == [8, 4, 2, 1] and model.token_counts == [18, 10, 6, 4]
    assert model._token_sizes.sum().item() == 18


def test_merge_schedules():
    """The official parse_r: constant, a list padded with zeros, and (r, inflection) starting at int(r (1 - i))."""
    assert merge_schedule(13, 3) == [13, 13, 13]
    assert merge_schedule([1, 0, 2], 3) == [1, 0, 2] and merge_schedule([4], 3) == [4, 0, 0]
    expected = [int(32 + (0 - 32) / 11 * index) for index in range(12)]
    assert merge_schedule((16, -1), 12) == expected and expected[0] == 32 and expected[-1] == 0
    assert merge_schedule((10, 0.5), 5) == [int(5 + 2.5 * index) for index in range(5)]
    assert merge_schedule((13, -0.5), 12) == [int(19 + (7 - 19) / 11 * index) for index in range(12)]
    for bad, message in ((-1, "r must be >= 0"), ([1, 2, 3, 4], r"at most one int >= 0 per block \(3 blocks\)"),
                         ((4, 2.0), r"inflection in \[-1, 1\]"), (True, "r must be an int"), (1.5, "r must be")):
        with pytest.raises(ValueError, match=message):
            merge_schedule(bad, 3)


def test_merged_model_gives_full_grids_and_keeps_its_merged_tokens_together():
    model = _vit("deit")
    vithub.reduce_tokens(model, "tome", r=4)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(images)
        logits = model(images)
    assert [tuple(m.shape) for m in maps] == [(2, 48, 4, 4)] * 3
    assert final.shape == (2, 17 - 4 - 4 - 4, 48) and logits.shape == (2, 1000)
    # after two merging blocks, the 16 grid positions hold at most 16 - 8 distinct tokens
    distinct = {tuple(row.tolist()) for row in maps[1][0].flatten(1).T}
    assert len(distinct) <= 16 - 8


def test_average_pooling_is_timms_plain_mean_as_in_the_official_code():
    """The official ToMe leaves timm's head alone: average pooling counts each merged token once."""
    model = _vit("qk_norm_no_cls_avg")
    vithub.reduce_tokens(model, "tome", r=6)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 64))
        pooled = model.pool(features)
    assert model._token_sizes.max() > 1
    torch.testing.assert_close(pooled, features.mean(1))


def test_bad_input_is_refused_naming_the_argument():
    model = _vit("deit")
    with pytest.raises(ValueError, match="method must be one of"):
        vithub.reduce_tokens(model, "prune")
    with pytest.raises(ValueError, match=r"unknown \['rate'\]"):
        vithub.reduce_tokens(model, "tome", rate=3)
    with pytest.raises(ValueError, match="r must be >= 0"):
        vithub.reduce_tokens(model, "tome", r=-2)
    with pytest.raises(ValueError, match="proportional_attention must be True or False"):
        vithub.reduce_tokens(model, "tome", proportional_attention="yes")
    with pytest.raises(ValueError, match="model must be a timm VisionTransformer"):
        vithub.reduce_tokens(timm.create_model("vh_efficientvit_m0"), "tome", r=1)
    parallel = timm.create_model("vit_small_patch16_224", block_fn=ParallelScalingBlock, **SMALL)
    with pytest.raises(ValueError, match="block 0 is ParallelScalingBlock"):
        vithub.reduce_tokens(parallel, "tome", r=1)
    pooled = timm.create_model("vit_small_patch16_224", global_pool="map", **SMALL)
    with pytest.raises(ValueError, match="pools with attention"):
        vithub.reduce_tokens(pooled, "tome", r=1)
    dropout = timm.create_model("vit_small_patch16_224", attn_drop_rate=0.1, **SMALL)
    with pytest.raises(ValueError, match="attention dropout 0.1"):
        vithub.reduce_tokens(dropout, "tome", r=1)
    model.blocks[1].extra = torch.nn.Linear(2, 2)  # a part the merged forward would not run
    with pytest.raises(ValueError, match=r"block 1 \(Block\) has parts token reduction does not run: \['extra'\]"):
        vithub.reduce_tokens(model, "tome", r=1)


def test_registered_member_loads_timm_weights_and_merges(tmp_path):
    torch.manual_seed(3)
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    save_file(reference.state_dict(), str(tmp_path / "deit_tiny.safetensors"))
    model = timm.create_model("vh_deit_tiny_patch16_224_tome", pretrained=True, r=0,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "deit_tiny.safetensors"))).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-5)
        vithub.reduce_tokens(model, "tome", r=13)
        model(images)
    assert model.token_counts[:3] == [197, 184, 171] and model.token_counts[-1] == 197 - 11 * 13
    assert model.pretrained_cfg["architecture"] == "vh_deit_tiny_patch16_224_tome"
    assert "vh_deit_small_patch16_224_tome" in timm.list_models("vh_*")
    assert timm.create_model("vh_vit_large_patch16_224_tome", depth=2, embed_dim=32, num_heads=2,
                             img_size=32).token_reduction["r"] == [7, 7]
    assert math.isclose(model.pretrained_cfg["crop_pct"], 0.9)


def test_token_bench_writes_table_and_json(tmp_path, capsys):
    from vithub import cli

    output = tmp_path / "tokens.json"
    assert cli.main(["bench", "tokens", "--vits", "deit_tiny_patch16_224", "--r", "0", "4", "--batch-sizes", "2",
                     "--img-size", "64", "--repeats", "1", "--cropr-rates", "1", "--output", str(output)]) == 0
    assert "tome r=4" in capsys.readouterr().out
    import json

    rows = json.loads(output.read_text())["rows"]
    assert [row["variant"] for row in rows] == ["timm", "tome r=0", "tome r=4", "cropr rate=1", "ltmp keep-all"]
    assert rows[0]["speed_vs_timm"] == 1.0 and rows[1]["tokens_after_last_block"] == 17
    assert rows[2]["tokens_after_last_block"] == 17 - 4 - 4 - 4 - 2 - 1  # r=4, capped from the fourth block on
    assert rows[3]["tokens_after_last_block"] == 17 and rows[3]["fewest_tokens"] == 17 - 2 - 9  # fused at the end
    assert rows[4]["tokens_after_last_block"] == 17 == rows[4]["fewest_tokens"]


def _class_folders(root):
    """Two classes of four random 24x24 images each, in train and val class folders (vithub train's layout)."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(4):
                Image.fromarray(torch.randint(0, 256, (24, 24, 3), dtype=torch.uint8).numpy()).save(
                    folder / f"{index}.png")


def test_training_applies_the_spec_and_publishing_keeps_it(tmp_path):
    """vithub train --token-reduction trains the reduced model; the run's model, its saved folder and the loaded
    copy are reduced the same way."""
    from vithub.publishing import load, model_from_run, save_pretrained
    from vithub.train import TrainConfig, train
    from vithub.train.checkpoint import load_state

    _class_folders(tmp_path / "data")
    output = tmp_path / "run"
    summary = train(TrainConfig(model="deit_tiny_patch16_224", data=str(tmp_path / "data"), epochs=1, batch_size=4,
                                token_reduction="tome:r=(8,-1)", output=str(output), progress=False))
    assert summary["epochs"] == 1
    assert load_state(output / "last.state.pt")["config"]["token_reduction"] == "tome:r=(8,-1)"
    model, _ = model_from_run(output)
    schedule = merge_schedule((8, -1), 12)
    assert model.token_reduction["r"] == schedule
    folder = save_pretrained(model, tmp_path / "saved")
    again = load(folder).eval()
    assert again.token_reduction["r"] == schedule
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(images), model.eval()(images))
    assert again.token_counts[1] == 197 - schedule[0]
    with pytest.raises(ValueError, match="is not a number, list, pair or boolean"):
        train(TrainConfig(model="deit_tiny_patch16_224", data=str(tmp_path / "data"), epochs=1, batch_size=4,
                          token_reduction="tome:r=lots", output=str(tmp_path / "bad"), progress=False))


def test_a_block_with_token_sizes_acts_as_the_timm_block_on_duplicated_tokens():
    """Proportional attention through a whole block: tokens of sizes s under ToMe's block give what timm's own block
    gives when each token appears s times (read at each token's first copy); without it they do not."""
    model = _vit("deit3_layerscale")
    vithub.reduce_tokens(model, "tome", r=0)
    block = model.blocks[1]
    torch.manual_seed(4)
    x = torch.randn(2, 9, 48)
    sizes = torch.randint(1, 4, (2, 9)).float()
    origin = torch.arange(9).expand(2, -1)
    with torch.no_grad():
        ours, _, _ = block.tome_step(x, sizes, origin, 0, 1, proportional=True)
        plain, _, _ = block.tome_step(x, sizes, origin, 0, 1, proportional=False)
        for image in range(2):
            counts = sizes[image].long()
            duplicated = x[image].repeat_interleave(counts, dim=0)[None]
            first = torch.cumsum(counts, 0) - counts
            expected = block(duplicated)[0, first]
            torch.testing.assert_close(ours[image], expected, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(plain[image], expected, atol=1e-3)


def test_global_attention_reports_each_keys_importance():
    """The attention a key receives, averaged over heads and queries (LTMP's pruning score), against a loop."""
    torch.manual_seed(5)
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    k, v = torch.randn(2, 6, 3, 8, dtype=torch.float64), torch.randn(2, 6, 3, 5, dtype=torch.float64)
    mask = torch.rand(2, 6, dtype=torch.float64)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    for b in range(2):
        for h in range(3):
            for i in range(4):
                logits = torch.stack([q[b, i, h] @ k[b, j, h] for j in range(6)]) * 8 ** -0.5
                weights = logits.exp() * mask[b]
                expected[b] += weights / weights.sum() / 12
    for backend in ("reference", "torch"):
        out, importance = global_attention(q, k, v, key_mask=mask, backend=backend, return_importance=True)
        torch.testing.assert_close(importance, expected)
        torch.testing.assert_close(out, global_attention(q, k, v, key_mask=mask, backend=backend))
    _, plain = global_attention(q, k, v, backend="torch", return_importance=True)
    torch.testing.assert_close(plain.sum(dim=1), torch.ones(2, dtype=torch.float64))  # each query spreads 1
    # with a query mask, masked-out queries' rows do not count: the same as dropping those queries
    query_mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    for backend in ("reference", "torch"):
        _, weighted = global_attention(q, k, v, key_mask=mask, backend=backend, return_importance=True,
                                       query_mask=query_mask)
        for b in range(2):
            _, alone = global_attention(q[b:b + 1, query_mask[b]], k[b:b + 1], v[b:b + 1], key_mask=mask[b:b + 1],
                                        backend="reference", return_importance=True)
            torch.testing.assert_close(weighted[b], alone[0])
    with pytest.raises(ValueError, match="query_mask"):
        global_attention(q, k, v, query_mask=query_mask)
    with pytest.raises(ValueError, match="query_mask must be a tensor of shape"):
        global_attention(q, k, v, return_importance=True, query_mask=query_mask[:, :3])


# --- LTMP ---------------------------------------------------------------------------------------------------------

KEEP_ALL = dict(merge_threshold=2.0, prune_threshold=-1.0)  # above any cosine, below any importance


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ltmp_keeping_everything_is_the_unreduced_model_and_none_undoes_it(variant):
    model = _vit(variant)
    images = torch.randn(2, 3, 64, 64)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(images)
        vithub.reduce_tokens(model, "ltmp", flops_ratio=0.7, **KEEP_ALL)
        model.freeze_for_training()  # removing the reduction also gives back the flags training froze
        torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-6)
        assert model.flops_ratio == 1.0 and model.token_counts == [16.0 + model.num_prefix_tokens] * 3
        model.train()
        torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-6)  # the soft path, masks all 1
        model.eval()
        vithub.reduce_tokens(model, None)
        assert torch.equal(model(images), expected)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert list(model.state_dict()) == keys and not hasattr(model, "flops_ratio")


def _ltmp_model(variant, **options):
    """A small ViT with peaked attention (random timm weights attend almost uniformly, so importance would not tell
    tokens apart) and thresholds at which each image merges and prunes a different number of tokens."""
    model = _vit(variant)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(20)
    return vithub.reduce_tokens(model, "ltmp", **{"flops_ratio": 0.5, "merge_threshold": 0.5,
                                                  "prune_threshold": 0.04, **options})


@pytest.mark.parametrize("variant", ["deit", "qk_norm_no_cls_avg", "deit_distilled"])
def test_ltmp_batched_inference_equals_each_image_alone(variant):
    model = _ltmp_model(variant)
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        batched = model(images)
        alone, counts = [], []
        for image in images:
            alone.append(model(image[None]))
            counts.append(model.token_counts)
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert len({tuple(count) for count in counts}) > 1, "every image kept the same tokens: padding untested"
    assert all(count[-1] < count[0] for count in counts), "nothing was merged or pruned"


@pytest.mark.parametrize("variant", ["deit", "qk_norm_no_cls_avg"])
def test_ltmp_training_and_inference_agree_while_only_the_first_block_reduces(variant):
    """Training keeps every token and masks the dropped ones out of attention (the straight-through masks are exact
    0/1 in the forward); inference removes them. The two re-partition differently after a block that reduced (as the
    official code does), so they agree when only the first block merges and prunes: same logits and FLOPs."""
    model = _ltmp_model(variant)
    with torch.no_grad():
        model.ltmp_merge_thresholds[1:] = 2.0  # above any cosine: no merge after block 0
        model.ltmp_prune_thresholds[1:] = -1.0  # below any importance: no pruning after block 0
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        hard = model.eval()(images)
        hard_ratio, hard_counts = model.flops_ratio, model.token_counts
        soft = model.train()(images)
    torch.testing.assert_close(soft, hard, rtol=1e-5, atol=1e-5)
    assert math.isclose(model.flops_ratio, hard_ratio, rel_tol=1e-6) and hard_ratio < 0.95
    assert model.token_counts == pytest.approx(hard_counts) and hard_counts[1] < hard_counts[0]


def test_ltmp_created_trainable_and_frozen_for_training_only_the_thresholds_receive_gradients():
    model = _ltmp_model("deit")
    assert all(p.requires_grad for p in model.parameters())  # creation freezes nothing (timm's contract)
    model.freeze_for_training()  # what vithub train calls: the official recipe trains the thresholds only
    model.train()
    logits = model(torch.randn(4, 3, 64, 64))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + sum(
        model.token_reduction_losses.values())
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"ltmp_merge_thresholds", "ltmp_prune_thresholds"}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == with_grad
    assert model.ltmp_prune_thresholds.grad.abs().sum() > 0 and model.ltmp_merge_thresholds.grad.abs().sum() > 0
    unfrozen = vithub.reduce_tokens(_vit("deit"), "ltmp", flops_ratio=0.5, train_backbone=True)
    unfrozen.freeze_for_training()
    unfrozen.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    assert unfrozen.blocks[0].attn.qkv.weight.grad is not None


def test_ltmp_flops_ratio_follows_the_paper_and_its_loss_moves_the_thresholds():
    model = _ltmp_model("deit")
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(image)
    entering = model.token_counts
    leaving = entering[1:] + [int((model._token_sizes > 0).sum())]
    n, d = 17, model.embed_dim
    expected = sum((2 * a * d * d + a * a * d + 4 * b * d * d) / (6 * n * d * d + n * n * d)
                   for a, b in zip(entering, leaving)) / 3
    assert math.isclose(model.flops_ratio, expected, rel_tol=1e-6) and expected < 1.0
    # the FLOPs loss alone (λ(target - r)²) pushes the thresholds towards dropping more tokens
    model = _vit("deit")
    vithub.reduce_tokens(model, "ltmp", flops_ratio=0.4, **KEEP_ALL | {"prune_threshold": 0.0})
    model.freeze_for_training()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    images = torch.randn(4, 3, 64, 64)
    model(images)
    start = model.flops_ratio
    for _ in range(20):
        optimizer.zero_grad()
        model(images)
        model.token_reduction_losses["flops"].backward()
        optimizer.step()
    model(images)
    assert start == 1.0 and model.flops_ratio < 0.9


def test_ltmp_bad_input_and_dense_outputs_are_refused():
    model = _vit("deit")
    with pytest.raises(ValueError, match="ltmp needs flops_ratio"):
        vithub.reduce_tokens(model, "ltmp")
    with pytest.raises(ValueError, match=r"flops_ratio must be a number in \(0.0, 1.0\]"):
        vithub.reduce_tokens(model, "ltmp", flops_ratio=1.5)
    with pytest.raises(ValueError, match=r"tau must be a number in \(0.0, inf\]"):
        vithub.reduce_tokens(model, "ltmp", flops_ratio=0.5, tau=0)
    with pytest.raises(ValueError, match=r"unknown \['r'\]"):
        vithub.reduce_tokens(model, "ltmp", flops_ratio=0.5, r=3)
    with pytest.raises(ValueError, match="train_backbone must be True or False"):
        vithub.reduce_tokens(model, "ltmp", flops_ratio=0.5, train_backbone=1)
    max_pooled = timm.create_model("vit_small_patch16_224", global_pool="max", class_token=False, **SMALL)
    with pytest.raises(ValueError, match="global_pool 'max' would pool over dropped tokens"):
        vithub.reduce_tokens(max_pooled, "ltmp", flops_ratio=0.5)
    vithub.reduce_tokens(model, "ltmp", flops_ratio=0.5)
    with pytest.raises(ValueError, match="LTMP drops tokens for good"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64))


def test_ltmp_members_train_their_thresholds_and_publishing_keeps_them(tmp_path):
    """vithub train --token-reduction ltmp:... trains the thresholds only, logs the FLOPs ratio, and the published
    model comes back with the same reduction and the learned thresholds."""
    import json

    from vithub.publishing import load, model_from_run, save_pretrained
    from vithub.train import TrainConfig, train
    from vithub.train.checkpoint import load_state

    member = timm.create_model("vh_deit_tiny_patch16_224_ltmp", depth=2, img_size=32)
    assert member.token_reduction["flops_ratio"] == 0.7 and "untrained" in member.pretrained_cfg["notes"][0]
    assert "vh_vit_large_patch16_224_ltmp" in timm.list_models("vh_*")
    _class_folders(tmp_path / "data")
    output = tmp_path / "run"
    train(TrainConfig(model="deit_tiny_patch16_224", data=str(tmp_path / "data"), epochs=1, batch_size=4, lr=0.05,
                      token_reduction="ltmp:flops_ratio=0.5,prune_threshold=0.004", output=str(output),
                      progress=False))
    row = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 < row["flops_ratio"] <= 1.0
    model, _ = model_from_run(output)
    fresh = vithub.reduce_tokens(timm.create_model("deit_tiny_patch16_224", num_classes=2), "ltmp",
                                 flops_ratio=0.5, prune_threshold=0.004)
    assert not torch.equal(model.ltmp_prune_thresholds, fresh.ltmp_prune_thresholds)  # they trained
    optimizer = load_state(output / "last.state.pt")["optimizer"]
    trained = [index for group in optimizer["param_groups"] for index in group["params"]]
    assert len(trained) == 2 and len(optimizer["state"]) == 2  # the two threshold vectors, nothing else
    again = load(save_pretrained(model, tmp_path / "saved")).eval()
    assert again.token_reduction == model.token_reduction
    assert torch.equal(again.ltmp_prune_thresholds, model.ltmp_prune_thresholds)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(images), model.eval()(images))


# --- Token Cropr ---------------------------------------------------------------------------------------------------

def _cropr_vit(variant="deit", depth=4, num_classes=1000, **options):
    model = _vit(variant, depth=depth, num_classes=num_classes)
    return vithub.reduce_tokens(model, "cropr", **{"rate": 3, **options})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cropr_rate0_is_the_unreduced_model_and_none_undoes_it(variant):
    model = _vit(variant, depth=4)
    images = torch.randn(2, 3, 64, 64)
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(images)
        vithub.reduce_tokens(model, "cropr", rate=0)
        assert torch.equal(model(images), expected)
        vithub.reduce_tokens(model, "cropr", rate=3)
        assert not torch.allclose(model(images), expected, atol=1e-4)
        vithub.reduce_tokens(model, None)
        assert torch.equal(model(images), expected)
    assert list(model.state_dict()) == keys


def test_cropr_keeps_the_top_scoring_tokens_and_fusion_restores_the_grid():
    model = _cropr_vit("deit_distilled").eval()  # two prefix tokens, never pruned
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        grids = model.forward_intermediates(images, output_fmt="NLC", intermediates_only=True)
        prefix = model.num_prefix_tokens
        assert model.token_counts == [18, 18 - 4, 18 - 4 - 3, 18]  # rate + 1, then rate; all back for the last
        # after block 0 the router keeps the top 12 of 16 patch tokens; a pruned token keeps its block-0 state
        scores = model.cropr_routers[0].scores(grids[0])
        expected_kept = scores.topk(12, dim=1).indices.sort(dim=1).values
        changed = (grids[1] - grids[0]).abs().amax(dim=-1) > 0
        kept = torch.stack([row.nonzero()[:, 0] for row in changed])
        assert torch.equal(kept, expected_kept)
        # the last block sees every token (kept ones and pruned ones as they left): timm's block on that grid
        entering_last = torch.cat([model.forward_intermediates(images, indices=[2], output_fmt="NLC",
                                                               return_prefix_tokens=True,
                                                               intermediates_only=True)[0][1], grids[2]], dim=1)
        expected_last = model.blocks[3](entering_last)[:, prefix:]
        torch.testing.assert_close(grids[3], expected_last, rtol=1e-5, atol=1e-5)
        features = model.forward_features(images)
        torch.testing.assert_close(features[:, prefix:], model.norm(expected_last), rtol=1e-5, atol=1e-5)
        batched, alone = model(images), torch.cat([model(image[None]) for image in images])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_cropr_auxiliary_heads_train_the_routers_only():
    model = _cropr_vit(num_classes=5).train()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model(images)
    aux = model.token_reduction_aux_logits
    assert len(aux) == 2 and aux[0].shape == (4, 5)
    sum(torch.nn.functional.cross_entropy(logits, labels) for logits in aux).backward()
    with_grad = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"cropr_routers"}  # the routers see the tokens with gradients stopped
    model.eval()
    with torch.no_grad():
        model(images)
    assert model.token_reduction_aux_logits == []  # inference runs the scorers only
    model.reset_classifier(7)
    assert model.cropr_routers[1].head.out_features == 7


def test_cropr_bad_input_is_refused_naming_the_argument():
    model = _vit("deit", depth=4)
    with pytest.raises(ValueError, match="cropr: rate must be an int >= 0"):
        vithub.reduce_tokens(model, "cropr", rate=-1)
    with pytest.raises(ValueError, match="cropr: last_layer_fusion must be True or False"):
        vithub.reduce_tokens(model, "cropr", last_layer_fusion="yes")
    with pytest.raises(ValueError, match=r"unknown \['r'\]"):
        vithub.reduce_tokens(model, "cropr", r=2)
    with pytest.raises(ValueError, match="rate 8 prunes 17 tokens over 2 blocks, but the model has only 16"):
        vithub.reduce_tokens(model, "cropr", rate=8)
    dynamic = timm.create_model("deit_small_patch16_224", dynamic_img_size=True, **dict(SMALL, depth=4))
    vithub.reduce_tokens(dynamic, "cropr", rate=5)
    with pytest.raises(ValueError, match="rate 5 prunes 11 tokens over 2 blocks, but the input has only 4 patch"):
        dynamic(torch.randn(1, 3, 32, 32))
    vithub.reduce_tokens(model, "cropr", rate=2, last_layer_fusion=False)
    with pytest.raises(ValueError, match="without last-layer fusion"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64))


def test_cropr_with_fusion_segments_with_the_same_head():
    """A Cropr backbone with last-layer fusion gives full grids, so the segmentation heads take it unchanged."""
    from vithub.detection.segmentation import create_segmentor

    segmentor = create_segmentor("vh_deit_tiny_patch16_224_cropr", num_classes=4, head="fpn",
                                 backbone_kwargs=dict(img_size=64, depth=4, embed_dim=48, num_heads=3, rate=3))
    segmentor.train()
    images = torch.rand(2, 3, 64, 64)
    out = segmentor(images)["out"]
    assert out.shape == (2, 4, 64, 64) and torch.isfinite(out).all()
    out.mean().backward()
    counts = [module.token_counts for module in segmentor.modules() if hasattr(module, "token_counts")]
    assert counts and counts[0][:3] == [17, 13, 10]  # tokens really were pruned inside the segmentor


def test_cropr_training_adds_the_auxiliary_losses_and_publishing_keeps_the_routers(tmp_path):
    from vithub.publishing import load, model_from_run, save_pretrained
    from vithub.train import TrainConfig, train

    _class_folders(tmp_path / "data")
    output = tmp_path / "run"
    train(TrainConfig(model="deit_tiny_patch16_224", data=str(tmp_path / "data"), epochs=1, batch_size=4,
                      token_reduction="cropr:rate=8", output=str(output), progress=False))
    model, _ = model_from_run(output)
    assert model.token_reduction["rate"] == 8 and len(model.cropr_routers) == 10
    assert model.cropr_routers[0].head.out_features == 2
    again = load(save_pretrained(model, tmp_path / "saved")).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(images), model.eval()(images))
    assert again.token_counts[:3] == [197, 188, 180] and again.token_counts[-1] == 197


def test_catalog_counts_cropr_and_leaves_ltmp_uncounted():
    """vithub list: Cropr's MACs (scorers, fewer tokens, the fused last block) are below the unreduced ViT's; LTMP's
    depend on the image, so none are given."""
    from vithub.catalog import count_macs, summarize

    assert summarize("vh_deit_tiny_patch16_224_ltmp").gmacs is None
    with torch.device("meta"):
        unreduced = count_macs(timm.create_model("deit_tiny_patch16_224").eval(), (3, 224, 224)) / 1e9
    cropr = summarize("vh_deit_tiny_patch16_224_cropr").gmacs
    tome = summarize("vh_deit_tiny_patch16_224_tome").gmacs
    assert tome < cropr < 0.9 * unreduced


def test_vithub_train_trains_only_ltmps_thresholds_while_created_models_are_fully_trainable():
    """timm's contract: a created model trains every parameter. The official LTMP recipe trains the thresholds
    only, so ``vithub train`` freezes the rest (unless ``train_backbone=True``)."""
    from types import SimpleNamespace

    from vithub.train import TrainConfig
    from vithub.train.tasks import ClassificationTask

    created = timm.create_model("vh_deit_tiny_patch16_224_ltmp", num_classes=3)
    assert all(p.requires_grad for p in created.parameters())
    data = SimpleNamespace(num_classes=3)
    model = ClassificationTask().build_model(TrainConfig(model="vh_deit_tiny_patch16_224_ltmp", data="unused"), data)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"ltmp_merge_thresholds",
                                                                          "ltmp_prune_thresholds"}
    config = TrainConfig(model="deit_tiny_patch16_224", data="unused",
                         token_reduction="ltmp:flops_ratio=0.5,train_backbone=True")
    assert all(p.requires_grad for p in ClassificationTask().build_model(config, data).parameters())


def _reduced_for_graphs(method, variant):
    if method == "ltmp":
        return _ltmp_model(variant)  # images keep different token counts: the trimming is data-dependent
    return vithub.reduce_tokens(_vit(variant), method, **({"r": 3} if method == "tome" else {"rate": 2}))


@pytest.mark.parametrize("method", ["tome", "ltmp", "cropr"])
@pytest.mark.parametrize("variant", ["deit", "deit_distilled", "registers_avg", "gated_scale_norm"])
def test_fx_and_torchscript_run_the_eager_forward(method, variant):
    """A plain torch.fx.symbolic_trace and torch.jit.script of a token-reduced ViT give eager's logits on images
    that are not the ones traced (LTMP: a batch whose images keep different token counts), in eval and, scripted,
    in train mode (LTMP's straight-through masks, ToMe's merges with gradients)."""
    model = _reduced_for_graphs(method, variant)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    traced = torch.fx.symbolic_trace(model)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(traced(images), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted(images), expected, rtol=1e-5, atol=1e-5)
    if method == "ltmp":
        assert len(set(map(tuple, (_counts_alone(model, image) for image in images)))) > 1, "same counts: untested"
    model.train()
    scripted.train()
    torch.testing.assert_close(scripted(images), model(images), rtol=1e-5, atol=1e-5)


def _counts_alone(model, image):
    with torch.no_grad():
        model(image[None])
    return model.token_counts


def test_graphs_keep_no_python_state_and_eager_runs_still_do():
    """Tracing and scripting leave the model's statistics as the last eager forward set them (a traced graph keeps
    no Python state), and an eager forward after them records again."""
    model = _reduced_for_graphs("tome", "deit")
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    counts, origin = list(model.token_counts), model.token_origin
    torch.fx.symbolic_trace(model)
    torch.jit.script(model)
    assert model.token_counts == counts and model.token_origin is origin
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert model.token_origin.shape[0] == 1
