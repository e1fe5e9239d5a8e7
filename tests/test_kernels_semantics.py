"""Semantics of the attention ops against oracles that do not share code with them.

* hand-written neighbourhood tables (NATTEN's documented behaviour at borders, with dilation, even kernels);
* a per-query Python loop in float64 that finds each neighbourhood by its defining property;
* timm's own Swin attention (roll, partition, region mask, rpb) for window attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vithub.kernels import (
    BackendUnavailableError,
    neighborhood_attention,
    rpb_from_swin_table,
    use_backend,
    window_attention,
)
from vithub.kernels.backends.reference import neighborhood_indices

from oracles import loop_attention

BACKENDS = ["reference", "torch"]


# --- neighbourhood tables -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "length, kernel, dilation, expected",
    [
        # Odd kernel: the window shifts inward at both borders, so every query sees exactly K keys.
        (5, 3, 1, [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]),
        # Even kernel: left = K // 2 = 2, right = K // 2 - 1 = 1.
        (6, 4, 1, [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [2, 3, 4, 5]]),
        # Dilation 2 on 9 tokens: groups {0,2,4,6,8} (length 5) and {1,3,5,7} (length 4).
        (9, 3, 2, [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7], [4, 6, 8], [3, 5, 7],
                   [4, 6, 8]]),
        # Map exactly K * d long: every group holds exactly one window.
        (6, 3, 2, [[0, 2, 4], [1, 3, 5]] * 3),
    ],
)
def test_neighborhood_tables(length, kernel, dilation, expected):
    assert neighborhood_indices(length, kernel, dilation).tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "height, width, kernel, dilation",
    [(7, 9, (3, 3), (1, 2)), (8, 5, (4, 2), (2, 1)), (6, 6, (3, 3), (2, 2)), (5, 7, (5, 3), (1, 1))],
)
def test_neighborhood_matches_python_loop(backend, height, width, kernel, dilation):
    gen = torch.Generator().manual_seed(height * 31 + width)
    q, k, v = (torch.randn(2, height, width, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=gen, dtype=torch.float64)
    expected = loop_attention(q, k, v, kernel, dilation, rpb, 0.7)
    got = neighborhood_attention(q, k, v, kernel, dilation, rpb=rpb, scale=0.7, backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rpb_sign_is_key_minus_query(backend):
    """A bias only at offset (+1, 0) must pull every query towards the key one row below it."""
    height, width, kernel = 7, 7, 3
    q = torch.zeros(1, height, width, 1, 4, dtype=torch.float64)
    k = torch.randn(1, height, width, 1, 4, dtype=torch.float64)
    v = torch.arange(height * width, dtype=torch.float64).view(1, height, width, 1, 1).expand(-1, -1, -1, -1, 4)
    rpb = torch.zeros(1, 5, 5, dtype=torch.float64)
    rpb[0, 1 + kernel - 1, 0 + kernel - 1] = 200.0  # key row = query row + 1, same column
    out = neighborhood_attention(q, k, v, kernel, rpb=rpb, backend=backend)[0, :, :, 0, 0]
    for y in range(height - 1):
        for x in range(width):
            assert out[y, x].item() == pytest.approx((y + 1) * width + x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dilation_groups_do_not_mix(backend):
    """With dilation 2, changing odd-row keys must leave even-row queries untouched."""
    q, k, v = (torch.randn(1, 10, 6, 2, 4, dtype=torch.float64) for _ in range(3))
    base = neighborhood_attention(q, k, v, 3, (2, 1), backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, 1::2] = torch.randn_like(k2[:, 1::2])
    v2[:, 1::2] = torch.randn_like(v2[:, 1::2])
    moved = neighborhood_attention(q, k2, v2, 3, (2, 1), backend=backend)
    torch.testing.assert_close(moved[:, 0::2], base[:, 0::2], rtol=0, atol=0)
    assert not torch.allclose(moved[:, 1::2], base[:, 1::2])


# --- window attention against timm's Swin ---------------------------------------------------------------------------

def timm_swin_attention(qkv, window, shift, table):
    """timm's own SwinTransformerBlock path (roll, window_partition, WindowAttention, reverse, roll)."""
    from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

    batch, height, width, _, heads, head_dim = qkv.shape
    dim = heads * head_dim
    block = SwinTransformerBlock(dim, (height, width), num_heads=heads, window_size=window, shift_size=shift)
    block = block.to(qkv.dtype).eval()
    block.attn.qkv = torch.nn.Identity()
    block.attn.proj = torch.nn.Identity()
    with torch.no_grad():
        block.attn.relative_position_bias_table.copy_(table)
    # timm shrinks the window to the map and drops the shift along an axis the window covers: use what it chose.
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    x = qkv.reshape(batch, height, width, 3 * dim)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(x, window).view(-1, window[0] * window[1], 3 * dim)
    out = block.attn(windows, mask=block.attn_mask).view(-1, window[0], window[1], dim)
    out = window_reverse(out, window, height, width)
    out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out.view(batch, height, width, heads, head_dim), window, shift


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("height, width, window, shift", [(8, 12, 4, 0), (8, 12, 4, 2), (14, 7, 7, 3), (6, 9, 3, 1)])
def test_window_attention_matches_timm_swin(backend, height, width, window, shift):
    heads, head_dim = 3, 8
    gen = torch.Generator().manual_seed(height * 7 + width + shift)
    qkv = torch.randn(2, height, width, 3, heads, head_dim, generator=gen, dtype=torch.float64)
    table = torch.randn((2 * window - 1) ** 2, heads, generator=gen, dtype=torch.float64)
    expected, used_window, used_shift = timm_swin_attention(qkv, window, shift, table)
    rpb = rpb_from_swin_table(table, window)
    q, k, v = qkv.unbind(3)
    if used_window != (window, window):
        # Crop the table to the window timm used along each axis (centre rows/cols of the full table).
        rpb = rpb[:, window - used_window[0]:window + used_window[0] - 1, window - used_window[1]:window + used_window[1] - 1]
    got = window_attention(q, k, v, used_window, used_shift, rpb=rpb, backend=backend)
    # timm masks with -100 rather than -inf: exp(-100) leaves ~1e-44 of other regions in the mix.
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_equals_neighborhood_when_window_covers_map(backend):
    """With one window covering the map and no shift, window attention is full attention, as is NA with K = L."""
    q, k, v = (torch.randn(2, 5, 5, 2, 4, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(
        window_attention(q, k, v, 5, 0, rpb, backend=backend),
        neighborhood_attention(q, k, v, 5, 1, rpb, backend=backend),
    )


# --- inputs, layouts, errors, dispatch ------------------------------------------------------------------------------

def test_strided_qkv_views_are_accepted():
    qkv = torch.randn(2, 9, 10, 3, 2, 8)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    for op, size in ((neighborhood_attention, 3), (window_attention, 1)):
        got = op(q, k, v, size, backend="torch")
        expected = op(q.contiguous(), k.contiguous(), v.contiguous(), size, backend="reference")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = (torch.randn(1, 6, 6, 2, 16, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(
        neighborhood_attention(q, k, v, 3), neighborhood_attention(q, k, v, 3, scale=16 ** -0.5)
    )
    assert not torch.allclose(neighborhood_attention(q, k, v, 3), neighborhood_attention(q, k, v, 3, scale=1.0))


def _qkv(*shape, dtype=torch.float32):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2), 3), r"q must have shape \(B, H, W, heads, head_dim\)"),
        (lambda: neighborhood_attention(_qkv(1, 8, 8, 2, 4)[0], *_qkv(1, 8, 9, 2, 4)[:2], 3), "k must have the same shape"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4)[:2], torch.randn(1, 8, 8, 2, 4, dtype=torch.float64), 3),
         "v must have the same dtype"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), 3, rpb=torch.randn(2, 3, 3)), r"rpb must have shape"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), 3, rpb=torch.randn(3, 5, 5)), r"\(2, 5, 5\)"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 5, 2, 4), 3, dilation=2), "width 5 is smaller than kernel_size"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), 0), "kernel_size must be >= 1"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), (3, 3, 3)), "kernel_size must be an int or a pair"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), 3, dilation=-1), "dilation must be >= 1"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), 3, scale=-1.0), "scale must be a positive"),
        (lambda: neighborhood_attention(*_qkv(1, 8, 8, 2, 4), 3, backend="cuda"), "backend must be None or one of"),
        (lambda: window_attention(*_qkv(1, 8, 10, 2, 4), 4), "width 10 must be a multiple of window_size 4"),
        (lambda: window_attention(*_qkv(1, 8, 8, 2, 4), 4, shift_size=4), "shift_size must be smaller"),
        (lambda: window_attention(*_qkv(1, 8, 8, 2, 4), 4, shift_size=-1), "shift_size must be >= 0"),
        (lambda: window_attention(*_qkv(1, 8, 8, 2, 4), 4, rpb=torch.randn(2, 7, 7, dtype=torch.float64)),
         "rpb must have the same dtype"),
        (lambda: rpb_from_swin_table(torch.randn(49, 3), 7), r"table must have shape \(\(2wh-1\)\*\(2ww-1\), heads\)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_integer_tensors_are_rejected():
    q = torch.ones(1, 4, 4, 1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="q must be a floating-point tensor"):
        neighborhood_attention(q, q, q, 3)


def test_triton_backend_never_falls_back_silently(monkeypatch):
    """On CPU without the interpreter, an explicit "triton" is refused with the way out, never run on torch."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = _qkv(1, 8, 8, 2, 4)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1|not installed"):
        neighborhood_attention(q, k, v, 3, backend="triton")
    with use_backend("triton"), pytest.raises(BackendUnavailableError, match="triton"):
        window_attention(q, k, v, 4)


def test_use_backend_context_routes_calls(monkeypatch):
    from vithub.kernels.backends import reference

    calls = []
    original = reference.neighborhood_attention
    monkeypatch.setattr(reference, "neighborhood_attention", lambda *a: calls.append(1) or original(*a))
    q, k, v = _qkv(1, 8, 8, 2, 4)
    neighborhood_attention(q, k, v, 3)
    assert calls == []
    with use_backend("reference"):
        neighborhood_attention(q, k, v, 3)
        neighborhood_attention(q, k, v, 3, backend="torch")  # the explicit argument wins over the context
    assert calls == [1]
    with pytest.raises(ValueError, match="name must be None or one of"):
        with use_backend("fast"):
            pass


@pytest.mark.parametrize("size, unpadded, window, shift", [((14, 21), (11, 17), 7, 3), ((8, 12), (6, 12), 4, (2, 1))])
def test_window_unpadded_size_is_timms_roll_then_pad(size, unpadded, window, shift):
    """timm's Swin rolls the unpadded map, zero-pads it at the bottom/right, attends in windows with the mask of the
    padded map, then crops and rolls back; with unpadded_size the op does exactly that, on the padded map."""
    from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention, window_partition, window_reverse

    shift = (shift, shift) if isinstance(shift, int) else shift
    heads, head_dim = 2, 8
    dim = heads * head_dim
    gen = torch.Generator().manual_seed(sum(size))
    qkv = torch.randn(2, *unpadded, 3 * dim, generator=gen)
    attn = WindowAttention(dim, heads, window_size=window)
    attn.qkv, attn.proj = torch.nn.Identity(), torch.nn.Identity()
    block = SwinTransformerBlock(dim, size, num_heads=heads, window_size=window, shift_size=shift[0],
                                 always_partition=True, dynamic_mask=True)
    block.shift_size = shift
    # timm's order, literally.
    rolled = torch.roll(qkv, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    padded = F.pad(rolled, (0, 0, 0, size[1] - unpadded[1], 0, size[0] - unpadded[0]))
    windows = window_partition(padded, (window, window)).view(-1, window * window, 3 * dim)
    out = attn(windows, mask=block.get_attn_mask(padded)).view(-1, window, window, dim)
    expected = window_reverse(out, (window, window), *size)[:, :unpadded[0], :unpadded[1]]
    expected = torch.roll(expected, shifts=shift, dims=(1, 2))
    # The op on the padded map (padding in place, zeros as timm's), cropped.
    q, k, v = F.pad(qkv, (0, 0, 0, size[1] - unpadded[1], 0, size[0] - unpadded[0])).view(
        2, *size, 3, heads, head_dim).unbind(3)
    rpb = rpb_from_swin_table(attn.relative_position_bias_table.detach(), window)
    for backend in ("reference", "torch"):
        got = window_attention(q, k, v, window, shift, rpb, backend=backend, unpadded_size=unpadded)
        torch.testing.assert_close(got[:, :unpadded[0], :unpadded[1]].reshape(expected.shape), expected,
                                   rtol=1e-5, atol=1e-5)


def test_unpadded_size_is_validated():
    q, k, v = _qkv(1, 8, 8, 2, 4)
    with pytest.raises(ValueError, match="unpadded_size must fit"):
        window_attention(q, k, v, 4, 2, unpadded_size=(9, 8))


def test_orderings_keep_ties_in_index_order():
    """Token reduction's orderings (vithub.kernels.ordering), eager form: ties in index order. (Under an ONNX export
    they take TopK, whose ties are in index order by the ONNX spec; the token-reduction export tests compare ONNX
    Runtime with eager.)"""
    from vithub.kernels import ordering

    values = torch.tensor([[3.0, 1.0, 3.0, -float("inf"), 1.0, 7.0], [0.0, 0.0, 2.0, 2.0, -1.0, 0.0]])
    assert ordering.ascending_order(values).tolist() == [[3, 1, 4, 0, 2, 5], [4, 0, 1, 5, 2, 3]]
    assert ordering.descending_order(values).tolist() == [[5, 0, 2, 1, 4, 3], [2, 3, 0, 1, 5, 4]]
    assert ordering.ascending(torch.tensor([[5, 2, 9, 0], [1, 8, 3, 4]])).tolist() == [[0, 2, 5, 9], [1, 3, 4, 8]]
