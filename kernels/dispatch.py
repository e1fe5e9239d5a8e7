"""Backend selection: by device unless a call's ``backend=`` or an enclosing :func:`use_backend` says otherwise."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Tuple

import torch

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


def triton_available() -> bool:
    """Whether Triton kernels exist for this build. They land with the Triton issue; until then this is False."""
    return False


def available_backends(device: torch.device | str = "cpu") -> Tuple[str, ...]:
    """Backends that can run on ``device``."""
    names = ["reference", "torch"]
    if torch.device(device).type == "cuda" and triton_available():
        names.append("triton")
    return tuple(names)


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """Pick the backend for one call: the explicit argument, else the context, else the best for ``device``."""
    name = _check_name(backend, "backend") or current_backend()
    if name is None:
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "triton" and "triton" not in available_backends(device):
        raise BackendUnavailableError(
            "backend='triton' is unavailable: vithub's Triton kernels are not part of this build yet "
            f"(tensors on {device}); use backend='torch' or None"
        )
    return name
