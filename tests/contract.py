"""The timm contract every vh model must keep, as plain check functions: forward/backward shapes and finiteness, a
gradient for every parameter, ``features_only``/``out_indices``/``feature_info``, ``forward_intermediates``,
``reset_classifier``, gradient checkpointing (same results, activations really recomputed), layer-wise LR decay
groups, odd input sizes and ``torch.compile``.

``test_contract.py`` runs them over ``timm.list_models("vh_*")``; each family only registers models (and, when a
model is big, adds small constructor kwargs to ``CONTRACT_KWARGS``) to get the whole contract checked.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import timm
import torch

# Small constructor kwargs per model name (exact name or prefix ending in "*"): keeps the suite fast on 2 CPU cores.
_NAT_SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
_VIT_SMALL = dict(embed_dim=32, depth=3, num_heads=2, img_size=64, dynamic_img_size=True, dynamic_img_pad=True)
CONTRACT_KWARGS: Dict[str, Dict[str, Any]] = {
    "vh_nat_*": _NAT_SMALL,
    # DiNAT keeps a dilated block per stage, with each variant's own dilations and kernel size.
    "vh_dinat_large_384_11x11": dict(_NAT_SMALL, dilations=((8,), (4,), (1, 2), (1,))),
    "vh_dinat_large_384": dict(_NAT_SMALL, dilations=((13,), (6,), (1, 3), (1,))),
    "vh_dinat_*": dict(_NAT_SMALL, dilations=((8,), (4,), (1, 2), (1,))),
    # Two blocks in the middle stages keep a shifted-window block in the contract runs.
    "vh_swin_*": dict(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4)),
    # 2x2 windows keep several windows (so carrier tokens) in stage 2 of a 64x64 input; each variant keeps its own
    # layer scale and propagation flags.
    "vh_fastervit_*": dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=(7, 7, 2, 2)),
    # Trained tables stay at 224 (14x14 grid), so the 64x64 contract input also exercises the table resize.
    "vh_levit_*": dict(embed_dim=(32, 48, 64), key_dim=8, num_heads=(2, 3, 4), depth=(1, 1, 1)),
    # 3x3 windows on the 4x4 first-stage map: two windows per side, zero-padded.
    "vh_efficientvit_m*": dict(embed_dim=(16, 24, 32), key_dim=(4, 4, 4), depth=(1, 1, 1), num_heads=(2, 2, 2),
                               window_size=(3, 3, 3)),
    "vh_efficientvit_b*": dict(widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8, head_widths=(32, 48)),
    "vh_efficientvit_l*": dict(widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8, head_widths=(32, 48)),
    # Token merging on a 3-block ViT: 16 patches, r capped at 8 then 4 (the default r is 13); odd inputs pad.
    "vh_deit_*": dict(_VIT_SMALL),
    "vh_vit_*": dict(_VIT_SMALL),
}
# Models that cannot give full-grid dense outputs and must refuse them with a clear error (LTMP drops tokens for good).
NO_DENSE_OUTPUT_SUFFIXES = ("_ltmp",)


def refuses_dense_outputs(name: str) -> bool:
    return name.endswith(NO_DENSE_OUTPUT_SUFFIXES)


# Models whose inference has data-dependent token counts (LTMP's thresholds): they compile with graph breaks, not as
# one graph.
GRAPH_BREAK_SUFFIXES = ("_ltmp",)


# Input (H, W) per model name/prefix; default: 64 x 64 (families support any input size).
CONTRACT_INPUT: Dict[str, Tuple[int, int]] = {}
DEFAULT_INPUT = (64, 64)
ODD_INPUTS = [(72, 40), (50, 83)]  # non-square, not divisible by 32 or by a 7-token window


def _lookup(table: Dict[str, Any], name: str, default: Any) -> Any:
    if name in table:
        return table[name]
    for key, value in table.items():
        if key.endswith("*") and name.startswith(key[:-1]):
            return value
    return default


def contract_kwargs(name: str) -> Dict[str, Any]:
    return dict(_lookup(CONTRACT_KWARGS, name, {}))


def contract_input(name: str) -> Tuple[int, int]:
    return _lookup(CONTRACT_INPUT, name, DEFAULT_INPUT)


def make_model(name: str, **extra: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**contract_kwargs(name), **extra})


def random_images(batch: int, size: Tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _backward_reaches_every_parameter(model: torch.nn.Module, out: torch.Tensor, context: str = "") -> None:
    loss = out.float().pow(2).mean()
    # parts trained only through the outputs a model asks to be trained on (Cropr's auxiliary heads, LTMP's loss)
    for extra in getattr(model, "token_reduction_aux_logits", None) or []:
        loss = loss + extra.float().pow(2).mean()
    for extra in (getattr(model, "token_reduction_losses", None) or {}).values():
        loss = loss + extra.float()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient{context}: {missing[:10]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients{context}: {bad[:10]}"


def check_forward_backward(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """Logits have shape (B, num_classes), are finite, and every trainable parameter gets a finite gradient."""
    model.train()
    out = model(random_images(2, size))
    assert out.shape == (2, model.num_classes), f"logits shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "non-finite logits"
    _backward_reaches_every_parameter(model, out)


def check_mixed_precision(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """Under bf16 autocast (how ``vithub train --amp`` runs), with fp32 parameters, a train step works: finite
    logits near the fp32 ones, a finite gradient for every parameter (fp32 bias tables meet bf16 activations)."""
    model.eval()
    images = random_images(2, size)
    with torch.no_grad():
        reference = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images).float()
    scale = reference.abs().max().item()
    assert (low - reference).abs().max().item() <= 0.05 * scale + 0.05, "bf16 logits far from the fp32 ones"
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert torch.isfinite(out).all(), "non-finite logits under autocast"
    _backward_reaches_every_parameter(model, out, " under autocast")


def check_features_only(name: str, size: Tuple[int, int]) -> None:
    """features_only returns NCHW maps matching feature_info (channels, reduction), and out_indices selects."""
    model = make_model(name, features_only=True).eval()
    info = model.feature_info
    with torch.no_grad():
        feats = model(random_images(1, size))
    assert len(feats) == len(info.channels()) >= 1
    for feat, channels, reduction in zip(feats, info.channels(), info.reduction()):
        assert feat.dim() == 4 and feat.shape[1] == channels, f"feature {tuple(feat.shape)} vs {channels} channels"
        expected = (-(-size[0] // reduction), -(-size[1] // reduction))
        assert abs(feat.shape[2] - expected[0]) <= 1 and abs(feat.shape[3] - expected[1]) <= 1, (
            f"feature {tuple(feat.shape[2:])} at reduction {reduction} of input {size}"
        )
    last = len(info.channels()) - 1
    picked = make_model(name, features_only=True, out_indices=(last,)).eval()
    with torch.no_grad():
        only = picked(random_images(1, size))
    assert len(only) == 1 and only[0].shape == feats[-1].shape


def check_forward_intermediates(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """forward_intermediates gives the same final features as forward_features plus NCHW intermediates."""
    model.eval()
    x = random_images(1, size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        expected = model.forward_features(x)
        assert len(intermediates) >= 1 and all(t.dim() == 4 for t in intermediates)
        torch.testing.assert_close(final, expected)
        only = model.forward_intermediates(x, intermediates_only=True)
        assert len(only) == len(intermediates)


def check_reset_classifier(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    model.eval()
    x = random_images(1, size)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (1, 7)
    model.reset_classifier(0)
    # Without a classifier the output is the pre-logits vector: head_hidden_size wide where a head has hidden layers
    # (EfficientViT-B/L), else the feature width.
    with torch.no_grad():
        assert model(x).shape == (1, getattr(model, "head_hidden_size", model.num_features))


def _checkpointable_blocks(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """The blocks a vh model checkpoints (each stage's ``blocks``), by name; empty for models of other layouts."""
    stages = getattr(model, "stages", None) or []
    return {f"stages.{i}.blocks.{j}": block for i, stage in enumerate(stages)
            for j, block in enumerate(getattr(stage, "blocks", None) or [])}


def check_grad_checkpointing(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """Checkpointing changes memory, not results: same output and same gradients; and it is real: modules run again
    during backward (every block of every stage, for a vh model), which they never do without it."""
    model.train()
    x = random_images(2, size)
    blocks = _checkpointable_blocks(model)
    phase = {"now": "forward"}
    calls: Dict[str, Dict[str, int]] = {"forward": {}, "backward": {}}

    # Pre-hooks: a non-reentrant checkpoint stops its recompute as soon as it has every saved tensor back, so a
    # block's recompute may never reach the end of its forward (where a forward hook would fire).
    def counter(name: str):
        def hook(module, inputs):
            calls[phase["now"]][name] = calls[phase["now"]].get(name, 0) + 1
        return hook

    watched = dict(blocks) if blocks else {name: module for name, module in model.named_modules()
                                          if any(True for _ in module.parameters(recurse=False))}
    handles = [module.register_forward_pre_hook(counter(name)) for name, module in watched.items()]

    def run():
        for table in calls.values():
            table.clear()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        phase["now"] = "forward"
        out = model(x)
        phase["now"] = "backward"
        out.float().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    try:
        model.set_grad_checkpointing(False)
        out_plain, grads_plain = run()
        assert not calls["backward"], f"modules ran during backward without checkpointing: {calls['backward']}"
        model.set_grad_checkpointing(True)
        out_ckpt, grads_ckpt = run()
        recomputed = dict(calls["backward"])
        model.set_grad_checkpointing(False)
    finally:
        for handle in handles:
            handle.remove()
    assert recomputed, "set_grad_checkpointing(True) recomputed nothing during backward"
    missing = [name for name in blocks if recomputed.get(name, 0) < 1]
    assert not missing, f"blocks not recomputed during backward under checkpointing: {missing}"
    torch.testing.assert_close(out_ckpt, out_plain)
    for a, b in zip(grads_ckpt, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def check_group_matcher(model: torch.nn.Module) -> None:
    """Layer-wise LR decay groups: every parameter in one group, the stem first, the final norm last, and blocks in
    network order (a later stage never lands in an earlier group)."""
    from timm.models import group_parameters

    for coarse in (False, True):
        groups = list(group_parameters(model, model.group_matcher(coarse)).values())
        names = [name for group in groups for name in group]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters()), "groups must cover each parameter once"
        first_conv = model.pretrained_cfg["first_conv"]
        assert f"{first_conv}.weight" in groups[0], f"stem group {groups[0][:3]} lacks {first_conv}"
        # After the stage groups come at most two without stage parameters: the final norm (families that have one)
        # and the classifier, which timm puts in one group after all others because no pattern matches it.
        stage_of = [max((int(n.split(".")[1]) for n in group if n.split(".")[0] in ("stages", "layers", "blocks")),
                        default=-1) for group in groups[1:]]
        tail = len(stage_of) - next(i for i, stage in enumerate(reversed(stage_of)) if stage >= 0)
        assert len(stage_of) - tail <= 2, f"{len(stage_of) - tail} groups after the last stage group"
        if any(name == "norm.weight" for name, _ in model.named_parameters()):
            norm_group = next(i for i, group in enumerate(groups) if "norm.weight" in group)
            assert norm_group >= len(groups) - 2, f"the final norm is in group {norm_group} of {len(groups)}"
        assert stage_of[:tail] == sorted(stage_of[:tail]) and min(stage_of[:tail]) >= 0, \
            f"stage order across groups: {stage_of}"


def check_odd_sizes(model: torch.nn.Module) -> None:
    model.eval()
    for size in ODD_INPUTS:
        with torch.no_grad():
            out = model(random_images(1, size))
        assert out.shape == (1, model.num_classes) and torch.isfinite(out).all(), f"input {size}"


def check_torch_compile(model: torch.nn.Module, size: Tuple[int, int], fullgraph: bool = True) -> None:
    """The whole model compiles as one graph (attention ops are custom ops; ``fullgraph=False`` only for models with
    data-dependent token counts) and gives eager's outputs."""
    model.eval()
    x = random_images(1, size)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=fullgraph)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


# --- what timm's own model tests (tests/timm_models) ask beyond the above ------------------------------------------

# Parameters that a traced or scripted graph cannot train: Cropr's routers learn only from their auxiliary losses,
# which an FX or TorchScript graph does not give back (their logits are Python-side state of an eager forward; vithub
# train trains Cropr eagerly). Eager checks add those losses (_backward_reaches_every_parameter).
AUXILIARY_ONLY_PREFIXES = ("cropr_routers.",)


def check_created_trainable(model: torch.nn.Module) -> None:
    """A created model trains every parameter (freezing is a training choice: ``vithub train``'s, not creation's)."""
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not frozen, f"created with frozen parameters: {frozen[:10]}"


def check_output_format(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """``forward_features``' channel axis is where ``output_fmt`` (timm's declaration, default NCHW) or
    ``feature_dim`` says, and holds ``num_features`` channels."""
    from timm.layers import get_channel_dim

    model.eval()
    with torch.no_grad():
        features = model.forward_features(random_images(1, size))
    if features.ndim == 4:
        axis = getattr(model, "feature_dim", None)
        axis = get_channel_dim(getattr(model, "output_fmt", "NCHW")) if axis is None else axis
    else:
        axis = -1  # (B, N, C) tokens
    assert features.shape[axis] == model.num_features, (
        f"forward_features {tuple(features.shape)}: axis {axis} (output_fmt "
        f"{getattr(model, 'output_fmt', 'NCHW')!r}) is not the {model.num_features} channels")


def check_factory_device(name: str) -> None:
    """``create_model(..., device=, dtype=)`` (timm's factory arguments) places every parameter and buffer, and
    ``reset_classifier`` afterwards keeps the model's device and dtype."""
    model = timm.create_model(name, pretrained=False, device="meta", dtype=torch.float64, **contract_kwargs(name))
    misplaced = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                 if t.device.type != "meta" or (t.is_floating_point() and t.dtype != torch.float64)]
    assert not misplaced, f"not created on meta/float64: {misplaced[:5]}"
    model.reset_classifier(3)
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, (tuple, list)) else (classifier,)  # LeViT: (head, head_dist)
    head = [p for module in heads for p in module.parameters()]
    assert head and all(p.device.type == "meta" and p.dtype == torch.float64 for p in head), "new head misplaced"


