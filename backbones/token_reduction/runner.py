"""What the token-reduction methods share: the check that a timm ``Block`` can be run from its parts,
:class:`ReducibleBlock` (such a block's two halves as methods: attention through
:func:`vithub.kernels.global_attention`, then the MLP), :class:`TokenReduced` (the ViT's forward paths around a
method's ``run_blocks``) and :class:`Reducer`, each method's Python side.

One forward path serves eager runs, FX and TorchScript: a method's block loop is a method of the ViT, its step
between attention and MLP a method of the block, and what depends on run-time token counts or on whether a tensor
exists is in functions that FX keeps as one node (``torch.fx.wrap``) and TorchScript compiles."""


from abc import ABC, abstractmethod
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

import torch
import torch.fx
from timm.layers import LayerScale
from timm.models import vision_transformer
from timm.models.vision_transformer import Attention, Block, global_pool_nlc
from torch import nn

from vithub.kernels import global_attention_and_importance

from .._common import take_indices

_BLOCK_PARTS = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
_ATTENTION_PARTS = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop"}


def check_block(block: nn.Module, index: int) -> None:
    """Refuse a block whose layout this module does not run exactly (naming the class and the part)."""
    if type(block).forward is not Block.forward:
        raise ValueError(f"token reduction runs timm's Block; block {index} is {type(block).__name__}, whose forward "
                         "differs")
    unknown = set(block._modules) - _BLOCK_PARTS
    if unknown:
        raise ValueError(f"block {index} ({type(block).__name__}) has parts token reduction does not run: "
                         f"{sorted(unknown)}")
    attention = block.attn
    if type(attention).forward is not Attention.forward:
        raise ValueError(f"token reduction runs timm's Attention; block {index}'s attention is "
                         f"{type(attention).__name__}, whose forward differs")
    unknown = set(attention._modules) - _ATTENTION_PARTS
    if unknown:
        raise ValueError(f"block {index}'s attention ({type(attention).__name__}) has parts token reduction does not "
                         f"run: {sorted(unknown)}")
    if attention.attn_drop.p > 0:
        raise ValueError(f"block {index} has attention dropout {attention.attn_drop.p}: the merged attention takes "
                         "none (build the model with attn_drop_rate=0)")
    for name in ("ls1", "ls2"):
        part = getattr(block, name)
        if not isinstance(part, (nn.Identity, LayerScale)):
            raise ValueError(f"block {index}: {name} is {type(part).__name__}, not timm's LayerScale")


def token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, size: Optional[torch.Tensor],
                    key_mask: Optional[torch.Tensor], query_mask: Optional[torch.Tensor], return_importance: bool
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`~vithub.kernels.global_attention` with proportional attention's ``log(size)`` key bias (``size``
    ``None``: none) and a weighted ``key_mask`` in q's dtype; returns the output and the importance (``None`` unless
    asked for). One FX node: whether ``size`` exists and the mask's dtype are only known at run time."""
    key_bias = size.log().to(q.dtype) if size is not None else None
    if key_mask is not None and key_mask.is_floating_point():
        key_mask = key_mask.to(q.dtype)
    return global_attention_and_importance(q, k, v, key_bias, key_mask, scale, None, return_importance, query_mask)


torch.fx.wrap("token_attention")


def _wrap_for_fx(module: Any, name: str) -> None:
    """``torch.fx.wrap(name)`` as if called at the top level of ``module`` (which is what ``wrap`` asks for): FX
    keeps ``module.name`` one node wherever that module's code calls it."""
    exec(compile(f"import torch.fx as _fx\n_fx.wrap({name!r})\ndel _fx", module.__file__, "exec"), vars(module))


# timm keeps its position-embedding resampling out of FX graphs (a notrace function), but FX patches it only in the
# module whose forward it traces: a token-reduced ViT's forward is ours, and it calls timm's _pos_embed.
_wrap_for_fx(vision_transformer, "resample_abs_pos_embed")


def records_statistics(x: torch.Tensor) -> bool:
    """Whether a forward keeps its Python-side statistics (``token_counts``, ...) on the model: in eager runs, not
    while FX traces (``x`` a proxy: the traced graph keeps no Python state). Scripted code skips them as well."""
    return not isinstance(x, torch.fx.Proxy)


