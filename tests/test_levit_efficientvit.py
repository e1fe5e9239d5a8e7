"""LeViT, EfficientViT-M and EfficientViT-B/L: equal to timm with the same weights, any input size, fuse(), the
official checkpoint layouts, and the attention going through vithub.kernels."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F

import vithub  # noqa: F401  (registers the vh_* models)
from vithub.backbones import efficientvit_mit, efficientvit_msra, levit

LEVIT = [f"levit_{name}" for name in ("128s", "128", "192", "256", "384")]
MSRA = [f"efficientvit_m{index}" for index in range(6)]
MIT = [f"efficientvit_{name}" for name in ("b0", "b1", "b2", "b3", "l1", "l2", "l3")]
FAMILY = {**{name: levit for name in LEVIT}, **{name: efficientvit_msra for name in MSRA},
          **{name: efficientvit_mit for name in MIT}}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters and every bias table random values, so
    that a wrong fold, a misplaced norm or a transposed table changes the outputs (their initial values would not)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(1 + torch.randn(size, generator=generator) * 0.2)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
        for name, parameter in model.named_parameters():
            if name.endswith("attention_biases"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def twins(timm_name: str, **kwargs):
    """timm's model with random statistics, and ours loaded from its state dict through our checkpoint filter."""
    torch.manual_seed(0)
    reference = randomize(timm.create_model(timm_name, **kwargs)).eval()
    ours = timm.create_model(f"vh_{timm_name}", **kwargs).eval()
    ours.load_state_dict(FAMILY[timm_name].checkpoint_filter_fn(reference.state_dict(), ours), strict=True)
    return reference, ours


def images(*size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", LEVIT + MSRA + MIT)
def test_equal_to_timm_at_the_default_size(name):
    reference, ours = twins(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    x = images(224, 224, batch=1 if name in ("efficientvit_l3", "efficientvit_b3") else 2)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert (actual - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0", "efficientvit_b0"])
def test_intermediates_equal_timm(name):
    reference, ours = twins(name)
    x = images(224, 224)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        actual = ours.forward_intermediates(x, intermediates_only=True)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5


def test_efficientvit_m_other_sizes_equal_timm_set_input_size():
    """timm can move EfficientViT-M to another (square) size with set_input_size, which resizes the bias tables of
    windows that change; ours does the same per forward, with no call."""
    for size in (288, 160):
        reference, ours = twins("efficientvit_m2")  # fresh: timm resizes from the current, not the trained, table
        reference.set_input_size(size)
        x = images(size, size)
        with torch.no_grad():
            assert (ours(x) - reference(x)).abs().max() <= 1e-5, size


def test_efficientvit_b_other_sizes_equal_timm():
    reference, ours = twins("efficientvit_b1")
    x = images(160, 256)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m1"])
def test_any_size_uses_tables_resized_for_the_grid(name):
    """A model built for another size (LeViT 320 x 256, EfficientViT-M 288), loaded from 224 weights (the filter
    resizes each table once), gives the same outputs as the 224 model run at that size (which resizes per forward):
    both use the trained table resized to the new grid. The 224 result itself is unchanged (no resize there)."""
    reference, ours = twins(name)
    module = FAMILY[name]
    built = timm.create_model(f"vh_{name}", img_size=(320, 256) if name.startswith("levit") else 288).eval()
    built.load_state_dict(module.checkpoint_filter_fn(ours.state_dict(), built), strict=True)
    resized = [key for key, value in built.state_dict().items()
               if key.endswith("attention_biases") and value.shape != ours.state_dict()[key].shape]
    assert resized, "some bias table must change size at the new input size"
    x = images(320, 256) if name.startswith("levit") else images(288, 288)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), built(x), rtol=1e-5, atol=1e-5)
        square = images(224, 224)
        assert (ours(square) - reference(square)).abs().max() <= 1e-5


def test_bias_tables_resize_by_timms_rule_on_every_grid_one_column_wide_included():
    """The table resize (matrix products with the antialiased bicubic filter) equals ``F.interpolate`` in float64
    on every grid where torch gets it right; on grids one column wide with a new height, where torch's fused op
    repeats the first row, it equals torch's own resize done one axis at a time (height, then width)."""
    from vithub.backbones._common import resize_bias_table

    def torch_resize(table, size):
        return F.interpolate(table[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]

    generator = torch.Generator().manual_seed(3)
    for source in [(3, 3), (7, 7), (4, 4), (14, 14), (5, 3)]:
        for size in [(1, 1), (2, 1), (1, 2), (2, 2), (3, 1), (4, 3), (9, 9), (16, 5), (6, 1), (1, 7)]:
            table = torch.randn(2, *source, generator=generator, dtype=torch.float64)
            ours = resize_bias_table(table, size)
            if size[1] == 1 and size[0] != source[0]:
                oracle = torch_resize(torch_resize(table, (size[0], source[1])), size)
            else:
                oracle = torch_resize(table, size)
            torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-12)
    table = torch.randn(2, 7, 7, generator=generator)
    torch.testing.assert_close(resize_bias_table(table, (4, 5)), torch_resize(table, (4, 5)), rtol=1e-6, atol=1e-6)
    assert resize_bias_table(table, (7, 7)) is table


def test_levit_non_square_matches_reference_backend():
    _, ours = twins("levit_128s")
    x = images(176, 240, batch=1)
    with torch.no_grad():
        fast = ours(x)
        with vithub.kernels.use_backend("reference"):
            slow = ours(x)
    assert fast.shape == (1, 1000) and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["levit_256", "efficientvit_m5", "efficientvit_b1", "efficientvit_l1"])
