"""Unfused neighborhood attention: the logits and the weighted sum as two ops, 1-D and 2-D, heads-last.

``neighborhood_attention_qk`` → softmax (and whatever a caller does to the weights: dropout, returning them) →
``neighborhood_attention_av`` equals the fused :func:`~vithub.kernels.neighborhood_attention` (NATTEN's semantics:
dilation groups, even and odd kernels, windows shifted inward at the borders, rpb indexed by key minus query). These
are the ops NATTEN 0.20 dropped (``na2d_qk``/``na2d_av``, ``natten2dqkrpb``/``natten2dav``), which code written for
older NATTEN calls; :mod:`vithub.compat.natten` gives them NATTEN's old names and heads-first layouts.

Backends: ``reference`` (one gather of every neighbourhood and an einsum, float64-capable) and ``torch`` (one kernel
offset at a time, memory of the inputs); both are plain tensor code, so autograd, ``torch.compile`` and ONNX export
take them as they are. No Triton kernel: ``None`` picks ``torch`` on every device.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .registry import get_backend, select_backend

Size = Union[int, Sequence[int]]


def _sizes(value: Size, name: str, dims: int) -> Tuple[int, ...]:
    """``value`` as ``dims`` ints >= 1 (an int applies to every axis)."""
    form = "an int" if dims == 1 else f"an int or {dims} ints"
    items = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (tuple, list, torch.Size)) or len(items) != dims or any(
            isinstance(item, bool) or not isinstance(item, int) or item < 1 for item in items):
        raise ValueError(f"{name} must be {form} >= 1 for {dims}-D neighborhood attention, got {value!r}")
    return tuple(int(item) for item in items)


def _spatial_dims(name: str, tensor: object) -> int:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (4, 5):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, L, heads, dim) (1-D) or (B, H, W, heads, dim) "
                         f"(2-D), heads-last, got {shape}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if any(size == 0 for size in tensor.shape):
        raise ValueError(f"{name} must have no empty dimension, got shape {tuple(tensor.shape)}")
    return tensor.dim() - 3


def _check_pair(name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor, last: str) -> None:
    if tensor.shape[:-1] != other.shape[:-1]:
        raise ValueError(f"{name} {tuple(tensor.shape)} and {other_name} {tuple(other.shape)} must agree in every "
                         f"dimension but the last ({last})")
    if tensor.dtype != other.dtype or tensor.device != other.device:
        raise ValueError(f"{name} and {other_name} must share dtype and device, got {tensor.dtype} on "
                         f"{tensor.device} and {other.dtype} on {other.device}")


def _check_map(tensor: torch.Tensor, kernel: Tuple[int, ...], dilation: Tuple[int, ...]) -> None:
    for axis, (size, k, d) in enumerate(zip(tensor.shape[1:-2], kernel, dilation)):
        if size < k * d:
            raise ValueError(f"spatial axis {axis} has {size} tokens, fewer than kernel_size * dilation = {k} * {d}; "
                             "pad the input or use a smaller kernel_size/dilation")


def neighborhood_attention_qk(q: torch.Tensor, k: torch.Tensor, kernel_size: Size, dilation: Size = 1,
                              rpb: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Neighborhood attention logits: ``q_i . k_j`` for every key ``j`` in query ``i``'s neighbourhood, plus
    ``rpb`` (no scale: scale ``q`` first, as NATTEN's unfused ops expect).

    Args:
        q, k: ``(B, L, heads, dim)`` (1-D) or ``(B, H, W, heads, dim)`` (2-D).
        kernel_size, dilation: an int or one per spatial axis.
        rpb: ``(heads, 2K-1)`` (1-D) or ``(heads, 2Kh-1, 2Kw-1)`` (2-D), indexed by ``(key - query) / dilation + K
            - 1`` per axis.
        backend: ``None``, ``"reference"`` or ``"torch"``.

    Returns:
        ``(B, *spatial, heads, prod(kernel))``: each query's neighbours in row-major order of their offset from the
        window start (NATTEN's order).
    """
    dims = _spatial_dims("q", q)
    _spatial_dims("k", k)
    _check_pair("k", k, "q", q, "dim")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have q's head dim {q.shape[-1]}, got {k.shape[-1]}")
    kernel, steps = _sizes(kernel_size, "kernel_size", dims), _sizes(dilation, "dilation", dims)
    _check_map(q, kernel, steps)
    if rpb is not None:
        expected = (q.shape[-2], *(2 * size - 1 for size in kernel))
        if not isinstance(rpb, torch.Tensor) or tuple(rpb.shape) != expected:
            got = tuple(rpb.shape) if isinstance(rpb, torch.Tensor) else type(rpb).__name__
            raise ValueError(f"rpb must have shape (heads, {', '.join('2K-1' for _ in kernel)}) = {expected}, got "
                             f"{got}")
        if rpb.dtype != q.dtype or rpb.device != q.device:
            raise ValueError(f"rpb must have q's dtype and device ({q.dtype} on {q.device}), got {rpb.dtype} on "
                             f"{rpb.device}")
    name = select_backend("neighborhood_qk", backend, q)
    return get_backend(name).neighborhood_qk(q, k, rpb, kernel, steps)


def neighborhood_attention_av(attn: torch.Tensor, v: torch.Tensor, kernel_size: Size, dilation: Size = 1,
                              backend: Optional[str] = None) -> torch.Tensor:
    """Neighborhood attention output: each query's weights over its neighbourhood (``attn``, in the order
    :func:`neighborhood_attention_qk` gives, usually its softmax) times those neighbours' values.

    Args:
        attn: ``(B, *spatial, heads, prod(kernel))``.
        v: ``(B, L, heads, value_dim)`` (1-D) or ``(B, H, W, heads, value_dim)`` (2-D).
        kernel_size, dilation: an int or one per spatial axis, as for the logits.
        backend: ``None``, ``"reference"`` or ``"torch"``.

    Returns:
        ``(B, *spatial, heads, value_dim)``.
    """
    dims = _spatial_dims("v", v)
    _spatial_dims("attn", attn)
    _check_pair("attn", attn, "v", v, "neighbours / value_dim")
    kernel, steps = _sizes(kernel_size, "kernel_size", dims), _sizes(dilation, "dilation", dims)
    neighbours = 1
    for size in kernel:
        neighbours *= size
    if attn.shape[-1] != neighbours:
        raise ValueError(f"attn's last dimension must be prod(kernel_size) = {neighbours}, got {attn.shape[-1]}")
    _check_map(v, kernel, steps)
    name = select_backend("neighborhood_av", backend, v)
    return get_backend(name).neighborhood_av(attn, v, kernel, steps)
