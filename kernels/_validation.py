"""Argument checks shared by every attention op and backend.

Each check raises ``ValueError`` naming the argument and the form it expects, so a user who passes channels-first
maps, a kernel larger than the map or an rpb table from another convention learns what went wrong at the call site.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

# An int or a (height, width) pair. Spelled with the types TorchScript knows, so a scripted model can call the ops.
Size2d = Union[int, Tuple[int, int], List[int]]


def pair(value: Size2d, name: str, *, minimum: int = 1) -> Tuple[int, int]:
    """Return ``value`` (an int, or a pair as ``(height, width)``) as an ``(int, int)`` pair, each element
    ``>= minimum``; anything else raises ``ValueError`` naming ``name``. The one int-or-pair parser of vithub."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        items = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        items = tuple(value)
    else:
        raise ValueError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
        if item < minimum:
            raise ValueError(f"{name} must be >= {minimum} in each axis, got {value!r}")
    return int(items[0]), int(items[1])


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q, k, v must be floating tensors of one shape ``(B, H, W, heads, head_dim)``, dtype and device."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, H, W, heads, head_dim), got {type(tensor)}")
        if tensor.dim() != 5:
            raise ValueError(
                f"{name} must have shape (B, H, W, heads, head_dim) (heads-last, 5 dims), got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if any(size == 0 for size in tensor.shape):
            raise ValueError(f"{name} must have no empty dimension, got shape {tuple(tensor.shape)}")
    for name, tensor in (("k", k), ("v", v)):
        if tensor.shape != q.shape:
            raise ValueError(f"{name} must have the same shape as q {tuple(q.shape)}, got {tuple(tensor.shape)}")
        if tensor.dtype != q.dtype:
            raise ValueError(f"{name} must have the same dtype as q ({q.dtype}), got {tensor.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} must be on the same device as q ({q.device}), got {tensor.device}")


def check_rpb(rpb: Optional[torch.Tensor], q: torch.Tensor, kernel: Tuple[int, int]) -> None:
    """rpb must be ``(heads, 2*Kh-1, 2*Kw-1)`` with q's dtype and device."""
    if rpb is None:
        return
    heads = q.shape[3]
    expected = (heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1)
    if not isinstance(rpb, torch.Tensor):
        raise ValueError(f"rpb must be a tensor of shape (heads, 2K-1, 2K-1) = {expected}, got {type(rpb)}")
    if tuple(rpb.shape) != expected:
        raise ValueError(
            f"rpb must have shape (heads, 2*Kh-1, 2*Kw-1) = {expected} (key-minus-query convention), "
            f"got {tuple(rpb.shape)}"
        )
    if rpb.dtype != q.dtype:
        raise ValueError(f"rpb must have the same dtype as q ({q.dtype}), got {rpb.dtype}")
    if rpb.device != q.device:
        raise ValueError(f"rpb must be on the same device as q ({q.device}), got {rpb.device}")


def check_scale(scale: Optional[float], head_dim: int) -> float:
    """Return the softmax scale: ``head_dim ** -0.5`` by default, else a positive finite float."""
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a positive float or None, got {scale!r}")
    if not (scale > 0 and scale != float("inf")):
        raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")
    return float(scale)


def check_neighborhood(q: torch.Tensor, kernel: Tuple[int, int], dilation: Tuple[int, int]) -> None:
    """The map must hold at least ``kernel * dilation`` tokens per axis."""
    height, width = q.shape[1], q.shape[2]
    for axis, size, k, d in (("height", height, kernel[0], dilation[0]), ("width", width, kernel[1], dilation[1])):
        if size < k * d:
            raise ValueError(
                f"feature map {axis} {size} is smaller than kernel_size * dilation = {k} * {d} = {k * d}; "
                "pad the input (the NAT/DiNAT modules do) or use a smaller kernel_size/dilation"
            )


def check_window(q: torch.Tensor, window: Tuple[int, int], shift: Tuple[int, int]) -> None:
    """The map must be a multiple of the window and the shift smaller than the window, per axis."""
    height, width = q.shape[1], q.shape[2]
    for axis, size, w, s in (("height", height, window[0], shift[0]), ("width", width, window[1], shift[1])):
        if size % w != 0:
            raise ValueError(
                f"feature map {axis} {size} must be a multiple of window_size {w}; pad the map first "
                "(the Swin modules pad like timm)"
            )
        if s >= w:
            raise ValueError(f"shift_size must be smaller than window_size in each axis, got shift {s} >= window {w}")


def check_unpadded(q: torch.Tensor, unpadded: Optional[Size2d]) -> Tuple[int, int]:
    """``unpadded_size``: None (the whole map) or ``(h, w)`` with ``1 <= h <= H`` and ``1 <= w <= W``."""
    height, width = q.shape[1], q.shape[2]
    if unpadded is None:
        return height, width
    h, w = pair(unpadded, "unpadded_size")
    if h > height or w > width:
        raise ValueError(
            f"unpadded_size must fit in the map ({height}, {width}) (it is the size before bottom/right padding), "
            f"got {(h, w)}"
        )
    return h, w


def check_carriers(q: torch.Tensor, window: Tuple[int, int], carrier_q: torch.Tensor, carrier_k: torch.Tensor,
                   carrier_v: torch.Tensor) -> None:
    """Carrier q/k/v: ``(B, H/wh, W/ww, E, heads, head_dim)`` (E >= 1 tokens per window) with q's dtype and device."""
    batch, height, width, heads, head_dim = q.shape
    rows, cols = height // window[0], width // window[1]
    for name, tensor in (("carrier_q", carrier_q), ("carrier_k", carrier_k), ("carrier_v", carrier_v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 6:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise ValueError(f"{name} must have shape (B, H/wh, W/ww, carriers, heads, head_dim), got {shape}")
        b, r, c, carriers, h, d = tensor.shape
        if (b, r, c, h, d) != (batch, rows, cols, heads, head_dim) or carriers < 1:
            raise ValueError(
                f"{name} must have shape (B, H/wh, W/ww, carriers, heads, head_dim) = "
                f"({batch}, {rows}, {cols}, carriers >= 1, {heads}, {head_dim}) for q {tuple(q.shape)} and window "
                f"{window}, got {tuple(tensor.shape)}"
            )
        if tensor.shape != carrier_q.shape:
            raise ValueError(
                f"{name} must have the shape of carrier_q {tuple(carrier_q.shape)}, got {tuple(tensor.shape)}")
        if tensor.dtype != q.dtype:
            raise ValueError(f"{name} must have the same dtype as q ({q.dtype}), got {tensor.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} must be on the same device as q ({q.device}), got {tensor.device}")


def _check_tensor(name: str, tensor: object, form: str, dims: int) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {form}, got {type(tensor)}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must have shape {form} ({dims} dims), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must have no empty dimension, got shape {tuple(tensor.shape)}")
    return tensor


def _check_like(name: str, tensor: torch.Tensor, q: torch.Tensor) -> None:
    if tensor.dtype != q.dtype:
        raise ValueError(f"{name} must have the same dtype as q ({q.dtype}), got {tensor.dtype}")
    if tensor.device != q.device:
        raise ValueError(f"{name} must be on the same device as q ({q.device}), got {tensor.device}")


def check_table_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: Optional[torch.Tensor],
                          stride: int) -> None:
    """Shapes of :func:`vithub.kernels.table_bias_attention`: k ``(B, H, W, heads, d)``, v ``(B, H, W, heads, dv)``,
    q ``(B, ceil(H/stride), ceil(W/stride), heads, d)``, table ``(heads, H, W)``."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"query_stride must be an int >= 1, got {stride!r}")
    if bias_table is None and _table_call_is_well_formed(q, k, v, stride):
        return  # the common call, checked in a few comparisons; anything else gets the full checks and messages
    form = "(B, H, W, heads, head_dim)"
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, tensor, form, 5)
    batch, height, width, heads, head_dim = k.shape
    if v.shape[:4] != k.shape[:4]:
        raise ValueError(f"v must have shape (B, H, W, heads, value_dim) with (B, H, W, heads) of k "
                         f"{tuple(k.shape[:4])}, got {tuple(v.shape)}")
    expected = (batch, -(-height // stride), -(-width // stride), heads, head_dim)
    if tuple(q.shape) != expected:
        raise ValueError(f"q must have shape (B, ceil(H/query_stride), ceil(W/query_stride), heads, head_dim) = "
                         f"{expected} for k {tuple(k.shape)} and query_stride {stride}, got {tuple(q.shape)}")
    for name, tensor in (("k", k), ("v", v)):
        _check_like(name, tensor, q)
    if bias_table is None:
        return
    table_form = f"(heads, H, W) = {(heads, height, width)}"
    _check_tensor("bias_table", bias_table, table_form, 3)
    if tuple(bias_table.shape) != (heads, height, width):
        raise ValueError(f"bias_table must have shape {table_form} (entry [h, |dy|, |dx|]) for the key map "
                         f"{(height, width)}, got {tuple(bias_table.shape)}")
    _check_like("bias_table", bias_table, q)


def _table_call_is_well_formed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int) -> bool:
    if not (type(q) is type(k) is type(v) is torch.Tensor) or q.dim() != 5 or k.dim() != 5 or v.dim() != 5:
        return False
    batch, height, width, heads, head_dim = k.shape
    return (q.shape == (batch, -(-height // stride), -(-width // stride), heads, head_dim)
            and v.shape[:4] == k.shape[:4] and v.shape[4] > 0 and q.numel() > 0 and k.numel() > 0
            and q.is_floating_point() and q.dtype == k.dtype == v.dtype and q.device == k.device == v.device)


def check_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> None:
    """Shapes of :func:`vithub.kernels.relu_linear_attention`: q, k ``(B, *tokens, heads, d)``, v ``(B, *tokens,
    heads, dv)``."""
    form = "(B, *tokens, heads, head_dim)"
    dims = q.dim() if isinstance(q, torch.Tensor) and q.dim() >= 4 else 4  # at least one token axis
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, tensor, form, dims)
    if k.shape != q.shape:
        raise ValueError(f"k must have the same shape as q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v must have shape (B, *tokens, heads, value_dim) with the leading dims of q "
                         f"{tuple(q.shape[:-1])}, got {tuple(v.shape)}")
    for name, tensor in (("k", k), ("v", v)):
        _check_like(name, tensor, q)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < float("inf")):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")


def check_gathered_bias(bias: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    """A gathered table bias must be ``(heads, Hq*Wq, H*W)`` with q's dtype and device."""
    heads = k.shape[3]
    expected = (heads, q.shape[1] * q.shape[2], k.shape[1] * k.shape[2])
    form = f"(heads, Hq*Wq, H*W) = {expected}"
    _check_tensor("gathered_bias", bias, form, 3)
    if tuple(bias.shape) != expected:
        raise ValueError(f"gathered_bias must have shape {form} (from gather_table_bias), got {tuple(bias.shape)}")
    _check_like("gathered_bias", bias, q)


def check_global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor],
                           key_mask: Optional[torch.Tensor], query_mask: Optional[torch.Tensor] = None) -> None:
    """Shapes of :func:`vithub.kernels.global_attention`: q ``(B, Nq, heads, d)``, k ``(B, N, heads, d)``, v ``(B, N,
    heads, dv)``, key_bias and key_mask ``(B, N)``, query_mask ``(B, Nq)``."""
    form = "(B, tokens, heads, head_dim)"
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, tensor, form, 4)
    batch, tokens, heads, head_dim = k.shape
    if q.shape[0] != batch or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q must have shape (B, query_tokens, heads, head_dim) with B, heads, head_dim of k "
                         f"{tuple(k.shape)}, got {tuple(q.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must have shape (B, tokens, heads, value_dim) with (B, tokens, heads) of k "
                         f"{tuple(k.shape[:3])}, got {tuple(v.shape)}")
    for name, tensor in (("k", k), ("v", v)):
        _check_like(name, tensor, q)
    for name, tensor in (("key_bias", key_bias), ("key_mask", key_mask), ("query_mask", query_mask)):
        if tensor is None:
            continue
        expected = (batch, q.shape[1]) if name == "query_mask" else (batch, tokens)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            what = "(B, query_tokens)" if name == "query_mask" else "(B, tokens)"
            raise ValueError(f"{name} must be a tensor of shape {what} = {expected}, got {shape}")
        if tensor.device != q.device:
            raise ValueError(f"{name} must be on the same device as q ({q.device}), got {tensor.device}")
        if name == "key_bias" and tensor.dtype != q.dtype:
            raise ValueError(f"key_bias must have the same dtype as q ({q.dtype}), got {tensor.dtype}")
        if name in ("key_mask", "query_mask") and tensor.dtype not in (torch.bool, q.dtype):
            raise ValueError(f"{name} must be bool (keep where True) or q's dtype {q.dtype} (weights in [0, 1]), "
                             f"got {tensor.dtype}")
