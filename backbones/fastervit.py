"""FasterViT on the shared kernel layer, equal to the official implementation with its weights, at any input size.

Paper: "FasterViT: Fast Vision Transformers with Hierarchical Attention" (Hatamizadeh et al., ICLR 2024,
arXiv:2306.06189). Two convolutional stages, then stages of hierarchical attention (HAT) blocks on 7x7 windows:

* a tokenizer pools each window into ``ct_size x ct_size`` carrier tokens;
* in every HAT block the carriers of the whole map first attend to each other (one window over the carrier grid,
  :func:`vithub.kernels.window_attention`), then each window attends over its tokens plus its own carriers, carriers
  included as queries (:func:`vithub.kernels.carrier_window_attention`, zero bias for any pair with a carrier;
  while exporting to ONNX the stage holds its map as per-window sequences, the official layout, and each window
  attends through :func:`vithub.kernels.table_bias_attention`: see :mod:`vithub.export_forms`);
* where ``do_propagation`` is set, the last block of a stage adds the carriers back onto their windows (nearest
  upsampling);
* position information comes from SwinV2-style continuous MLPs: a log-spaced relative-coordinate MLP gives the
  attention bias (``16 * sigmoid``), and a second MLP gives absolute embeddings added to the window tokens and to the
  carrier grid.

Constructor arguments are the official ones, under the official names (``dim``, ``in_dim``, ``depths``,
``window_size``, ``ct_size``, ``mlp_ratio``, ``num_heads``, ``resolution``, ``drop_path_rate``, ``hat``,
``layer_scale``, ``layer_scale_conv``, ``do_propagation``, ...), so an official config builds the same architecture.
Module and parameter names also follow the official code except that ``levels.{i}`` are ``stages.{i}`` with the
downsampling at the start of stages 1-3 (so stage outputs are the maps detection necks want), the classifier is
``head.fc``, and the derived buffers are not stored; ``checkpoint_filter_fn`` converts official checkpoints.

Any input size: each attention stage pads its map to a window multiple (zeros, bottom/right), as the official
any-resolution variant does, and crops after its last block; carrier grids, pooling windows and position tables are
derived from the padded map at run time. At the size the official model was built for, outputs are the official ones.
Where the official code only handles square grids, this one is general: a non-square carrier grid gets its own
rectangular position embedding and bias instead of the official any-resolution variant's square-only handling.
``resolution`` only decides which attention stages have carrier-token modules (those whose map at that resolution
has more than one window, as in the official code); a stage with a single window at run time attends locally, as
the official code does. Stochastic depth drops per image (the official code drops per window).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, Mlp, calculate_drop_path_rates
from timm.models import generate_default_cfgs, register_model, register_notrace_module

from vithub.kernels import (
    built_as_constants,
    carrier_window_attention,
    constant_tensors,
    pair,
    window_attention,
)

from ._common import (
    GELU,
    MapLayout,
    StageHooks,
    add_residual_,
    build_hierarchical,
    init_linear,
    stage_group_matcher,
)

__all__ = [
    "FasterViT",
    "FasterViTStage",
    "HATBlock",
    "ConvBlock",
    "TokenInitializer",
    "ContinuousPositionBias",
    "GridPositionEmbedding",
    "checkpoint_filter_fn",
]

Size = Tuple[int, int]
_CPB_HIDDEN = 512  # hidden width of every continuous position MLP in the official code


def _build_coordinates(kind: str, size: Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    axes: List[torch.Tensor] = []
    for length in size:
        if kind == "log_relative":
            # The official table is indexed by query minus key; the ops index by key minus query, so it is negated.
            offsets = -torch.arange(-(length - 1), length, device=device, dtype=torch.float32)
            offsets = offsets / max(length - 1, 1) * 8
            axes.append(torch.sign(offsets) * torch.log2(offsets.abs() + 1.0) / 3.0)  # 3 = log2(8)
        else:
            work = torch.promote_types(dtype, torch.float32)
            axes.append((torch.arange(length, device=device, dtype=work) - length // 2) / max(length // 2, 1))
    return torch.stack(torch.meshgrid([axes[0], axes[1]], indexing="ij"), dim=-1).to(dtype)


_cached_coordinates = functools.lru_cache(maxsize=128)(built_as_constants(_build_coordinates))


def _coordinates(kind: str, size: Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(h, w, 2)`` MLP inputs: ``"log_relative"`` offsets of a ``size`` window (``2h-1 x 2w-1`` of them) or
    ``"centred"`` positions of a ``size`` grid. Cached per shape in eager mode; traced as plain ops under compile."""
    if torch.jit.is_scripting():
        return _build_coordinates(kind, size, device, dtype)
    if torch.compiler.is_compiling():
        return _build_coordinates(kind, size, device, dtype)
    return _cached_coordinates(kind, size, device, dtype)


