"""Cross-check against NATTEN itself: ``neighborhood_attention`` without rpb equals ``natten.functional.na2d`` (NATTEN
0.20+, heads-last layout, its CPU path) over kernel sizes, dilations, non-square and odd maps, and so do the unfused
ops (qk -> softmax -> av), 2-D against ``na2d`` and 1-D against ``na1d``. Forward only: NATTEN's
CPU path (eager FlexAttention) has no backward; our gradients are checked against our float64 reference elsewhere.

NATTEN is optional (``pip install --no-build-isolation natten``; on a machine without CUDA it installs without its
compiled library). This module is skipped, saying so, only where it is not installed.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vithub.kernels import neighborhood_attention, neighborhood_attention_av, neighborhood_attention_qk

natten_functional = pytest.importorskip("natten.functional", reason="NATTEN is not installed (optional extra)")

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def na2d(q, k, v, kernel, dilation, scale):
    with warnings.catch_warnings():  # its CPU path is eager flex attention, which warns that it is unfused
        warnings.simplefilter("ignore")
        return natten_functional.na2d(q, k, v, kernel_size=kernel, dilation=dilation, scale=scale)


@st.composite
def cases(draw):
    kernel = (draw(st.integers(2, 7)), draw(st.integers(2, 7)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    height = draw(st.integers(kernel[0] * dilation[0], kernel[0] * dilation[0] + 9))
    width = draw(st.integers(kernel[1] * dilation[1], kernel[1] * dilation[1] + 9))
    return dict(shape=(draw(st.integers(1, 2)), height, width, draw(st.integers(1, 3)), draw(st.sampled_from([8, 16]))),
                kernel=kernel, dilation=dilation, seed=draw(st.integers(0, 2**31 - 1)))


@SETTINGS
@given(cases())
def test_forward_equals_natten(case):
    gen = torch.Generator().manual_seed(case["seed"])
    q, k, v = (torch.randn(*case["shape"], generator=gen) for _ in range(3))
    scale = case["shape"][-1] ** -0.5
    expected = na2d(q, k, v, case["kernel"], case["dilation"], scale)
    for backend in ("reference", "torch"):
        got = neighborhood_attention(q, k, v, case["kernel"], case["dilation"], scale=scale, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("shape, kernel, dilation", [
    ((2, 13, 9, 2, 16), (7, 7), (1, 1)),  # NAT's kernel on an odd, non-square map
    ((1, 17, 23, 3, 8), (5, 3), (3, 2)),  # per-axis kernel and dilation, groups of unequal length
    ((2, 8, 8, 1, 16), (4, 4), (2, 2)),  # even kernel (one more key before the query), map exactly K*d
    ((1, 56, 56, 2, 32), (7, 7), (8, 8)),  # DiNAT-T's most dilated stage-1 block
])
def test_model_shapes_equal_natten(shape, kernel, dilation):
    gen = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    expected = na2d(q, k, v, kernel, dilation, None)
    got = neighborhood_attention(q, k, v, kernel, dilation, backend="torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, kernel, dilation", [
    ((2, 13, 9, 2, 16), (7, 7), (1, 1)),
    ((1, 17, 23, 3, 8), (5, 3), (3, 2)),
    ((2, 8, 8, 1, 16), (4, 4), (2, 2)),
])
def test_unfused_2d_equals_natten(shape, kernel, dilation):
    """qk -> softmax -> av (the unfused ops NATTEN 0.20 dropped) equals NATTEN's fused na2d."""
    gen = torch.Generator().manual_seed(sum(shape) + 1)
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    scale = shape[-1] ** -0.5
    expected = na2d(q, k, v, kernel, dilation, scale)
    for backend in ("reference", "torch"):
        weights = neighborhood_attention_qk(q * scale, k, kernel, dilation, backend=backend).softmax(-1)
        got = neighborhood_attention_av(weights, v, kernel, dilation, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("shape, kernel, dilation", [((2, 31, 2, 16), 7, 1), ((1, 40, 3, 8), 5, 4),
                                                     ((2, 12, 1, 8), 4, 3)])
def test_unfused_1d_equals_natten(shape, kernel, dilation):
    gen = torch.Generator().manual_seed(sum(shape) + 2)
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    scale = shape[-1] ** -0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = natten_functional.na1d(q, k, v, kernel_size=kernel, dilation=dilation, scale=scale)
    for backend in ("reference", "torch"):
        weights = neighborhood_attention_qk(q * scale, k, kernel, dilation, backend=backend).softmax(-1)
        got = neighborhood_attention_av(weights, v, kernel, dilation, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend}: {m}")
