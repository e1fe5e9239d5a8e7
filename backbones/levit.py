"""LeViT (Graham et al., 2021) on vithub's shared kernel layer.

Module names and parameter shapes are timm's ``levit_*`` (distilled, linear-token form), so timm's Hub weights load
as they are and give timm's outputs. Differences from timm:

* tokens flow as NHWC maps, so any input size works, square or not: every attention-bias table is trained for one
  key grid and is resized (bicubic, antialiased, as timm resizes LeViT-style tables) to the grid of the input; at the
  trained size the table is used as is;
* attention runs through :func:`vithub.kernels.table_bias_attention` (queries of the subsampling attention at stride
  2, bias gathered by ``(|dy|, |dx|)``);
* :meth:`Levit.fuse` folds every BatchNorm into the adjacent linear/conv for inference.

``checkpoint_filter_fn`` also converts the official facebookresearch/LeViT layout.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, ClassVar, Dict, List, Optional, Set, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, get_act_layer, to_2tuple, to_ntuple
from timm.models import generate_default_cfgs, register_model, register_notrace_module

from vithub.kernels import table_bias_attention

from ._common import (
    placed_like,
    BiasTableMixin,
    FoldsNormInEval,
    FusableConvNorm,
    NormLinear,
    SequentialStage,
    MapLayout,
    StageHooks,
    adapt_bias_tables,
    add_residual_,
    build_hierarchical,
    fuse_batchnorms,
    inplace_activation,
    parameter_names,
    stage_group_matcher,
)
from ._cpu_paths import input_format

__all__ = ["Levit", "LevitAttention", "LevitAttentionDownsample", "checkpoint_filter_fn"]


# --- layers with a foldable BatchNorm -----------------------------------------------------------------------------

class ConvNorm(FusableConvNorm):
    """Conv (no bias) + BatchNorm2d; timm names ``linear`` and ``bn``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def separate(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


@register_notrace_module
class LinearNorm(FoldsNormInEval):
    """Linear (no bias) on the last dim + BatchNorm over channels (all leading dims are samples)."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def separate(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x.flatten(0, -2))).unflatten(0, x.shape[:-1])

    def fused(self) -> nn.Module:
        fused = torch.nn.utils.fusion.fuse_linear_bn_eval(self.linear, self.bn)
        flat = SampleLinear(fused.in_features, fused.out_features, device=fused.weight.device,
                            dtype=fused.weight.dtype)
        flat.load_state_dict(fused.state_dict())
        return flat


@register_notrace_module
class SampleLinear(nn.Linear):
    """``nn.Linear`` on the last dim that treats every leading dim as samples: one 2-D matmul.

    The same numbers as ``nn.Linear``; the flattening is for ONNX Runtime, which runs a MatMul of a 4-D
    ``(B, H, W, C)`` input markedly slower than timm's on ``(B, N, C)`` tokens (LeViT-256 at batch 1, per-node profile),
    and fuses a 2-D MatMul and its bias into one Gemm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(0, -2), self.weight, self.bias).unflatten(0, x.shape[:-1])


# --- blocks -------------------------------------------------------------------------------------------------------