def test_fuse_folds_every_batchnorm_and_keeps_outputs(name):
    _, ours = twins(name)
    x = images(224, 192)
    with torch.no_grad():
        expected = ours(x)
        fused = ours.fuse()
        assert fused is ours and not ours.training
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ours.modules())
        actual = ours(x)
    assert (actual - expected).abs().max() <= 1e-4
    fused_sd = ours.state_dict()
    rebuilt = timm.create_model(f"vh_{name}").eval().fuse()
    rebuilt.load_state_dict(fused_sd, strict=True)  # a fused model's state dict reloads into a fused model
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), actual)


# timm's LeViT takes its trained size only; EfficientViT-M at 256 pads its 7 x 7 windows in stages 1 and 2 (16 x 16
# and 8 x 8 maps) and keeps every trained bias table (timm's set_input_size there changes nothing).
SPEED_PATH_CASES = [("levit_128s", (224, 224)), ("efficientvit_m0", (224, 224)), ("efficientvit_m0", (256, 256)),
                    ("efficientvit_b0", (224, 224)), ("efficientvit_b0", (160, 208))]


@pytest.mark.parametrize("name, size", SPEED_PATH_CASES)
def test_batch_one_keeps_channels_last_and_equals_timm_unfused_and_fused(name, size):
    """The CPU speed paths (in-place activations and residual adds, channels-last windows, 1x1 convs as matmuls on
    channel slices) change no output: batch 1, where a channel concat or a window partition used to fall back to
    NCHW, and a size whose EfficientViT-M windows need padding; fused within 1e-4. The stage maps stay
    channels-last (NCHW layout families) or contiguous NHWC (LeViT), which is what keeps the fast kernels in use."""
    reference, ours = twins(name)
    if name.startswith("efficientvit_m"):
        reference.set_input_size(size)
    x = images(*size, batch=1, seed=3)
    with torch.no_grad():
        expected = reference(x)
        assert (ours(x) - expected).abs().max() <= 1e-5
        for stage_map in ours.forward_intermediates(x, intermediates_only=True, output_fmt=ours.map_layout):
            channels_innermost = (stage_map.is_contiguous() if ours.map_layout == "NHWC"
                                  else stage_map.is_contiguous(memory_format=torch.channels_last))
            assert channels_innermost, stage_map.stride()
        assert (ours.fuse()(x) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("name, size", [SPEED_PATH_CASES[0], SPEED_PATH_CASES[2], SPEED_PATH_CASES[4]])
def test_train_step_equals_timm_outputs_and_gradients(name, size):
    """Training through the in-place activations and residual adds: the same outputs and parameter gradients as
    timm (BatchNorm on batch statistics, a padded-window size for EfficientViT-M), in float64 so that a wrong
    gradient cannot hide in fp32 rounding (which batch statistics of 3 images amplify to ~1e-4 here)."""
    reference, ours = twins(name)
    reference.train().double()
    ours.train().double()
    if name.startswith("efficientvit_m"):
        reference.set_input_size(size)
    x = images(*size, batch=3, seed=4).double()
    target = torch.randn(3, 1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    outputs = []
    for model in (reference, ours):
        out = model(x)
        (out * target).sum().backward()
        outputs.append(out.detach())
    # timm's EfficientViT-B runs its linear attention in float32 even in a float64 model: outputs differ at 1e-6,
    # gradients (through batch statistics) at up to 1e-4 relative. A clobbered activation would be off by O(1).
    tolerance = 1e-3 if name.startswith("efficientvit_b") else 1e-9
    torch.testing.assert_close(outputs[1], outputs[0], rtol=tolerance / 100, atol=tolerance / 100)
    grads = {param_name: param.grad for param_name, param in reference.named_parameters()}
    # Some gradients are zero up to rounding (a norm's bias before another training-mode norm): errors are relative
    # to each gradient's norm, floored at 1e-6 of the largest.
    floor = 1e-6 * max(grad.norm() for grad in grads.values())
    for param_name, param in ours.named_parameters():
        expected = grads[param_name]
        assert param.grad is not None, param_name
        error = (param.grad - expected).norm() / torch.maximum(expected.norm(), floor)
        assert error <= tolerance, f"{param_name}: relative gradient error {error:.2e}"


def test_attention_goes_through_the_kernel_layer(monkeypatch):
    """Each family's attention is the shared op: making it raise breaks the forward."""
    from vithub import kernels

    calls = []
    for module in (levit, efficientvit_msra):
        original = module.table_bias_attention

        def spy(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "table_bias_attention", spy)
    original_linear = efficientvit_mit.relu_linear_attention
    monkeypatch.setattr(efficientvit_mit, "relu_linear_attention",
                        lambda *a, **k: calls.append(2) or original_linear(*a, **k))
    for name, expected in (("vh_levit_128s", 2 + 3 + 4 + 2), ("vh_efficientvit_m0", 4 * (1 + 2 + 3))):
        calls.clear()
        with torch.no_grad():
            timm.create_model(name).eval()(images(224, 224, batch=1))
        assert len(calls) == expected, name
    calls.clear()
    with torch.no_grad():
        timm.create_model("vh_efficientvit_b0").eval()(images(64, 64, batch=1))
    assert calls.count(2) == 2 + 2  # LiteMLA blocks of the last two stages
    assert kernels.table_bias_attention is not None


def test_efficientvit_m_export_form_projects_stitched_windows_once_and_equals_eager(monkeypatch):
    """While exporting to ONNX, a windowed attention stitches its windows back before the projection (pointwise, so
    it commutes with stitching and cropping) and projects the whole map once: ONNX Runtime then fuses the residual
    add into that conv and keeps its blocked layout through the convs after it. In float64, on padded windows of a
    non-square map (240 x 176: stage 1 is 15 x 11, windows of 7 padded to 21 x 14), with random statistics, that
    form gives the eager logits."""
    from vithub.export_forms import export_forms

    _, ours = twins("efficientvit_m1")
    ours = ours.double()
    attention = ours.stages[0].blocks[0].mixer.m
    projected = []
    attention.attn.proj.register_forward_hook(lambda module, args, out: projected.append(tuple(args[0].shape)))
    x = images(240, 176).double()
    with torch.no_grad():
        eager = ours(x)
        assert projected[0][0] == 2 * 3 * 2  # eager projects each window (the channels-last speed path)
        projected.clear()
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # the ops' export forms too
        with export_forms(ours):
            exported_form = ours(x)
    assert projected == [(2, attention.attn.val_dim * attention.attn.num_heads, 15, 11)]
    torch.testing.assert_close(exported_form, eager, rtol=1e-10, atol=1e-10)


def test_no_weight_decay_and_groups():
    for name in ("vh_levit_128s", "vh_efficientvit_m0"):
        model = timm.create_model(name)
        tables = {n for n, _ in model.named_parameters() if n.endswith("attention_biases")}
        assert tables and model.no_weight_decay() == tables
    reference, ours = twins("levit_128s")
    from timm.models import group_parameters

    assert list(group_parameters(ours, ours.group_matcher()).values()) == \
        list(group_parameters(reference, reference.group_matcher()).values())


def test_levit_distillation_head():
    _, ours = twins("levit_128s")
    ours.train()
    ours.set_distilled_training(True)
    out = ours(images(64, 64))
    assert isinstance(out, tuple) and len(out) == 2
    ours.eval()
    with torch.no_grad():
        logits = ours(images(64, 64))
        features = ours.forward_head(ours.forward_features(images(64, 64)), pre_logits=True)
        torch.testing.assert_close(logits, (ours.head(features) + ours.head_dist(features)) / 2)


def test_pretrained_cfgs_point_at_timm_hub_weights():
    for name in LEVIT + MSRA:
        cfg = timm.models.get_pretrained_cfg(f"vh_{name}")
        assert cfg.hf_hub_id.startswith(f"timm/{name}.") and cfg.license in ("apache-2.0", "mit")
    for name in MIT:
        cfg = timm.models.get_pretrained_cfg(f"vh_{name}")
        assert cfg.hf_hub_id == f"timm/{name}.r224_in1k" and cfg.input_size == (3, 224, 224)
    assert timm.models.get_pretrained_cfg("vh_efficientvit_l3.r384_in1k").input_size == (3, 384, 384)


def test_pretrained_file_loading_through_timm(tmp_path):
    """timm's pretrained=True path with a local file (what a Hub download becomes) goes through our filter."""
    from safetensors.torch import save_file

    reference, _ = twins("efficientvit_m0")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = timm.create_model("vh_efficientvit_m0", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = images(224, 224, batch=1)
    with torch.no_grad():
        assert (loaded(x) - reference(x)).abs().max() <= 1e-5


# --- official layouts ----------------------------------------------------------------------------------------------
# Each test renames our state dict into the official repository's layout with rules written here from the official
# code (facebookresearch/LeViT levit.py, microsoft/Cream EfficientViT model/efficientvit.py, mit-han-lab/efficientvit
# models), and checks that the filter maps it back exactly.

def _to_official_levit(state_dict, model):
    out, block = {}, 0
    prefixes = []
    for index, stage in enumerate(model.stages):
        if isinstance(stage.downsample, levit.LevitDownsample):
            prefixes += [(f"stages.{index}.downsample.attn_downsample.", "sub"),
                         (f"stages.{index}.downsample.mlp.", "mlp")]
        for j in range(len(stage.blocks)):
            prefixes += [(f"stages.{index}.blocks.{j}.attn.", "attn"), (f"stages.{index}.blocks.{j}.mlp.", "mlp")]
    for key, value in state_dict.items():
        new = key.replace(".linear.", ".c.") if not key.startswith("head") else key.replace(".linear.", ".l.")
        match = re.match(r"^stem\.conv(\d)\.(.+)$", new)
        if match:
            new = f"patch_embed.{(int(match.group(1)) - 1) * 2}.{match.group(2)}"
        for block, (prefix, kind) in enumerate(prefixes):
            if key.startswith(prefix):
                rest = new[len(prefix):]
                rest = {"attn": lambda r: "m." + r.replace("proj.ln.", "proj.1."),
                        "sub": lambda r: r.replace("proj.ln.", "proj.1.").replace("q.ln.", "q.1."),
                        "mlp": lambda r: "m." + r.replace("ln1.", "0.").replace("ln2.", "2.")}[kind](rest)
                new = f"blocks.{block}.{rest}"
        out[new] = value
    return {"model": out}


def _to_official_cream(state_dict):
    out = {}
    for key, value in state_dict.items():
        new = re.sub(r"\.conv\.(weight|bias)$", r".c.\1", key).replace("head.linear.", "head.l.")
        match = re.match(r"^patch_embed\.conv(\d)\.(.+)$", new)
        if match:
            new = f"patch_embed.{(int(match.group(1)) - 1) * 2}.{match.group(2)}"
        match = re.match(r"^stages\.(\d)\.(downsample|blocks)\.(\w+)\.(.+)$", new)
        if match:
            stage, part, index, rest = int(match.group(1)), match.group(2), match.group(3), match.group(4)
            position = ({"res1": 0, "patchmerge": 1, "res2": 2}[index] if part == "downsample"
                        else int(index) + (3 if stage > 0 else 0))
            new = f"blocks{stage + 1}.{position}.{rest}"
        out[new] = value
    return {"model": out}


def _to_official_mit(state_dict, large):
    out = {}
    for key, value in state_dict.items():
        new = key
        match = re.match(r"^stem\.(in_conv|res(\d+))\.(.+)$", key)
        if match:
            index = 0 if match.group(1) == "in_conv" else int(match.group(2)) + 1
            new = f"backbone.{'stages.0' if large else 'input_stem'}.op_list.{index}.{match.group(3)}"
        match = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", key)
        if match:
            new = f"backbone.stages.{int(match.group(1)) + (1 if large else 0)}.op_list.{match.group(2)}." \
                  f"{match.group(3)}"
        for ours, official in (("head.in_conv.", "head.op_list.0."), ("head.classifier.0.", "head.op_list.2.linear."),
                               ("head.classifier.1.", "head.op_list.2.norm."),
                               ("head.classifier.4.", "head.op_list.3.linear.")):
            if key.startswith(ours):
                new = official + key[len(ours):]
        out[new] = value
    return {"state_dict": out}


@pytest.mark.parametrize("name,convert", [
    ("levit_128s", lambda sd, model: _to_official_levit(sd, model)),
    ("efficientvit_m1", lambda sd, model: _to_official_cream(sd)),
    ("efficientvit_b0", lambda sd, model: _to_official_mit(sd, large=False)),
    ("efficientvit_l1", lambda sd, model: _to_official_mit(sd, large=True)),
])
def test_official_layout_converts(name, convert):
    _, ours = twins(name)
    official = convert(ours.state_dict(), ours)
    layout_keys = list(next(iter(official.values())))
    assert not any(key.startswith(("stages.", "stem.")) for key in layout_keys), layout_keys[:5]
    fresh = timm.create_model(f"vh_{name}").eval()
    fresh.load_state_dict(FAMILY[name].checkpoint_filter_fn(official, fresh), strict=True)
    x = images(224, 224, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ours(x), rtol=0, atol=0)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("vh_levit_128s", global_pool="max")
    with pytest.raises(ValueError, match="widths and depths"):
        timm.create_model("vh_efficientvit_b0", widths=(8, 16, 32))
    with pytest.raises(ValueError, match="embed_dim, key_dim"):
        timm.create_model("vh_efficientvit_m0", depth=(1, 2))
