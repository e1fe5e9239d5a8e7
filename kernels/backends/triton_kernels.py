"""Triton kernels for local attention over a 2-D map: neighborhood attention and (shifted) window attention.

One kernel family serves both ops. Each program owns a tile of ``TY x TX`` queries in *logical* coordinates and walks
the key tiles that cover the union of their neighbourhoods. Logical coordinates are where the two ops differ, and only
in a few per-axis helpers:

* neighborhood attention: the logical axis is one dilation group (token ``g + c * d`` has group coordinate ``c``);
  a query's ``K`` keys start at ``clamp(c, left, L_g - 1 - right) - left`` (the window shifts inward at borders);
* window attention: the logical axis is the map rolled by ``-shift`` (logical ``c`` reads position
  ``(c + shift) mod U`` for ``c < U``, the unpadded extent, and ``c`` in the padding after it); a query's keys are
  its window ``[c // w * w, + w)``, and keys of another Swin region of the shifted map are masked.

So roll, window partition, dilation and border clamping are index arithmetic on loads and stores: no copies.
The relative position bias is read at ``(k - q) + K - 1`` in logical coordinates per axis, which is the NAT/DiNAT
convention for NA (the difference in group coordinates) and key minus query inside a window for Swin.

Forward is flash-attention style (online softmax in base 2, fp32 accumulation) and stores the log-sum-exp.
Backward is two passes: per query tile (dQ, the row term ``delta = rowsum(dO * O)``, and the rpb gradient, reduced
into one partial table per program and summed by the host), then per key tile (dK, dV) over every query whose
neighbourhood can hold a key of the tile.

This file is loaded by :mod:`vithub.kernels.backends.triton_fused`, once compiled for CUDA and once, on demand, for
Triton's CPU interpreter (``TRITON_INTERPRET=1``); import it only through that module.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _group_length(length, dilation, group):
    return length // dilation + (group < length % dilation).to(tl.int32)


@triton.jit
def _first_key(coord, group_length, kernel, IS_WINDOW: tl.constexpr):
    """Logical coordinate of the first of the ``kernel`` keys that ``coord`` attends to along one axis."""
    if IS_WINDOW:
        start = (coord // kernel) * kernel
    else:
        left = kernel // 2
        right = kernel - 1 - left
        start = tl.minimum(tl.maximum(coord, left), group_length - 1 - right) - left
    return start


@triton.jit
def _query_span(first, last, group_length, kernel, IS_WINDOW: tl.constexpr):
    """Smallest and largest query whose keys can include a key in ``[first, last]`` along one axis.

    Starts are monotone in the query, so the queries form one interval; at NA borders it reaches further than
    ``kernel // 2``, because border queries all share the window that touches the border.
    """
    if IS_WINDOW:
        lo = (first // kernel) * kernel
        hi = (last // kernel) * kernel + kernel - 1
    else:
        left = kernel // 2
        right = kernel - 1 - left
        lo = tl.where(first - right <= left, 0, first - right)
        hi = tl.where(last + left >= group_length - 1 - right, group_length - 1, last + left)
    return lo, hi


@triton.jit
def _position(coord, group, dilation, shift, length, IS_WINDOW: tl.constexpr):
    """Map position read for a logical coordinate (windows: ``length`` is the unpadded extent that rolls)."""
    if IS_WINDOW:
        # Padding past the unpadded extent stays in place; the shift may exceed that extent, hence a true modulo.
        pos = tl.where(coord < length, (coord + shift) % length, coord)
    else:
        pos = group + coord * dilation
    return pos


@triton.jit
def _region(coord, length, window, shift):
    # Swin's regions of the rolled map; with shift 0 the last window is one region of its own, which masks nothing.
    return (coord >= length - window).to(tl.int32) + (coord >= length - shift).to(tl.int32)


@triton.jit
def _allowed(qy, qx, q_ok, ky, kx, k_ok, len_y, len_x, KH, KW, SH, SW, IS_WINDOW: tl.constexpr):
    """``(queries, keys)`` mask: the key is one of the query's neighbours (and in its Swin region)."""
    start_y = _first_key(qy, len_y, KH, IS_WINDOW)
    start_x = _first_key(qx, len_x, KW, IS_WINDOW)
    ok = q_ok[:, None] & k_ok[None, :]
    ok = ok & (ky[None, :] >= start_y[:, None]) & (ky[None, :] < start_y[:, None] + KH)
    ok = ok & (kx[None, :] >= start_x[:, None]) & (kx[None, :] < start_x[:, None] + KW)
    if IS_WINDOW:
        ok = ok & (_region(qy, len_y, KH, SH)[:, None] == _region(ky, len_y, KH, SH)[None, :])
        ok = ok & (_region(qx, len_x, KW, SW)[:, None] == _region(kx, len_x, KW, SW)[None, :])
    return ok


