"""The ``triton`` backend: every kernel against ``reference`` (float64), forward and all gradients.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, fp32, small shapes), and they are compiled for
a Hopper GPU (sm_90) without one, which catches what the interpreter cannot: code that does not lower, register
spills, half-precision dots that miss the tensor cores. CUDA tests (skipped without a GPU) cover bf16/fp16 and large
shapes. Every output buffer is poisoned with NaN before the kernels run, so an element no program writes fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracles import assert_compiled_matches_eager, outputs_and_grads
from vithub.kernels import (
    BackendUnavailableError,
    available_backends,
    custom_ops,
    neighborhood_attention,
    use_backend,
    window_attention,
)
from vithub.kernels.backends import reference
from vithub.kernels.backends import triton_fused as triton_backend
from vithub.kernels.backends.triton_fused import Geometry, Tiles

pytestmark = pytest.mark.skipif(
    not triton_backend.triton_importable(), reason="triton is not installed (Linux torch wheels bring it)"
)

FP32_VS_FLOAT64 = dict(rtol=2e-5, atol=2e-5)
# The rpb gradient sums dS over every query and batch item, so its fp32 rounding grows with the map.
FP32_RPB_GRAD = dict(rtol=1e-4, atol=1e-4)
SETTINGS = settings(
    max_examples=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


needs_interpreter = pytest.mark.skipif(
    not (triton_backend.triton_importable() and triton_backend.interpreter_requested()
         and triton_backend.triton_interprets()),
    reason="Triton's interpreter is off (tests/conftest.py turns it on where there is no NVIDIA GPU)",
)


@pytest.fixture
def poisoned(monkeypatch):
    def allocate(shape, dtype, device):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(triton_backend, "_allocate", allocate)


def _inputs(shape, table, with_rpb, seed, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(*shape, generator=gen, dtype=dtype).to(device) for _ in range(4))
    rpb = None
    if with_rpb:
        rpb = torch.randn(shape[3], 2 * table[0] - 1, 2 * table[1] - 1, generator=gen, dtype=dtype).to(device)
    return q, k, v, rpb, grad


def _reference_for(geometry: Geometry, scale: float):
    if geometry.is_window:
        return lambda q, k, v, rpb: reference.window_attention(q, k, v, geometry.kernel, geometry.shift, rpb, scale,
                                                               geometry.unpadded)
    return lambda q, k, v, rpb: reference.neighborhood_attention(q, k, v, geometry.kernel, geometry.dilation, rpb,
                                                                 scale)


def _assert_triton_matches_reference(shape, geometry, tiles, with_rpb, seed):
    q, k, v, rpb, grad = _inputs(shape, geometry.kernel, with_rpb, seed)
    scale = shape[-1] ** -0.5
    expected, expected_grads = outputs_and_grads(_reference_for(geometry, scale), q, k, v, rpb, grad)
    as32 = [t.float() if t is not None else None for t in (q, k, v, rpb, grad)]
    out, grads = outputs_and_grads(lambda *a: triton_backend.local_attention(*a, geometry, scale, tiles), *as32)
    torch.testing.assert_close(out.double(), expected, **FP32_VS_FLOAT64)
    for name, got, want in zip(("q", "k", "v", "rpb"), grads, expected_grads):
        tolerance = FP32_RPB_GRAD if name == "rpb" else FP32_VS_FLOAT64
        torch.testing.assert_close(got.double(), want, **tolerance, msg=lambda m: f"grad {name}: {m}")


def _tiles(draw):
    # Small tiles make the kernels walk several query and key tiles, and tiles that straddle windows or groups.
    if draw(st.booleans()):
        return None
    side = st.integers(1, 5)
    query = (draw(side), draw(side))
    key = (draw(side), draw(side))
    return Tiles(query=query, key=key) if query[0] * query[1] >= 4 and key[0] * key[1] >= 4 else None


@st.composite
def neighborhood_cases(draw):
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    height = draw(st.integers(kernel[0] * dilation[0], kernel[0] * dilation[0] + 5))
    width = draw(st.integers(kernel[1] * dilation[1], kernel[1] * dilation[1] + 5))
    shape = (draw(st.integers(1, 2)), height, width, draw(st.integers(1, 2)), draw(st.sampled_from([4, 16, 24])))
    return dict(shape=shape, geometry=Geometry(False, kernel, dilation=dilation), tiles=_tiles(draw),
                with_rpb=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@st.composite
def window_cases(draw):
    window = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    shift = (draw(st.integers(0, window[0] - 1)), draw(st.integers(0, window[1] - 1)))
    shape = (draw(st.integers(1, 2)), window[0] * draw(st.integers(1, 3)), window[1] * draw(st.integers(1, 3)),
             draw(st.integers(1, 2)), draw(st.sampled_from([4, 16, 24])))
    unpadded = (shape[1] - draw(st.integers(0, window[0] - 1)), shape[2] - draw(st.integers(0, window[1] - 1)))
    return dict(shape=shape, geometry=Geometry(True, window, shift=shift, unpadded=unpadded), tiles=_tiles(draw),
                with_rpb=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@needs_interpreter
@SETTINGS
@given(case=neighborhood_cases())
def test_neighborhood_kernels_match_reference(poisoned, case):
    """Dilation (groups of unequal length), even kernels, non-square maps, maps of exactly K*d, random tiles."""
    _assert_triton_matches_reference(**case)


@needs_interpreter
@SETTINGS
@given(case=window_cases())
def test_window_kernels_match_reference(poisoned, case):
    """Shifted windows (Swin's region mask and roll as index arithmetic), non-square windows and maps."""
    _assert_triton_matches_reference(**case)


@needs_interpreter
@pytest.mark.parametrize("geometry, tiles", [
    (Geometry(False, (7, 7)), None),  # NAT-T's kernel: border queries share windows, several key tiles
    (Geometry(False, (3, 5), dilation=(3, 2)), Tiles((3, 3), (4, 3))),
    (Geometry(True, (7, 7), shift=(3, 3)), None),  # Swin-T's shifted block: one window per program
    (Geometry(True, (4, 6), shift=(2, 5)), Tiles((2, 6), (4, 3))),  # half-window query tiles, split key tiles
    (Geometry(True, (7, 7), shift=(3, 3), unpadded=(11, 9)), None),  # timm's roll-then-pad order on a padded map
])
def test_model_like_configurations_match_reference(poisoned, geometry, tiles):
    size = (14, 11) if not geometry.is_window else (geometry.kernel[0] * 2, geometry.kernel[1] * 2)
    _assert_triton_matches_reference((2, *size, 1, 16), geometry, tiles, with_rpb=True, seed=7)


@needs_interpreter
def test_strided_qkv_views_and_strided_grad(poisoned):
    """q, k, v as views of one fused projection and a non-contiguous upstream gradient, head_dim not a power of 2."""
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(2, 9, 10, 3, 2, 12, generator=gen, dtype=torch.float64)
    rpb = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 10, 9, 2, 12, generator=gen, dtype=torch.float64).transpose(1, 2)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous() and not grad.is_contiguous()
    expected, expected_grads = outputs_and_grads(
        lambda q_, k_, v_, b_: reference.neighborhood_attention(q_, k_, v_, (3, 3), (2, 1), b_, 0.3), q, k, v, rpb, grad
    )
    fused = qkv.float().requires_grad_(True)
    bias = rpb.float().requires_grad_(True)
    q32, k32, v32 = fused.unbind(3)
    out = neighborhood_attention(q32, k32, v32, 3, (2, 1), bias, scale=0.3, backend="triton")
    out.backward(grad.float())
    torch.testing.assert_close(out.double(), expected, **FP32_VS_FLOAT64)
    grad_q, grad_k, grad_v = fused.grad.double().unbind(3)
    for got, want in zip((grad_q, grad_k, grad_v), expected_grads[:3]):
        torch.testing.assert_close(got, want, **FP32_VS_FLOAT64)
    torch.testing.assert_close(bias.grad.double(), expected_grads[3], **FP32_RPB_GRAD)


