"""Small helpers shared by the vithub model families."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq

from vithub.kernels import gather_table_bias


def take_indices(num_stages: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """Absolute stage indices for ``forward_intermediates`` and the largest of them.

    ``None`` takes every stage, an int ``n`` the last ``n``, a sequence those indices (negative counts from the end).
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices: the last-n count must be in 1..{num_stages}, got {indices}")
        taken = list(range(num_stages - indices, num_stages))
    else:
        taken = []
        for index in indices:
            absolute = num_stages + index if index < 0 else index
            if not 0 <= absolute < num_stages:
                raise ValueError(f"indices: stage index {index} is out of range for {num_stages} stages")
            taken.append(absolute)
    return taken, max(taken)


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def init_linear(module: nn.Module) -> None:
    """The families' initialisation (``model.apply``): truncated-normal (std 0.02) linear weights, zero biases.
    Norm layers keep PyTorch's default (ones, zeros), which is what the reference implementations set."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def resize_rpb(rpb: torch.Tensor, size: Tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bicubic resize of a ``(heads, h, w)`` bias table to ``size``: a relative-position-bias table of a new
    kernel/window (NAT, Swin), or with ``antialias=True`` timm's rule for LeViT-style ``(|dy|, |dx|)`` tables
    (``resize_rel_pos_bias_table_levit``, here also for non-square sizes). Returns ``rpb`` itself when the size is
    unchanged, so trained sizes stay exact and differentiable."""
    if tuple(rpb.shape[-2:]) == tuple(size):
        return rpb
    work_dtype = torch.float64 if rpb.dtype == torch.float64 else torch.float32  # no half-precision bicubic on CPU
    resized = F.interpolate(rpb[None].to(work_dtype), size=tuple(size), mode="bicubic", align_corners=False,
                            antialias=antialias)
    return resized[0].to(rpb.dtype)


