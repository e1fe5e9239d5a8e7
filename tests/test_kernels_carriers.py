"""carrier_window_attention (windows plus per-window carrier tokens): a loop oracle, backends against each other,
gradients, the custom op under torch.compile, and argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vithub.kernels import BackendUnavailableError, carrier_window_attention, custom_ops, use_backend


def loop_carrier_attention(q, k, v, cq, ck, cv, window, rpb, scale):
    """Per-query float64 loop over each window's carriers and tokens; shares no code with vithub."""
    batch, height, width, heads, _ = q.shape
    wh, ww = window
    carriers = cq.shape[3]
    out, carrier_out = torch.zeros_like(q), torch.zeros_like(cq)
    for b, i, j, h in itertools.product(range(batch), range(height // wh), range(width // ww), range(heads)):
        # Sequence entries: ("c", e) for carrier e of window (i, j), ("t", y, x) for map token (y, x).
        entries = [("c", e) for e in range(carriers)]
        entries += [("t", i * wh + a, j * ww + c) for a in range(wh) for c in range(ww)]

        def vec(tensor, carrier_tensor, entry):
            return carrier_tensor[b, i, j, entry[1], h] if entry[0] == "c" else tensor[b, entry[1], entry[2], h]

        for query in entries:
            logits = []
            for key in entries:
                logit = scale * torch.dot(vec(q, cq, query), vec(k, ck, key))
                if rpb is not None and query[0] == "t" and key[0] == "t":
                    logit = logit + rpb[h, key[1] - query[1] + wh - 1, key[2] - query[2] + ww - 1]
                logits.append(logit)
            weights = torch.stack(logits).softmax(0)
            result = sum(w * vec(v, cv, key) for w, key in zip(weights, entries))
            if query[0] == "c":
                carrier_out[b, i, j, query[1], h] = result
            else:
                out[b, query[1], query[2], h] = result
    return out, carrier_out


def make_inputs(batch, rows, cols, window, carriers, heads, head_dim, dtype=torch.float64, seed=0, with_rpb=True):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, rows * window[0], cols * window[1], heads, head_dim)
    carrier_shape = (batch, rows, cols, carriers, heads, head_dim)
    qkv = [torch.randn(shape, generator=generator, dtype=dtype) for _ in range(3)]
    carrier_qkv = [torch.randn(carrier_shape, generator=generator, dtype=dtype) for _ in range(3)]
    rpb_shape = (heads, 2 * window[0] - 1, 2 * window[1] - 1)
    rpb = torch.randn(rpb_shape, generator=generator, dtype=dtype) if with_rpb else None
    return qkv, carrier_qkv, rpb


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("window, carriers, with_rpb", [((2, 3), 4, True), ((3, 2), 1, True), ((2, 2), 3, False)])
def test_matches_loop_oracle(backend, window, carriers, with_rpb):
    (q, k, v), (cq, ck, cv), rpb = make_inputs(2, 2, 3, window, carriers, 2, 4, seed=carriers, with_rpb=with_rpb)
    expected = loop_carrier_attention(q, k, v, cq, ck, cv, window, rpb, 0.4)
    got = carrier_window_attention(q, k, v, cq, ck, cv, window, rpb=rpb, scale=0.4, backend=backend)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@st.composite
def carrier_cases(draw):
    window = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return dict(
        batch=draw(st.integers(1, 2)), rows=draw(st.integers(1, 3)), cols=draw(st.integers(1, 3)), window=window,
        carriers=draw(st.integers(1, 5)), heads=draw(st.integers(1, 3)), head_dim=draw(st.sampled_from([1, 4, 8])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])), seed=draw(st.integers(0, 2**31 - 1)),
        with_rpb=draw(st.booleans()),
    )