class ReducibleBlock:
    """Mixed into every timm ``Block`` of a token-reduced ViT (:func:`reduce_tokens` swaps the block's class; its
    parameters and ``forward`` stay timm's): the block's two halves as methods, so a method's step between them is
    one method too, which TorchScript compiles and gradient checkpointing wraps."""

    def attend(self, x: torch.Tensor, size: Optional[torch.Tensor] = None, key_mask: Optional[torch.Tensor] = None,
               query_mask: Optional[torch.Tensor] = None, return_importance: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The attention half (norm, qkv, qk-norm, attention, output norm and gate, projection, LayerScale, drop
        path, residual). ``size`` (tokens each one stands for; ``None``: all 1) adds proportional attention's
        ``log(size)`` to every key's logits; ``key_mask``/``query_mask`` and ``return_importance`` are
        :func:`~vithub.kernels.global_attention`'s. Returns ``x`` after the residual add, the keys ``(B, N, heads,
        head_dim)`` and the importance (``None`` unless asked for)."""
        attention = self.attn
        hidden = self.norm1(x)
        batch, tokens, _ = hidden.shape
        gate: Optional[torch.Tensor] = None
        if attention.gate is not None:
            gate = attention.gate(hidden).sigmoid()
        qkv = attention.qkv(hidden).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim)
        q, k, v = qkv.unbind(2)  # (B, N, heads, head_dim): norms over head_dim act alike in either layout
        q, k = attention.q_norm(q), attention.k_norm(k)
        out, importance = token_attention(q, k, v, attention.scale, size, key_mask, query_mask, return_importance)
        out = attention.norm(out.reshape(batch, tokens, attention.attn_dim))
        if gate is not None:
            out = out * gate
        x = x + self.drop_path1(self.ls1(attention.proj_drop(attention.proj(out))))
        return x, k, importance

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP half (norm, MLP, LayerScale, drop path, residual)."""
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def checkpointing(vit: nn.Module) -> bool:
    """Whether block steps run under gradient checkpointing (the ViT trains with it on; eager runs only: scripted
    code takes the plain step first)."""
    return vit.grad_checkpointing and vit.training