def _fx_traced(model: torch.nn.Module, train: bool) -> torch.nn.Module:
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


def check_fx(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """torchvision's ``create_feature_extractor`` traces the model with timm's notrace lists (what timm's FX tests
    and FX quantisation do): the traced model gives eager's logits, and its training graph trains every
    parameter."""
    model.eval()
    x = random_images(1, size)
    with torch.no_grad():
        expected = model(x)
        traced = _fx_traced(model, train=False).eval()
        torch.testing.assert_close(next(iter(traced(x).values())), expected, rtol=1e-4, atol=1e-5)
    traced = _fx_traced(model, train=True).train()
    out = next(iter(traced(random_images(2, size)).values()))
    out.float().pow(2).mean().backward()
    missing = [n for n, p in traced.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(AUXILIARY_ONLY_PREFIXES)]
    assert not missing, f"parameters without gradient through the traced graph: {missing[:10]}"


def check_torchscript(model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """``torch.jit.script`` compiles the model (attention through the registered ``torch.ops.vithub`` ops), the
    scripted model and its saved-and-loaded copy give eager's logits, and a scripted training step trains every
    parameter."""
    import io

    model.eval()
    x = random_images(2, size)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
    scripted.train()
    scripted(x).float().pow(2).mean().backward()
    missing = [n for n, p in scripted.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(AUXILIARY_ONLY_PREFIXES)]
    assert not missing, f"parameters without gradient through the scripted model: {missing[:10]}"
