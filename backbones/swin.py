"""Swin Transformer on the shared window-attention op, equal to timm's ``swin_*`` with the same weights.

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" (Liu et al., ICCV 2021,
arXiv:2103.14030). The module layout and names follow timm's ``SwinTransformer`` (patch embedding, ``layers.{i}``
stages with the patch merging at the start of stages 1-3, blocks with ``norm1``/``attn``/``norm2``/``mlp``), so timm
users find what they expect. One difference: each attention layer stores its relative position bias as
``attn.rpb`` of shape ``(heads, 2wh-1, 2ww-1)`` indexed by key minus query (the kernel layer's convention) instead of
timm's ``relative_position_bias_table`` indexed by query minus key; ``checkpoint_filter_fn`` converts timm and official
Swin checkpoints.

Attention runs only through :func:`vithub.kernels.window_attention`: the cyclic shift, window partition and Swin's
region mask are index arithmetic inside the op, with no roll or partition copies here. Maps that are not window
multiples are zero-padded at the bottom/right after ``norm1`` and cropped after attention, and the op rolls only the
unpadded region (``unpadded_size``), which is timm's order (roll, then pad), so any input size gives timm's outputs.
Window and shift per block follow timm's rule at the constructor's ``img_size`` (a stage whose map is no larger than
the window uses the map size as window and no shift, unless ``always_partition``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    Mlp,
    PatchEmbed,
    calculate_drop_path_rates,
    resize_rel_pos_bias_table,
    trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model, register_notrace_module

from vithub.kernels import pair, rpb_from_swin_table, window_attention

from ._common import (
    SequentialStage,
    MapLayout,
    StageHooks,
    build_hierarchical,
    init_linear,
    parameter_names,
    stage_group_matcher,
)

__all__ = ["Swin", "SwinBlock", "SwinStage", "WindowAttention2d", "PatchMerging", "checkpoint_filter_fn"]

IntOrPair = Union[int, Tuple[int, int]]


def window_and_shift(resolution: Tuple[int, int], window: Tuple[int, int], shift: Tuple[int, int],
                     always_partition: bool = False) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """timm's rule per axis: a map no larger than the window becomes one window with no shift."""
    if always_partition:
        return window, shift
    sizes = tuple(r if r <= w else w for r, w in zip(resolution, window))
    shifts = tuple(0 if r <= w else s for r, w, s in zip(resolution, sizes, shift))
    return sizes, shifts  # type: ignore[return-value]