@triton.jit
def _relative_index(qy, qx, ky, kx, KH, KW):
    """Flat index into one head's ``(2KH-1, 2KW-1)`` rpb table: key minus query, logical coordinates."""
    return (ky[None, :] - qy[:, None] + KH - 1) * (2 * KW - 1) + (kx[None, :] - qx[:, None] + KW - 1)


@triton.jit
def _offsets(b, h, py, px, d, s_b, s_y, s_x, s_h, s_d):
    return b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + py[:, None] * s_y + px[:, None] * s_x + d[None, :] * s_d


@triton.jit
def _program(heads, H, W, DH, DW, tiles_y, tiles_x, TY: tl.constexpr, TX: tl.constexpr):
    """Decode the program ids: batch*heads row, batch, head, dilation group, its lengths and the tile's first coords."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    tx = pid % tiles_x
    ty = (pid // tiles_x) % tiles_y
    group = pid // (tiles_x * tiles_y)
    gy = group // DW
    gx = group % DW
    return (pid, bh, bh // heads, bh % heads, gy, gx, _group_length(H, DH, gy), _group_length(W, DW, gx),
            ty * TY, tx * TX)


@triton.jit
def _lanes(first_y, first_x, end_y, end_x, TY: tl.constexpr, TX: tl.constexpr, LANES: tl.constexpr):
    """Logical coordinates of a ``TY x TX`` tile flattened over ``LANES`` lanes, and which lanes are real."""
    i = tl.arange(0, LANES)
    y = first_y + i // TX
    x = first_x + i % TX
    return y, x, (i < TY * TX) & (y < end_y) & (x < end_x)


@triton.jit
def _positions(y, x, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW: tl.constexpr):
    return _position(y, gy, DH, SH, UH, IS_WINDOW), _position(x, gx, DW, SW, UW, IS_WINDOW)


@triton.jit
def _load(ptr, b, h, py, px, ok, d, d_ok, s_b, s_y, s_x, s_h, s_d):
    return tl.load(ptr + _offsets(b, h, py, px, d, s_b, s_y, s_x, s_h, s_d), mask=ok[:, None] & d_ok[None, :],
                   other=0.0)


@triton.jit
def _dense_offsets(b, h, py, px, d, H, W, heads, D):
    """Offsets into a contiguous ``(B, H, W, heads, D)`` tensor (the outputs and saved out)."""
    return _offsets(b, h, py, px, d, H * W * heads * D, W * heads * D, heads * D, D, 1)


@triton.jit
def _key_span(first, tile, group_length, kernel, IS_WINDOW: tl.constexpr):
    """Logical keys ``[lo, hi]`` that a tile of queries from ``first`` attends to along one axis (starts are
    monotone, so the first and last query bound it)."""
    last = tl.minimum(first + tile - 1, group_length - 1)
    return (_first_key(first, group_length, kernel, IS_WINDOW),
            _first_key(last, group_length, kernel, IS_WINDOW) + kernel - 1)


@triton.jit
def _scores(q, k, qy, qx, q_ok, ky, kx, k_ok, h, RPB, qk_scale, len_y, len_x, KH, KW, SH, SW,
            IS_WINDOW: tl.constexpr, HAS_RPB: tl.constexpr, PRECISION: tl.constexpr):
    """Logits in base-2 units (``log2(e) * (scale q.k + rpb)``), ``-inf`` off the neighbourhood; and the mask."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    ok = _allowed(qy, qx, q_ok, ky, kx, k_ok, len_y, len_x, KH, KW, SH, SW, IS_WINDOW)
    if HAS_RPB:
        rel = _relative_index(qy, qx, ky, kx, KH, KW)
        bias = tl.load(RPB + h * ((2 * KH - 1) * (2 * KW - 1)) + rel, mask=ok, other=0.0)
        s = s + bias.to(tl.float32) * LOG2E
    s = tl.where(ok, s, float("-inf"))
    return s, ok