@needs_interpreter
def test_rpb_gradient_only_when_asked():
    q, k, v, rpb, grad = _inputs((1, 8, 8, 2, 16), (3, 3), True, seed=3, dtype=torch.float32)
    q.requires_grad_(True)
    out = neighborhood_attention(q, k, v, 3, rpb=rpb, backend="triton")  # rpb is a constant here
    (grad_q,) = torch.autograd.grad(out, q, grad)
    expected = torch.autograd.grad(
        reference.neighborhood_attention(q, k, v, (3, 3), (1, 1), rpb, 16 ** -0.5), q, grad
    )[0]
    torch.testing.assert_close(grad_q, expected, **FP32_VS_FLOAT64)


@needs_interpreter
def test_dispatch_rules(monkeypatch):
    """Interpreter only when asked; automatic choice on CPU stays on torch; unsupported inputs are refused clearly."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in available_backends("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "triton" in available_backends("cpu")
    with monkeypatch.context() as late:
        late.setattr(triton_backend, "triton_interprets", lambda: False)  # the variable came after triton's import
        with pytest.raises(BackendUnavailableError, match="environment that starts Python"):
            neighborhood_attention(torch.randn(1, 4, 4, 1, 4), *[torch.randn(1, 4, 4, 1, 4)] * 2, 3, backend="triton")
    calls = []
    original = triton_backend.local_attention
    monkeypatch.setattr(triton_backend, "local_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    q = torch.randn(1, 8, 8, 1, 16)
    neighborhood_attention(q, q, q, 3)
    assert calls == []  # backend=None on CPU: the torch path, even with the interpreter on
    neighborhood_attention(q, q, q, 3, backend="triton")
    with use_backend("triton"):
        window_attention(q, q, q, 4, 2)
    assert calls == [1, 1]
    with pytest.raises(BackendUnavailableError, match="float32, float16 or bfloat16"):
        neighborhood_attention(q.double(), q.double(), q.double(), 3, backend="triton")
    wide = torch.randn(1, 8, 8, 1, 160)
    with pytest.raises(BackendUnavailableError, match="head_dim <= 128"):
        window_attention(wide, wide, wide, 4, backend="triton")


def test_tiles_are_validated():
    with pytest.raises(ValueError, match="tiles.query"):
        triton_backend.forward(*[torch.randn(1, 4, 4, 1, 4)] * 3, None, Geometry(False, (3, 3)), 1.0,
                               Tiles((0, 4), (4, 4)))


def _custom_op_cases():
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(1, 8, 12, 3, 2, 16, generator=gen, requires_grad=True)
    q, k, v = qkv.unbind(3)
    yield custom_ops.neighborhood_attention_op, (q, k, v, torch.randn(2, 5, 5, generator=gen, requires_grad=True),
                                                 [3, 3], [2, 1], 0.4, "triton")
    yield custom_ops.window_attention_op, (q, k, v, torch.randn(2, 7, 7, generator=gen, requires_grad=True),
                                           [4, 4], [2, 1], 0.4, "triton", [7, 10])


@needs_interpreter
@pytest.mark.parametrize("op, args", list(_custom_op_cases()))
def test_custom_ops_with_triton_pass_opcheck(op, args):
    """Schema, fake implementation, autograd registration and AOT dispatch of the custom ops on the Triton backend
    (their registered backward runs the Triton backward kernels)."""
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                "test_aot_dispatch_dynamic"))


@needs_interpreter
def test_fullgraph_compile_with_triton_backend():
    assert_compiled_matches_eager("triton", head_dim=16, rtol=1e-4, atol=1e-4, grad_rtol=1e-3, grad_atol=1e-4)


# --- compiled for a Hopper GPU, no GPU needed ------------------------------------------------------------------------

def test_kernels_compile_for_hopper_without_register_spills():
    """Every launch configuration the backend ships lowers to sm_90a machine code, and ptxas's own report (registers,
    spill stores, spill loads) shows no spill for any of the three kernels; bf16/fp16 dots run on the tensor cores.
    The control build (the tiles these kernels had before the retune) must show spills: a reader that cannot see
    them (say, one looking for ``.local`` in the PTX, which ptxas decides later) fails here."""
    script = Path(__file__).with_name("sm90_compile.py")
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, str(script), "--jobs", "2"], capture_output=True, text=True, env=env,
                            timeout=900, cwd=script.parent.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    shipped = [row for row in rows if row["role"] == "shipped"]
    control = [row for row in rows if row["role"] == "control"]
    # Every table entry is compiled: each NA head_dim class, windows 7/12 and the fallback rule, fp32 where taken.
    covered = {(row["dtype"], row["geometry"], row["head_dim"]) for row in shipped}
    assert {("bf16", "neighborhood", 128), ("fp16", "window7", 128), ("bf16", "window12", 16),
            ("fp32", "neighborhood", triton_backend.FP32_MAX_HEAD_DIM["neighborhood"]),
            ("fp32", "window4", triton_backend.FP32_MAX_HEAD_DIM["window"])} <= covered, covered
    assert len(shipped) == 3 * len(covered) and len(control) == 3
    for row in shipped:
        assert row["has_cubin"], row
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"register spills: {row}"
        assert row["tensor_core_mma"] == (row["dtype"] != "fp32"), row
    assert all(row["spill_stores"] > 0 for row in control), control


# --- CUDA ----------------------------------------------------------------------------------------------------------

HALF_TOLERANCE = {torch.bfloat16: dict(rtol=3e-2, atol=3e-2), torch.float16: dict(rtol=1e-2, atol=1e-2)}


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("geometry, size, heads, head_dim", [
    (Geometry(False, (7, 7)), (56, 56), 2, 32),  # NAT-T stage 1
    (Geometry(False, (7, 7), dilation=(4, 4)), (28, 28), 4, 64),  # DiNAT-T stage 2, dilated block
    (Geometry(True, (7, 7), shift=(3, 3)), (56, 56), 3, 32),  # Swin-T stage 1, shifted block
    (Geometry(True, (12, 12), shift=(6, 6)), (24, 24), 8, 128),  # Swin-B 384, stage 3
    (Geometry(False, (5, 5)), (20, 31), 1, 16),
])
def test_cuda_half_precision_against_fp32_reference(poisoned, dtype, geometry, size, heads, head_dim):
    shape = (4, *size, heads, head_dim)
    q, k, v, rpb, grad = _inputs(shape, geometry.kernel, True, seed=1, dtype=torch.float32, device="cuda")
    scale = head_dim ** -0.5
    expected, expected_grads = outputs_and_grads(_reference_for(geometry, scale), q, k, v, rpb, grad)
    half = [t.to(dtype) for t in (q, k, v, rpb, grad)]
    out, grads = outputs_and_grads(lambda *a: triton_backend.local_attention(*a, geometry, scale), *half)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out.float(), expected, **HALF_TOLERANCE[dtype])
    for name, got, want in zip(("q", "k", "v", "rpb"), grads, expected_grads):
        # The rpb gradient sums ~B*H*W terms: compare it relative to its own scale.
        scale_of = want.abs().max().item() if name == "rpb" else 1.0
        torch.testing.assert_close(got.float() / scale_of, want / scale_of, **HALF_TOLERANCE[dtype],
                                   msg=lambda m: f"grad {name}: {m}")


@needs_cuda
def test_cuda_fp32_large_shape_against_reference(poisoned):
    _assert_large = (16, 56, 56, 2, 32)
    geometry = Geometry(False, (7, 7), dilation=(2, 3))
    q, k, v, rpb, grad = _inputs(_assert_large, geometry.kernel, True, seed=2, dtype=torch.float32, device="cuda")
    scale = 32 ** -0.5
    expected, expected_grads = outputs_and_grads(_reference_for(geometry, scale), *(t.double() for t in (q, k, v, rpb, grad)))
    out, grads = outputs_and_grads(lambda *a: triton_backend.local_attention(*a, geometry, scale), q, k, v, rpb, grad)
    torch.testing.assert_close(out.double(), expected, **FP32_VS_FLOAT64)
    for name, got, want in zip(("q", "k", "v", "rpb"), grads, expected_grads):
        tolerance = dict(rtol=1e-4, atol=1e-3) if name == "rpb" else FP32_VS_FLOAT64
        torch.testing.assert_close(got.double(), want, **tolerance, msg=lambda m: f"grad {name}: {m}")


def test_validated_configurations_table_matches_exactly():
    row = triton_backend.ValidatedConfiguration("window_attention", torch.bfloat16, 64, (9, 0), "NVIDIA H200",
                                                "2026-12-01")
    assert triton_backend.covered((row,), "window_attention", torch.bfloat16, 32, (9, 0))
    assert triton_backend.covered((row,), "window_attention", torch.bfloat16, 64, (9, 0))
    assert not triton_backend.covered((row,), "window_attention", torch.bfloat16, 128, (9, 0))
    assert not triton_backend.covered((row,), "window_attention", torch.float16, 32, (9, 0))
    assert not triton_backend.covered((row,), "neighborhood_attention", torch.bfloat16, 32, (9, 0))
    assert not triton_backend.covered((row,), "window_attention", torch.bfloat16, 32, (8, 0))
    assert not triton_backend.covered((), "window_attention", torch.bfloat16, 32, (9, 0))


@needs_cuda
def test_cuda_automatic_backend_is_triton_only_where_validated(monkeypatch):
    calls = []
    original = triton_backend.local_attention
    monkeypatch.setattr(triton_backend, "local_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    q = torch.randn(1, 8, 8, 1, 16, device="cuda")
    monkeypatch.setattr(triton_backend, "VALIDATED_ON_GPU", ())
    neighborhood_attention(q, q, q, 3)
    assert calls == []  # not validated on this GPU: the torch backend
    capability = torch.cuda.get_device_capability()
    row = triton_backend.ValidatedConfiguration("neighborhood_attention", torch.float32, 16, capability, "test", "-")
    monkeypatch.setattr(triton_backend, "VALIDATED_ON_GPU", (row,))
    neighborhood_attention(q, q, q, 3)
    assert calls == [1]
    neighborhood_attention(q, q, q, 3, backend="triton")  # explicit: always, where it can run
    assert calls == [1, 1]


@needs_cuda
def test_cuda_fullgraph_compile():
    assert_compiled_matches_eager("triton", head_dim=16, device="cuda", rtol=1e-4, atol=1e-4, grad_rtol=1e-3,
                                  grad_atol=1e-4)
