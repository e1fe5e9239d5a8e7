"""NATTEN's legacy unfused functional API (0.14 to 0.17), on vithub's kernels, for code that still calls it.

NATTEN 0.20 removed these functions, their relative position bias and every CPU kernel, and the releases that had
them do not build on current PyTorch. The functions here keep their names, signatures and layouts: heads before the
spatial axes, ``query``/``key``/``value`` ``(B, heads, L, dim)`` (1-D) or ``(B, heads, H, W, dim)`` (2-D), weights
``(B, heads, *spatial, prod(kernel_size))``. As in NATTEN, the logits are not scaled (scale the query first). They
run on :func:`vithub.kernels.neighborhood_attention_qk` / :func:`~vithub.kernels.neighborhood_attention_av` (any
device, autograd, ``torch.compile``). Causal masks and additional keys/values (NATTEN 0.17's cross-attention
extras) are refused with an error saying so.

Import it under its own name (``from vithub.compat import natten as natten_ops``); it never installs or shadows a
module named ``natten``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from vithub.kernels import neighborhood_attention_av, neighborhood_attention_qk

Size = Union[int, Sequence[int]]

__all__ = ["na1d_av", "na1d_qk", "na2d_av", "na2d_qk", "natten1dav", "natten1dqkrpb", "natten2dav", "natten2dqkrpb"]


def _refuse_extras(function: str, extra_name: str, extra: Optional[torch.Tensor], is_causal: Any) -> None:
    if extra is not None:
        raise ValueError(f"{function}: {extra_name} (NATTEN 0.17's extra keys/values) is not supported by vithub; "
                         "pass None")
    causal = is_causal if isinstance(is_causal, (tuple, list)) else (is_causal,)
    if any(bool(flag) for flag in causal):
        raise ValueError(f"{function}: is_causal is not supported by vithub (non-causal neighborhood attention "
                         f"only), got {is_causal!r}")


def _heads_last(name: str, tensor: torch.Tensor, dims: int, function: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != dims + 3:
        form = "(B, heads, L, dim)" if dims == 1 else "(B, heads, H, W, dim)"
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{function}: {name} must have NATTEN's layout {form}, got {shape}")
    return tensor.movedim(1, -2)


def _qk(function: str, dims: int, query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor],
        kernel_size: Size, dilation: Size) -> torch.Tensor:
    logits = neighborhood_attention_qk(_heads_last("query", query, dims, function),
                                       _heads_last("key", key, dims, function), kernel_size, dilation, rpb)
    return logits.movedim(-2, 1)


def _av(function: str, dims: int, attn: torch.Tensor, value: torch.Tensor, kernel_size: Size,
        dilation: Size) -> torch.Tensor:
    out = neighborhood_attention_av(_heads_last("attn", attn, dims, function),
                                    _heads_last("value", value, dims, function), kernel_size, dilation)
    return out.movedim(-2, 1)


def natten1dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size: int,
                  dilation: int) -> torch.Tensor:
    """1-D logits ``(B, heads, L, K)`` of ``query``/``key`` ``(B, heads, L, dim)``, plus ``rpb`` ``(heads, 2K-1)``
    (or ``None``)."""
    return _qk("natten1dqkrpb", 1, query, key, rpb, kernel_size, dilation)


def natten1dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """1-D output ``(B, heads, L, dim)`` of weights ``(B, heads, L, K)`` and ``value`` ``(B, heads, L, dim)``."""
    return _av("natten1dav", 1, attn, value, kernel_size, dilation)


def natten2dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size: int,
                  dilation: int) -> torch.Tensor:
    """2-D logits ``(B, heads, H, W, K*K)`` of ``query``/``key`` ``(B, heads, H, W, dim)``, plus ``rpb`` ``(heads,
    2K-1, 2K-1)`` (or ``None``)."""
    return _qk("natten2dqkrpb", 2, query, key, rpb, kernel_size, dilation)


def natten2dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """2-D output ``(B, heads, H, W, dim)`` of weights ``(B, heads, H, W, K*K)`` and ``value``."""
    return _av("natten2dav", 2, attn, value, kernel_size, dilation)


def na1d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: Size, dilation: Size = 1,
            additional_keys: Optional[torch.Tensor] = None, is_causal: Any = False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15-0.17's 1-D logits (``rpb`` by keyword)."""
    _refuse_extras("na1d_qk", "additional_keys", additional_keys, is_causal)
    return _qk("na1d_qk", 1, query, key, rpb, kernel_size, dilation)


def na1d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: Size, dilation: Size = 1,
            additional_values: Optional[torch.Tensor] = None, is_causal: Any = False) -> torch.Tensor:
    """NATTEN 0.15-0.17's 1-D output."""
    _refuse_extras("na1d_av", "additional_values", additional_values, is_causal)
    return _av("na1d_av", 1, attn, value, kernel_size, dilation)


def na2d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: Size, dilation: Size = 1,
            additional_keys: Optional[torch.Tensor] = None, is_causal: Any = False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15-0.17's 2-D logits (``rpb`` by keyword); kernel size and dilation may differ per axis."""
    _refuse_extras("na2d_qk", "additional_keys", additional_keys, is_causal)
    return _qk("na2d_qk", 2, query, key, rpb, kernel_size, dilation)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: Size, dilation: Size = 1,
            additional_values: Optional[torch.Tensor] = None, is_causal: Any = False) -> torch.Tensor:
    """NATTEN 0.15-0.17's 2-D output."""
    _refuse_extras("na2d_av", "additional_values", additional_values, is_causal)
    return _av("na2d_av", 2, attn, value, kernel_size, dilation)
