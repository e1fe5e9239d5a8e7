"""The backend registry: which backends exist, which of them can run a given call and why not, and which one a call
gets (its ``backend=`` argument, else an enclosing :func:`use_backend`, else the automatic choice for the device).

A backend is a :class:`Backend` subclass in ``backends/``, registered by ``backends/__init__.py``. It lists the ops it
implements and says, per call, why it cannot run it (:meth:`Backend.refusal`, ``None`` when it can), in the manner
of NATTEN's ``can_run`` checks. Nothing here falls back silently from a backend the caller named.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, FrozenSet, Iterator, Optional, Tuple

import torch

Tensor = torch.Tensor

OPS: Tuple[str, ...] = ("neighborhood_attention", "window_attention", "carrier_window_attention",
                        "table_bias_attention", "relu_linear_attention", "global_attention", "neighborhood_qk",
                        "neighborhood_av")


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for explicitly but cannot run here; vithub never falls back silently."""


class Backend:
    """One implementation of (some of) the attention ops. Subclasses set ``name`` and ``title`` and implement the ops
    they run as methods; ``ops`` is the set of those methods, so the two cannot disagree. Every argument arrives
    validated (see ``_validation.py``), sizes as tuples."""

    name: str = ""
    title: str = ""  # for messages: "Triton kernel", "torch kernel"
    ops: FrozenSet[str] = frozenset()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.ops = frozenset(op for op in OPS if getattr(cls, op) is not getattr(Backend, op))

    def device_refusal(self, device: torch.device) -> Optional[str]:
        """Why this backend cannot run on ``device`` in this process (and what to use instead), or ``None``."""
        return None

    def input_refusal(self, op: str, q: Tensor) -> Optional[str]:
        """Why this backend cannot run ``op`` on a call whose query is ``q`` (dtype, head_dim...), or ``None``."""
        return None

    def refusal(self, op: str, q: Tensor) -> Optional[str]:
        """Why this backend cannot run ``op`` on ``q`` (with what to use instead), or ``None`` when it can."""
        if op not in self.ops:
            return f"{op} has no {self.title}; use backend='torch' or None"
        reason = self.device_refusal(q.device)
        if reason is not None:
            return reason
        reason = self.input_refusal(op, q)
        return None if reason is None else f"{reason}; use backend='torch' or None"

    def automatic(self, op: str, q: Tensor) -> bool:
        """Whether ``backend=None`` may pick this backend for ``op`` on ``q`` (asked in :data:`AUTOMATIC_ORDER`)."""
        return False

    # The ops, each overridden by the backends that run it (these bodies are only the interface: the registry never
    # sends a call to an op a backend does not override). Arguments: q, k, v heads-last; sizes as (y, x) tuples.
    def neighborhood_attention(self, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                               kernel: Tuple[int, int], dilation: Tuple[int, int], scale: float) -> Tensor:
        raise NotImplementedError(f"the {self.name} backend has no neighborhood_attention")

    def window_attention(self, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: Tuple[int, int],
                         shift: Tuple[int, int], scale: float, unpadded: Tuple[int, int]) -> Tensor:
        raise NotImplementedError(f"the {self.name} backend has no window_attention")

    def carrier_window_attention(self, q: Tensor, k: Tensor, v: Tensor, carrier_q: Tensor, carrier_k: Tensor,
                                 carrier_v: Tensor, rpb: Optional[Tensor], window: Tuple[int, int],
                                 scale: float) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError(f"the {self.name} backend has no carrier_window_attention")

    def table_bias_attention(self, q: Tensor, k: Tensor, v: Tensor, bias_table: Optional[Tensor], query_stride: int,
                             scale: float, gathered_bias: Optional[Tensor]) -> Tensor:
        raise NotImplementedError(f"the {self.name} backend has no table_bias_attention")

    def relu_linear_attention(self, q: Tensor, k: Tensor, v: Tensor, eps: float) -> Tensor:
        raise NotImplementedError(f"the {self.name} backend has no relu_linear_attention")

    def global_attention(self, q: Tensor, k: Tensor, v: Tensor, key_bias: Optional[Tensor],
                         key_mask: Optional[Tensor], scale: float, importance: bool,
                         query_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError(f"the {self.name} backend has no global_attention")

    def neighborhood_qk(self, q: Tensor, k: Tensor, rpb: Optional[Tensor], kernel: Tuple[int, ...],
                        dilation: Tuple[int, ...]) -> Tensor:
        raise NotImplementedError(f"the {self.name} backend has no neighborhood_qk")

    def neighborhood_av(self, attn: Tensor, v: Tensor, kernel: Tuple[int, ...], dilation: Tuple[int, ...]) -> Tensor:
        raise NotImplementedError(f"the {self.name} backend has no neighborhood_av")

    # Gradients for the registered custom ops' backward ops, which must recompute what they need (a custom op keeps
    # no saved state). ``None`` (the default) lets ``custom_ops`` differentiate the backend's forward instead.
    def neighborhood_grads(self, grad: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                           kernel: Tuple[int, int], dilation: Tuple[int, int], scale: float,
                           rpb_grad: bool) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        return None

    def window_grads(self, grad: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                     window: Tuple[int, int], shift: Tuple[int, int], scale: float, unpadded: Tuple[int, int],
                     rpb_grad: bool) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        return None


_REGISTRY: Dict[str, Backend] = {}
# backend=None asks these in order; the first whose automatic() accepts the call runs it ("torch" accepts every call).
AUTOMATIC_ORDER: Tuple[str, ...] = ("triton", "torch")
_forced_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("vithub_backend", default=None)


def register(backend: Backend) -> Backend:
    """Add ``backend`` under ``backend.name`` (called once per backend by ``backends/__init__.py``)."""
    if backend.name in _REGISTRY:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> Tuple[str, ...]:
    """Names of the registered backends (``reference``, ``torch``, ``triton``, ``onnx``), in registration order."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``."""
    return _REGISTRY[_check_name(name, "backend")]


def _check_name(name: Optional[str], argument: str) -> Optional[str]:
    if name is not None and name not in _REGISTRY:
        raise ValueError(f"{argument} must be None or one of {backend_names()}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Run every attention op inside the block on backend ``name`` (``None`` restores the automatic choice). Ops the
    named backend does not implement at all keep the automatic choice; a call it implements but cannot run raises."""
    token = _forced_backend.set(_check_name(name, "name"))
    try:
        yield
    finally:
        _forced_backend.reset(token)


# Read inside torch.compile'd code (backend selection): torch 2.11 cannot trace ContextVar.get, so the value is
# read eagerly while tracing and baked into the graph, as every other backend-selection input is.
@torch.compiler.assume_constant_result
def current_backend() -> Optional[str]:
    """The backend forced by the innermost :func:`use_backend`, or ``None``."""
    return _forced_backend.get()


def refusals(op: str, q: Tensor) -> Dict[str, Optional[str]]:
    """For each backend, why it cannot run ``op`` on ``q`` (``None`` where it can)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return {name: backend.refusal(op, q) for name, backend in _REGISTRY.items()}


def exporting_onnx() -> bool:
    """True while ``torch.onnx.export`` traces the model: the ops then run as standard operators (the ``onnx``
    backend), which every ONNX runtime has, instead of custom ops or Triton kernels."""
    return torch.onnx.is_in_onnx_export()


def as_custom_op() -> bool:
    """Whether an op goes into the traced graph as one ``vithub::`` custom op: under ``torch.compile`` and
    ``torch.export``, but not in an ONNX export, which needs standard operators."""
    return torch.compiler.is_compiling() and not exporting_onnx()


def select_backend(op: str, backend: Optional[str], q: Tensor) -> str:
    """The backend that runs one call of ``op``: in an ONNX export the ``onnx`` backend (standard operators only),
    else the explicit ``backend``, else the :func:`use_backend` context, else the first of :data:`AUTOMATIC_ORDER`
    that accepts it. A named backend that cannot run the call raises :class:`BackendUnavailableError` with its
    reason."""
    if exporting_onnx() and "onnx" in _REGISTRY and op in _REGISTRY["onnx"].ops:
        return "onnx"
    name = _check_name(backend, "backend")
    if name is None:
        forced = current_backend()
        if forced is not None and op in _REGISTRY[forced].ops:
            name = forced
    if name is not None:
        reason = _REGISTRY[name].refusal(op, q)
        if reason is not None:
            raise BackendUnavailableError(reason)
        return name
    for candidate in AUTOMATIC_ORDER:
        if _REGISTRY[candidate].automatic(op, q):
            return candidate
    raise BackendUnavailableError(f"no backend accepts {op} on {q.device} tensors of dtype {q.dtype}")


def available_backends(device: torch.device | str = "cpu") -> Tuple[str, ...]:
    """Backends that can run on ``device`` here: Triton on CUDA, or on CPU through its interpreter
    (``TRITON_INTERPRET=1``)."""
    device = torch.device(device)
    return tuple(name for name, backend in _REGISTRY.items() if backend.device_refusal(device) is None)
