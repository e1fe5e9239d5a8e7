"""The unfused neighborhood-attention ops (``neighborhood_attention_qk`` / ``neighborhood_attention_av``), 1-D and 2-D:
against a per-query loop written from NATTEN's definition in float64, qk -> softmax -> av against the fused op, both
backends against each other, gradients (gradcheck, rpb included), bad input, and torch.compile."""

from __future__ import annotations

import itertools

import pytest
import torch

from vithub.kernels import (BackendUnavailableError, neighborhood_attention, neighborhood_attention_av,
                            neighborhood_attention_qk)
from vithub.kernels.backends.reference import neighborhood_starts

BACKENDS = ("reference", "torch")
# (spatial shape, kernel, dilation): odd and non-square maps, per-axis kernels and dilations, even kernels, maps of
# exactly kernel * dilation tokens, dilation groups of unequal length.
CASES_2D = [((9, 11), (3, 3), (1, 1)), ((13, 10), (5, 3), (2, 3)), ((8, 8), (4, 4), (2, 2)), ((7, 9), (2, 5), (1, 1)),
            ((17, 12), (7, 7), (2, 1))]
CASES_1D = [((15,), (5,), (2,)), ((9,), (4,), (1,)), ((23,), (7,), (3,)), ((6,), (6,), (1,))]