@triton.jit
def local_attention_fwd(
    Q, K, V, RPB, O, LSE,
    sqb, sqy, sqx, sqh, sqd,
    skb, sky, skx, skh, skd,
    svb, svy, svx, svh, svd,
    H, W, heads, D,
    KH, KW, DH, DW, SH, SW, UH, UW,
    tiles_y, tiles_x,
    scale,
    IS_WINDOW: tl.constexpr, HAS_RPB: tl.constexpr,
    TY: tl.constexpr, TX: tl.constexpr, BQ: tl.constexpr,
    KTY: tl.constexpr, KTX: tl.constexpr, BK: tl.constexpr,
    BD: tl.constexpr, PRECISION: tl.constexpr,
):
    pid, bh, b, h, gy, gx, len_y, len_x, first_y, first_x = _program(heads, H, W, DH, DW, tiles_y, tiles_x, TY, TX)
    # Dilation groups differ in length by one; the grid is sized for the longest.
    if (first_y >= len_y) | (first_x >= len_x):
        return

    qy, qx, q_ok = _lanes(first_y, first_x, len_y, len_x, TY, TX, BQ)
    qpy, qpx = _positions(qy, qx, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW)
    d = tl.arange(0, BD)
    d_ok = d < D
    q = _load(Q, b, h, qpy, qpx, q_ok, d, d_ok, sqb, sqy, sqx, sqh, sqd)
    key_lo_y, key_hi_y = _key_span(first_y, TY, len_y, KH, IS_WINDOW)
    key_lo_x, key_hi_x = _key_span(first_x, TX, len_x, KW, IS_WINDOW)

    qk_scale = scale * LOG2E
    # A finite floor keeps exp2(m_old - m_new) at 1, not NaN, for padding lanes that never see a key.
    m = tl.full([BQ], -1.0e30, tl.float32)
    l = tl.zeros([BQ], tl.float32)
    acc = tl.zeros([BQ, BD], tl.float32)
    for ky0 in range(key_lo_y, key_hi_y + 1, KTY):
        for kx0 in range(key_lo_x, key_hi_x + 1, KTX):
            ky, kx, k_ok = _lanes(ky0, kx0, key_hi_y + 1, key_hi_x + 1, KTY, KTX, BK)
            kpy, kpx = _positions(ky, kx, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW)
            k = _load(K, b, h, kpy, kpx, k_ok, d, d_ok, skb, sky, skx, skh, skd)
            v = _load(V, b, h, kpy, kpx, k_ok, d, d_ok, svb, svy, svx, svh, svd)
            s, ok = _scores(q, k, qy, qx, q_ok, ky, kx, k_ok, h, RPB, qk_scale, len_y, len_x, KH, KW, SH, SW,
                            IS_WINDOW, HAS_RPB, PRECISION)
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new

    l = tl.where(q_ok, l, 1.0)
    out = acc / l[:, None]
    tl.store(O + _dense_offsets(b, h, qpy, qpx, d, H, W, heads, D), out.to(O.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])
    lse_offsets = (bh.to(tl.int64) * H + qpy) * W + qpx
    tl.store(LSE + lse_offsets, m + tl.log2(l), mask=q_ok)


