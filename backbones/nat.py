"""NAT and DiNAT: Neighborhood Attention Transformers, on the shared neighborhood-attention op.

Papers: "Neighborhood Attention Transformer" (Hassani et al., CVPR 2023, arXiv:2204.07143) and
"Dilated Neighborhood Attention Transformer" (Hassani & Shi, arXiv:2209.15001).
Architecture as the official SHI-Labs code: a two-conv stem (3x3 stride 2 twice, no activation) and LayerNorm,
pre-norm blocks with neighborhood attention (relative position bias per layer) and an MLP, layer scale on the
larger variants, and a 3x3 stride-2 conv + LayerNorm between stages. DiNAT is NAT with per-block dilations.

Layout differences from the official code (``checkpoint_filter_fn`` converts): the downsampler sits at the start of
the next stage (timm style, so stage outputs are the 1/4 .. 1/32 feature maps), layer scale is ``ls{1,2}.gamma``,
the stem convs are ``stem.conv{1,2}`` and the classifier is ``head.fc``. Attention runs only through
:func:`vithub.kernels.neighborhood_attention`; maps smaller than ``kernel_size * dilation`` are zero-padded at the
bottom/right before the qkv projection and cropped after, exactly as the original modules did, so every input size
works.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerScale, Mlp, resize_rel_pos_bias_table_simple, trunc_normal_
from timm.models import generate_default_cfgs, register_model, register_notrace_module

from vithub.kernels import neighborhood_attention, pair

from ._common import (
    SequentialStage,
    MapLayout,
    StageHooks,
    build_hierarchical,
    init_linear,
    parameter_names,
    stage_group_matcher,
)

__all__ = ["NAT", "NATBlock", "NATStage", "NeighborhoodAttention2d", "checkpoint_filter_fn"]

IntOrPair = Union[int, Tuple[int, int]]


class ConvStem(nn.Module):
    """Two 3x3 stride-2 convs (C/2, then C; no activation between them) and a LayerNorm; NCHW in, NHWC out."""

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.conv1(x)).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """3x3 stride-2 conv without bias, then LayerNorm; NHWC in and out."""

    def __init__(self, dim: int, out_dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


@register_notrace_module
class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D neighborhood attention over an NHWC map: fused qkv, the shared op, output projection.

    Args:
        dim: channels.
        num_heads: attention heads; must divide ``dim``.
        kernel_size: neighbourhood size (int or pair).
        dilation: dilation (int or pair).
        qkv_bias: bias on the qkv projection.
        qk_scale: logit scale; default ``head_dim ** -0.5``.
        proj_drop: dropout after the output projection.
        rel_pos_bias: learn a relative position bias ``rpb`` of shape ``(heads, 2K-1, 2K-1)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: IntOrPair = 7,
        dilation: IntOrPair = 1,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must divide the channel count dim ({dim})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.dilation = pair(dilation, "dilation")
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            kh, kw = self.kernel_size
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kh - 1, 2 * kw - 1))
            trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        # The op needs K*d tokens per axis; like the original module, pad small maps with zeros before qkv.
        pad_h = max(0, self.kernel_size[0] * self.dilation[0] - height)
        pad_w = max(0, self.kernel_size[1] * self.dilation[1] - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        qkv = self.qkv(x).view(batch, padded_h, padded_w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(3)
        x = neighborhood_attention(q, k, v, self.kernel_size, self.dilation, rpb=self.rpb.to(q.dtype),
                                   scale=self.scale)
        x = x.reshape(batch, padded_h, padded_w, channels)
        if pad_h or pad_w:
            x = x[:, :height, :width]
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}"


class NATBlock(nn.Module):
    """Pre-norm transformer block: ``x + ls1(NA(norm1(x)))``, then ``x + ls2(MLP(norm2(x)))``; NHWC."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: IntOrPair = 7,
        dilation: IntOrPair = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        layer_scale: Optional[float] = None,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2d(dim, num_heads, kernel_size, dilation, qkv_bias, qk_scale, proj_drop)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class NATStage(SequentialStage):
    """Optional downsampler (every stage but the first), then ``depth`` NAT blocks; NHWC."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        kernel_size: IntOrPair,
        dilations: Sequence[IntOrPair],
        downsample: bool,
        drop_path: Sequence[float],
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.downsample = ConvDownsample(dim, out_dim, norm_layer) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            NATBlock(out_dim, num_heads, kernel_size, dilations[i], drop_path=drop_path[i], norm_layer=norm_layer,
                     **block_kwargs)
            for i in range(depth)
        ])


class NAT(StageHooks, nn.Module):
    """NAT / DiNAT backbone and classifier.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0 for features only).
        global_pool: ``"avg"`` (the original), or any pool type of timm's ``ClassifierHead``, ``""`` for none.
        embed_dim: channels of the first stage; stage ``i`` has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratio: MLP hidden width over channels.
        kernel_size: neighbourhood size of every attention layer.
        dilations: per stage, one dilation per block (DiNAT); ``None`` means dilation 1 everywhere (NAT).
        qkv_bias: bias on the qkv projections.
        qk_scale: attention logit scale; default ``head_dim ** -0.5``.
        layer_scale: initial layer-scale value, or ``None`` for no layer scale.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the stem, attention projections and MLPs (the official ``drop_rate``).
        attn_drop_rate: must be 0: the fused attention kernels do not drop attention probabilities.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value.
    """

    map_layout: ClassVar[MapLayout] = "NHWC"  # layout of the stage maps and of forward_features

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 18, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: IntOrPair = 7,
        dilations: Optional[Sequence[Sequence[IntOrPair]]] = None,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        layer_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        depths = tuple(depths)
        num_heads = tuple(num_heads)
        if not depths or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be a non-empty sequence of positive ints, got {depths!r}")
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads must have one entry per stage ({len(depths)}), got {num_heads!r}")
        if dilations is None:
            dilations = [[1] * depth for depth in depths]
        dilations = [list(stage) for stage in dilations]
        if len(dilations) != len(depths) or any(len(s) != d for s, d in zip(dilations, depths)):
            raise ValueError(
                f"dilations must hold one list per stage with one entry per block, matching depths {list(depths)}; "
                f"got {dilations!r}"
            )
        if attn_drop_rate:
            raise ValueError(
                f"attn_drop_rate must be 0 (got {attn_drop_rate}): the shared neighborhood-attention kernels do not "
                "drop attention probabilities; the official NAT/DiNAT configs use 0"
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = self.map_layout  # NHWC maps out of forward_features, as timm's Swin declares
        self.global_pool = global_pool
        dims = [int(embed_dim * 2 ** i) for i in range(len(depths))]
        self.num_features = self.head_hidden_size = dims[-1]

        self.stem = ConvStem(in_chans, embed_dim, norm_layer)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        self.feature_info: List[Dict[str, Any]] = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            stages.append(NATStage(
                dim=dims[max(i - 1, 0)],
                out_dim=dims[i],
                depth=depth,
                num_heads=num_heads[i],
                kernel_size=kernel_size,
                dilations=dilations[i],
                downsample=i > 0,
                drop_path=drop_path[start:start + depth],
                norm_layer=norm_layer,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                layer_scale=layer_scale,
                proj_drop=proj_drop_rate,
                act_layer=act_layer,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")
        self.apply(init_linear)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image to the first NHWC map (stem and dropout)."""
        return self.pos_drop(self.stem(x))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer-wise LR decay groups: ``stem``, then per stage its downsample and each block, ``norm`` last."""
        return stage_group_matcher(coarse, stem="stem", stages="stages", stage_preamble=("downsample",))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Relative position bias tables (``rpb``) are not weight-decayed."""
        return parameter_names(self, "rpb")

