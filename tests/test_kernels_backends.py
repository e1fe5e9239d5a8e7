"""Every fast backend against ``reference``: outputs and gradients (q, k, v, rpb), over random configurations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracles import assert_compiled_matches_eager, outputs_and_grads
from vithub.kernels import custom_ops, neighborhood_attention, window_attention

# "onnx": the standard-operator forms an ONNX export holds, run eagerly (tests/test_export.py checks the exports).
FAST_BACKENDS = ["torch", "onnx"]
TOLERANCE = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def neighborhood_cases(draw):
    kernel = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    # Sizes from exactly K * d (the smallest legal map) up to a few tiles, odd and non-square.
    height = draw(st.integers(kernel[0] * dilation[0], kernel[0] * dilation[0] + 12))
    width = draw(st.integers(kernel[1] * dilation[1], kernel[1] * dilation[1] + 12))
    return dict(
        batch=draw(st.integers(1, 2)), height=height, width=width, heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([1, 4, 8])), kernel=kernel, dilation=dilation,
        with_rpb=draw(st.booleans()), dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def window_cases(draw):
    window = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    shift = (draw(st.integers(0, window[0] - 1)), draw(st.integers(0, window[1] - 1)))
    height, width = window[0] * draw(st.integers(1, 4)), window[1] * draw(st.integers(1, 4))
    # Swin pads to a window multiple after rolling: the unpadded map is up to one window smaller.
    unpadded = (height - draw(st.integers(0, window[0] - 1)), width - draw(st.integers(0, window[1] - 1)))
    return dict(
        batch=draw(st.integers(1, 2)), height=height, width=width, unpadded=unpadded, heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([1, 4, 8])), window=window, shift=shift, with_rpb=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])), seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_inputs(case, table):
    gen = torch.Generator().manual_seed(case["seed"])
    shape = (case["batch"], case["height"], case["width"], case["heads"], case["head_dim"])
    q, k, v = (torch.randn(*shape, generator=gen, dtype=case["dtype"]) for _ in range(3))
    rpb = None
    if case["with_rpb"]:
        rpb = torch.randn(case["heads"], 2 * table[0] - 1, 2 * table[1] - 1, generator=gen, dtype=case["dtype"])
    grad_out = torch.randn(*shape, generator=gen, dtype=case["dtype"])
    return q, k, v, rpb, grad_out


def assert_backends_agree(fn_for_backend, case, table):
    q, k, v, rpb, grad_out = make_inputs(case, table)
    ref_out, ref_grads = outputs_and_grads(fn_for_backend("reference"), q, k, v, rpb, grad_out)
    for backend in FAST_BACKENDS:
        out, grads = outputs_and_grads(fn_for_backend(backend), q, k, v, rpb, grad_out)
        torch.testing.assert_close(out, ref_out, **TOLERANCE[case["dtype"]])
        for name, got, expected in zip(("q", "k", "v", "rpb"), grads, ref_grads):
            torch.testing.assert_close(got, expected, **TOLERANCE[case["dtype"]], msg=lambda m: f"grad {name}: {m}")


@SETTINGS
@given(neighborhood_cases())
def test_neighborhood_backends_match_reference(case):
    def fn_for(backend):
        return lambda q, k, v, rpb: neighborhood_attention(q, k, v, case["kernel"], case["dilation"], rpb,
                                                           backend=backend)

    assert_backends_agree(fn_for, case, case["kernel"])


@SETTINGS
@given(window_cases())
def test_window_backends_match_reference(case):
    def fn_for(backend):
        return lambda q, k, v, rpb: window_attention(q, k, v, case["window"], case["shift"], rpb, backend=backend,
                                                     unpadded_size=case["unpadded"])

    assert_backends_agree(fn_for, case, case["window"])


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("kernel, dilation", [(3, 1), ((2, 3), (2, 1))])
def test_neighborhood_gradcheck(backend, kernel, dilation):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 7, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rpb = torch.randn(2, 2 * kh - 1, 2 * kw - 1, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, rpb: neighborhood_attention(q, k, v, kernel, dilation, rpb, backend=backend), (q, k, v, rpb)
    )


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_window_gradcheck(backend):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, 4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, rpb: window_attention(q, k, v, (3, 2), (1, 1), rpb, backend=backend), (q, k, v, rpb)
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float64_reference(dtype):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 12, 10, 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 9, 9, generator=gen, dtype=torch.float64)
    expected = neighborhood_attention(q, k, v, 5, 2, rpb, backend="reference")
    got = neighborhood_attention(q.to(dtype), k.to(dtype), v.to(dtype), 5, 2, rpb.to(dtype), backend="torch")
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=0.05, atol=0.05)


def test_torch_backend_memory_is_local():
    """No (H*W)^2 buffer: the largest saved tensor stays O(B*H*W*heads*R^2) with R = tile + K - 1."""
    from vithub.kernels.backends import torch_tiled as tiled

    height = width = 96
    q, k, v = (torch.randn(1, height, width, 1, 8, requires_grad=True) for _ in range(3))
    rpb = torch.randn(1, 5, 5, requires_grad=True)
    largest = 0

    def pack(tensor):
        nonlocal largest
        largest = max(largest, tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        neighborhood_attention(q, k, v, 3, rpb=rpb, backend="torch")
    tile = tiled.DEFAULT_NA_TILE
    region = tile + 3 - 1
    # Query slots are rounded up to whole tiles per axis.
    assert largest <= (height + tile) * (width + tile) * region * region
    assert largest < (height * width) ** 2 // 50


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fullgraph_compile_matches_eager(backend):
    """The ops are torch.library custom ops: fullgraph=True compiles a block with no graph break, and outputs and
    every parameter gradient equal eager's."""
    assert_compiled_matches_eager(backend, head_dim=8)


def _custom_op_cases():
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 8, 12, 3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.unbind(3)  # strided views, as out of a fused projection
    na_rpb = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    window_rpb = torch.randn(2, 7, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    for backend in ("torch", "reference"):
        yield custom_ops.neighborhood_attention_op, (q, k, v, na_rpb, [3, 3], [2, 1], 0.4, backend)
        yield custom_ops.neighborhood_attention_op, (q, k, v, None, [4, 3], [1, 2], 0.4, backend)
        yield custom_ops.window_attention_op, (q, k, v, window_rpb, [4, 4], [2, 1], 0.4, backend, [8, 12])
        yield custom_ops.window_attention_op, (q, k, v, None, [4, 6], [0, 3], 0.4, backend, [7, 10])


@pytest.mark.parametrize("op, args", list(_custom_op_cases()))
def test_custom_ops_pass_opcheck_and_gradcheck(op, args):
    """torch.library.opcheck: schema, fake implementation, autograd registration, AOT dispatch; then gradcheck of
    the registered backward (which differentiates the backend with torch.func)."""
    torch.library.opcheck(op, args)
    q, k, v, rpb, *rest = args
    inputs = (q, k, v) if rpb is None else (q, k, v, rpb)

    def call(*tensors):
        bias = tensors[3] if len(tensors) == 4 else None
        return op(tensors[0], tensors[1], tensors[2], bias, *rest)

    assert torch.autograd.gradcheck(call, inputs)
