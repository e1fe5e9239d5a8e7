"""Swin on the shared window op: equal to timm's swin_* with the same weights, at the default size and at sizes that
are not window multiples; checkpoint conversion (timm and official layouts); window/shift rules; no roll copies."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2

import vithub  # noqa: F401  (registers the models)
from vithub.backbones.swin import checkpoint_filter_fn, window_and_shift

REDUCED = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def _pair_of_models(name: str, **kwargs):
    """timm's model (any input size) and ours loaded with its weights through checkpoint_filter_fn."""
    torch.manual_seed(0)
    theirs = timm.create_model(name, strict_img_size=False, **kwargs).eval()
    ours = timm.create_model(f"vh_{name}", **kwargs).eval()
    ours.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), ours), strict=True)
    return theirs, ours


def _images(size, seed=0, batch=2):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, kwargs, sizes", [
    ("swin_tiny_patch4_window7_224", {}, [(224, 224), (200, 300)]),
    ("swin_base_patch4_window12_384", REDUCED, [(384, 384), (200, 300), (96, 132)]),
    ("swin_large_patch4_window7_224", dict(REDUCED, embed_dim=24, num_heads=(3, 3, 6, 6)), [(224, 224), (164, 100)]),
])
def test_equal_to_timm(name, kwargs, sizes):
    """Same weights, max abs diff <= 1e-5 in fp32 eval, also where maps are padded to windows and rolled first."""
    theirs, ours = _pair_of_models(name, **kwargs)
    for size in sizes:
        x = _images(size, seed=size[0])
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        assert (got - expected).abs().max().item() <= 1e-5, size
        with torch.no_grad():
            features_expected = theirs.forward_intermediates(x, intermediates_only=True)
            features_got = ours.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(features_got, features_expected):
            assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


def test_equal_to_timm_built_at_a_non_square_size():
    """Built for 200x300, timm clips stage 4's window height to the map and drops its shift on that axis only."""
    torch.manual_seed(1)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", img_size=(200, 300), **REDUCED).eval()
    ours = timm.create_model("vh_swin_tiny_patch4_window7_224", img_size=(200, 300), **REDUCED).eval()
    assert ours.layers[3].blocks[1].shift_size == (0, 3)
    assert [b.shift_size for b in ours.layers[3].blocks] == [b.shift_size for b in theirs.layers[3].blocks]
    ours.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), ours), strict=True)
    x = _images((200, 300), seed=3)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5


def test_official_layout_converts():
    """Official Microsoft checkpoints: patch merging at the end of a stage, a bare head, index/mask buffers."""
    theirs, ours = _pair_of_models("swin_tiny_patch4_window7_224", **REDUCED)
    official = {}
    for key, value in theirs.state_dict().items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        official[key.replace("head.fc.", "head.")] = value
    official["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    fresh = timm.create_model("vh_swin_tiny_patch4_window7_224", **REDUCED).eval()
    fresh.load_state_dict(checkpoint_filter_fn({"model": official}, fresh), strict=True)
    x = _images((224, 224))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_rpb_is_key_minus_query():
    """A table entry for query - key = (dy, dx) lands at rpb[h, K-1-dy, K-1-dx]."""
    theirs, ours = _pair_of_models("swin_tiny_patch4_window7_224", **REDUCED)
    table = theirs.layers[0].blocks[0].attn.relative_position_bias_table.detach()  # ((2w-1)^2, heads)
    rpb = ours.layers[0].blocks[0].attn.rpb.detach()  # (heads, 2w-1, 2w-1)
    dy, dx = 2, -3  # query - key
    assert torch.equal(rpb[:, 6 - dy, 6 - dx], table[(dy + 6) * 13 + (dx + 6)])


def test_pretrained_loading_from_timm_files(tmp_path):
    """timm.create_model(pretrained=True) reads a timm-layout safetensors (as on timm's Hub repos) and a .pth."""
    theirs, _ = _pair_of_models("swin_tiny_patch4_window7_224", **REDUCED)
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(file))
    pth = tmp_path / "model.pth"
    torch.save({"model": theirs.state_dict()}, pth)
    x = _images((224, 224))
    with torch.no_grad():
        expected = theirs(x)
    for path in (file, pth):
        ours = timm.create_model("vh_swin_tiny_patch4_window7_224", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)), **REDUCED).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    # A new head: every other weight still loads.
    ours = timm.create_model("vh_swin_tiny_patch4_window7_224", pretrained=True, num_classes=10,
                             pretrained_cfg_overlay=dict(file=str(file)), **REDUCED)
    assert ours.head.fc.out_features == 10