def resize_table(rpb: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """A ``(heads, 2h-1, 2w-1)`` bias table for another window, by timm's Swin rule (``resize_rel_pos_bias_table``:
    BEiT's geometrically spaced source positions, interpolated), so a resized model still equals timm's. The rule is
    symmetric in each axis, so it gives the same on our key-minus-query table as on timm's query-minus-key one."""
    new_shape = (rpb.shape[0], 2 * window_size[0] - 1, 2 * window_size[1] - 1)
    return resize_rel_pos_bias_table(rpb, new_window_size=tuple(window_size), new_bias_shape=new_shape)


@register_notrace_module
class WindowAttention2d(nn.Module):
    """Multi-head (shifted) window attention over an NHWC map: fused qkv, the shared op, output projection.

    Maps that are not window multiples are padded (zeros, bottom/right) before the qkv projection and cropped after,
    as timm's Swin does.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Tuple[int, int], head_dim: Optional[int] = None,
                 qkv_bias: bool = True, proj_drop: float = 0.0) -> None:
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim}) unless head_dim is given")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.window_size = window_size
        attn_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * window_size[0] - 1, 2 * window_size[1] - 1))
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.rpb, std=0.02)

    def set_window_size(self, window_size: Tuple[int, int]) -> None:
        """Change the window; the bias table is resized as timm's Swin resizes its own (:func:`resize_table`)."""
        if window_size == self.window_size:
            return
        self.window_size = window_size
        with torch.no_grad():
            resized = resize_table(self.rpb.detach(), window_size)
        self.rpb = nn.Parameter(resized, requires_grad=self.rpb.requires_grad)

    def forward(self, x: torch.Tensor, shift_size: Tuple[int, int] = (0, 0)) -> torch.Tensor:
        batch, height, width, _ = x.shape
        wh, ww = self.window_size
        pad_h, pad_w = (-height) % wh, (-width) % ww
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        q, k, v = self.qkv(x).view(batch, padded_h, padded_w, 3, self.num_heads, self.head_dim).unbind(3)
        out = window_attention(q, k, v, self.window_size, shift_size, self.rpb.to(q.dtype), scale=self.scale,
                               unpadded_size=(height, width))
        out = out[:, :height, :width].reshape(batch, height, width, -1)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """Pre-norm block: x + DropPath(W-MSA/SW-MSA(norm1(x))), then x + DropPath(MLP(norm2(x))); NHWC."""

    def __init__(
        self,
        dim: int,
        input_resolution: Tuple[int, int],
        num_heads: int,
        head_dim: Optional[int] = None,
        window_size: Tuple[int, int] = (7, 7),
        shift_size: Tuple[int, int] = (0, 0),
        always_partition: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.target_window_size = window_size
        self.target_shift_size = shift_size
        self.always_partition = always_partition
        self.window_size, self.shift_size = window_and_shift(input_resolution, window_size, shift_size,
                                                             always_partition)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention2d(dim, num_heads, self.window_size, head_dim=head_dim, qkv_bias=qkv_bias,
                                      proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def set_input_size(self, feat_size: Tuple[int, int], window_size: Optional[Tuple[int, int]] = None,
                       always_partition: Optional[bool] = None) -> None:
        """Recompute window and shift for a new map size (and window); the rpb table is resized when needed."""
        self.input_resolution = feat_size
        if always_partition is not None:
            self.always_partition = always_partition
        if window_size is not None:
            shifted = any(self.target_shift_size)
            self.target_window_size = window_size
            self.target_shift_size = (window_size[0] // 2, window_size[1] // 2) if shifted else (0, 0)
        self.window_size, self.shift_size = window_and_shift(feat_size, self.target_window_size,
                                                             self.target_shift_size, self.always_partition)
        self.attn.set_window_size(self.window_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), self.shift_size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 patch merging (odd sizes zero-padded): concatenate the four neighbours, LayerNorm, linear to ``out_dim``."""

    def __init__(self, dim: int, out_dim: Optional[int] = None, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        height, width = x.shape[1], x.shape[2]
        # Channel order (h0w0, h1w0, h0w1, h1w1) as the official and timm weights expect.
        x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(SequentialStage):
    """Optional patch merging, then ``depth`` blocks alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        input_resolution: Tuple[int, int],
        depth: int,
        downsample: bool,
        num_heads: int,
        head_dim: Optional[int],
        window_size: Tuple[int, int],
        always_partition: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        drop_path: Sequence[float],
        norm_layer: Callable[..., nn.Module],
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_resolution = tuple((r + 1) // 2 for r in input_resolution) if downsample else input_resolution
        if downsample:
            self.downsample: nn.Module = PatchMerging(dim, out_dim, norm_layer=norm_layer)
        else:
            if dim != out_dim:
                raise ValueError(f"a stage without downsampling keeps its width: dim {dim} != out_dim {out_dim}")
            self.downsample = nn.Identity()
        shift = (window_size[0] // 2, window_size[1] // 2)
        self.blocks = nn.Sequential(*[
            SwinBlock(
                out_dim, self.output_resolution, num_heads, head_dim=head_dim, window_size=window_size,
                shift_size=(0, 0) if index % 2 == 0 else shift, always_partition=always_partition,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, drop_path=drop_path[index],
                norm_layer=norm_layer,
            )
            for index in range(depth)
        ])

    def set_input_size(self, feat_size: Tuple[int, int], window_size: Optional[Tuple[int, int]] = None,
                       always_partition: Optional[bool] = None) -> None:
        self.input_resolution = feat_size
        downsampled = not isinstance(self.downsample, nn.Identity)
        self.output_resolution = tuple((r + 1) // 2 for r in feat_size) if downsampled else feat_size
        for block in self.blocks:
            block.set_input_size(self.output_resolution, window_size, always_partition)


class Swin(StageHooks, nn.Module):
    """Swin Transformer (v1); constructor arguments as timm's ``SwinTransformer``.

    Any input size works (maps are padded to window multiples and to even sizes before merging, as timm does with
    ``strict_img_size=False``); ``img_size`` sets the per-stage window/shift rule and the default config.
    ``attn_drop_rate`` must be 0: the fused kernels do not drop attention probabilities.
    """

    map_layout: ClassVar[MapLayout] = "NHWC"  # layout of the stage maps and of forward_features


    def __init__(
        self,
        img_size: IntOrPair = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        head_dim: Optional[int] = None,
        window_size: Union[IntOrPair, Sequence[IntOrPair]] = 7,
        always_partition: bool = False,
        strict_img_size: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if attn_drop_rate:
            raise ValueError(f"attn_drop_rate must be 0 (the fused attention kernels have no dropout), got "
                             f"{attn_drop_rate}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths and num_heads need one entry per stage, got {len(depths)} and {len(num_heads)}")
        num_stages = len(depths)
        if isinstance(window_size, (list, tuple)) and len(window_size) == num_stages and num_stages != 2:
            windows = [pair(w, "window_size") for w in window_size]
        else:
            windows = [pair(window_size, "window_size")] * num_stages  # type: ignore[arg-type]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.embed_dim = embed_dim
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm_layer,
            strict_img_size=strict_img_size, output_fmt="NHWC", dynamic_img_pad=not strict_img_size,
        )
        grid = tuple(self.patch_embed.grid_size)
        drop_paths = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        in_dim, scale = dims[0], 1
        for index in range(num_stages):
            stages.append(SwinStage(
                in_dim, dims[index], tuple((g + scale - 1) // scale for g in grid), depths[index],
                downsample=index > 0, num_heads=num_heads[index], head_dim=head_dim, window_size=windows[index],
                always_partition=always_partition, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate, drop_path=drop_paths[index], norm_layer=norm_layer,
            ))
            in_dim = dims[index]
            if index > 0:
                scale *= 2
            self.feature_info.append(dict(num_chs=dims[index], reduction=patch_size * scale, module=f"layers.{index}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt=self.output_fmt)
        self.apply(init_linear)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image to the first NHWC map (patch embedding)."""
        return self.patch_embed(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # The shared hooks' body, through ``layers`` itself: TorchScript cannot call a module a property returns.
        return self.norm(self.layers(self.embed(x)))

    @property
    def stages(self):  # no annotation: TorchScript would compare it with the scripted Sequential's own type
        """The stages under the shared hooks' name; timm's Swin (and so every checkpoint) calls them ``layers``."""
        return self.layers

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer-wise LR decay groups: ``patch_embed``, then per stage its downsample and each block, ``norm`` last."""
        return stage_group_matcher(coarse, stem="patch_embed", stages="layers", stage_preamble=("downsample",))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Relative position bias tables (``rpb``) are not weight-decayed."""
        return parameter_names(self, "rpb")

    def set_input_size(self, img_size: Optional[IntOrPair] = None,
                       window_size: Optional[Union[IntOrPair, Sequence[IntOrPair]]] = None,
                       always_partition: Optional[bool] = None) -> None:
        """Re-derive every block's window and shift for a new ``img_size`` (and optionally a new window per stage).

        Bias tables whose window changes are resized by timm's Swin rule (:func:`resize_table`). Without ``window_size`` each stage keeps its
        configured window (timm 1.0.31+ instead scales windows with the grid by default).
        """
        if img_size is not None:
            self.patch_embed.set_input_size(img_size=img_size)
        grid = tuple(self.patch_embed.grid_size)
        if window_size is None:
            windows: List[Optional[Tuple[int, int]]] = [None] * len(self.layers)
        elif isinstance(window_size, (list, tuple)) and len(window_size) == len(self.layers) and len(self.layers) != 2:
            windows = [pair(w, "window_size") for w in window_size]
        else:
            windows = [pair(window_size, "window_size")] * len(self.layers)  # type: ignore[arg-type]
        for index, stage in enumerate(self.layers):
            scale = 2 ** max(index - 1, 0)
            stage.set_input_size(tuple((g + scale - 1) // scale for g in grid), windows[index], always_partition)


# --- checkpoint conversion ----------------------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: Dict[str, Any], model: Swin) -> Dict[str, torch.Tensor]:
    """Convert timm or official Swin state dicts to this layout (our own passes through).

    * ``relative_position_bias_table`` ((2w-1)^2, heads), query minus key, becomes ``rpb`` (heads, 2w-1, 2w-1), key
      minus query; tables of another window size are resized bicubically;
    * official checkpoints merge patches at the end of a stage: ``layers.{i}.downsample`` moves to ``layers.{i+1}``,
      and their classifier ``head`` becomes ``head.fc``;
    * the non-persistent ``relative_position_index`` and ``attn_mask`` buffers are dropped.
    """
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    official = "layers.0.downsample.reduction.weight" in state_dict
    own = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if official:
            key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
            key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        if key.endswith("attn.relative_position_bias_table"):
            key = key[: -len("relative_position_bias_table")] + "rpb"
            side = round(value.shape[0] ** 0.5)
            if side * side != value.shape[0] or side % 2 == 0:
                raise ValueError(f"state_dict: {key} table has {value.shape[0]} rows; expected (2w-1)^2 rows")
            value = rpb_from_swin_table(value, (side + 1) // 2)
        if key.endswith(".rpb") and key in own and value.shape != own[key].shape:
            height, width = own[key].shape[-2:]
            value = resize_table(value, ((height + 1) // 2, (width + 1) // 2))
        out[key] = value
    return out


# --- registration -------------------------------------------------------------------------------------------------

def _create_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> Swin:
    return build_hierarchical(Swin, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(hf_hub_id: str, **kwargs: Any) -> Dict[str, Any]:
    # Weights: timm's Hub copies of the official Microsoft checkpoints (MIT), converted on load.
    return {
        "hf_hub_id": hf_hub_id,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        "license": "mit",
        **kwargs,
    }


_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
default_cfgs = generate_default_cfgs({
    "vh_swin_tiny_patch4_window7_224.ms_in1k": _cfg("timm/swin_tiny_patch4_window7_224.ms_in1k"),
    "vh_swin_small_patch4_window7_224.ms_in1k": _cfg("timm/swin_small_patch4_window7_224.ms_in1k"),
    "vh_swin_base_patch4_window7_224.ms_in1k": _cfg("timm/swin_base_patch4_window7_224.ms_in1k"),
    "vh_swin_base_patch4_window12_384.ms_in1k": _cfg("timm/swin_base_patch4_window12_384.ms_in1k", **_384),
    "vh_swin_large_patch4_window7_224.ms_in22k_ft_in1k": _cfg("timm/swin_large_patch4_window7_224.ms_in22k_ft_in1k"),
    "vh_swin_large_patch4_window12_384.ms_in22k_ft_in1k": _cfg(
        "timm/swin_large_patch4_window12_384.ms_in22k_ft_in1k", **_384),
})


@register_model
def vh_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> Swin:
    """Swin-T, 224, window 7 (28.3M params)."""
    args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_swin("vh_swin_tiny_patch4_window7_224", pretrained, **dict(args, **kwargs))


@register_model
def vh_swin_small_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> Swin:
    """Swin-S, 224, window 7 (49.6M params)."""
    args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_swin("vh_swin_small_patch4_window7_224", pretrained, **dict(args, **kwargs))


@register_model
def vh_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> Swin:
    """Swin-B, 224, window 7 (87.8M params)."""
    args = dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_swin("vh_swin_base_patch4_window7_224", pretrained, **dict(args, **kwargs))


@register_model
def vh_swin_base_patch4_window12_384(pretrained: bool = False, **kwargs: Any) -> Swin:
    """Swin-B, 384, window 12 (87.9M params)."""
    args = dict(img_size=384, patch_size=4, window_size=12, embed_dim=128, depths=(2, 2, 18, 2),
                num_heads=(4, 8, 16, 32))
    return _create_swin("vh_swin_base_patch4_window12_384", pretrained, **dict(args, **kwargs))


@register_model
def vh_swin_large_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> Swin:
    """Swin-L, 224, window 7 (196.5M params)."""
    args = dict(patch_size=4, window_size=7, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
    return _create_swin("vh_swin_large_patch4_window7_224", pretrained, **dict(args, **kwargs))


@register_model
def vh_swin_large_patch4_window12_384(pretrained: bool = False, **kwargs: Any) -> Swin:
    """Swin-L, 384, window 12 (196.7M params)."""
    args = dict(img_size=384, patch_size=4, window_size=12, embed_dim=192, depths=(2, 2, 18, 2),
                num_heads=(6, 12, 24, 48))
    return _create_swin("vh_swin_large_patch4_window12_384", pretrained, **dict(args, **kwargs))