def _random(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _looped_logits(q, k, rpb, kernel, dilation):
    """Every query's neighbours one by one, from NATTEN's window rule (start per axis, then ``dilation`` apart)."""
    spatial = q.shape[1:-2]
    starts = [neighborhood_starts(length, size, step) for length, size, step in zip(spatial, kernel, dilation)]
    out = q.new_zeros(*q.shape[:-1], int(torch.tensor(kernel).prod()))
    for position in itertools.product(*(range(length) for length in spatial)):
        for slot, offsets in enumerate(itertools.product(*(range(size) for size in kernel))):
            key = tuple(p % step + step * (int(start[p]) + o)
                        for p, o, step, start in zip(position, offsets, dilation, starts))
            value = (q[(slice(None), *position)] * k[(slice(None), *key)]).sum(-1)
            if rpb is not None:
                relative = tuple((kp - qp) // step + size - 1
                                 for kp, qp, step, size in zip(key, position, dilation, kernel))
                value = value + rpb[(slice(None), *relative)]
            out[(slice(None), *position, slice(None), slot)] = value
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial, kernel, dilation", CASES_2D + CASES_1D)
def test_logits_equal_a_loop_over_each_querys_neighbours(spatial, kernel, dilation, backend):
    q, k = _random(2, *spatial, 3, 4, seed=1), _random(2, *spatial, 3, 4, seed=2)
    rpb = _random(3, *(2 * size - 1 for size in kernel), seed=3)
    for bias in (None, rpb):
        got = neighborhood_attention_qk(q, k, kernel, dilation, bias, backend=backend)
        torch.testing.assert_close(got, _looped_logits(q, k, bias, kernel, dilation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial, kernel, dilation", CASES_2D + CASES_1D)
def test_qk_softmax_av_equals_the_fused_op(spatial, kernel, dilation, backend):
    q, k, v = (_random(2, *spatial, 2, 8, seed=seed) for seed in (4, 5, 6))
    rpb = _random(2, *(2 * size - 1 for size in kernel), seed=7)
    scale = 8 ** -0.5
    logits = neighborhood_attention_qk(q * scale, k, kernel, dilation, rpb, backend=backend)
    out = neighborhood_attention_av(logits.softmax(-1), v, kernel, dilation, backend=backend)
    if len(spatial) == 1:  # the fused op is 2-D: a 1-D map is a 1 x L map with a 1 x K kernel
        fused = neighborhood_attention(q[:, None], k[:, None], v[:, None], (1, kernel[0]), (1, dilation[0]),
                                       rpb[:, None], scale, backend="reference")[:, 0]
    else:
        fused = neighborhood_attention(q, k, v, kernel, dilation, rpb, scale, backend="reference")
    torch.testing.assert_close(out, fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial, kernel, dilation", [CASES_2D[1], CASES_2D[2], CASES_1D[0], CASES_1D[1]])
def test_backends_agree_in_float32(spatial, kernel, dilation):
    q, k, v = (_random(2, *spatial, 3, 16, seed=seed, dtype=torch.float32) for seed in (8, 9, 10))
    rpb = _random(3, *(2 * size - 1 for size in kernel), seed=11, dtype=torch.float32)
    logits = {b: neighborhood_attention_qk(q, k, kernel, dilation, rpb, backend=b) for b in BACKENDS}
    torch.testing.assert_close(logits["torch"], logits["reference"], rtol=1e-5, atol=1e-5)
    weights = logits["reference"].softmax(-1)
    torch.testing.assert_close(neighborhood_attention_av(weights, v, kernel, dilation, backend="torch"),
                               neighborhood_attention_av(weights, v, kernel, dilation, backend="reference"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial, kernel, dilation", [((5, 6), (3, 2), (1, 2)), ((7,), (3,), (2,))])
def test_gradcheck(spatial, kernel, dilation, backend):
    q, k, v = (_random(1, *spatial, 2, 3, seed=seed).requires_grad_() for seed in (12, 13, 14))
    rpb = _random(2, *(2 * size - 1 for size in kernel), seed=15).requires_grad_()
    attn = _random(1, *spatial, 2, int(torch.tensor(kernel).prod()), seed=16).softmax(-1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q_, k_, rpb_: neighborhood_attention_qk(q_, k_, kernel, dilation, rpb_, backend=backend), (q, k, rpb))
    assert torch.autograd.gradcheck(
        lambda a_, v_: neighborhood_attention_av(a_, v_, kernel, dilation, backend=backend), (attn, v))


def test_gradients_through_qk_softmax_av_equal_the_fused_ops():
    spatial, kernel, dilation = (9, 7), (3, 3), (2, 1)
    inputs = [_random(2, *spatial, 2, 4, seed=seed).requires_grad_() for seed in (17, 18, 19)]
    rpb = _random(2, 5, 5, seed=20).requires_grad_()
    grad = _random(2, *spatial, 2, 4, seed=21)
    unfused = neighborhood_attention_av(
        neighborhood_attention_qk(inputs[0] * 0.5, inputs[1], kernel, dilation, rpb, backend="torch").softmax(-1),
        inputs[2], kernel, dilation, backend="torch")
    expected = torch.autograd.grad(unfused, [*inputs, rpb], grad)
    fused = neighborhood_attention(*inputs, kernel, dilation, rpb, 0.5, backend="reference")
    for got, want in zip(torch.autograd.grad(fused, [*inputs, rpb], grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_compiles_as_one_graph():
    q, k, v = (_random(1, 8, 9, 2, 8, seed=seed, dtype=torch.float32) for seed in (22, 23, 24))
    rpb = _random(2, 5, 5, seed=25, dtype=torch.float32)

    def attend(q_, k_, v_, rpb_):
        weights = neighborhood_attention_qk(q_, k_, 3, 2, rpb_).softmax(-1)
        return neighborhood_attention_av(weights, v_, 3, 2)

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, rpb), attend(q, k, v, rpb), rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused_naming_the_argument():
    q = _random(1, 6, 6, 2, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"q must be a tensor of shape \(B, L, heads, dim\)"):
        neighborhood_attention_qk(q[0, 0], q[0, 0], 3)
    with pytest.raises(ValueError, match="k .* and q .* must agree"):
        neighborhood_attention_qk(q, q[:, :5], 3)
    with pytest.raises(ValueError, match="kernel_size must be an int or 2 ints >= 1"):
        neighborhood_attention_qk(q, q, (3, 3, 3))
    with pytest.raises(ValueError, match="dilation must be an int or 2 ints >= 1"):
        neighborhood_attention_qk(q, q, 3, 0)
    with pytest.raises(ValueError, match="fewer than kernel_size \\* dilation = 3 \\* 3"):
        neighborhood_attention_qk(q, q, 3, 3)
    with pytest.raises(ValueError, match=r"rpb must have shape \(heads, 2K-1, 2K-1\) = \(2, 5, 5\)"):
        neighborhood_attention_qk(q, q, 3, 1, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"attn's last dimension must be prod\(kernel_size\) = 9"):
        neighborhood_attention_av(torch.zeros(1, 6, 6, 2, 8), q, 3)
    with pytest.raises(BackendUnavailableError, match="neighborhood_qk has no Triton kernel"):
        neighborhood_attention_qk(q, q, 3, backend="triton")