def _eval_cached(module: nn.Module, size: Size, compute: Callable[[Size], torch.Tensor]) -> torch.Tensor:
    """``compute(size)``, kept on ``module`` for the next call while nothing can change it: eval mode, no gradient
    wanted for the MLP, not tracing. Keyed on the size, device, dtype and the version of every MLP parameter, so
    loading weights or any in-place update recomputes it. The official code evaluates these MLPs on every forward;
    at batch 1 they are about 5% of FasterViT-0's eval time on CPU."""
    params = tuple(module.parameters())
    # is_compiling() also holds while torch.export (and so an ONNX export) traces: nothing traced is kept.
    if (module.training or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and any(param.requires_grad for param in params))):
        return compute(size)
    key = (size, params[0].device, params[0].dtype, tuple(param._version for param in params))
    cache = module.__dict__.setdefault("_eval_cache", {})
    value = cache.get(key)
    if value is None:
        cache.clear()  # one size at a time: a stale version is never looked up again
        with constant_tensors():  # normal tensors even under inference_mode: training may read them later
            value = cache[key] = compute(size)
    return value


def token_matrix(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the 2-D token matrix ``(tokens, channels)``, for a token-wise layer (a linear, an MLP): each linear
    is then one matmul with its bias fused (``addmm``; one Gemm in an ONNX export), where a 4-D or 5-D input takes a
    matmul and a separate bias add (and a 3-D or higher one exports as MatMul plus Add). Same values. The layer's
    output goes back with :func:`shaped_like`: ``shaped_like(layer(token_matrix(x)), x)`` (spelled out, since a
    scripted model cannot pass a module to a function)."""
    return x.reshape(-1, x.shape[-1])


def shaped_like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The token matrix ``out`` with ``x``'s leading dims (its own channel count)."""
    return out.unflatten(0, x.shape[:-1])


def tokenwise(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``layer`` on ``x``'s token matrix, back in ``x``'s shape (for code that is never scripted: the export forms)."""
    return shaped_like(layer(token_matrix(x)), x)


class ContinuousPositionBias(nn.Module):
    """SwinV2's log-spaced continuous relative position bias: an MLP from ``(dy, dx)`` to one bias per head.

    ``forward(window)`` returns the ``(heads, 2wh-1, 2ww-1)`` table the kernel ops take (key minus query). Offsets are
    normalised by ``window - 1`` per axis, scaled to [-8, 8], log-spaced, and the MLP output becomes
    ``16 * sigmoid``, as in the official code.
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.cpb_mlp = nn.Sequential(nn.Linear(2, _CPB_HIDDEN, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(_CPB_HIDDEN, num_heads, bias=False))

    def forward(self, window: Size) -> torch.Tensor:
        if torch.jit.is_scripting():  # the eval cache is Python state: a scripted model computes it each call
            return self._compute(window)
        return _eval_cached(self, tuple(window), self._compute)

    def _compute(self, window: Size) -> torch.Tensor:
        weight = self.cpb_mlp[0].weight
        coords = _coordinates("log_relative", window, weight.device, weight.dtype)
        return 16 * torch.sigmoid(self.cpb_mlp(coords).permute(2, 0, 1))


class GridPositionEmbedding(nn.Module):
    """Absolute position embedding of a ``h x w`` grid from an MLP of the centred, normalised coordinates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cpb_mlp = nn.Sequential(nn.Linear(2, _CPB_HIDDEN, bias=True), nn.ReLU(),
                                     nn.Linear(_CPB_HIDDEN, dim, bias=False))

    def forward(self, grid: Size) -> torch.Tensor:
        """``(h, w, dim)`` embedding for a grid of ``grid = (h, w)`` tokens."""
        if torch.jit.is_scripting():
            return self._compute(grid)
        return _eval_cached(self, tuple(grid), self._compute)

    def _compute(self, grid: Size) -> torch.Tensor:
        weight = self.cpb_mlp[0].weight
        return self.cpb_mlp(_coordinates("centred", grid, weight.device, weight.dtype))


class WindowAttention(nn.Module):
    """Multi-head attention in windows of an NHWC map (optionally with per-window carriers) with a continuous bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the stage width ({dim})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_emb_funct = ContinuousPositionBias(num_heads)

    def _qkv(self, x: torch.Tensor) -> List[torch.Tensor]:
        qkv = shaped_like(self.qkv(token_matrix(x)), x)
        return qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(-2)
        return self.proj_drop(shaped_like(self.proj(token_matrix(x)), x))

    def forward(self, x: torch.Tensor, window: Size) -> torch.Tensor:
        """``x``: ``(B, H, W, C)`` with ``H``, ``W`` multiples of ``window``."""
        q, k, v = self._qkv(x)
        rpb = self.pos_emb_funct(window).to(q.dtype)
        return self._out(window_attention(q, k, v, window, rpb=rpb, scale=self.scale))

    def forward_with_carriers(self, tokens: torch.Tensor, map_size: Size, carrier_shape: Tuple[int, int, int],
                              window: Size) -> torch.Tensor:
        """``tokens``: ``(B, H*W + nh*nw*E, C)``, the map's tokens in raster order then the carriers of each window
        (``carrier_shape = (nh, nw, E)``); returns the attended tokens in the same layout.

        One token matrix keeps the projections to one matmul each, as in the official code.
        """
        batch, _, channels = tokens.shape
        height, width = map_size
        qkv = shaped_like(self.qkv(token_matrix(tokens)), tokens)
        map_tokens = height * width
        q, k, v = qkv[:, :map_tokens].view(batch, height, width, 3, self.num_heads, self.head_dim).unbind(3)
        carrier_q, carrier_k, carrier_v = qkv[:, map_tokens:].view(
            batch, carrier_shape[0], carrier_shape[1], carrier_shape[2], 3, self.num_heads, self.head_dim).unbind(4)
        rpb = self.pos_emb_funct(window).to(q.dtype)
        out, carrier_out = carrier_window_attention(q, k, v, carrier_q, carrier_k, carrier_v, window, rpb=rpb,
                                                    scale=self.scale)
        out = torch.cat([out.reshape(batch, map_tokens, channels), carrier_out.reshape(batch, -1, channels)], dim=1)
        return self.proj_drop(shaped_like(self.proj(token_matrix(out)), out))


def _layer_scale(value: Optional[float], dim: int) -> Optional[nn.Parameter]:
    return nn.Parameter(value * torch.ones(dim)) if isinstance(value, (int, float)) else None


def _scaled(gamma: Optional[nn.Parameter], x: torch.Tensor) -> torch.Tensor:
    return x if gamma is None else gamma * x


class ConvBlock(nn.Module):
    """Residual conv block of the first two stages: conv3x3-BN-GELU-conv3x3-BN (NCHW)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: Optional[float] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = GELU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = _layer_scale(layer_scale, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return add_residual_(self.drop_path(y), x)


def merge_windows(windows: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, nh, nw, size*size, C)`` per-window tokens (raster order inside each window) to the ``(B, nh*size,
    nw*size, C)`` map: the carrier grid from per-window carriers, or the map from its windows."""
    batch, rows, cols, _, channels = windows.shape
    grid = windows.view(batch, rows, cols, size, size, channels).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, rows * size, cols * size, channels)


def split_windows(grid: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`merge_windows`."""
    batch, height, width, channels = grid.shape
    rows, cols = height // size, width // size
    windows = grid.view(batch, rows, size, cols, size, channels).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(batch, rows, cols, size * size, channels)


class HATBlock(nn.Module):
    """Hierarchical attention block over an NHWC map (a window multiple) and, when given, its carrier tokens."""

    __constants__ = ["hierarchical"]  # TorchScript compiles the carrier path only for blocks that have its modules

    def __init__(self, dim: int, num_heads: int, window_size: int, ct_size: int = 1, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale: Optional[float] = None, hierarchical: bool = False, last: bool = False,
                 do_propagation: bool = False) -> None:
        super().__init__()
        self.window_size = window_size
        self.ct_size = ct_size
        # One draw per image; carriers travel in the same token matrix as their map, so they share it.
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.pos_embed = GridPositionEmbedding(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden_features=hidden, act_layer=nn.GELU, drop=drop)
        self.gamma3 = _layer_scale(layer_scale, dim)
        self.gamma4 = _layer_scale(layer_scale, dim)
        self.hierarchical = hierarchical
        if hierarchical:
            self.hat_norm1 = nn.LayerNorm(dim)
            self.hat_norm2 = nn.LayerNorm(dim)
            self.hat_attn = WindowAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop)
            self.hat_mlp = Mlp(dim, hidden_features=hidden, act_layer=nn.GELU, drop=drop)
            self.hat_pos_embed = GridPositionEmbedding(dim)
            self.gamma1 = _layer_scale(layer_scale, dim)
            self.gamma2 = _layer_scale(layer_scale, dim)
        self.last = last
        self.do_propagation = do_propagation

    def forward(self, x: torch.Tensor, carriers: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x``: ``(B, H, W, C)``; ``carriers``: ``(B, H/w, W/w, ct*ct, C)`` or None (local attention only)."""
        w = self.window_size
        window = (w, w)
        batch, height, width, channels = x.shape
        rows, cols = height // w, width // w
        x = x + self.pos_embed(window).repeat(rows, cols, 1)
        if carriers is None:
            x = x + self.drop_path(_scaled(self.gamma3, self.attn(self.norm1(x), window)))
            normed = self.norm2(x)
            return x + self.drop_path(_scaled(self.gamma4, shaped_like(self.mlp(token_matrix(normed)), normed))), None
        if not self.hierarchical:
            raise RuntimeError("carriers were given to a HAT block built without carrier-token modules")

        carriers = self._carrier_attention(carriers)
        carrier_shape = (carriers.shape[1], carriers.shape[2], carriers.shape[3])

        # Each window over its tokens plus its carriers. Map tokens and carriers share every token-wise layer, so
        # they travel as one token matrix: map tokens in raster order, then the carriers window by window.
        tokens = torch.cat([x.reshape(batch, height * width, channels), carriers.reshape(batch, -1, channels)], dim=1)
        attended = self.attn.forward_with_carriers(self.norm1(tokens), (height, width), carrier_shape, window)
        tokens = tokens + self.drop_path(_scaled(self.gamma3, attended))
        normed = self.norm2(tokens)
        tokens = tokens + self.drop_path(_scaled(self.gamma4, shaped_like(self.mlp(token_matrix(normed)), normed)))
        x = tokens[:, :height * width].reshape(batch, height, width, channels)
        carriers = tokens[:, height * width:].reshape(batch, carrier_shape[0], carrier_shape[1], carrier_shape[2],
                                                      channels)
        if self.last and self.do_propagation:
            upsampled = self._propagated(carriers).permute(0, 1, 3, 2, 4, 5)
            x = x + _scaled(self.gamma1, upsampled.reshape(x.shape))
        return x, carriers

    def _carrier_attention(self, carriers: torch.Tensor) -> torch.Tensor:
        """Global attention among all carriers: one window spanning the carrier grid."""
        grid = merge_windows(carriers, self.ct_size)
        grid_size = (grid.shape[1], grid.shape[2])
        grid = grid + self.hat_pos_embed(grid_size)
        grid = grid + self.drop_path(_scaled(self.gamma1, self.hat_attn(self.hat_norm1(grid), grid_size)))
        normed = self.hat_norm2(grid)
        grid = grid + self.drop_path(_scaled(self.gamma2, shaped_like(self.hat_mlp(token_matrix(normed)), normed)))
        return split_windows(grid, self.ct_size)

    def _propagated(self, carriers: torch.Tensor) -> torch.Tensor:
        """Each window's carriers upsampled (nearest) to the window: ``(B, H/w, W/w, w, w, C)``."""
        batch, rows, cols, _, channels = carriers.shape
        ct, w = self.ct_size, self.window_size
        per_window = carriers.reshape(-1, ct, ct, channels).permute(0, 3, 1, 2)
        upsampled = F.interpolate(per_window.float(), size=(w, w), mode="nearest").to(carriers.dtype)
        return upsampled.view(batch, rows, cols, channels, w, w).permute(0, 1, 2, 4, 5, 3)


class TokenInitializer(nn.Module):
    """Carrier tokens of a padded NCHW map: depthwise 3x3 conv, then average pooling to ``ct_size^2`` per window.

    The pooling window and stride follow the official rule for the map at hand, so they change with the input size.
    """

    def __init__(self, dim: int, ct_size: int = 1) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ct_size = ct_size

    def forward(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """``x``: ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``window_size``; returns ``(B, H/w, W/w, ct^2, C)``."""
        kernel: List[int] = []
        stride: List[int] = []
        for size in x.shape[-2:]:
            outputs = int(self.ct_size * size / window_size)
            step = int(size / outputs)
            kernel.append(size - (outputs - 1) * step)
            stride.append(step)
        pooled = F.avg_pool2d(self.pos_embed(x), kernel_size=kernel, stride=stride)
        return split_windows(pooled.permute(0, 2, 3, 1), self.ct_size)


class Downsample(nn.Module):
    """LayerNorm2d, then a stride-2 3x3 conv doubling the width (no bias)."""

    def __init__(self, dim: int, out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.reduction = nn.Sequential(nn.Conv2d(dim, out_dim or 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 conv-BN-ReLU layers: image to the stride-4 map (NCHW)."""

    def __init__(self, in_chans: int = 3, in_dim: int = 64, dim: int = 96) -> None:
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


@register_notrace_module
class FasterViTStage(nn.Module):
    """Optional downsampling, then conv blocks or HAT blocks (NCHW in and out)."""

    __constants__ = ["conv"]

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, ct_size: int, conv: bool,
                 downsample: bool, mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, drop_path: Sequence[float] = (), layer_scale: Optional[float] = None,
                 layer_scale_conv: Optional[float] = None, hierarchical: bool = False,
                 do_propagation: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.window_size = window_size
        self.grad_checkpointing = False
        self.downsample = Downsample(dim // 2, dim) if downsample else nn.Identity()
        drop_path = list(drop_path) or [0.0] * depth
        if conv:
            self.blocks = nn.ModuleList([ConvBlock(dim, drop_path[i], layer_scale_conv) for i in range(depth)])
        else:
            self.blocks = nn.ModuleList([
                HATBlock(dim, num_heads, window_size, ct_size, mlp_ratio, qkv_bias, qk_scale, drop, drop_path[i],
                         layer_scale, hierarchical, last=i == depth - 1, do_propagation=do_propagation)
                for i in range(depth)
            ])
        self.global_tokenizer = TokenInitializer(dim, ct_size) if hierarchical and not conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.conv:  # a constant (__constants__), so TorchScript compiles only the branch of this stage's blocks
            for block in self.blocks:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            return x
        height, width = x.shape[-2:]
        w = self.window_size
        x = F.pad(x, (0, (-width) % w, 0, (-height) % w))
        rows, cols = x.shape[-2] // w, x.shape[-1] // w
        # As in the official code, carriers exist only where the (padded) map holds more than one window.
        carriers: Optional[torch.Tensor] = None
        if self.global_tokenizer is not None and rows * cols > 1:
            carriers = self.global_tokenizer(x, w)
        x = self._attention_blocks(x.permute(0, 2, 3, 1), carriers)
        return x[:, :height, :width].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def _attention_blocks(self, x: torch.Tensor, carriers: Optional[torch.Tensor]) -> torch.Tensor:
        """The HAT blocks on the padded NHWC map (and its carriers, when the stage has them). An ONNX export holds
        the map as per-window sequences across the blocks instead, as the official code does:
        :mod:`vithub.export_forms`."""
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, carriers = torch.utils.checkpoint.checkpoint(block, x, carriers, use_reentrant=False)
            else:
                x, carriers = block(x, carriers)
        return x


def _as_list(value: Union[int, Sequence[int]], count: int, name: str) -> List[int]:
    values = [value] * count if isinstance(value, int) else list(value)
    if len(values) != count or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or one positive int per stage ({count}), got {value!r}")
    return values


class FasterViT(StageHooks, nn.Module):
    """FasterViT (official constructor arguments and names; any input size; ``forward_features`` is NCHW)."""

    map_layout: ClassVar[MapLayout] = "NCHW"  # layout of the stage maps and of forward_features


    def __init__(
        self,
        dim: int = 64,
        in_dim: int = 64,
        depths: Sequence[int] = (2, 3, 6, 5),
        window_size: Union[int, Sequence[int]] = (7, 7, 7, 7),
        ct_size: int = 2,
        mlp_ratio: float = 4.0,
        num_heads: Sequence[int] = (2, 4, 8, 16),
        resolution: Union[int, Sequence[int]] = 224,
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        num_classes: int = 1000,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        layer_scale: Optional[float] = None,
        layer_scale_conv: Optional[float] = None,
        layer_norm_last: bool = False,
        hat: Optional[Sequence[bool]] = (False, False, True, False),
        do_propagation: bool = False,
        global_pool: str = "avg",
    ) -> None:
        """Args as in the official ``FasterViT``; ``resolution`` (int or ``(h, w)``) decides which attention stages
        get carrier tokens (see the module docstring); ``attn_drop_rate`` must be 0 (the fused ops have no dropout)."""
        super().__init__()
        if attn_drop_rate:
            raise ValueError(f"attn_drop_rate must be 0 (the fused attention ops have no dropout), "
                             f"got {attn_drop_rate}")
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"depths and num_heads need one entry per stage, got {len(depths)} and {len(num_heads)}")
        windows = _as_list(window_size, num_stages, "window_size")
        if not isinstance(ct_size, int) or ct_size < 1:
            raise ValueError(f"ct_size must be a positive int, got {ct_size!r}")
        hat = [True] * num_stages if hat is None else list(hat)
        if len(hat) != num_stages:
            raise ValueError(f"hat needs one flag per stage ({num_stages}), got {hat!r}")
        res_h, res_w = pair(resolution, "resolution")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = int(dim * 2 ** (num_stages - 1))
        self.patch_embed = PatchEmbed(in_chans=in_chans, in_dim=in_dim, dim=dim)
        rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        for index in range(num_stages):
            stage_dim = int(dim * 2 ** index)
            conv = index < 2
            w = windows[index]
            stage_res = (int(2 ** (-2 - index) * res_h), int(2 ** (-2 - index) * res_w))
            windows_at_resolution = math.ceil(stage_res[0] / w) * math.ceil(stage_res[1] / w)
            stages.append(FasterViTStage(
                stage_dim, depths[index], num_heads[index], w, ct_size, conv=conv, downsample=index > 0,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                drop_path=rates[index], layer_scale=layer_scale,
                layer_scale_conv=layer_scale_conv, hierarchical=hat[index] and not conv and windows_at_resolution > 1,
                do_propagation=do_propagation,
            ))
            self.feature_info.append(dict(num_chs=stage_dim, reduction=4 * 2 ** index, module=f"stages.{index}"))
        self.stages = nn.Sequential(*stages)
        self.norm = LayerNorm2d(self.num_features) if layer_norm_last else nn.BatchNorm2d(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, input_fmt="NCHW")
        self.apply(init_linear)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image to the stride-4 map (NCHW, channels-last in memory)."""
        # Channels-last memory: oneDNN's NHWC convolutions are the faster ones on CPU (the conv stages' 3x3 convs
        # dominate FasterViT-0), and the attention stages' NHWC views of the map become free.
        return self.patch_embed(x.contiguous(memory_format=torch.channels_last))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer-wise LR decay groups: ``patch_embed``, then per stage its downsample/global_tokenizer and each block, ``norm`` last."""
        return stage_group_matcher(coarse, stem="patch_embed", stages="stages", stage_preamble=("downsample", "global_tokenizer"))

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The continuous position MLPs are not weight-decayed (as timm does for SwinV2's ``cpb_mlp``)."""
        return {name for name, _ in self.named_parameters() if ".cpb_mlp." in name}


# --- checkpoint conversion ----------------------------------------------------------------------------------------

_DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "relative_bias")


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: FasterViT) -> Dict[str, torch.Tensor]:
    """Convert an official FasterViT state dict (or checkpoint) to this layout; our own passes through.

    * ``levels.{i}`` becomes ``stages.{i}``, and ``levels.{i}.downsample`` moves to ``stages.{i+1}.downsample``;
    * the classifier ``head`` becomes ``head.fc``;
    * the position buffers derived at construction (``relative_coords_table``, ``relative_position_index``,
      ``relative_bias``) are dropped (computed per input size here), and so is the tokenizer's second name for its
      conv (``global_tokenizer.to_global_feature.pos``, the same tensor as ``global_tokenizer.pos_embed``).
    """
    for key in ("state_dict", "model", "state_dict_ema"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.rsplit(".", 1)[-1] in _DERIVED_BUFFERS or ".to_global_feature.pos." in key:
            continue
        key = re.sub(r"^levels\.(\d+)\.downsample", lambda m: f"stages.{int(m.group(1)) + 1}.downsample", key)
        key = re.sub(r"^levels\.", "stages.", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out


# --- registration -------------------------------------------------------------------------------------------------

def _create_fastervit(variant: str, pretrained: bool = False, **kwargs: Any) -> FasterViT:
    return build_hierarchical(FasterViT, variant, pretrained, checkpoint_filter_fn, **kwargs)


_LICENSE = "NVIDIA Source Code License-NC (non-commercial use only)"


def _cfg(filename: str, crop_pct: float = 1.0, **kwargs: Any) -> Dict[str, Any]:
    # Weights: the official NVIDIA checkpoints on the Hugging Face Hub, converted on load. Non-commercial licence.
    return {
        "hf_hub_id": "ahatamiz/FasterViT",
        "hf_hub_filename": filename,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv_down.0",
        "classifier": "head.fc",
        "license": _LICENSE,
        "paper_ids": "arXiv:2306.06189",
        "origin_url": "https://github.com/NVlabs/FasterViT",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vh_fastervit_0_224.in1k": _cfg("fastervit_0_224_1k.pth.tar", crop_pct=0.875),
    "vh_fastervit_1_224.in1k": _cfg("fastervit_1_224_1k.pth.tar"),
    "vh_fastervit_2_224.in1k": _cfg("fastervit_2_224_1k.pth.tar"),
    "vh_fastervit_3_224.in1k": _cfg("fastervit_3_224_1k.pth.tar"),
    "vh_fastervit_4_224.in1k": _cfg("fastervit_4_224_1k.pth.tar"),
    "vh_fastervit_5_224.in1k": _cfg("fastervit_5_224_1k.pth.tar"),
    "vh_fastervit_6_224.in1k": _cfg("fastervit_6_224_1k.pth.tar"),
})

# The official variants (faster_vit_{0..6}_224); any of these can be overridden by keyword.
_VARIANTS: Dict[int, Dict[str, Any]] = {
    0: dict(dim=64, in_dim=64, depths=(2, 3, 6, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    1: dict(dim=80, in_dim=32, depths=(1, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    2: dict(dim=96, in_dim=64, depths=(3, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    3: dict(dim=128, in_dim=64, depths=(3, 3, 12, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.3,
            layer_scale=1e-5, do_propagation=True),
    4: dict(dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3,
            layer_scale=1e-5, do_propagation=True),
    5: dict(dim=320, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3,
            layer_scale=1e-5, do_propagation=True),
    6: dict(dim=320, in_dim=64, depths=(3, 3, 16, 8), num_heads=(4, 8, 16, 32), drop_path_rate=0.5,
            layer_scale=1e-5, do_propagation=True),
}
_COMMON = dict(window_size=(7, 7, 7, 7), ct_size=2, mlp_ratio=4, resolution=224, hat=(False, False, True, False))


def _variant(index: int, pretrained: bool, kwargs: Dict[str, Any]) -> FasterViT:
    args = dict(_COMMON, **_VARIANTS[index])
    return _create_fastervit(f"vh_fastervit_{index}_224", pretrained, **dict(args, **kwargs))


@register_model
def vh_fastervit_0_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-0, 224 (31.4M params)."""
    return _variant(0, pretrained, kwargs)


@register_model
def vh_fastervit_1_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-1, 224 (53.4M params)."""
    return _variant(1, pretrained, kwargs)


@register_model
def vh_fastervit_2_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-2, 224 (75.9M params)."""
    return _variant(2, pretrained, kwargs)


@register_model
def vh_fastervit_3_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-3, 224 (159.5M params)."""
    return _variant(3, pretrained, kwargs)


@register_model
def vh_fastervit_4_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-4, 224 (424.6M params)."""
    return _variant(4, pretrained, kwargs)


@register_model
def vh_fastervit_5_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-5, 224 (975.5M params)."""
    return _variant(5, pretrained, kwargs)


@register_model
def vh_fastervit_6_224(pretrained: bool = False, **kwargs: Any) -> FasterViT:
    """FasterViT-6, 224 (1360M params)."""
    return _variant(6, pretrained, kwargs)
