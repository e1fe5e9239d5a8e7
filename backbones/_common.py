"""Small helpers shared by the vithub model families."""

import contextlib
import inspect
from typing import Any, Callable, ClassVar, Dict, List, Literal, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, register_notrace_function, register_notrace_module

from vithub.kernels import constant_tensors, gather_table_bias

from ._cpu_paths import fold_path, pointwise_path


def take_indices(num_stages: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """Absolute stage indices for ``forward_intermediates`` and the largest of them.

    ``None`` takes every stage, an int ``n`` the last ``n``, a sequence those indices (negative counts from the end).
    The rule is timm's ``feature_take_indices``, which timm does not export publicly (it lives in a private module)
    and which fails with an ``AssertionError``; this raises ``ValueError`` naming the argument.
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


def placed_like(module: nn.Module, model: nn.Module) -> nn.Module:
    """``module`` (a new head) on the device and floating dtype of ``model``'s parameters and in its train/eval mode,
    so ``reset_classifier`` after ``model.to(...)`` or ``model.eval()`` leaves one consistent model."""
    reference = next(model.parameters())
    return module.to(device=reference.device, dtype=reference.dtype).train(model.training)


def inplace_activation(act_layer: Callable[..., nn.Module]) -> nn.Module:
    """``act_layer(inplace=True)`` where the class takes ``inplace``, else ``act_layer()``.

    For an activation whose input is a fresh tensor that nothing else holds (a conv, linear or norm output): on CPU a
    new activation map of a few MB is often a fresh ``mmap`` from glibc, and first-touching its pages cost more than
    the activation itself at batch 8 and up (LeViT's stem: 4.3 ms of page faults on a 0.6 ms hard-swish). Autograd
    supports these in-place activations, so training is unaffected.
    """
    try:
        takes_inplace = "inplace" in inspect.signature(act_layer).parameters
    except (TypeError, ValueError):
        takes_inplace = False
    return act_layer(inplace=True) if takes_inplace else act_layer()


@register_notrace_module
class GELU(nn.GELU):
    """``nn.GELU`` that runs on a channels-last map's memory order: PyTorch's CPU GELU takes 1.8-2.8x longer on a
    channels-last NCHW tensor than on the same memory viewed as a contiguous NHWC one (8 x 64 x 56 x 56, measured
    here), so such a map goes through as its NHWC view. Same module, parameters and outputs as ``nn.GELU``. (An ONNX
    export runs plain ``nn.GELU``: :mod:`vithub.export_forms`.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return F.gelu(x, approximate=self.approximate)  # (nn.GELU's forward; TorchScript has no super().forward)


@register_notrace_function
def add_residual_(branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``shortcut + branch``, written into ``branch`` (a fresh output of the residual branch that nothing saved for
    backward: a conv, linear, norm or drop-path output), as timm's and torchvision's ResNets add their shortcuts: one
    map fewer to allocate per residual. Falls back to a new tensor where the in-place add cannot hold the result
    (broadcasting, dtype promotion), or where ``branch`` is the shortcut itself or a leaf that requires grad."""
    if (branch is not shortcut and branch.shape == shortcut.shape and branch.dtype == shortcut.dtype
            and not (branch.is_leaf and branch.requires_grad)):
        return branch.add_(shortcut)
    return shortcut + branch


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def init_linear(module: nn.Module) -> None:
    """The families' initialisation (``model.apply``): truncated-normal (std 0.02) linear weights, zero biases.
    Norm layers keep PyTorch's default (ones, zeros), which is what the reference implementations set."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _cubic(x: float) -> float:
    """ATen's cubic convolution kernel with ``a = -0.5``."""
    x = abs(x)
    if x < 1.0:
        return ((1.5 * x - 2.5) * x) * x + 1.0
    if x < 2.0:
        return ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return 0.0


def antialiased_bicubic_weights(in_size: int, out_size: int) -> List[List[float]]:
    """The ``(out_size, in_size)`` matrix of ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``
    along one axis (the resize is separable: ``A @ X @ B.T``), computed in Python floats by ATen's rule: a cubic
    filter (a = -0.5) stretched by the scale when shrinking, sampled around each output centre and normalised.
    (Written in the Python TorchScript compiles, so scripted LeViT and EfficientViT-M resize their tables too.)"""
    if in_size < 1 or out_size < 1:
        raise ValueError("sizes must be >= 1, got in_size=" + str(in_size) + ", out_size=" + str(out_size))
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    matrix: List[List[float]] = []
    for index in range(out_size):
        centre = scale * (index + 0.5)
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps: List[float] = []
        total = 0.0
        for source in range(first, last):
            tap = _cubic((source - centre + 0.5) * inverse)
            taps.append(tap)
            total += tap
        row = [0.0] * in_size
        for offset in range(len(taps)):
            row[first + offset] = taps[offset] / total if total != 0.0 else 0.0
        matrix.append(row)
    return matrix


def resize_bias_table(table: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a LeViT-style ``(heads, h, w)`` table indexed by ``(|dy|, |dx|)`` to ``size``: bicubic with
    antialiasing, timm's rule (``resize_rel_pos_bias_table_levit``). timm's helper takes square grids only, and these
    tables are resized at run time to the grid of any input size, square or not, so the rule is written here; it
    works in float64 for float64 tables. Returns ``table`` itself when the size is unchanged, so trained sizes stay
    exact and differentiable.

    The resize runs as two matrix products with :func:`antialiased_bicubic_weights`, not ``F.interpolate``: torch's
    antialiased bicubic gives every output row the first row's values when the output is one column wide and the
    height changes (torch 2.14, CPU; e.g. 3x3 to 2x1), which a small input reaches in EfficientViT-M's last stage,
    and ONNX Runtime's ``Resize`` computes those grids correctly, so an export would not match eager. Elsewhere the
    products equal ``F.interpolate`` (within 1e-12 in float64, tested).
    """
    if table.shape[-2] == size[0] and table.shape[-1] == size[1]:
        return table
    work_dtype = torch.float64 if table.dtype == torch.float64 else torch.float32
    rows = torch.tensor(antialiased_bicubic_weights(table.shape[-2], size[0]), dtype=work_dtype, device=table.device)
    cols = torch.tensor(antialiased_bicubic_weights(table.shape[-1], size[1]), dtype=work_dtype, device=table.device)
    return (rows @ table.to(work_dtype) @ cols.T).to(table.dtype)


class BiasTableMixin:
    """An ``attention_biases`` table ``(heads, h*w)`` trained for a ``resolution`` of ``(h, w)`` tokens (timm's layout
    for LeViT and EfficientViT-M), resized to other grids and gathered into a dense bias.

    In eval mode, with no gradient wanted for the table, the gathered bias is cached per grid, stride and device, as
    timm caches it; the cache is keyed on the table's version, so loading weights or any in-place update refreshes it.
    """

    # Sets ``attention_biases`` (an ``nn.Parameter``) and ``resolution`` (``(h, w)``) in ``_init_table``. No class-level
    # annotations: TorchScript would read them as attribute types and cannot resolve them.

    def _init_table(self, heads: int, resolution: Tuple[int, int]) -> None:
        self.resolution = tuple(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(heads, resolution[0] * resolution[1]))
        self._gathered_cache: Dict[Any, torch.Tensor] = {}

    def bias_table(self, size: Tuple[int, int]) -> torch.Tensor:
        """The ``(heads, H, W)`` table for a key map of ``size`` (the trained table resized when it differs)."""
        return resize_bias_table(self.attention_biases.view(-1, self.resolution[0], self.resolution[1]), size)

    def gathered_bias(self, query_size: Tuple[int, int], key_size: Tuple[int, int], stride: int) -> torch.Tensor:
        """Dense ``(heads, Hq*Wq, H*W)`` bias for :func:`vithub.kernels.table_bias_attention`."""
        if torch.jit.is_scripting():  # a scripted model gathers on every call (the cache below is Python state)
            return gather_table_bias(self.bias_table(key_size), query_size, stride)
        table = self.attention_biases
        cacheable = (not self.training and not torch.compiler.is_compiling()
                     and not (torch.is_grad_enabled() and table.requires_grad))
        if not cacheable:
            return gather_table_bias(self.bias_table(key_size), query_size, stride)
        key = (tuple(query_size), tuple(key_size), stride, table.device, table.dtype, table._version)
        bias = self._gathered_cache.get(key)
        if bias is None:
            self._gathered_cache.clear()  # one grid at a time: a stale version is never looked up again
            with constant_tensors():  # normal tensors even under inference_mode: training may read them later
                bias = self._gathered_cache[key] = gather_table_bias(self.bias_table(key_size), query_size, stride)
        return bias


@register_notrace_module
class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` (same parameters and state dict); on a channels-last map, or a
    channel slice of one, it runs as one ``linear`` over the channel-last view where that measures faster on the
    running CPU (:func:`vithub.backbones._cpu_paths.choose_path`, kind ``pointwise``), else as the conv.

    On CPU, a channels-last 1x1 conv goes through oneDNN's conv path, which a plain matmul beats by 1.3-1.8x at
    batch 32 on EfficientViT's maps (measured here); an NCHW map keeps the regular conv, which is the faster of the
    two at batch 1 on the smallest (4x4, 7x7) maps. An ONNX export always takes the conv (:mod:`vithub.export_forms`):
    a graph has no memory format, and ONNX Runtime folds the following BatchNorm into a Conv but not into a
    transposed MatMul.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels innermost (a channels-last map, or a channel slice of one): the matmul path, where it measures
        # faster on this machine than the conv (vithub.backbones._cpu_paths; always on GPU and in graphs).
        if x.dim() != 4 or x.stride(1) != 1 or x.is_contiguous():
            return self._conv_forward(x, self.weight, self.bias)  # nn.Conv2d's forward, scriptable
        if not torch.jit.is_scripting():
            if pointwise_path(self, x) == "conv":
                return self._conv_forward(x, self.weight, self.bias)
        return self.as_linear(x)

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The conv as one ``linear`` over the channel-last view of ``x``."""
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return out.permute(0, 3, 1, 2)


def conv2d(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
           groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """``nn.Conv2d``, or :class:`PointwiseConv2d` for a plain 1x1 conv (identical parameters)."""
    if kernel_size == 1 and stride == 1 and padding == 0 and groups == 1:
        return PointwiseConv2d(in_channels, out_channels, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)


class FoldsNormInEval(nn.Module):
    """A layer (attribute :attr:`CONV`) followed by BatchNorm (``bn``) whose ``fused()`` computes both in eval mode.

    Eval-mode inference on CPU (no autograd through the norm) runs the fused layer, one op instead of two, where that
    measures faster than the pair on the running machine (:func:`vithub.backbones._cpu_paths.fold_path`, kind
    ``norm_fold``; the pair is the twin's path). The fused layer is cached and rebuilt when a weight or statistic
    changes (each tensor's storage and version), so loading weights or training in between never runs stale
    weights. Training, autograd, graphs and exports take the pair. Outputs match the pair's to float rounding.
    """

    CONV = "linear"

    def fused(self) -> nn.Module:
        raise NotImplementedError

    def separate(self, x: torch.Tensor) -> torch.Tensor:
        """The layer then the norm (each subclass names its layer: TorchScript reads no ``getattr``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            fused = self.folded_for(x)
            if fused is not None:
                return fused(x)
        return self.separate(x)

    def folded_for(self, x: torch.Tensor) -> Optional[nn.Module]:
        """The cached fused layer to run on ``x``, or ``None`` when the pair must run (or measured faster)."""
        if self.training:
            return None
        norm = self._modules["bn"]
        if torch.is_grad_enabled() and norm._parameters["weight"].requires_grad:
            return None
        layer = self._modules[self.CONV]
        if fold_path(self, x, lambda: {"separate": lambda: self.separate(x),
                                       "folded": lambda: self._cached_fused()(x)},
                     layer.weight.shape) != "folded":
            return None
        return self._cached_fused()

    def _cached_fused(self) -> nn.Module:
        layer, norm = self._modules[self.CONV], self._modules["bn"]
        weight, bias = layer._parameters["weight"], layer._parameters.get("bias")
        scale, shift = norm._parameters["weight"], norm._parameters["bias"]
        mean, var = norm._buffers["running_mean"], norm._buffers["running_var"]
        # the tensors, their storage and versions: loading weights (in place) or moving the module changes one
        stamp = (weight._version, scale._version, shift._version, mean._version, var._version,
                 0 if bias is None else bias._version, weight.data_ptr(), var.data_ptr())
        cached = self.__dict__.get("_fold_cache")  # a plain attribute: not a submodule, not in the state dict
        if cached is not None and cached[1] == stamp:
            held = cached[0]
            if (held[0] is weight and held[1] is bias and held[2] is scale and held[3] is shift and held[4] is mean
                    and held[5] is var):
                return cached[2]
        with constant_tensors():  # normal tensors even under inference_mode
            fused = self.fused().requires_grad_(False)
        self.__dict__["_fold_cache"] = ((weight, bias, scale, shift, mean, var), stamp, fused)
        return fused


class FusableConvNorm(FoldsNormInEval):
    """Conv without bias followed by BatchNorm2d (timm's ``ConvNorm`` layout: ``<conv>``, ``bn``); ``fused()``
    returns the single biased conv that computes the same in eval mode."""

    CONV = "linear"

    def fused(self) -> nn.Module:
        return torch.nn.utils.fusion.fuse_conv_bn_eval(getattr(self, self.CONV), self.bn)


class NormLinear(nn.Module):
    """BatchNorm1d, dropout, linear: the classifier heads."""

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))

    def fused(self) -> nn.Module:
        return fold_norm_into_next_linear(self.bn, self.linear)


def fold_norm_into_next_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """One linear computing ``linear(bn(x))`` with ``bn`` in eval mode (BatchNorm *before* the linear)."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight * inv_std
    shift = bn.bias - bn.running_mean * scale
    fused = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device,
                      dtype=linear.weight.dtype)
    fused.weight.copy_(linear.weight * scale[None, :])
    bias = linear.weight @ shift
    fused.bias.copy_(bias + linear.bias if linear.bias is not None else bias)
    return fused


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

    # Subclasses set ``downsample`` (an ``nn.Module``) and ``blocks`` (an ``nn.Sequential``); no class-level
    # annotations, which TorchScript would read as attribute types.

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
            state_dict[key] = resize_bias_table(value.view(-1, side, side), resolution).flatten(1)
    return state_dict


MapLayout = Literal["NHWC", "NCHW"]


def to_layout(x: torch.Tensor, source: MapLayout, target: str) -> torch.Tensor:
    """A 4-D map from ``source`` layout to ``target`` (``"NCHW"`` or ``"NHWC"``; contiguous when it moves)."""
    if target == source:
        return x
    return nhwc_to_nchw(x) if target == "NCHW" else x.permute(0, 2, 3, 1).contiguous()


def stage_group_matcher(coarse: bool, stem: str, stages: str = "stages",
                        stage_preamble: Sequence[str] = ("downsample",)) -> Dict[str, Any]:
    """timm's ``group_matcher`` for a model of stages, for layer-wise LR decay: the modules named ``stem`` first,
    then per stage its ``stage_preamble`` modules (downsampling) and each of its ``blocks`` in order (whole stages
    when ``coarse``), the final ``norm`` last. Names are module names (``stem`` may list alternatives with ``|``)."""
    preamble = "|".join(stage_preamble)
    return dict(
        stem=rf"^(?:{stem})",
        blocks=rf"^{stages}\.(\d+)" if coarse else [
            (rf"^{stages}\.(\d+)\.(?:{preamble})", (0,)),
            (rf"^{stages}\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm", (99999,)),
        ],
    )


def parameter_names(model: nn.Module, leaf: str) -> Set[str]:
    """Names of the parameters of ``model`` called ``leaf`` (e.g. every ``rpb`` table), for ``no_weight_decay``."""
    return {name for name, _ in model.named_parameters() if name.split(".")[-1] == leaf}


class StageHooks:
    """timm's model hooks for a family built as an image embedding followed by a sequence of stages (mixed into the
    model class). The family provides, as typed attributes and methods rather than configuration:

    * ``embed(x)``: image ``(B, C, H, W)`` to the first map, and ``map_layout`` (``"NHWC"`` or ``"NCHW"``), the
      layout of that map, of every stage output and of ``forward_features``;
    * ``stages``: an ``nn.Sequential`` of stages, each with a ``grad_checkpointing`` flag; ``norm``; ``head`` (a timm
      ``ClassifierHead``, or the family overrides the classifier hooks); ``feature_info``;
    * its own ``group_matcher`` (with :func:`stage_group_matcher`) and ``no_weight_decay`` (with
      :func:`parameter_names`), which name its modules and parameters.

    This gives ``forward_features``, ``forward_intermediates``, ``forward_head``, ``forward``, grad checkpointing,
    ``prune_intermediate_layers`` and the classifier hooks.
    """

    map_layout: ClassVar[MapLayout] = "NHWC"
    # The family sets ``stages`` (``nn.Sequential``), ``norm``, ``head`` and ``feature_info`` (a list of dicts); they
    # are not annotated here because TorchScript reads class annotations as attribute types.

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define embed(x): image to its first feature map")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` to the normed last-stage map, in ``map_layout``."""
        return self.norm(self.stages(self.embed(x)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's ``forward_intermediates``: the outputs of the stages in ``indices`` (see :func:`take_indices`) as
        ``output_fmt`` maps, and the final normed features (unless ``intermediates_only``). ``norm`` applies the final
        norm to the last stage's map when it is returned; ``stop_early`` stops after the last wanted stage."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        taken, max_index = take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        intermediates = []
        x = self.embed(x)
        index = 0
        for index, stage in enumerate(self.stages[:max_index + 1] if stop_early else self.stages):
            x = stage(x)
            if index in taken:
                feature = self.norm(x) if norm and index == last else x
                intermediates.append(to_layout(feature, self.map_layout, output_fmt))
        if intermediates_only:
            return intermediates
        if index == last:
            x = self.norm(x)
        return x, intermediates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        reference = next(self.parameters())  # a new classifier joins the model's device and dtype
        self.head.reset(num_classes, pool_type=global_pool, device=reference.device, dtype=reference.dtype)
        self.head.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norm/head) that the requested intermediates do not need."""
        taken, max_index = take_indices(len(self.stages), indices)
        del self.stages[max_index + 1:]  # in place: a family may expose its stages under another name (Swin)
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken


def build_hierarchical(model_cls: type, variant: str, pretrained: bool,
                       filter_fn: Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]],
                       **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a four-stage family: checkpoints through ``filter_fn``, and
    ``features_only`` through ``forward_intermediates`` (NCHW maps of stages ``out_indices``, default all).

    timm's factory arguments ``device`` and ``dtype`` (``create_model(..., device="meta")``) place every parameter
    and buffer: the model is built under that default device, then floating tensors are cast to ``dtype``."""
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_filter_fn=filter_fn,
            feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
            **kwargs,
        )
    return model if dtype is None else model.to(dtype)
