"""The GPU benchmark's competitors compute what our ops compute, and the benchmark refuses to run without CUDA."""

from __future__ import annotations

import pytest
import torch

from vithub.bench.gpu import flex_call, min_bytes, neighborhood_flex_mods, run_gpu_bench, window_flex_mods
from vithub.cli import main
from vithub.kernels.backends import reference


def _qkv_rpb(shape, kernel, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    rpb = torch.randn(shape[3], 2 * kernel - 1, 2 * kernel - 1, generator=gen)
    return q, k, v, rpb


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("height, width, kernel", [(9, 12, 5), (7, 7, 7), (10, 8, 4)])
def test_flex_neighborhood_competitor_matches_reference(height, width, kernel):
    """A FlexAttention row is only a fair anchor if it computes NA with our rpb: eager flex against the reference."""
    q, k, v, rpb = _qkv_rpb((2, height, width, 2, 16), kernel, seed=height)
    mask_mod, score_mod = neighborhood_flex_mods(height, width, kernel, rpb)
    got = flex_call(q, k, v, mask_mod, score_mod, compiled=False)()
    expected = reference.neighborhood_attention(q, k, v, (kernel, kernel), (1, 1), rpb, 16 ** -0.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("size, window, shift", [((14, 21), 7, 3), ((8, 8), 4, 0), ((12, 8), 4, 2)])
def test_flex_window_competitor_matches_reference(size, window, shift):
    q, k, v, rpb = _qkv_rpb((2, *size, 3, 16), window, seed=window + shift)
    mask_mod, score_mod = window_flex_mods(*size, window, shift, rpb)
    got = flex_call(q, k, v, mask_mod, score_mod, compiled=False)()
    expected = reference.window_attention(q, k, v, (window, window), (shift, shift), rpb, 16 ** -0.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_min_bytes_counts_each_tensor_once():
    one_tensor = 2 * 4 * 4 * 3 * 8 * 2  # (B, H, W, heads, d) in bf16
    rows = 2 * 4 * 4 * 3 * 4
    assert min_bytes(2, 4, 4, 3, 8, 2, backward=False) == 4 * one_tensor + rows
    assert min_bytes(2, 4, 4, 3, 8, 2, backward=True) == 12 * one_tensor + 4 * rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_gpu_bench_refuses_without_cuda(capsys):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        run_gpu_bench(output=None)
    assert main(["bench", "gpu", "--output", ""]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