def test_checkpoint_with_another_window_is_resized():
    _, ours7 = _pair_of_models("swin_tiny_patch4_window7_224", **REDUCED)
    ours12 = timm.create_model("vh_swin_base_patch4_window12_384", **dict(REDUCED, embed_dim=32))
    converted = checkpoint_filter_fn(ours7.state_dict(), ours12)
    assert converted["layers.0.blocks.0.attn.rpb"].shape == (1, 23, 23)
    ours12.load_state_dict(converted, strict=True)


def test_window_and_shift_rule():
    assert window_and_shift((56, 56), (7, 7), (3, 3)) == ((7, 7), (3, 3))
    assert window_and_shift((7, 10), (7, 7), (3, 3)) == ((7, 7), (0, 3))
    assert window_and_shift((4, 9), (7, 7), (3, 3)) == ((4, 7), (0, 3))
    assert window_and_shift((4, 9), (7, 7), (3, 3), always_partition=True) == ((7, 7), (3, 3))


def test_set_input_size_rederives_windows_and_back():
    torch.manual_seed(2)
    model = timm.create_model("vh_swin_tiny_patch4_window7_224", **REDUCED).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images((224, 224))
    with torch.no_grad():
        before = model(x)
    model.set_input_size(img_size=(96, 96))  # stage 4 map 3x3: window clipped to 3, no shift
    block = model.layers[3].blocks[1]
    assert block.window_size == (3, 3) and block.shift_size == (0, 0) and block.attn.rpb.shape[-2:] == (5, 5)
    with torch.no_grad():
        assert model(_images((96, 96))).shape == (2, 1000)
    model.set_input_size(img_size=(224, 224))
    assert block.window_size == (7, 7) and block.shift_size == (0, 0)  # 7x7 map: one window, no shift (timm's rule)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_attention_has_no_roll_or_partition_copies(monkeypatch):
    """The shift lives in the op's index arithmetic: torch.roll is never called in a forward."""
    model = timm.create_model("vh_swin_tiny_patch4_window7_224", **REDUCED).eval()

    def no_roll(*args, **kwargs):
        raise AssertionError("torch.roll called")

    monkeypatch.setattr(torch, "roll", no_roll)
    with torch.no_grad():
        model(_images((200, 300), batch=1))


def test_training_hooks():
    model = timm.create_model("vh_swin_tiny_patch4_window7_224", **REDUCED)
    no_decay = model.no_weight_decay()
    assert no_decay == {n for n, _ in model.named_parameters() if n.endswith("attn.rpb")}
    assert len(no_decay) == sum(REDUCED["depths"])
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    x = _images((64, 64))
    model.train()
    torch.manual_seed(5)
    model(x).square().mean().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(5)
    model(x).square().mean().backward()
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("coarse", [False, True])
def test_group_matcher_groups_like_timm(coarse):
    """Layer-wise LR decay groups every parameter as timm's Swin does (our rpb stands for timm's bias table)."""
    from timm.models import group_parameters

    theirs, ours = _pair_of_models("swin_tiny_patch4_window7_224", **REDUCED)

    def group_of(model, rename=lambda n: n):
        groups = group_parameters(model, model.group_matcher(coarse))
        return {rename(name): index for index, names in enumerate(groups.values()) for name in names}

    expected = group_of(theirs)
    got = group_of(ours, lambda n: n.replace("attn.rpb", "attn.relative_position_bias_table"))
    assert got == expected


def test_attn_drop_rate_is_refused():
    with pytest.raises(ValueError, match="attn_drop_rate"):
        timm.create_model("vh_swin_tiny_patch4_window7_224", attn_drop_rate=0.1, **REDUCED)


def test_pretrained_cfgs_point_at_timm_weights():
    for name in timm.list_models("vh_swin_*"):
        cfg = timm.create_model(name, pretrained=False, **REDUCED).pretrained_cfg
        assert cfg["hf_hub_id"] == "timm/" + name[len("vh_"):] + "." + cfg["tag"]
        assert cfg["license"] == "mit"
    assert len(timm.list_models("vh_swin_*")) == 6


def test_another_window_resizes_the_bias_tables_as_timm_does():
    """set_input_size with a new window: the tables are resized by timm's own Swin rule, so outputs stay equal."""
    theirs, ours = _pair_of_models("swin_tiny_patch4_window7_224", **REDUCED)
    with torch.no_grad():  # non-constant tables, so a different interpolation rule would show
        for name, parameter in theirs.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_()
    ours.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), ours), strict=True)
    theirs.set_input_size(img_size=(192, 192), window_size=6)
    ours.set_input_size(img_size=(192, 192), window_size=6)
    assert ours.layers[0].blocks[0].attn.rpb.shape[-2:] == (11, 11)
    x = _images((192, 192), seed=5)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5
