"""table_bias_attention and relu_linear_attention: loop oracles, backends against the reference (outputs and
gradients, hypothesis over shapes), fp32 accumulation, torch.compile, and argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vithub.kernels import BackendUnavailableError, relu_linear_attention, table_bias_attention, use_backend


def loop_table_attention(q, k, v, table, stride, scale):
    """Per-query float64 loop; shares no code with vithub."""
    batch, q_height, q_width, heads, _ = q.shape
    height, width = k.shape[1], k.shape[2]
    out = torch.zeros(batch, q_height, q_width, heads, v.shape[-1], dtype=q.dtype)
    for b, i, j, h in itertools.product(range(batch), range(q_height), range(q_width), range(heads)):
        logits = torch.stack([
            scale * torch.dot(q[b, i, j, h], k[b, y, x, h])
            + (table[h, abs(i * stride - y), abs(j * stride - x)] if table is not None else 0.0)
            for y in range(height) for x in range(width)
        ])
        weights = logits.softmax(0)
        keys = [(y, x) for y in range(height) for x in range(width)]
        out[b, i, j, h] = sum(w * v[b, y, x, h] for w, (y, x) in zip(weights, keys))
    return out


def loop_linear_attention(q, k, v, eps):
    batch, height, width, heads, _ = q.shape
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    tokens = list(itertools.product(range(height), range(width)))
    for b, (i, j), h in itertools.product(range(batch), tokens, range(heads)):
        weights = [torch.dot(q[b, i, j, h].relu(), k[b, y, x, h].relu()) for y, x in tokens]
        out[b, i, j, h] = sum(w * v[b, y, x, h] for w, (y, x) in zip(weights, tokens)) / (sum(weights) + eps)
    return out


def table_inputs(batch, height, width, heads, head_dim, value_dim, stride, dtype=torch.float64, grad=False):
    q_shape = (batch, -(-height // stride), -(-width // stride), heads, head_dim)
    tensors = (torch.randn(q_shape, dtype=dtype), torch.randn(batch, height, width, heads, head_dim, dtype=dtype),
               torch.randn(batch, height, width, heads, value_dim, dtype=dtype),
               torch.randn(heads, height, width, dtype=dtype))
    return tuple(t.requires_grad_(grad) for t in tensors)


@pytest.mark.parametrize("stride,size", [(1, (4, 3)), (2, (5, 4)), (2, (4, 4)), (3, (5, 7))])
def test_table_reference_matches_loop(stride, size):
    q, k, v, table = table_inputs(2, *size, 2, 3, 5, stride)
    expected = loop_table_attention(q, k, v, table, stride, 0.7)
    torch.testing.assert_close(table_bias_attention(q, k, v, table, stride, 0.7, backend="reference"), expected)
    torch.testing.assert_close(table_bias_attention(q, k, v, None, stride, 0.7, backend="reference"),
                               loop_table_attention(q, k, v, None, stride, 0.7))


@pytest.mark.parametrize("backend", ["torch", "onnx"])  # onnx: the form an ONNX export holds (one head differs)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(height=st.integers(1, 9), width=st.integers(1, 9), stride=st.integers(1, 3), heads=st.integers(1, 3),
       head_dim=st.sampled_from([4, 8]), value_dim=st.sampled_from([4, 12]), seed=st.integers(0, 2 ** 16))
def test_table_fast_forms_match_reference_with_gradients(backend, height, width, stride, heads, head_dim, value_dim,
                                                         seed):
    torch.manual_seed(seed)
    inputs = table_inputs(2, height, width, heads, head_dim, value_dim, stride, grad=True)
    expected = table_bias_attention(*inputs, stride, backend="reference")
    actual = table_bias_attention(*inputs, stride, backend=backend)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(actual, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(got, want)


def test_table_float32_and_strided_views():
    torch.manual_seed(1)
    qkv = torch.randn(2, 6, 5, 3, 4 + 4 + 8)
    q, k, v = qkv.split([4, 4, 8], dim=-1)
    table = torch.randn(3, 6, 5)
    expected = table_bias_attention(q.double(), k.double(), v.double(), table.double(), backend="reference")
    actual = table_bias_attention(q, k, v, table)  # default backend on CPU: torch
    torch.testing.assert_close(actual.double(), expected, atol=2e-6, rtol=2e-6)


def test_table_compiles_without_graph_breaks():
    torch.manual_seed(2)
    q, k, v, table = table_inputs(1, 5, 4, 2, 4, 8, 2, dtype=torch.float32)
    compiled = torch.compile(lambda *a: table_bias_attention(*a, 2), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, table), table_bias_attention(q, k, v, table, 2))


def test_table_errors():
    q, k, v, table = table_inputs(1, 4, 4, 2, 4, 4, 1)
    with pytest.raises(ValueError, match="bias_table must have shape"):
        table_bias_attention(q, k, v, table[:, :3])
    with pytest.raises(ValueError, match=r"q must have shape \(B, ceil\(H/query_stride\)"):
        table_bias_attention(q, k, v, table, query_stride=2)
    with pytest.raises(ValueError, match="query_stride must be an int >= 1"):
        table_bias_attention(q, k, v, table, query_stride=0)
    with pytest.raises(ValueError, match="v must have shape"):
        table_bias_attention(q, k, v[:, :3], table)
    with pytest.raises(ValueError, match="bias_table must have the same dtype"):
        table_bias_attention(q, k, v, table.float())
    with pytest.raises(BackendUnavailableError, match="no Triton kernel"):
        table_bias_attention(q, k, v, table, backend="triton")
    with use_backend("triton"):  # a context asking for Triton falls back for an op without a kernel
        torch.testing.assert_close(table_bias_attention(q, k, v, table), table_bias_attention(q, k, v, table,
                                                                                              backend="reference"))


def test_linear_reference_matches_loop():
    torch.manual_seed(3)
    q, k = torch.randn(2, 3, 4, 2, 5, dtype=torch.float64), torch.randn(2, 3, 4, 2, 5, dtype=torch.float64)
    v = torch.randn(2, 3, 4, 2, 3, dtype=torch.float64)
    expected = loop_linear_attention(q, k, v, 1e-5)
    torch.testing.assert_close(relu_linear_attention(q, k, v, 1e-5, backend="reference"), expected)
    torch.testing.assert_close(relu_linear_attention(q, k, v, 1e-5, backend="torch"), expected)


@pytest.mark.parametrize("backend", ["torch", "onnx"])  # onnx: the channel-major form an ONNX export holds
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(st.integers(1, 7), min_size=1, max_size=2), heads=st.integers(1, 3),
       head_dim=st.sampled_from([1, 4, 8]), value_dim=st.sampled_from([2, 8]), eps=st.sampled_from([1e-15, 1e-5, 1.0]),
       seed=st.integers(0, 2 ** 16))
def test_linear_fast_forms_match_reference_with_gradients(backend, tokens, heads, head_dim, value_dim, eps, seed):
    torch.manual_seed(seed)
    # Offsets keep some q.k products positive, so the normaliser is not only eps.
    q = (torch.randn(2, *tokens, heads, head_dim, dtype=torch.float64) + 0.5).requires_grad_()
    k = (torch.randn(2, *tokens, heads, head_dim, dtype=torch.float64) + 0.5).requires_grad_()
    v = torch.randn(2, *tokens, heads, value_dim, dtype=torch.float64, requires_grad=True)
    expected = relu_linear_attention(q, k, v, eps, backend="reference")
    actual = relu_linear_attention(q, k, v, eps, backend=backend)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(actual, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(got, want)


def test_linear_accumulates_in_float32_for_bfloat16():
    torch.manual_seed(4)
    # 4096 tokens: summed in bf16, the context and normaliser would lose about 3 significant digits.
    q, k = torch.randn(1, 64, 64, 2, 16) + 0.3, torch.randn(1, 64, 64, 2, 16) + 0.3
    v = torch.randn(1, 64, 64, 2, 16)
    expected = relu_linear_attention(q.double(), k.double(), v.double(), backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = relu_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    reference_in_bf16 = relu_linear_attention(q.bfloat16().double(), k.bfloat16().double(), v.bfloat16().double(),
                                              backend="reference")
    # Only the final cast to bf16 rounds: within one bf16 ulp of the float64 result on the bf16 inputs.
    torch.testing.assert_close(out.double(), reference_in_bf16, atol=1e-2, rtol=8e-3)
    assert (out.double() - expected).abs().max() < 0.05


def test_linear_errors():
    q = torch.randn(1, 4, 2, 3)
    with pytest.raises(ValueError, match="k must have the same shape as q"):
        relu_linear_attention(q, q[:, :3], q)
    with pytest.raises(ValueError, match="v must have shape"):
        relu_linear_attention(q, q, q[:, :2])
    with pytest.raises(ValueError, match="eps must be a finite float"):
        relu_linear_attention(q, q, q, eps=-1.0)
    with pytest.raises(ValueError, match="q must have shape"):
        relu_linear_attention(q[0], q[0], q[0])
    with pytest.raises(BackendUnavailableError, match="no Triton kernel"):
        relu_linear_attention(q, q, q, backend="triton")
