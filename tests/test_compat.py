"""vithub.compat: NATTEN's legacy unfused API and Hugging Face transformers' DiNAT on vithub's ops. Models are built
from small random configs (nothing is downloaded); transformers' DiNAT is compared with our vh_dinat built from the
same weights through the checkpoint filter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import timm
import torch

import vithub  # noqa: F401  (registers the vh_* models)
from vithub.compat import natten as legacy
from vithub.kernels import neighborhood_attention, neighborhood_attention_qk

transformers = pytest.importorskip("transformers")


def _random(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- vithub.compat.natten ------------------------------------------------------------------------------------------

def test_legacy_2d_functions_take_natten_heads_first_layout():
    q, k, v = (_random(2, 3, 9, 10, 4, seed=seed) for seed in (1, 2, 3))  # (B, heads, H, W, dim)
    rpb = _random(3, 5, 5, seed=4)
    logits = legacy.natten2dqkrpb(q * 0.5, k, rpb, 3, 2)
    assert logits.shape == (2, 3, 9, 10, 9)
    out = legacy.natten2dav(logits.softmax(-1), v, 3, 2)
    heads_last = [t.movedim(1, -2) for t in (q, k, v)]
    fused = neighborhood_attention(*heads_last, 3, 2, rpb, 0.5, backend="reference")
    torch.testing.assert_close(out, fused.movedim(-2, 1), rtol=1e-12, atol=1e-12)
    # the 0.15-0.17 names: rpb by keyword, per-axis kernel and dilation
    torch.testing.assert_close(legacy.na2d_qk(q * 0.5, k, 3, 2, rpb=rpb), logits)
    torch.testing.assert_close(legacy.na2d_av(logits.softmax(-1), v, (3, 3), (2, 2)), out)
    assert legacy.na2d_qk(q, k, (3, 5), (1, 2)).shape == (2, 3, 9, 10, 15)


def test_legacy_1d_functions():
    q, k, v = (_random(2, 2, 13, 4, seed=seed) for seed in (5, 6, 7))  # (B, heads, L, dim)
    rpb = _random(2, 9, seed=8)
    logits = legacy.natten1dqkrpb(q, k, rpb, 5, 2)
    assert logits.shape == (2, 2, 13, 5)
    expected = neighborhood_attention_qk(q.movedim(1, -2), k.movedim(1, -2), 5, 2, rpb).movedim(-2, 1)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(legacy.na1d_qk(q, k, 5, 2, rpb=rpb), logits)
    out = legacy.natten1dav(logits.softmax(-1), v, 5, 2)
    torch.testing.assert_close(legacy.na1d_av(logits.softmax(-1), v, 5, 2), out)
    assert out.shape == v.shape


def test_legacy_refusals_say_what_is_not_supported():
    q = _random(1, 2, 6, 6, 4)
    with pytest.raises(ValueError, match="na2d_qk: is_causal is not supported"):
        legacy.na2d_qk(q, q, 3, is_causal=True)
    with pytest.raises(ValueError, match="na2d_av: additional_values"):
        legacy.na2d_av(_random(1, 2, 6, 6, 9), q, 3, additional_values=q)
    with pytest.raises(ValueError, match=r"natten2dqkrpb: query must have NATTEN's layout \(B, heads, H, W, dim\)"):
        legacy.natten2dqkrpb(q[0], q[0], None, 3, 1)


def test_legacy_module_is_not_named_natten():
    assert legacy.__name__ == "vithub.compat.natten"
    assert sys.modules.get("natten") is not legacy


# --- vithub.compat.transformers --------------------------------------------------------------------------------------

SMALL = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], kernel_size=3, mlp_ratio=2.0,
             dilations=[[2], [1], [1, 2], [1]], layer_scale_init_value=0.5, drop_path_rate=0.0)


def _hf_classifier(seed=0, **extra):
    import vithub.compat.transformers  # noqa: F401  (first: transformers' DiNAT module cannot import without it)
    from transformers import DinatConfig, DinatForImageClassification

    torch.manual_seed(seed)
    model = DinatForImageClassification(DinatConfig(**{**SMALL, **extra}, num_labels=7, image_size=64)).eval()
    with torch.no_grad():  # random, not transformers' init (zero rpb, tiny layer scale), so every part shows
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def _ours_from(hf_model):
    from vithub.backbones.nat import checkpoint_filter_fn

    model = timm.create_model("vh_dinat_mini", embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                              kernel_size=3, dilations=((2,), (1,), (1, 2), (1,)), mlp_ratio=2.0, num_classes=7,
                              layer_scale=0.5, drop_path_rate=0.0).eval()
    model.load_state_dict(checkpoint_filter_fn(hf_model.state_dict(), model))
    return model


def test_dinat_classification_equals_vh_dinat_forward_and_gradients():
    hf = _hf_classifier()
    ours = _ours_from(hf)
    images = _random(2, 3, 64, 56, seed=9, dtype=torch.float32)
    torch.testing.assert_close(hf(pixel_values=images).logits, ours(images), rtol=1e-5, atol=1e-5)
    hf.train()
    ours.train()
    images.requires_grad_(True)
    hf(pixel_values=images).logits.square().mean().backward()
    hf_grad, images.grad = images.grad, None
    ours(images).square().mean().backward()
    assert torch.isfinite(hf_grad).all()
    torch.testing.assert_close(hf_grad, images.grad, rtol=1e-4, atol=1e-6)
    hf_rpb = hf.dinat.encoder.levels[2].layers[1].attention.self.rpb.grad
    torch.testing.assert_close(hf_rpb, ours.stages[2].blocks[1].attn.rpb.grad, rtol=1e-4, atol=1e-6)


def test_output_attentions_returns_the_probabilities_and_the_same_logits():
    hf = _hf_classifier()
    images = _random(1, 3, 64, 64, seed=10, dtype=torch.float32)
    plain = hf(pixel_values=images).logits
    with_attentions = hf(pixel_values=images, output_attentions=True)
    torch.testing.assert_close(with_attentions.logits, plain, rtol=1e-5, atol=1e-5)
    first = with_attentions.attentions[0]
    assert first.shape == (1, 1, 16, 16, 9)  # (B, heads, H, W, K*K): NATTEN's layout, as transformers returns it
    torch.testing.assert_close(first.sum(-1), torch.ones(1, 1, 16, 16))


def test_attention_dropout_takes_the_unfused_path_in_training():
    hf = _hf_classifier(attention_probs_dropout_prob=0.5).train()
    images = _random(1, 3, 64, 64, seed=11, dtype=torch.float32)
    torch.manual_seed(0)
    first = hf(pixel_values=images).logits
    torch.manual_seed(1)
    assert not torch.allclose(first, hf(pixel_values=images).logits)  # probabilities were dropped


def test_dinat_backbone_feature_maps_equal_vh_dinat():
    import vithub.compat.transformers  # noqa: F401
    from transformers import DinatBackbone, DinatConfig

    hf_classifier = _hf_classifier()
    config = DinatConfig(**SMALL, image_size=64, out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = DinatBackbone(config).eval()
    backbone.load_state_dict({key[len("dinat."):]: value for key, value in hf_classifier.state_dict().items()
                              if key.startswith("dinat.") and "pooler" not in key}, strict=False)
    ours = _ours_from(hf_classifier)
    images = _random(1, 3, 64, 64, seed=12, dtype=torch.float32)
    with torch.no_grad():
        for parameter in backbone.hidden_states_norms.parameters():  # the backbone's own per-stage norms, random
            parameter.normal_(0.0, 0.5)
        maps = backbone(pixel_values=images).feature_maps
        stages = ours.forward_intermediates(images, intermediates_only=True)  # NCHW stage outputs
    assert len(maps) == len(stages) == 4
    for index, (got, stage) in enumerate(zip(maps, stages)):
        norm = backbone.hidden_states_norms[f"stage{index + 1}"]
        expected = norm(stage.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_transformers_own_forward_swaps_axes_that_vithub_forward_does_not():
    """The reason vithub replaces NeighborhoodAttention.forward: transformers 5.x hands NATTEN's functions a (B, W,
    H, heads, dim) tensor as (B, heads, H, W, dim), so even with the legacy functions in place it cannot run."""
    import vithub.compat.transformers as compat
    from transformers.models.dinat import modeling_dinat

    config = modeling_dinat.DinatConfig(**SMALL)
    attention = modeling_dinat.NeighborhoodAttention(config, 16, 2, kernel_size=3, dilation=1).eval()
    hidden = _random(1, 6, 7, 16, seed=13, dtype=torch.float32)
    assert compat.neighborhood_attention_forward(attention, hidden)[0].shape == (1, 6, 7, 16)
    if compat.transformers_forward is not None and "transpose(1, 2)" in _source(compat.transformers_forward):
        with pytest.raises(ValueError):
            compat.transformers_forward(attention, hidden)


def _source(function):
    import inspect

    return inspect.getsource(function)


def test_an_unknown_dinat_layout_is_refused_naming_the_version(monkeypatch):
    import vithub.compat.transformers as compat
    from transformers.models.dinat import modeling_dinat

    monkeypatch.delattr(modeling_dinat, "requires_backends")
    with pytest.raises(compat.DinatLayoutError, match=f"transformers {transformers.__version__}'s DiNAT"):
        compat._check_layout(modeling_dinat)


def test_other_transformers_models_are_untouched():
    import vithub.compat.transformers  # noqa: F401
    from transformers.models.swin import modeling_swin

    modules = [value for value in vars(modeling_swin).values()
               if isinstance(value, type) and issubclass(value, torch.nn.Module) and "forward" in vars(value)]
    assert modules and all(module.forward.__module__.startswith("transformers.") for module in modules)
    assert not getattr(modeling_swin, "_vithub_compat", False)


def _run_isolated(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("natten_state", ["installed", "hidden"])
def test_dinat_runs_with_natten_installed_or_absent(natten_state):
    """In a fresh process: with whatever natten is installed (0.20+ in CI: no legacy functions), or with natten
    hidden, importing vithub.compat.transformers makes DinatForImageClassification build and run."""
    hide = "import sys; sys.modules['natten'] = None" if natten_state == "hidden" else ""
    out = _run_isolated(f"""
        {hide}
        import torch
        import vithub.compat.transformers
        from transformers import DinatConfig, DinatForImageClassification
        config = DinatConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], kernel_size=3, dilations=[[1], [2]],
                             num_labels=3)
        model = DinatForImageClassification(config).eval()
        with torch.no_grad():
            logits = model(pixel_values=torch.randn(1, 3, 64, 64)).logits
        print("OK", tuple(logits.shape), bool(torch.isfinite(logits).all()))
    """)
    assert "OK (1, 3) True" in out


def test_oneformer_dinat_trains_on_vithub_ops():
    """OneFormer with a DiNAT backbone (the shi-labs/oneformer_*_dinat_large architecture, tiny): a training forward
    with its losses, and the backward reaches the backbone's relative position biases."""
    import vithub.compat.transformers  # noqa: F401
    from transformers import DinatConfig, OneFormerConfig, OneFormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone = DinatConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], kernel_size=3,
                           dilations=[[2], [1], [1], [1]], drop_path_rate=0.0,
                           out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(backbone_config=backbone, num_labels=3, num_queries=6, hidden_dim=64, conv_dim=32,
                             mask_dim=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1,
                             decoder_layers=2, num_attention_heads=2, text_encoder_width=64,
                             text_encoder_num_layers=1, text_encoder_context_length=8, text_encoder_vocab_size=50,
                             text_encoder_proj_layers=1, text_encoder_n_ctx=2, task_seq_len=8, is_training=True,
                             use_auxiliary_loss=False, train_num_points=64)
    model = OneFormerForUniversalSegmentation(config).train()
    generator = torch.Generator().manual_seed(14)
    out = model(pixel_values=torch.randn(2, 3, 64, 64, generator=generator),
                task_inputs=torch.randint(0, 50, (2, 8), generator=generator),
                text_inputs=torch.randint(0, 50, (2, 4, 8), generator=generator),
                mask_labels=[torch.randint(0, 2, (2, 64, 64), generator=generator).float() for _ in range(2)],
                class_labels=[torch.tensor([0, 2]), torch.tensor([1, 2])])
    assert torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    biases = [p for name, p in model.named_parameters() if name.endswith(".rpb")]
    assert len(biases) == 4
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in biases)


def test_mask2former_dinat_trains_on_vithub_ops():
    """Mask2Former over DinatBackbone (tiny): a training step with its losses reaches the backbone's biases."""
    import vithub.compat.transformers  # noqa: F401
    from transformers import DinatConfig, Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone = DinatConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], kernel_size=3,
                           dilations=[[2], [1], [1], [1]], drop_path_rate=0.0,
                           out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=3, num_queries=6, hidden_dim=32,
                               mask_feature_size=32, feature_size=32, encoder_feedforward_dim=64, dim_feedforward=64,
                               encoder_layers=1, decoder_layers=2, num_attention_heads=2, train_num_points=64)
    model = Mask2FormerForUniversalSegmentation(config).train()
    generator = torch.Generator().manual_seed(15)
    out = model(pixel_values=torch.randn(2, 3, 64, 64, generator=generator),
                mask_labels=[torch.randint(0, 2, (2, 64, 64), generator=generator).float() for _ in range(2)],
                class_labels=[torch.tensor([0, 2]), torch.tensor([1, 2])])
    assert torch.isfinite(out.loss).all()
    out.loss.backward()
    biases = [p for name, p in model.named_parameters() if name.endswith(".rpb")]
    assert len(biases) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in biases)