class TokenReduced:
    """Mixed into a timm ``VisionTransformer`` subclass by :func:`reduce_tokens`, after the method's own mixin (which
    gives :meth:`run_blocks` and :meth:`pool_weights`): the forward paths with the method's blocks and dense outputs
    put back on the full grid. ``forward`` is written for TorchScript and FX as well as eager runs (statistics are
    kept in eager runs only). Average pooling is timm's plain mean over the tokens left, as in the official ToMe code
    (a merged token counts once, whatever its size), over the live ones where a method masks tokens in a batch."""

    __jit_unused_properties__ = ["token_reducer", "input_dependent_macs"]

    def run_blocks(self, x: torch.Tensor, last: Optional[int] = None, take: Optional[List[int]] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        """The blocks (up to ``last``) on the embedded tokens ``x``: the tokens out, each one's size (``None``: all
        1) and, for the blocks in ``take``, their tokens on the full grid."""
        raise NotImplementedError

    def pool_weights(self, size: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Per-token weights of average pooling given the tokens' sizes from :meth:`run_blocks` (``None``: timm's
        plain mean over the tokens)."""
        return None

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """timm's embedding: patches, position embedding and prefix tokens, patch dropout, pre-norm."""
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))

    def pool_tokens(self, x: torch.Tensor, weights: Optional[torch.Tensor],
                    pool_type: Optional[str] = None) -> torch.Tensor:
        """timm's pooling, with average pooling weighted by ``weights`` ``(B, N)`` where given."""
        pool = self.global_pool if pool_type is None else pool_type
        if pool == "avg" and weights is not None:
            start = 0 if self.pool_include_prefix else self.num_prefix_tokens
            token_weights = weights[:, start:, None].to(x.dtype)
            return (x[:, start:] * token_weights).sum(dim=1) / token_weights.sum(dim=1)
        return global_pool_nlc(x, pool_type=pool, num_prefix_tokens=self.num_prefix_tokens,
                               reduce_include_prefix=self.pool_include_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images to logits (a token-reduced ViT takes no ``attn_mask``: merging changes the tokens)."""
        tokens, size, _ = self.run_blocks(self.embed_tokens(x), None, None)
        if not torch.jit.is_scripting():
            if records_statistics(tokens):
                self._token_sizes = size
        tokens = self.norm(tokens)
        weights = self.pool_weights(size)
        if weights is None or not self.pool_by_weights:
            return self.forward_head(tokens)
        pooled = self.pool_tokens(tokens, weights)  # timm's forward_head, with the pooling weights passed in
        return self.head(self.head_drop(self.fc_norm(pooled)))

    @property
    def token_reducer(self) -> "Reducer":
        from .reduce import REDUCERS

        return REDUCERS[self.token_reduction["method"]]

    @property
    def input_dependent_macs(self) -> bool:
        """True for LTMP: how many tokens its thresholds keep, so what a forward costs, depends on the image."""
        return self.token_reducer.input_dependent_macs

    def freeze_for_training(self) -> None:
        """Freeze what the method's published recipe leaves untrained (LTMP without ``train_backbone``: all but the
        thresholds); ``vithub train`` calls it. A created model is fully trainable until then."""
        self.token_reducer.freeze_for_training(self, self.token_reduction)

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        super().reset_classifier(num_classes, *args, **kwargs)
        self.token_reducer.reset_classifier(self, num_classes)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: a token-reduced ViT takes neither (merging changes the tokens)")
        x, self._token_sizes, _ = self.run_blocks(self.embed_tokens(x))
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """timm's pooling; after an eager :meth:`forward_features` the sizes of its run weight the average."""
        weights: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            weights = self._last_pool_weights(x)
        return self.pool_tokens(x, weights, pool_type)

    def _last_pool_weights(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        if not records_statistics(x):  # traced by FX: no Python state from an earlier run
            return None
        weights = self.pool_weights(getattr(self, "_token_sizes", None))
        return weights if weights is not None and weights.shape[:2] == x.shape[:2] else None

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              output_dict: bool = False, attn_mask: Optional[torch.Tensor] = None,
                              is_causal: bool = False):
        """timm's ``forward_intermediates``, with each taken block's tokens put back on the full grid (a merged
        token is copied to every position it stands for), so dense outputs keep their shape."""
        refusal = self.token_reducer.dense_refusal(self.token_reduction)
        if refusal:
            raise ValueError(refusal)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: a token-reduced ViT takes neither (merging changes the tokens)")
        take, max_index = take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x, self._token_sizes, taken = self.run_blocks(self.embed_tokens(x), max_index if stop_early else None,
                                                      list(take))
        intermediates = [self.norm(y) if norm else y for y in taken]
        prefix = self.num_prefix_tokens
        prefix_tokens = [y[:, :prefix] for y in intermediates] if prefix else None
        intermediates = [y[:, prefix:] for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if output_dict:
            result: Dict[str, Any] = {"image_intermediates": intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                result["image_features"] = self.norm(x)
            return result
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


class Reducer(ABC):
    """One token-reduction method's Python side: its options, how it checks them and attaches to a ViT (and detaches
    again); how it runs the blocks is its ``model_mixin`` (a :class:`TokenReduced`) with its ``block_mixin`` (a
    :class:`ReducibleBlock`, or ``None`` where timm's block runs as it is).
    :func:`~vithub.backbones.token_reduction.reduce_tokens` picks one by ``name``."""

    name: ClassVar[str] = ""
    options: ClassVar[Tuple[str, ...]] = ()
    input_dependent_macs: ClassVar[bool] = False  # whether what a forward costs depends on the image
    model_mixin: ClassVar[type] = TokenReduced
    block_mixin: ClassVar[Optional[type]] = None

    @abstractmethod
    def settings(self, vit: nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
        """The checked settings (``method`` included) for ``options``; ``ValueError`` naming a bad one."""

    def check_model(self, vit: nn.Module) -> None:
        """Refuse a ViT this method cannot run (beyond the block checks every method makes)."""

    def attach(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        """Add what the method learns (parameters, modules) to ``vit``."""

    def detach(self, vit: nn.Module) -> None:
        """Remove what :meth:`attach` added, leaving the ViT as it was."""

    def dense_refusal(self, settings: Dict[str, Any]) -> Optional[str]:
        """Why ``forward_intermediates`` cannot give full grids under ``settings``; ``None`` when it can."""
        return None

    def scripted_settings(self, vit: nn.Module, settings: Dict[str, Any]) -> Dict[str, Any]:
        """The settings :meth:`TokenReduced.run_blocks` reads, as typed attributes of the ViT (``bool``, ``float``,
        ``List[int]``: what TorchScript compiles; ``settings`` stays the Python-side record)."""
        return {}

    def freeze_for_training(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        """Freeze what the method's published recipe does not train (LTMP: all but its thresholds). Model creation
        freezes nothing; ``vithub train`` calls this through the model's ``freeze_for_training``."""

    def reset_classifier(self, vit: nn.Module, num_classes: int) -> None:
        """Follow the ViT's new classifier (Cropr's auxiliary heads)."""