class BiasTableMixin:
    """An ``attention_biases`` table ``(heads, h*w)`` trained for a ``resolution`` of ``(h, w)`` tokens (timm's layout
    for LeViT and EfficientViT-M), resized to other grids and gathered into a dense bias.

    In eval mode, with no gradient wanted for the table, the gathered bias is cached per grid, stride and device, as
    timm caches it; the cache is keyed on the table's version, so loading weights or any in-place update refreshes it.
    """

    attention_biases: nn.Parameter
    resolution: Tuple[int, int]

    def _init_table(self, heads: int, resolution: Tuple[int, int]) -> None:
        self.resolution = tuple(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(heads, resolution[0] * resolution[1]))
        self._gathered_cache: Dict[Any, torch.Tensor] = {}

    def bias_table(self, size: Tuple[int, int]) -> torch.Tensor:
        """The ``(heads, H, W)`` table for a key map of ``size`` (the trained table resized when it differs)."""
        return resize_rpb(self.attention_biases.view(-1, *self.resolution), size, antialias=True)

    def gathered_bias(self, query_size: Tuple[int, int], key_size: Tuple[int, int], stride: int) -> torch.Tensor:
        """Dense ``(heads, Hq*Wq, H*W)`` bias for :func:`vithub.kernels.table_bias_attention`."""
        table = self.attention_biases
        cacheable = (not self.training and not torch.compiler.is_compiling()
                     and not (torch.is_grad_enabled() and table.requires_grad))
        if not cacheable:
            return gather_table_bias(self.bias_table(key_size), query_size, stride)
        key = (tuple(query_size), tuple(key_size), stride, table.device, table.dtype, table._version)
        bias = self._gathered_cache.get(key)
        if bias is None:
            self._gathered_cache.clear()  # one grid at a time: a stale version is never looked up again
            bias = self._gathered_cache[key] = gather_table_bias(self.bias_table(key_size), query_size, stride)
        return bias


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` (same parameters and state dict); on a channels-last map it runs as
    one ``linear`` over the channel-last view.

    On CPU, a channels-last 1x1 conv goes through oneDNN's conv path, which a plain matmul beats by 1.3-1.8x at
    batch 32 on EfficientViT's maps (measured here); an NCHW map keeps the regular conv, which is the faster of the
    two at batch 1 on the smallest (4x4, 7x7) maps.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return out.permute(0, 3, 1, 2)


def conv2d(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
           groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """``nn.Conv2d``, or :class:`PointwiseConv2d` for a plain 1x1 conv (identical parameters)."""
    if kernel_size == 1 and stride == 1 and padding == 0 and groups == 1:
        return PointwiseConv2d(in_channels, out_channels, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)


class FusableConvNorm(nn.Module):
    """Conv without bias followed by BatchNorm2d (timm's ``ConvNorm`` layout: ``<conv>``, ``bn``); ``fused()``
    returns the single biased conv that computes the same in eval mode."""

    CONV = "linear"

    def fused(self) -> nn.Module:
        return torch.nn.utils.fusion.fuse_conv_bn_eval(getattr(self, self.CONV), self.bn)


def fuse_batchnorms(model: nn.Module) -> nn.Module:
    """Replace, in place, every submodule that has a ``fused()`` method by what it returns (BatchNorm folded into
    the adjacent conv/linear from running statistics). The model is put in eval mode first."""
    model.eval()

    def visit(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if callable(getattr(child, "fused", None)):
                replacement = child.fused()
                replacement.eval()
                setattr(module, name, replacement)
            else:
                visit(child)

    with torch.no_grad():
        visit(model)
    return model


class SequentialStage(nn.Module):
    """A stage: ``downsample`` (or ``nn.Identity``) then ``blocks`` (an ``nn.Sequential``), with timm's per-stage
    gradient checkpointing of the blocks (``grad_checkpointing``, set through the model)."""

    downsample: nn.Module
    blocks: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def adapt_bias_tables(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """For the ``attention_biases`` families (LeViT, EfficientViT-M): drop timm's/official index buffers and resize
    square tables trained for another grid to the ``resolution`` of the module that holds them."""
    state_dict = {key: value for key, value in state_dict.items() if not key.endswith("attention_bias_idxs")}
    own = model.state_dict()
    for key, value in state_dict.items():
        if key.endswith("attention_biases") and key in own and value.shape != own[key].shape:
            side = int(round(value.shape[1] ** 0.5))
            if side * side != value.shape[1]:
                raise ValueError(f"{key}: cannot resize a non-square bias table of {value.shape[1]} entries")
            resolution = model.get_submodule(key.rsplit(".", 1)[0]).resolution
            state_dict[key] = resize_rpb(value.view(-1, side, side), resolution, antialias=True).flatten(1)
    return state_dict


class HierarchicalBackbone:
    """timm hooks shared by the hierarchical families (mixed into an ``nn.Module``).

    A family provides ``embed(x)`` (image to the first map, in its ``MAP_FORMAT``), a ``STAGES`` attribute name
    holding an ``nn.Sequential`` of stages, ``norm``, ``head`` (timm ``ClassifierHead``) and ``feature_info``; this
    gives ``forward_intermediates``, ``prune_intermediate_layers``, ``forward_features``/``forward_head``/``forward``,
    the classifier hooks, grad checkpointing (each stage's ``grad_checkpointing`` flag) and ``no_weight_decay`` (every
    relative position bias, ``*.rpb``).
    """

    STAGES = "stages"
    STEM = "stem"  # module name(s) before the first stage, a regex alternative, for group_matcher
    STAGE_PREAMBLE = "downsample"  # per-stage modules grouped before that stage's blocks (regex alternative)
    MAP_FORMAT = "NHWC"  # layout of the stage outputs and of forward_features; NCHW for convolutional families

    def _as_format(self, x: torch.Tensor, output_fmt: str) -> torch.Tensor:
        if output_fmt == self.MAP_FORMAT:
            return x
        return nhwc_to_nchw(x) if output_fmt == "NCHW" else x.permute(0, 2, 3, 1).contiguous()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` to the first map; every family defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define embed(x): image to its first feature map")

    def _stage_list(self) -> nn.Sequential:
        return getattr(self, self.STAGES)

    BIAS_TABLE = "rpb"  # parameter name of the attention-bias tables, excluded from weight decay

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Attention-bias tables (every ``rpb`` parameter, or the family's ``BIAS_TABLE``) are not weight-decayed."""
        return {name for name, _ in self.named_parameters() if name.split(".")[-1] == self.BIAS_TABLE}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise LR decay: stem, then per stage its preamble (downsampling) and each block
        in order (or whole stages when ``coarse``), final norm last."""
        stages = self.STAGES
        return dict(
            stem=rf"^(?:{self.STEM})",
            blocks=rf"^{stages}\.(\d+)" if coarse else [
                (rf"^{stages}\.(\d+)\.(?:{self.STAGE_PREAMBLE})", (0,)),
                (rf"^{stages}\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self._stage_list():
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (reductions 4, 8, 16, 32) as NCHW (or NHWC) maps, and the final normed features.

        Args:
            indices: stages to return; an int takes the last ``n``, ``None`` all of them.
            norm: apply the final norm to the last stage's map when it is returned.
            stop_early: stop after the last requested stage.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: return only the list of maps.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        all_stages = self._stage_list()
        taken, max_index = take_indices(len(all_stages), indices)
        last = len(all_stages) - 1
        stages = all_stages[:max_index + 1] if stop_early else all_stages
        intermediates = []
        x = self.embed(x)
        index = 0
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in taken:
                feature = self.norm(x) if norm and index == last else x
                intermediates.append(self._as_format(feature, output_fmt))
        if intermediates_only:
            return intermediates
        if index == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norm/head) that the requested intermediates do not need."""
        taken, max_index = take_indices(len(self._stage_list()), indices)
        setattr(self, self.STAGES, self._stage_list()[:max_index + 1])
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` to normed last-stage features (NHWC, or NCHW where ``MAP_FORMAT`` says so)."""
        return self.norm(self._stage_list()(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_hierarchical(model_cls: type, variant: str, pretrained: bool,
                       filter_fn: Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]],
                       **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a four-stage family: checkpoints through ``filter_fn``, and
    ``features_only`` through ``forward_intermediates`` (NCHW maps of stages ``out_indices``, default all)."""
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )
