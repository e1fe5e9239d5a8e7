"""The ONNX export forms of vithub's blocks, swapped in by :func:`export_forms` while :func:`vithub.export_onnx`
traces a model, as ``fuse()`` swaps modules: the same computation, laid out for ONNX Runtime instead of for eager
PyTorch on a CPU.

Eager vithub keeps maps channels-last and runs 1x1 convs as matmuls (oneDNN's fast paths); a graph has no memory
format, and ONNX Runtime plans its own layouts, folds a BatchNorm into a Conv but not into a MatMul, and removes a
permute that meets its inverse. So while exporting:

* ``PointwiseConv2d`` is a plain conv and vithub's ``GELU`` a plain GELU;
* EfficientViT-M's cascaded heads are concatenated as NCHW maps (each head's permutes cancel with the attention
  op's export form; channels-last left two Transpose nodes per head), and a windowed attention cuts the NCHW map
  and projects once after its windows are stitched (the projection is pointwise, so ONNX Runtime fuses the residual
  add into its conv and keeps its blocked layout for the convs after it);
* EfficientViT-B/L's q, k, v are split channel-major, so the permutes to and from heads-last meet and both go;
* a FasterViT attention stage with carriers holds its map as per-window sequences, each window's carriers then its
  tokens (the official layout), from its first block to its last: one concatenation and one split per block, where
  the eager form's token matrix exports as a carrier concatenation per q, k and v, a split of every projection's
  output and a window partition per block.

Each form is a subclass that only overrides how the forward is laid out (no parameter or buffer of its own), and
the tests hold every one equal to the eager form in float64. The attention ops themselves switch to standard
operators inside the kernel layer (the ``onnx`` backend), so a plain ``torch.onnx.export`` of a vh model works
too, with the eager layouts.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vithub.backbones._common import GELU, PointwiseConv2d
from vithub.backbones.efficientvit_mit import LiteMLA
from vithub.backbones.efficientvit_msra import CascadedGroupAttention, LocalWindowAttention
from vithub.backbones.fastervit import FasterViTStage, HATBlock, WindowAttention, _scaled, merge_windows, \
    split_windows, tokenwise
from vithub.kernels import relu_linear_attention, table_bias_attention, window_bias

EXPORT_FORMS: Dict[type, type] = {}


def _export_form_of(eager: type):
    """Register the decorated subclass as ``eager``'s export form."""

    def register(form: type) -> type:
        EXPORT_FORMS[eager] = form
        return form

    return register


@contextlib.contextmanager
def export_forms(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every module of ``model`` that has an export form runs it (its class is swapped; weights,
    buffers and hooks stay); the eager classes come back on exit, however it is left."""
    swapped = []
    try:
        for module in model.modules():
            form = EXPORT_FORMS.get(type(module))
            if form is not None:
                swapped.append((module, type(module)))
                module.__class__ = form
        yield model
    finally:
        for module, eager in swapped:
            module.__class__ = eager


@_export_form_of(PointwiseConv2d)
class _ConvExport(PointwiseConv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Conv2d.forward(self, x)


@_export_form_of(GELU)
class _GeluExport(GELU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.GELU.forward(self, x)


@_export_form_of(CascadedGroupAttention)
class _CascadedHeadsExport(CascadedGroupAttention):
    def _head_output(self, out: torch.Tensor, batch: int, height: int, width: int
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        feature = out.permute(0, 3, 4, 1, 2).view(batch, -1, height, width)
        return feature, feature

    def _concat_heads(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(outputs), dim=1)


@_export_form_of(LocalWindowAttention)
class _WindowsExport(LocalWindowAttention):
    def _windowed(self, x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
        batch, channels, height, width = x.shape
        pad_b, pad_r = (-height) % wh, (-width) % ww
        x = F.pad(x, (0, pad_r, 0, pad_b))
        rows, cols = (height + pad_b) // wh, (width + pad_r) // ww
        x = x.view(batch, channels, rows, wh, cols, ww).permute(0, 2, 4, 1, 3, 5)
        x = self.attn.forward_heads(x.reshape(batch * rows * cols, channels, wh, ww))
        mixed = x.shape[1]
        x = x.view(batch, rows, cols, mixed, wh, ww).permute(0, 3, 1, 4, 2, 5)
        return self.attn.proj(x.reshape(batch, mixed, rows * wh, cols * ww)[:, :, :height, :width])


@_export_form_of(LiteMLA)
class _LiteMlaExport(LiteMLA):
    def _attend(self, multi_scale: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        q, k, v = (part.permute(0, 3, 1, 2) for part in  # (B, tokens, heads, dim), split channel-major
                   multi_scale.view(batch, -1, 3 * self.dim, height * width).split(self.dim, dim=2))
        out = relu_linear_attention(q, k, v, eps=self.eps)
        return out.permute(0, 2, 3, 1).reshape(batch, -1, height, width)


@_export_form_of(WindowAttention)
class _WindowAttentionExport(WindowAttention):
    def forward_sequences(self, tokens: torch.Tensor, window: Tuple[int, int], carriers: int) -> torch.Tensor:
        """``tokens``: ``(..., carriers + wh*ww, C)``, one sequence per window: its carriers, then its tokens in
        raster order. The attention of ``forward_with_carriers``, as dense attention with the window bias padded by
        zeros for every pair with a carrier."""
        length = tokens.shape[-2]
        sequences = math.prod(tokens.shape[:-2])
        qkv = tokenwise(self.qkv, tokens).view(sequences, 1, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(3)
        rpb = self.pos_emb_funct(window).to(q.dtype)
        bias = F.pad(window_bias(rpb, window), (carriers, 0, carriers, 0))
        out = table_bias_attention(q, k, v, scale=self.scale, gathered_bias=bias)
        return self.proj_drop(tokenwise(self.proj, out.reshape(tokens.shape)))


@_export_form_of(HATBlock)
class _HatBlockExport(HATBlock):
    def forward_sequences(self, windows: torch.Tensor, carriers: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with carriers, on the map held as windows: ``windows`` ``(B, H/w, W/w, w*w, C)`` (each
        window's tokens in raster order), ``carriers`` ``(B, H/w, W/w, ct*ct, C)``."""
        if not self.hierarchical:
            raise RuntimeError("carriers were given to a HAT block built without carrier-token modules")
        w = self.window_size
        tokens_per_window, channels = windows.shape[-2:]
        carriers_per_window = carriers.shape[3]
        windows = windows + self.pos_embed((w, w)).reshape(tokens_per_window, channels)
        carriers = self._carrier_attention(carriers)
        tokens = torch.cat([carriers, windows], dim=3)
        attended = self.attn.forward_sequences(self.norm1(tokens), (w, w), carriers_per_window)
        tokens = tokens + self.drop_path(_scaled(self.gamma3, attended))
        tokens = tokens + self.drop_path(_scaled(self.gamma4, tokenwise(self.mlp, self.norm2(tokens))))
        carriers, windows = tokens.split([carriers_per_window, tokens_per_window], dim=3)
        if self.last and self.do_propagation:
            windows = windows + _scaled(self.gamma1, self._propagated(carriers).reshape(windows.shape))
        return windows, carriers


@_export_form_of(FasterViTStage)
class _FasterVitStageExport(FasterViTStage):
    def _attention_blocks(self, x: torch.Tensor, carriers: Optional[torch.Tensor]) -> torch.Tensor:
        if carriers is None:
            return super()._attention_blocks(x, carriers)
        windows = split_windows(x, self.window_size)  # once per stage, not once per block
        for block in self.blocks:
            windows, carriers = block.forward_sequences(windows, carriers)
        return merge_windows(windows, self.window_size)


__all__ = ["EXPORT_FORMS", "export_forms"]
