"""The attention ops registered as ``torch.library`` custom ops, so ``torch.compile(..., fullgraph=True)`` sees one
opaque node per call. Nothing else lives here: the computing is the backends' (``backends/``), reached by name
through the registry.

Under ``torch.compile`` the public ops call these; eager calls go straight to the backends (no extra dispatch, and
the backends' own fused backward). Each op has a fake implementation (output shapes for tracing) and a registered
autograd formula. The backward is its own custom op and recomputes the forward, because a custom op returns no
saved state: a backend that has its own recomputing backward (``triton``: the forward again for the log-sum-exp,
then its backward kernels) supplies it; the others' autograd graph is rebuilt with ``torch.func.vjp``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from .registry import get_backend

Tensor = torch.Tensor


def _recompute_grads(forward: Callable[..., Any], grad: Any, inputs: Tuple[Tensor, ...], rpb: Optional[Tensor],
                     rpb_grad: bool) -> Tuple[Tensor, ...]:
    """Gradients of ``forward(*inputs, rpb)`` for the output gradient(s) ``grad``: one per input, then rpb's (an
    empty tensor when rpb takes none, since a custom op returns tensors only)."""
    # The op body runs below the autograd dispatch key, where enable_grad() has no effect; torch.func.vjp brings its
    # own autograd level, so the backend's ordinary autograd graph (fused kernels included) gives the gradients.
    if rpb is not None and rpb_grad:
        _, pullback = torch.func.vjp(forward, *inputs, rpb)
        grads = pullback(grad)
    else:
        _, pullback = torch.func.vjp(lambda *tensors: forward(*tensors, rpb), *inputs)
        grads = (*pullback(grad), inputs[0].new_empty(0))
    # Gradients of strided inputs (slices of a fused qkv) can come back strided; the fakes promise contiguous ones.
    return tuple(g.contiguous() for g in grads)


def _fake_forward(q, k, v, rpb, *arguments):
    return q.new_empty(q.shape)


def _fake_backward(grad, q, k, v, rpb, *arguments):
    rpb_grad = arguments[4]
    grad_rpb = rpb.new_empty(rpb.shape) if rpb is not None and rpb_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_rpb


# --- neighborhood attention ---------------------------------------------------------------------------------------

@torch.library.custom_op("vithub::neighborhood_attention", mutates_args=())
def neighborhood_attention_op(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int],
                              dilation: List[int], scale: float, backend: str) -> Tensor:
    return get_backend(backend).neighborhood_attention(q, k, v, rpb, tuple(kernel_size), tuple(dilation), scale)


@torch.library.custom_op("vithub::neighborhood_attention_backward", mutates_args=())
def neighborhood_attention_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                                       kernel_size: List[int], dilation: List[int], scale: float, backend: str,
                                       rpb_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    implementation = get_backend(backend)
    grads = implementation.neighborhood_grads(grad, q, k, v, rpb, tuple(kernel_size), tuple(dilation), scale,
                                              rpb_grad)
    if grads is not None:
        return grads

    def forward(q_, k_, v_, rpb_):
        return implementation.neighborhood_attention(q_, k_, v_, rpb_, tuple(kernel_size), tuple(dilation), scale)

    return _recompute_grads(forward, grad, (q, k, v), rpb, rpb_grad)


# --- window attention ---------------------------------------------------------------------------------------------

@torch.library.custom_op("vithub::window_attention", mutates_args=())
def window_attention_op(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window_size: List[int],
                        shift_size: List[int], scale: float, backend: str, unpadded_size: List[int]) -> Tensor:
    return get_backend(backend).window_attention(q, k, v, rpb, tuple(window_size), tuple(shift_size), scale,
                                                 tuple(unpadded_size))


@torch.library.custom_op("vithub::window_attention_backward", mutates_args=())
def window_attention_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                                 window_size: List[int], shift_size: List[int], scale: float, backend: str,
                                 rpb_grad: bool, unpadded_size: List[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    implementation = get_backend(backend)
    grads = implementation.window_grads(grad, q, k, v, rpb, tuple(window_size), tuple(shift_size), scale,
                                        tuple(unpadded_size), rpb_grad)
    if grads is not None:
        return grads

    def forward(q_, k_, v_, rpb_):
        return implementation.window_attention(q_, k_, v_, rpb_, tuple(window_size), tuple(shift_size), scale,
                                               tuple(unpadded_size))

    return _recompute_grads(forward, grad, (q, k, v), rpb, rpb_grad)


# --- window attention with carrier tokens --------------------------------------------------------------------------

@torch.library.custom_op("vithub::carrier_window_attention", mutates_args=())
def carrier_window_attention_op(q: Tensor, k: Tensor, v: Tensor, carrier_q: Tensor, carrier_k: Tensor,
                                carrier_v: Tensor, rpb: Optional[Tensor], window_size: List[int], scale: float,
                                backend: str) -> Tuple[Tensor, Tensor]:
    out, carrier_out = get_backend(backend).carrier_window_attention(q, k, v, carrier_q, carrier_k, carrier_v, rpb,
                                                                     tuple(window_size), scale)
    return out, carrier_out.contiguous()


@torch.library.custom_op("vithub::carrier_window_attention_backward", mutates_args=())
def carrier_window_attention_backward_op(
    grad: Tensor, grad_carrier: Tensor, q: Tensor, k: Tensor, v: Tensor, carrier_q: Tensor, carrier_k: Tensor,
    carrier_v: Tensor, rpb: Optional[Tensor], window_size: List[int], scale: float, backend: str, rpb_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    def forward(q_, k_, v_, carrier_q_, carrier_k_, carrier_v_, rpb_):
        return get_backend(backend).carrier_window_attention(q_, k_, v_, carrier_q_, carrier_k_, carrier_v_, rpb_,
                                                             tuple(window_size), scale)

    return _recompute_grads(forward, (grad, grad_carrier), (q, k, v, carrier_q, carrier_k, carrier_v), rpb, rpb_grad)


@carrier_window_attention_op.register_fake
def _carrier_fake_forward(q, k, v, carrier_q, carrier_k, carrier_v, rpb, *arguments):
    return q.new_empty(q.shape), carrier_q.new_empty(carrier_q.shape)


@carrier_window_attention_backward_op.register_fake
def _carrier_fake_backward(grad, grad_carrier, q, k, v, carrier_q, carrier_k, carrier_v, rpb, window_size, scale,
                           backend, rpb_grad):
    grad_rpb = rpb.new_empty(rpb.shape) if rpb is not None and rpb_grad else q.new_empty(0)
    return (*(t.new_empty(t.shape) for t in (q, k, v, carrier_q, carrier_k, carrier_v)), grad_rpb)


def _carrier_setup_context(ctx, inputs, output) -> None:
    *tensors, window_size, scale, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.arguments = (window_size, scale, backend)


def _carrier_backward(ctx, grad, grad_carrier):
    q, k, v, carrier_q, carrier_k, carrier_v, rpb = ctx.saved_tensors
    rpb_grad = rpb is not None and ctx.needs_input_grad[6]
    grad = grad if grad is not None else torch.zeros_like(q)
    grad_carrier = grad_carrier if grad_carrier is not None else torch.zeros_like(carrier_q)
    grads = carrier_window_attention_backward_op(grad, grad_carrier, q, k, v, carrier_q, carrier_k, carrier_v, rpb,
                                                 *ctx.arguments, rpb_grad)
    return (*grads[:6], grads[6] if rpb_grad else None, None, None, None)


carrier_window_attention_op.register_autograd(_carrier_backward, setup_context=_carrier_setup_context)


# --- autograd -----------------------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rpb, *arguments = inputs
    ctx.save_for_backward(q, k, v, rpb)
    ctx.arguments = arguments


def _make_backward(backward_op: Callable[..., Tuple[Tensor, ...]]) -> Callable:
    def backward(ctx, grad):
        q, k, v, rpb = ctx.saved_tensors
        rpb_grad = rpb is not None and ctx.needs_input_grad[3]
        size, step, scale, backend, *extra = ctx.arguments
        grad_q, grad_k, grad_v, grad_rpb = backward_op(grad, q, k, v, rpb, size, step, scale, backend, rpb_grad,
                                                       *extra)
        return (grad_q, grad_k, grad_v, (grad_rpb if rpb_grad else None)) + (None,) * len(ctx.arguments)

    return backward


# Both ops take (q, k, v, rpb, size, step, scale, backend, *op-specific), and their backward ops the same with
# rpb_grad after backend, so fakes and autograd are shared.
for _forward_op, _backward_op in ((neighborhood_attention_op, neighborhood_attention_backward_op),
                                  (window_attention_op, window_attention_backward_op)):
    _forward_op.register_fake(_fake_forward)
    _backward_op.register_fake(_fake_backward)
    _forward_op.register_autograd(_make_backward(_backward_op), setup_context=_setup_context)
