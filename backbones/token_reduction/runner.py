"""What the token-reduction methods share: the check that a timm ``Block`` can be run from its parts, the two halves
of such a block (attention through :func:`vithub.kernels.global_attention`, then the MLP), gradient checkpointing
around a block step, and :class:`Reducer`, the interface each method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import Attention, Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from vithub.kernels import global_attention

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


def attend(block: Block, x: torch.Tensor, size: Optional[torch.Tensor] = None,
           key_mask: Optional[torch.Tensor] = None, query_mask: Optional[torch.Tensor] = None,
           return_importance: bool = False) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The attention half of a timm ``Block`` (norm, qkv, qk-norm, attention, output norm and gate, projection,
    LayerScale, drop path, residual), run from its parts. ``size`` (tokens each one stands for) adds proportional
    attention's ``log(size)`` to every key's logits; ``key_mask``/``query_mask`` and ``return_importance`` are
    :func:`~vithub.kernels.global_attention`'s. Returns ``x`` after the residual add, the keys ``(B, N, heads,
    head_dim)`` and the importance (``None`` unless asked for)."""
    attention = block.attn
    hidden = block.norm1(x)
    batch, tokens, _ = hidden.shape
    gate = attention.gate(hidden).sigmoid() if attention.gate is not None else None
    qkv = attention.qkv(hidden).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim)
    q, k, v = qkv.unbind(2)  # (B, N, heads, head_dim): norms over head_dim act alike in either layout
    q, k = attention.q_norm(q), attention.k_norm(k)
    key_bias = size.log().to(q.dtype) if size is not None else None
    if key_mask is not None and key_mask.is_floating_point():
        key_mask = key_mask.to(q.dtype)
    importance = None
    if return_importance:
        out, importance = global_attention(q, k, v, key_bias=key_bias, key_mask=key_mask, scale=attention.scale,
                                           return_importance=True, query_mask=query_mask)
    else:
        out = global_attention(q, k, v, key_bias=key_bias, key_mask=key_mask, scale=attention.scale)
    out = attention.norm(out.reshape(batch, tokens, attention.attn_dim))
    if gate is not None:
        out = out * gate
    x = x + block.drop_path1(block.ls1(attention.proj_drop(attention.proj(out))))
    return x, k, importance


def feed_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """The MLP half of a timm ``Block`` (norm, MLP, LayerScale, drop path, residual)."""
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def run_step(vit: nn.Module, step: Callable[..., Any], *args: Any) -> Any:
    """``step(*args)``, under gradient checkpointing when the ViT trains with it on."""
    if vit.grad_checkpointing and vit.training and not torch.jit.is_scripting():
        return checkpoint(step, *args, use_reentrant=False)
    return step(*args)


class Reducer(ABC):
    """One token-reduction method: its options, how it checks them and attaches to a ViT (and detaches again), and
    how it runs the blocks. :func:`~vithub.backbones.token_reduction.reduce_tokens` picks one by ``name``."""

    name: ClassVar[str] = ""
    options: ClassVar[Tuple[str, ...]] = ()
    input_dependent_macs: ClassVar[bool] = False  # whether what a forward costs depends on the image

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

    @abstractmethod
    def run(self, vit: nn.Module, x: torch.Tensor, last: Optional[int] = None, take: Sequence[int] = ()
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        """The blocks (up to ``last``) on the embedded tokens ``x``: the tokens out, each one's size (``None``: all
        1) and, for the blocks in ``take``, their tokens on the full grid."""

    def pool_weights(self, size: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Per-token weights of average pooling given the tokens' sizes from :meth:`run` (``None``: timm's plain
        mean over the tokens)."""
        return None

    def freeze_for_training(self, vit: nn.Module, settings: Dict[str, Any]) -> None:
        """Freeze what the method's published recipe does not train (LTMP: all but its thresholds). Model creation
        freezes nothing; ``vithub train`` calls this through the model's ``freeze_for_training``."""

    def reset_classifier(self, vit: nn.Module, num_classes: int) -> None:
        """Follow the ViT's new classifier (Cropr's auxiliary heads)."""