@triton.jit
def local_attention_bwd_query(
    Q, K, V, RPB, O, DO, LSE, DELTA, DQ, DRPB,
    sqb, sqy, sqx, sqh, sqd,
    skb, sky, skx, skh, skd,
    svb, svy, svx, svh, svd,
    sdb, sdy, sdx, sdh, sdd,
    H, W, heads, D,
    KH, KW, DH, DW, SH, SW, UH, UW,
    tiles_y, tiles_x,
    scale,
    IS_WINDOW: tl.constexpr, HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr,
    TY: tl.constexpr, TX: tl.constexpr, BQ: tl.constexpr,
    KTY: tl.constexpr, KTX: tl.constexpr, BK: tl.constexpr,
    BD: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ and ``delta`` per query tile; with ``RPB_GRAD`` also this program's partial rpb gradient."""
    pid, bh, b, h, gy, gx, len_y, len_x, first_y, first_x = _program(heads, H, W, DH, DW, tiles_y, tiles_x, TY, TX)
    if (first_y >= len_y) | (first_x >= len_x):
        return

    qy, qx, q_ok = _lanes(first_y, first_x, len_y, len_x, TY, TX, BQ)
    qpy, qpx = _positions(qy, qx, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW)
    d = tl.arange(0, BD)
    d_ok = d < D
    q = _load(Q, b, h, qpy, qpx, q_ok, d, d_ok, sqb, sqy, sqx, sqh, sqd)
    do = _load(DO, b, h, qpy, qpx, q_ok, d, d_ok, sdb, sdy, sdx, sdh, sdd)
    o = _load(O, b, h, qpy, qpx, q_ok, d, d_ok, H * W * heads * D, W * heads * D, heads * D, D, 1)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    row_offsets = (bh.to(tl.int64) * H + qpy) * W + qpx
    tl.store(DELTA + row_offsets, delta, mask=q_ok)
    lse = tl.load(LSE + row_offsets, mask=q_ok, other=0.0)
    key_lo_y, key_hi_y = _key_span(first_y, TY, len_y, KH, IS_WINDOW)
    key_lo_x, key_hi_x = _key_span(first_x, TX, len_x, KW, IS_WINDOW)

    qk_scale = scale * LOG2E
    table = (2 * KH - 1) * (2 * KW - 1)
    partial = DRPB + ((b.to(tl.int64) * tl.num_programs(0) + pid) * heads + h) * table
    dq = tl.zeros([BQ, BD], tl.float32)
    for ky0 in range(key_lo_y, key_hi_y + 1, KTY):
        for kx0 in range(key_lo_x, key_hi_x + 1, KTX):
            ky, kx, k_ok = _lanes(ky0, kx0, key_hi_y + 1, key_hi_x + 1, KTY, KTX, BK)
            kpy, kpx = _positions(ky, kx, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW)
            k = _load(K, b, h, kpy, kpx, k_ok, d, d_ok, skb, sky, skx, skh, skd)
            v = _load(V, b, h, kpy, kpx, k_ok, d, d_ok, svb, svy, svx, svh, svd)
            s, ok = _scores(q, k, qy, qx, q_ok, ky, kx, k_ok, h, RPB, qk_scale, len_y, len_x, KH, KW, SH, SW,
                            IS_WINDOW, HAS_RPB, PRECISION)
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if RPB_GRAD:
                # Scattered into this program's own table, so only lanes of one program ever meet on an address.
                tl.atomic_add(partial + _relative_index(qy, qx, ky, kx, KH, KW), ds, mask=ok)

    tl.store(DQ + _dense_offsets(b, h, qpy, qpx, d, H, W, heads, D), (dq * scale).to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def local_attention_bwd_key(
    Q, K, V, RPB, DO, LSE, DELTA, DK, DV,
    sqb, sqy, sqx, sqh, sqd,
    skb, sky, skx, skh, skd,
    svb, svy, svx, svh, svd,
    sdb, sdy, sdx, sdh, sdd,
    H, W, heads, D,
    KH, KW, DH, DW, SH, SW, UH, UW,
    tiles_y, tiles_x,
    scale,
    IS_WINDOW: tl.constexpr, HAS_RPB: tl.constexpr,
    TY: tl.constexpr, TX: tl.constexpr, BQ: tl.constexpr,
    KTY: tl.constexpr, KTX: tl.constexpr, BK: tl.constexpr,
    BD: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK and dV per key tile of ``KTY x KTX`` (``tiles_*`` count key tiles here), over the queries that see it."""
    pid, bh, b, h, gy, gx, len_y, len_x, first_y, first_x = _program(heads, H, W, DH, DW, tiles_y, tiles_x,
                                                                       KTY, KTX)
    if (first_y >= len_y) | (first_x >= len_x):
        return

    ky, kx, k_ok = _lanes(first_y, first_x, len_y, len_x, KTY, KTX, BK)
    kpy, kpx = _positions(ky, kx, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW)
    d = tl.arange(0, BD)
    d_ok = d < D
    k = _load(K, b, h, kpy, kpx, k_ok, d, d_ok, skb, sky, skx, skh, skd)
    v = _load(V, b, h, kpy, kpx, k_ok, d, d_ok, svb, svy, svx, svh, svd)
    last_y = tl.minimum(first_y + KTY - 1, len_y - 1)
    last_x = tl.minimum(first_x + KTX - 1, len_x - 1)
    query_lo_y, query_hi_y = _query_span(first_y, last_y, len_y, KH, IS_WINDOW)
    query_lo_x, query_hi_x = _query_span(first_x, last_x, len_x, KW, IS_WINDOW)

    qk_scale = scale * LOG2E
    dk = tl.zeros([BK, BD], tl.float32)
    dv = tl.zeros([BK, BD], tl.float32)
    for qy0 in range(query_lo_y, query_hi_y + 1, TY):
        for qx0 in range(query_lo_x, query_hi_x + 1, TX):
            qy, qx, q_ok = _lanes(qy0, qx0, query_hi_y + 1, query_hi_x + 1, TY, TX, BQ)
            qpy, qpx = _positions(qy, qx, gy, gx, UH, UW, DH, DW, SH, SW, IS_WINDOW)
            q = _load(Q, b, h, qpy, qpx, q_ok, d, d_ok, sqb, sqy, sqx, sqh, sqd)
            do = _load(DO, b, h, qpy, qpx, q_ok, d, d_ok, sdb, sdy, sdx, sdh, sdd)
            row_offsets = (bh.to(tl.int64) * H + qpy) * W + qpx
            lse = tl.load(LSE + row_offsets, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + row_offsets, mask=q_ok, other=0.0)
            s, ok = _scores(q, k, qy, qx, q_ok, ky, kx, k_ok, h, RPB, qk_scale, len_y, len_x, KH, KW, SH, SW,
                            IS_WINDOW, HAS_RPB, PRECISION)
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    out_offsets = _dense_offsets(b, h, kpy, kpx, d, H, W, heads, D)
    kv_mask = k_ok[:, None] & d_ok[None, :]
    tl.store(DK + out_offsets, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_offsets, dv.to(DV.dtype.element_ty), mask=kv_mask)
