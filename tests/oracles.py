"""Oracles shared by the tests (obviously right, slow, sharing no code with vithub), then small test helpers."""

from __future__ import annotations

import itertools

import torch


def loop_neighborhood(length: int, kernel: int, dilation: int, i: int) -> list:
    """The K same-group keys forming a contiguous run (in group coordinates) that contains i and is most centred,
    shifted inward at the borders, found by scanning every candidate start."""
    group = [j for j in range(length) if j % dilation == i % dilation]
    coord = group.index(i)
    left = kernel // 2
    best = None
    for start in range(len(group) - kernel + 1):
        if start <= coord < start + kernel:
            distance = abs(start - (coord - left))
            if best is None or distance < best[0]:
                best = (distance, start)
    return group[best[1]:best[1] + kernel]


def loop_attention(q, k, v, kernel, dilation, rpb, scale):
    """Per-query float64 loop: obviously right, and shares nothing with the implementations under test."""
    batch, height, width, heads, _ = q.shape
    out = torch.zeros_like(q)
    for b, y, x, h in itertools.product(range(batch), range(height), range(width), range(heads)):
        rows = loop_neighborhood(height, kernel[0], dilation[0], y)
        cols = loop_neighborhood(width, kernel[1], dilation[1], x)
        logits, values = [], []
        for ky in rows:
            for kx in cols:
                logit = scale * torch.dot(q[b, y, x, h], k[b, ky, kx, h])
                if rpb is not None:
                    logit = logit + rpb[h, (ky - y) // dilation[0] + kernel[0] - 1,
                                        (kx - x) // dilation[1] + kernel[1] - 1]
                logits.append(logit)
                values.append(v[b, ky, kx, h])
        weights = torch.stack(logits).softmax(0)
        out[b, y, x, h] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


def outputs_and_grads(fn, q, k, v, rpb, grad_out):
    """Run ``fn(q, k, v, rpb)`` on fresh leaves, backpropagate ``grad_out``; return the output and the gradients of
    q, k, v (and rpb when given)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    rpb_leaf = rpb.detach().clone().requires_grad_(True) if rpb is not None else None
    out = fn(*leaves, rpb_leaf)
    out.backward(grad_out)
    grads = [leaf.grad for leaf in leaves] + ([rpb_leaf.grad] if rpb_leaf is not None else [])
    return out.detach(), grads


class AttentionBlock(torch.nn.Module):
    """A fused qkv projection feeding both vithub ops (NA with dilation and rpb, shifted windows with rpb)."""

    def __init__(self, head_dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        dim = heads * head_dim
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.na_rpb = torch.nn.Parameter(torch.randn(heads, 5, 5))
        self.window_rpb = torch.nn.Parameter(torch.randn(heads, 7, 7))

    def forward(self, x):
        from vithub.kernels import neighborhood_attention, window_attention

        b, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, h, w, 3, self.heads, self.head_dim).unbind(3)
        local = neighborhood_attention(q, k, v, 3, 2, self.na_rpb)
        windows = window_attention(q, k, v, 4, 2, self.window_rpb)
        return (local + windows).reshape(b, h, w, c)


def assert_compiled_matches_eager(backend, head_dim, device="cpu", rtol=1e-5, atol=1e-5, grad_rtol=1e-4,
                                  grad_atol=1e-5):
    """torch.compile(fullgraph=True) of an AttentionBlock gives eager's output and parameter gradients."""
    from vithub.kernels import use_backend

    torch.manual_seed(0)
    block = AttentionBlock(head_dim).to(device)
    x = torch.randn(2, 8, 12, 2 * head_dim, device=device)
    with use_backend(backend):
        expected = block(x)
        expected.square().sum().backward()
        expected_grads = [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        torch._dynamo.reset()
        got = torch.compile(block, fullgraph=True)(x)
        got.square().sum().backward()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    for param, grad in zip(block.parameters(), expected_grads):
        torch.testing.assert_close(param.grad, grad, rtol=grad_rtol, atol=grad_atol)