# --- checkpoint conversion ----------------------------------------------------------------------------------------

_OFFICIAL_BLOCK_RENAMES = {"gamma1": "ls1.gamma", "gamma2": "ls2.gamma"}
_HF_BLOCK_RENAMES = {
    "layernorm_before": "norm1",
    "attention.self.rpb": "attn.rpb",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def _unwrap(state_dict: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state"):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def _from_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official SHI-Labs layout (``patch_embed``, ``levels.{i}.blocks``, ``levels.{i}.downsample``, ``head``)."""
    out = {}
    for key, value in state_dict.items():
        new = re.sub(r"^patch_embed\.proj\.([01])\.", lambda m: f"stem.conv{int(m.group(1)) + 1}.", key)
        new = re.sub(r"^patch_embed\.norm\.", "stem.norm.", new)
        new = re.sub(r"^levels\.(\d+)\.downsample\.reduction\.",
                     lambda m: f"stages.{int(m.group(1)) + 1}.downsample.conv.", new)
        new = re.sub(r"^levels\.(\d+)\.downsample\.norm\.",
                     lambda m: f"stages.{int(m.group(1)) + 1}.downsample.norm.", new)
        match = re.match(r"^levels\.(\d+)\.blocks\.(\d+)\.(.+)$", new)
        if match:
            stage, block, rest = match.groups()
            rest = _OFFICIAL_BLOCK_RENAMES.get(rest, rest)
            new = f"stages.{stage}.blocks.{block}.{rest}"
        new = re.sub(r"^head\.", "head.fc.", new)
        out[new] = value
    return out


def _from_transformers(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Hugging Face transformers layout (``NatForImageClassification`` / ``DinatForImageClassification`` or the bare
    ``NatModel`` / ``DinatModel``): separate query/key/value and a ``(2, dim)`` layer-scale tensor per layer."""
    prefix = ""
    for candidate in ("nat.", "dinat."):
        if any(key.startswith(candidate + "embeddings.") for key in state_dict):
            prefix = candidate
    out: Dict[str, torch.Tensor] = {}
    qkv_parts: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if name.startswith("embeddings.patch_embeddings.projection."):
            index, param = name.split(".")[-2:]
            out[f"stem.conv{int(index) + 1}.{param}"] = value
        elif name.startswith("embeddings.norm."):
            out["stem." + name[len("embeddings."):]] = value
        elif name.startswith("layernorm."):
            out["norm." + name[len("layernorm."):]] = value
        elif name.startswith("classifier."):
            out["head.fc." + name[len("classifier."):]] = value
        elif (m := re.match(r"^encoder\.levels\.(\d+)\.downsample\.(reduction|norm)\.(\w+)$", name)):
            stage, part, param = m.groups()
            out[f"stages.{int(stage) + 1}.downsample.{'conv' if part == 'reduction' else 'norm'}.{param}"] = value
        elif (m := re.match(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.(.+)$", name)):
            stage, block, rest = m.groups()
            base = f"stages.{stage}.blocks.{block}"
            if rest == "layer_scale_parameters":
                out[f"{base}.ls1.gamma"], out[f"{base}.ls2.gamma"] = value[0], value[1]
            elif (qkv := re.match(r"^attention\.self\.(query|key|value)\.(weight|bias)$", rest)):
                qkv_parts.setdefault((base, qkv.group(2)), {})[qkv.group(1)] = value
            else:
                for old, new in _HF_BLOCK_RENAMES.items():
                    if rest.startswith(old + ".") or rest == old:
                        rest = new + rest[len(old):]
                        break
                out[f"{base}.{rest}"] = value
        else:
            out[key] = value  # unknown: left for the strict load to report
    for (base, param), parts in qkv_parts.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"state_dict: {base} has {sorted(parts)} {param}s; expected query, key and value")
        out[f"{base}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: NAT) -> Dict[str, torch.Tensor]:
    """Convert official SHI-Labs or Hugging Face transformers NAT/DiNAT state dicts to this layout.

    Our own layout passes through. Relative position bias tables of another kernel size are resized bicubically.
    """
    state_dict = _unwrap(state_dict)
    if any(key.startswith(("patch_embed.", "levels.")) for key in state_dict):
        state_dict = _from_official(state_dict)
    elif any(key.startswith(("nat.embeddings.", "dinat.embeddings.", "embeddings.patch_embeddings."))
             for key in state_dict):
        state_dict = _from_transformers(state_dict)
    own = model.state_dict()
    for key, value in list(state_dict.items()):
        if key.endswith(".rpb") and key in own and value.shape != own[key].shape and value.dim() == 3:
            # Bicubic, as the official 11x11 weights were made from 7x7 ones: timm's simple table resize.
            height, width = own[key].shape[-2:]
            state_dict[key] = resize_rel_pos_bias_table_simple(value, ((height + 1) // 2, (width + 1) // 2),
                                                               tuple(own[key].shape))
    return state_dict


# --- registration -------------------------------------------------------------------------------------------------

def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> NAT:
    return build_hierarchical(NAT, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head.fc",
        "license": "mit",
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kwargs,
    }


_NAT_URL = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT_URL = "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/"
_NAT_PAPER = "arXiv:2204.07143"
_DINAT_PAPER = "arXiv:2209.15001"

default_cfgs = generate_default_cfgs({
    "vh_nat_mini.in1k": _cfg(_NAT_URL + "nat_mini.pth", paper_ids=_NAT_PAPER),
    "vh_nat_tiny.in1k": _cfg(_NAT_URL + "nat_tiny.pth", paper_ids=_NAT_PAPER),
    "vh_nat_small.in1k": _cfg(_NAT_URL + "nat_small.pth", paper_ids=_NAT_PAPER),
    "vh_nat_base.in1k": _cfg(_NAT_URL + "nat_base.pth", paper_ids=_NAT_PAPER),
    "vh_dinat_mini.in1k": _cfg(_DINAT_URL + "dinat_mini_in1k_224.pth", paper_ids=_DINAT_PAPER),
    "vh_dinat_tiny.in1k": _cfg(_DINAT_URL + "dinat_tiny_in1k_224.pth", paper_ids=_DINAT_PAPER),
    "vh_dinat_small.in1k": _cfg(_DINAT_URL + "dinat_small_in1k_224.pth", paper_ids=_DINAT_PAPER),
    "vh_dinat_base.in1k": _cfg(_DINAT_URL + "dinat_base_in1k_224.pth", paper_ids=_DINAT_PAPER),
    "vh_dinat_large.in22k_ft_in1k": _cfg(_DINAT_URL + "dinat_large_in22k_in1k_224.pth", paper_ids=_DINAT_PAPER),
    "vh_dinat_large_384.in22k_ft_in1k": _cfg(
        _DINAT_URL + "dinat_large_in22k_in1k_384.pth", paper_ids=_DINAT_PAPER,
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    "vh_dinat_large_384_11x11.in22k_ft_in1k": _cfg(
        _DINAT_URL + "dinat_large_in22k_in1k_384_11x11.pth", paper_ids=_DINAT_PAPER,
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
})

# DiNAT's dilation schedules (official): stage dilations alternate 1 and roughly map_size // kernel_size.
_DILATIONS_224 = ([1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5)
_DILATIONS_MINI_224 = ([1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5)
_DILATIONS_384 = ([1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5)

_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_TINY = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0, drop_path_rate=0.3)
_BASE = dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0, drop_path_rate=0.5,
             layer_scale=1e-5)
_LARGE = dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0, drop_path_rate=0.35)


@register_model
def vh_nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: 20M params, 2.7 GMACs at 224."""
    return _create_nat("vh_nat_mini", pretrained, **dict(_MINI, **kwargs))


@register_model
def vh_nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: 28M params, 4.3 GMACs at 224."""
    return _create_nat("vh_nat_tiny", pretrained, **dict(_TINY, **kwargs))


@register_model
def vh_nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small: 51M params, 7.8 GMACs at 224; layer scale 1e-5."""
    return _create_nat("vh_nat_small", pretrained, **dict(dict(_SMALL, layer_scale=1e-5), **kwargs))


@register_model
def vh_nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base: 90M params, 13.7 GMACs at 224; layer scale 1e-5."""
    return _create_nat("vh_nat_base", pretrained, **dict(_BASE, **kwargs))


@register_model
def vh_dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini: NAT-Mini with alternating dilated blocks."""
    return _create_nat("vh_dinat_mini", pretrained, **dict(dict(_MINI, dilations=_DILATIONS_MINI_224), **kwargs))


@register_model
def vh_dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny: NAT-Tiny with alternating dilated blocks."""
    return _create_nat("vh_dinat_tiny", pretrained, **dict(dict(_TINY, dilations=_DILATIONS_224), **kwargs))


@register_model
def vh_dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small (no layer scale, unlike NAT-Small)."""
    return _create_nat("vh_dinat_small", pretrained, **dict(dict(_SMALL, dilations=_DILATIONS_224), **kwargs))


@register_model
def vh_dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base: layer scale 1e-5."""
    return _create_nat("vh_dinat_base", pretrained, **dict(dict(_BASE, dilations=_DILATIONS_224), **kwargs))


@register_model
def vh_dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 224: 200M params; ImageNet-22k pre-trained, 1k fine-tuned."""
    return _create_nat("vh_dinat_large", pretrained, **dict(dict(_LARGE, dilations=_DILATIONS_224), **kwargs))


@register_model
def vh_dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384 (dilations scaled to the larger maps)."""
    return _create_nat("vh_dinat_large_384", pretrained, **dict(dict(_LARGE, dilations=_DILATIONS_384), **kwargs))


@register_model
def vh_dinat_large_384_11x11(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384 with 11x11 neighbourhoods."""
    model_args = dict(_LARGE, kernel_size=11, dilations=_DILATIONS_224)
    return _create_nat("vh_dinat_large_384_11x11", pretrained, **dict(model_args, **kwargs))