@given(case=carrier_cases())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_torch_backend_matches_reference_with_gradients(case):
    window = case["window"]
    (q, k, v), (cq, ck, cv), rpb = make_inputs(case["batch"], case["rows"], case["cols"], window, case["carriers"],
                                               case["heads"], case["head_dim"], case["dtype"], case["seed"],
                                               case["with_rpb"])
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    grad_out = torch.randn(q.shape, generator=generator, dtype=q.dtype)
    grad_carrier = torch.randn(cq.shape, generator=generator, dtype=q.dtype)
    results = {}
    for backend in ("reference", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, cq, ck, cv)]
        rpb_leaf = rpb.clone().requires_grad_(True) if rpb is not None else None
        out, carrier_out = carrier_window_attention(*leaves, window, rpb=rpb_leaf, backend=backend)
        torch.autograd.backward([out, carrier_out], [grad_out, grad_carrier])
        grads = [leaf.grad for leaf in leaves] + ([rpb_leaf.grad] if rpb_leaf is not None else [])
        results[backend] = [out.detach(), carrier_out.detach(), *grads]
    tolerance = dict(rtol=2e-5, atol=2e-5) if q.dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, expected in zip(results["torch"], results["reference"]):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gradcheck(backend):
    (q, k, v), (cq, ck, cv), rpb = make_inputs(1, 2, 1, (2, 2), 2, 2, 3, seed=7)
    inputs = [t.requires_grad_(True) for t in (q, k, v, cq, ck, cv, rpb)]

    def call(*tensors):
        return carrier_window_attention(*tensors[:6], (2, 2), rpb=tensors[6], backend=backend)

    assert torch.autograd.gradcheck(call, inputs)


def test_custom_op_passes_opcheck_and_gradcheck():
    (q, k, v), (cq, ck, cv), rpb = make_inputs(1, 2, 1, (2, 2), 2, 2, 3, seed=3)
    tensors = [t.requires_grad_(True) for t in (q, k, v, cq, ck, cv, rpb)]
    op = custom_ops.carrier_window_attention_op
    torch.library.opcheck(op, (*tensors, [2, 2], 0.5, "torch"))
    torch.library.opcheck(op, (*tensors[:6], None, [2, 2], 0.5, "reference"))
    assert torch.autograd.gradcheck(lambda *t: op(*t, [2, 2], 0.5, "torch"), tensors)


class CarrierBlock(torch.nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.rpb = torch.nn.Parameter(torch.randn(heads, 5, 3))

    def forward(self, x, carriers):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        cq, ck, cv = self.qkv(carriers).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        out, carrier_out = carrier_window_attention(q, k, v, cq, ck, cv, (3, 2), rpb=self.rpb)
        return out.flatten(-2).square().sum() + carrier_out.flatten(-2).sin().sum()


def test_fullgraph_compile_matches_eager():
    torch.manual_seed(0)
    block = CarrierBlock()
    x, carriers = torch.randn(2, 6, 4, 8), torch.randn(2, 2, 2, 3, 8)
    expected = block(x, carriers)
    expected.backward()
    expected_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    torch._dynamo.reset()
    got = torch.compile(block, fullgraph=True)(x, carriers)
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for param, grad in zip(block.parameters(), expected_grads):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-5)


def test_argument_errors_name_the_argument():
    (q, k, v), (cq, ck, cv), rpb = make_inputs(1, 2, 2, (2, 2), 2, 2, 3)
    with pytest.raises(ValueError, match=r"carrier_k must have shape \(B, H/wh, W/ww, carriers, heads, head_dim\)"):
        carrier_window_attention(q, k, v, cq, ck[:, :1], cv, 2)
    with pytest.raises(ValueError, match="carrier_q must have shape"):
        carrier_window_attention(q, k, v, cq[..., :0, :, :], ck, cv, 2)
    with pytest.raises(ValueError, match="must be a multiple of window_size 3"):
        carrier_window_attention(q, k, v, cq, ck, cv, 3)
    with pytest.raises(ValueError, match="carrier_v must have the same dtype as q"):
        carrier_window_attention(q, k, v, cq, ck, cv.float(), 2)
    with pytest.raises(ValueError, match="rpb must have shape"):
        carrier_window_attention(q, k, v, cq, ck, cv, 2, rpb=rpb[:, :2])


def test_no_triton_kernel_explicit_request_raises_and_automatic_choice_uses_torch():
    (q, k, v), (cq, ck, cv), rpb = make_inputs(1, 2, 2, (2, 2), 2, 2, 3, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="carrier_window_attention has no Triton kernel"):
        carrier_window_attention(q, k, v, cq, ck, cv, 2, rpb=rpb, backend="triton")
    expected = carrier_window_attention(q, k, v, cq, ck, cv, 2, rpb=rpb, backend="torch")
    with use_backend("triton"):
        got = carrier_window_attention(q, k, v, cq, ck, cv, 2, rpb=rpb)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
