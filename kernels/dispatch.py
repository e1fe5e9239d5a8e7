"""Backend selection: by device unless a call's ``backend=`` or an enclosing :func:`use_backend` says otherwise."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Tuple

import torch

from . import triton_backend

BACKENDS: Tuple[str, ...] = ("reference", "torch", "triton")

_forced_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("vithub_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for explicitly but cannot run here; vithub never falls back silently."""


def _check_name(name: Optional[str], argument: str) -> Optional[str]:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{argument} must be None or one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Run every attention op inside the block on backend ``name`` (``None`` restores automatic choice)."""
    token = _forced_backend.set(_check_name(name, "name"))
    try:
        yield
    finally:
        _forced_backend.reset(token)


def current_backend() -> Optional[str]:
    """The backend forced by the innermost :func:`use_backend`, or ``None``."""
    return _forced_backend.get()


# Looked up once: resolve_backend runs inside torch.compile'd code, where an import-system query would break the graph.
_TRITON_IMPORTABLE = triton_backend.triton_importable()


def triton_available() -> bool:
    """Whether the Triton kernels can be used at all here (the ``triton`` package is importable)."""
    return _TRITON_IMPORTABLE


def triton_refusal(device: torch.device | str) -> Optional[str]:
    """Why the Triton kernels cannot run on ``device`` in this process, or ``None`` when they can."""
    device = torch.device(device)
    if not triton_available():
        return "backend='triton' needs the triton package, which is not installed; use backend='torch' or None"
    if device.type == "cpu":
        if not triton_backend.interpreter_requested():
            return (
                "backend='triton' runs on CUDA tensors; on CPU it needs TRITON_INTERPRET=1 (Triton's interpreter: "
                "slow, for testing kernels). Use backend='torch' or None for CPU tensors"
            )
        if not triton_backend.triton_interprets():
            return (
                "backend='triton' on CPU: TRITON_INTERPRET=1 was set after triton had been imported in compiled mode; "
                "set it in the environment that starts Python (TRITON_INTERPRET=1 python ...)"
            )
        return None
    if device.type == "cuda":
        if triton_backend.triton_interprets():
            return "backend='triton' on CUDA: this process runs Triton's interpreter (TRITON_INTERPRET=1); unset it"
        return None
    return f"backend='triton' runs on CUDA tensors, got tensors on {device}; use backend='torch' or None"


def available_backends(device: torch.device | str = "cpu") -> Tuple[str, ...]:
    """Backends that can run on ``device``: Triton on CUDA, or on CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    names = ["reference", "torch"]
    if triton_refusal(device) is None:
        names.append("triton")
    return tuple(names)


def resolve_backend(backend: Optional[str], q: torch.Tensor, op_without_triton: Optional[str] = None) -> str:
    """Pick the backend for one call: the explicit argument, else the context, else the best for ``q``'s device.

    The automatic choice is Triton for CUDA tensors it supports (dtype, head_dim) and ``torch`` otherwise. An explicit
    ``"triton"`` that cannot run raises :class:`BackendUnavailableError` instead of falling back. For an op that has
    no Triton kernel (``op_without_triton`` names it), an explicit ``backend="triton"`` raises, and the automatic
    choice or a :func:`use_backend` ``"triton"`` block uses ``torch``.
    """
    if op_without_triton is not None:
        if _check_name(backend, "backend") == "triton":
            raise BackendUnavailableError(f"{op_without_triton} has no Triton kernel; use backend='torch' or None")
        name = backend or current_backend()
        return "torch" if name in (None, "triton") else name
    name = _check_name(backend, "backend") or current_backend()
    device = q.device
    if name is None:
        if device.type == "cuda" and triton_refusal(device) is None and triton_backend.unsupported_reason(q) is None:
            return "triton"
        return "torch"
    if name == "triton":
        refusal = triton_refusal(device)
        if refusal is not None:
            raise BackendUnavailableError(refusal)
        reason = triton_backend.unsupported_reason(q)
        if reason is not None:
            raise BackendUnavailableError(f"{reason}; use backend='torch' or None")
    return name