class Stem16(nn.Sequential):
    """Four stride-2 3x3 ConvNorms with activations between them (image to 1/16)."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: Type[nn.Module]) -> None:
        super().__init__()
        widths = [in_chs, out_chs // 8, out_chs // 4, out_chs // 2, out_chs]
        for index in range(4):
            self.add_module(f"conv{index + 1}", ConvNorm(widths[index], widths[index + 1], 3, stride=2, padding=1))
            if index < 3:
                self.add_module(f"act{index + 1}", inplace_activation(act_layer))


@register_notrace_module
class LevitAttention(BiasTableMixin, nn.Module):
    """Multi-head self-attention over the whole map with a ``(|dy|, |dx|)`` bias table; ``qkv`` packs each head's
    ``[q, k, v]`` together (timm/official order)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0,
                 resolution: Tuple[int, int] = (14, 14), act_layer: Type[nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.qkv = LinearNorm(dim, (self.val_dim + 2 * key_dim) * num_heads)
        self.proj = nn.Sequential(OrderedDict([
            ("act", inplace_activation(act_layer)),  # on the attention's fresh output
            ("ln", LinearNorm(self.val_dim * num_heads, dim, bn_weight_init=0.0)),
        ]))
        self._init_table(num_heads, resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).view(batch, height, width, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=-1)
        bias = self.gathered_bias((height, width), (height, width), 1)
        out = table_bias_attention(q, k, v, gathered_bias=bias.to(q.dtype))
        return self.proj(out.reshape(batch, height, width, -1))


class Subsample(nn.Module):
    """Every ``stride``-th token of an NHWC map, starting at the first (LeViT's query subsampling)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, ::self.stride, ::self.stride]


@register_notrace_module
class LevitAttentionDownsample(BiasTableMixin, nn.Module):
    """Attention whose queries come from every ``stride``-th token (output ``ceil(H/s) x ceil(W/s)``); keys and values
    from the whole map."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 2.0,
                 stride: int = 2, resolution: Tuple[int, int] = (14, 14),
                 act_layer: Type[nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        self.stride = stride
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.kv = LinearNorm(in_dim, (self.val_dim + key_dim) * num_heads)
        self.q = nn.Sequential(OrderedDict([
            ("down", Subsample(stride)),
            ("ln", LinearNorm(in_dim, key_dim * num_heads)),
        ]))
        self.proj = nn.Sequential(OrderedDict([
            ("act", inplace_activation(act_layer)),  # on the attention's fresh output
            ("ln", LinearNorm(self.val_dim * num_heads, out_dim)),
        ]))
        self._init_table(num_heads, resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        k, v = self.kv(x).view(batch, height, width, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=-1)
        q = self.q(x)
        q = q.view(batch, q.shape[1], q.shape[2], self.num_heads, self.key_dim)
        bias = self.gathered_bias((q.shape[1], q.shape[2]), (height, width), self.stride)
        out = table_bias_attention(q, k, v, query_stride=self.stride, gathered_bias=bias.to(q.dtype))
        return self.proj(out.reshape(batch, q.shape[1], q.shape[2], -1))


class LevitMlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, act_layer: Type[nn.Module] = nn.Hardswish,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.ln1 = LinearNorm(in_features, hidden_features)
        self.act = inplace_activation(act_layer)
        self.drop = nn.Dropout(drop)
        self.ln2 = LinearNorm(hidden_features, in_features, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.drop(self.act(self.ln1(x))))


class LevitDownsample(nn.Module):
    """Subsampling attention (no residual) then a residual MLP: the start of stages 2 and 3."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int, resolution: Tuple[int, int],
                 act_layer: Type[nn.Module], attn_act_layer: Type[nn.Module], drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn_downsample = LevitAttentionDownsample(in_dim, out_dim, key_dim, num_heads=num_heads,
                                                        attn_ratio=4.0, resolution=resolution,
                                                        act_layer=attn_act_layer)
        self.mlp = LevitMlp(out_dim, out_dim * 2, act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_downsample(x)
        return add_residual_(self.drop_path(self.mlp(x)), x)


class LevitBlock(nn.Module):
    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, mlp_ratio: float,
                 resolution: Tuple[int, int], act_layer: Type[nn.Module], attn_act_layer: Type[nn.Module],
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = LevitAttention(dim, key_dim, num_heads, attn_ratio, resolution, act_layer=attn_act_layer)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = LevitMlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_residual_(self.drop_path1(self.attn(x)), x)
        return add_residual_(self.drop_path2(self.mlp(x)), x)


class LevitStage(SequentialStage):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, depth: int, num_heads: int, attn_ratio: float,
                 mlp_ratio: float, act_layer: Type[nn.Module], attn_act_layer: Type[nn.Module],
                 resolution: Tuple[int, int], downsample: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        if downsample:
            self.downsample = LevitDownsample(in_dim, out_dim, key_dim, in_dim // key_dim, resolution, act_layer,
                                              attn_act_layer, drop_path)
            resolution = ((resolution[0] - 1) // 2 + 1, (resolution[1] - 1) // 2 + 1)
        else:
            if in_dim != out_dim:
                raise ValueError(f"a stage without downsampling keeps its width: in_dim {in_dim} != out_dim {out_dim}")
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            LevitBlock(out_dim, key_dim, num_heads, attn_ratio, mlp_ratio, resolution, act_layer, attn_act_layer,
                       drop_path)
            for _ in range(depth)
        ])


# --- model --------------------------------------------------------------------------------------------------------

class Levit(StageHooks, nn.Module):
    """LeViT classifier and backbone (three stages at strides 16, 32, 64).

    Args:
        img_size: the size the bias tables are trained for (any other size works: tables are resized per grid).
        embed_dim, depth, num_heads, key_dim, attn_ratio, mlp_ratio: the official architecture arguments.
        act_layer / attn_act_layer: activation (timm name or class); LeViT uses hard-swish.
        distilled: keep the distillation head ``head_dist``; eval output is the mean of both heads (official).
    """

    map_layout: ClassVar[MapLayout] = "NHWC"  # layout of the stage maps and of forward_features


    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Tuple[int, ...] = (192,),
        key_dim: int = 64,
        depth: Tuple[int, ...] = (12,),
        num_heads: Union[int, Tuple[int, ...]] = (3,),
        attn_ratio: Union[float, Tuple[float, ...]] = 2.0,
        mlp_ratio: Union[float, Tuple[float, ...]] = 2.0,
        act_layer: Union[str, Type[nn.Module]] = "hard_swish",
        attn_act_layer: Optional[Union[str, Type[nn.Module]]] = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distilled: bool = True,
    ) -> None:
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        if len(depth) != len(embed_dim):
            raise ValueError(f"depth and embed_dim must have one entry per stage, got {depth} and {embed_dim}")
        num_stages = len(embed_dim)
        act = get_act_layer(act_layer)
        attn_act = get_act_layer(attn_act_layer or act_layer)
        num_heads, attn_ratio, mlp_ratio = (to_ntuple(num_stages)(value) for value in (num_heads, attn_ratio,
                                                                                        mlp_ratio))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = self.map_layout  # forward_features gives an NHWC map (timm's LeViT gives tokens)
        self.feature_dim = -1  # the channel axis of that map, for timm's non-standard model checks
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.distilled = distilled
        self.distilled_training = False
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.stem = Stem16(in_chans, embed_dim[0], act)
        stride = 16
        resolution = tuple(size // stride for size in to_2tuple(img_size))
        stages = []
        self.feature_info = []
        in_dim = embed_dim[0]
        for index in range(num_stages):
            stages.append(LevitStage(in_dim, embed_dim[index], key_dim, depth[index], num_heads[index],
                                     attn_ratio[index], mlp_ratio[index], act, attn_act, resolution,
                                     downsample=index > 0, drop_path=drop_path_rate))
            if index > 0:
                stride *= 2
                resolution = ((resolution[0] - 1) // 2 + 1, (resolution[1] - 1) // 2 + 1)
            self.feature_info.append(dict(num_chs=embed_dim[index], reduction=stride, module=f"stages.{index}"))
            in_dim = embed_dim[index]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.head = self._make_head(num_classes)
        if distilled:
            self.head_dist = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return NormLinear(self.num_features, num_classes, drop=self.drop_rate) if num_classes > 0 else nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions are faster on CPU (oneDNN: about 1.3x on this stem at batch 32) and hand the
        # stages a contiguous NHWC map without a copy.
        memory_format = torch.channels_last
        if not torch.jit.is_scripting():  # NCHW (the twin's layout) where it measures faster on this CPU
            memory_format = input_format(self, x, self.forward_features)
        return self.stem(x.contiguous(memory_format=memory_format)).permute(0, 2, 3, 1)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer-wise LR decay groups: ``stem``, then per stage its downsample and each block, ``norm`` last."""
        return stage_group_matcher(coarse, stem="stem", stages="stages", stage_preamble=("downsample",))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The attention bias tables are not weight-decayed."""
        return parameter_names(self, "attention_biases")

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = placed_like(self._make_head(num_classes), self)
        if self.distilled:
            self.head_dist = placed_like(self._make_head(num_classes), self)

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Train with the distillation head: in training mode ``forward`` then returns ``(logits, dist_logits)``."""
        self.distilled_training = enable

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):  # a tensor, or (class, distillation) logits
        # (no annotation: TorchScript infers a tensor, the tuple branch being Python-only)
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        if pre_logits:
            return x
        if not self.distilled:
            return self.head(x)
        logits, dist_logits = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, dist_logits
        return (logits + dist_logits) / 2

    def fuse(self) -> "Levit":
        """Fold every BatchNorm into its linear/conv (eval mode, in place) for faster inference; returns ``self``.
        Outputs equal the unfused model's in eval mode up to float rounding. The result is for inference only."""
        return fuse_batchnorms(self)


# --- checkpoint conversion ----------------------------------------------------------------------------------------

def _official_block_targets(model: Levit) -> List[str]:
    """Our module prefix for each entry of the official flat ``blocks`` list, in order."""
    targets = []
    for index, stage in enumerate(model.stages):
        if isinstance(stage.downsample, LevitDownsample):
            targets += [f"stages.{index}.downsample.attn_downsample", f"stages.{index}.downsample.mlp"]
        for block in range(len(stage.blocks)):
            targets += [f"stages.{index}.blocks.{block}.attn", f"stages.{index}.blocks.{block}.mlp"]
    return targets


_OFFICIAL_PARTS = [  # (official suffix after blocks.N., ours after the target prefix)
    (r"^m\.qkv\.c\.", "qkv.linear."), (r"^m\.qkv\.bn\.", "qkv.bn."),
    (r"^m\.proj\.1\.c\.", "proj.ln.linear."), (r"^m\.proj\.1\.bn\.", "proj.ln.bn."),
    (r"^m\.attention_biases$", "attention_biases"),
    (r"^m\.0\.c\.", "ln1.linear."), (r"^m\.0\.bn\.", "ln1.bn."),
    (r"^m\.2\.c\.", "ln2.linear."), (r"^m\.2\.bn\.", "ln2.bn."),
    (r"^kv\.c\.", "kv.linear."), (r"^kv\.bn\.", "kv.bn."),
    (r"^q\.1\.c\.", "q.ln.linear."), (r"^q\.1\.bn\.", "q.ln.bn."),
    (r"^proj\.1\.c\.", "proj.ln.linear."), (r"^proj\.1\.bn\.", "proj.ln.bn."),
    (r"^attention_biases$", "attention_biases"),
]


def _from_official(state_dict: Dict[str, torch.Tensor], model: Levit) -> Dict[str, torch.Tensor]:
    """facebookresearch/LeViT: ``patch_embed.{0,2,4,6}.{c,bn}``, a flat ``blocks`` list (attention and MLP residuals,
    then ``AttentionSubsample`` and its MLP between stages), ``head``/``head_dist`` as ``{bn, l}``."""
    targets = _official_block_targets(model)
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attention_bias_idxs"):
            continue
        match = re.match(r"^patch_embed\.(\d+)\.(c|bn)\.(.+)$", key)
        if match:
            part = "linear" if match.group(2) == "c" else "bn"
            out[f"stem.conv{int(match.group(1)) // 2 + 1}.{part}.{match.group(3)}"] = value
            continue
        match = re.match(r"^(head|head_dist)\.(bn|l)\.(.+)$", key)
        if match:
            out[f"{match.group(1)}.{'linear' if match.group(2) == 'l' else 'bn'}.{match.group(3)}"] = value
            continue
        match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if not match:
            out[key] = value
            continue
        index, rest = int(match.group(1)), match.group(2)
        if index >= len(targets):
            raise ValueError(f"official LeViT checkpoint has block {index}, this model has {len(targets)} "
                             "(a different architecture)")
        for pattern, replacement in _OFFICIAL_PARTS:
            if re.match(pattern, rest):
                out[f"{targets[index]}.{re.sub(pattern, replacement, rest)}"] = value
                break
        else:
            out[key] = value  # left unmapped: the strict load names it
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: Levit) -> Dict[str, torch.Tensor]:
    """Convert timm ``levit_*`` or official LeViT state dicts to this layout (ours passes through).

    Index buffers are dropped; bias tables trained for another grid are resized to this model's ``img_size`` grid.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    if any(key.startswith("patch_embed.") for key in state_dict):
        state_dict = _from_official(state_dict, model)
    return adapt_bias_tables(state_dict, model)


# --- registration -------------------------------------------------------------------------------------------------

def _create_levit(variant: str, pretrained: bool = False, **kwargs: Any) -> Levit:
    kwargs.setdefault("out_indices", (0, 1, 2))
    return build_hierarchical(Levit, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.linear",
        "classifier": ("head.linear", "head_dist.linear"),
        "license": "apache-2.0",
        "origin_url": "https://github.com/facebookresearch/LeViT",
        "paper_ids": "arXiv:2104.01136",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    f"vh_levit_{name}.fb_dist_in1k": _cfg(hf_hub_id=f"timm/levit_{name}.fb_dist_in1k")
    for name in ("128s", "128", "192", "256", "384")
})

_ARCHS = {
    "128s": dict(embed_dim=(128, 256, 384), key_dim=16, num_heads=(4, 6, 8), depth=(2, 3, 4)),
    "128": dict(embed_dim=(128, 256, 384), key_dim=16, num_heads=(4, 8, 12), depth=(4, 4, 4)),
    "192": dict(embed_dim=(192, 288, 384), key_dim=32, num_heads=(3, 5, 6), depth=(4, 4, 4)),
    "256": dict(embed_dim=(256, 384, 512), key_dim=32, num_heads=(4, 6, 8), depth=(4, 4, 4)),
    "384": dict(embed_dim=(384, 512, 768), key_dim=32, num_heads=(6, 9, 12), depth=(4, 4, 4)),
}


@register_model
def vh_levit_128s(pretrained: bool = False, **kwargs: Any) -> Levit:
    """LeViT-128S: 7.8M params."""
    return _create_levit("vh_levit_128s", pretrained, **dict(_ARCHS["128s"], **kwargs))


@register_model
def vh_levit_128(pretrained: bool = False, **kwargs: Any) -> Levit:
    """LeViT-128: 9.2M params."""
    return _create_levit("vh_levit_128", pretrained, **dict(_ARCHS["128"], **kwargs))


@register_model
def vh_levit_192(pretrained: bool = False, **kwargs: Any) -> Levit:
    """LeViT-192: 11.0M params."""
    return _create_levit("vh_levit_192", pretrained, **dict(_ARCHS["192"], **kwargs))


@register_model
def vh_levit_256(pretrained: bool = False, **kwargs: Any) -> Levit:
    """LeViT-256: 18.9M params."""
    return _create_levit("vh_levit_256", pretrained, **dict(_ARCHS["256"], **kwargs))


@register_model
def vh_levit_384(pretrained: bool = False, **kwargs: Any) -> Levit:
    """LeViT-384: 39.1M params."""
    return _create_levit("vh_levit_384", pretrained, **dict(_ARCHS["384"], **kwargs))
