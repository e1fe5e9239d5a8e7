"""The ``triton`` backend: host side of the local-attention kernels in ``triton_kernels.py``.

CUDA tensors run the compiled kernels. CPU tensors run them in Triton's interpreter (slow; it exists for tests),
which Triton enables per process: ``TRITON_INTERPRET=1`` must be in the environment before ``triton`` is first
imported (torch and timm import it), e.g. ``TRITON_INTERPRET=1 python script.py``. :class:`TritonBackend` checks both.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch

from ..registry import Backend

Tensor = torch.Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128


@dataclass(frozen=True)
class Geometry:
    """What makes the two ops differ: window or neighbourhood, its size, and dilation or shift per axis."""

    is_window: bool
    kernel: Tuple[int, int]
    dilation: Tuple[int, int] = (1, 1)
    shift: Tuple[int, int] = (0, 0)
    unpadded: Optional[Tuple[int, int]] = None  # windows: the region that rolls (None: the whole map)


@dataclass(frozen=True)
class Tiles:
    """Tile shapes in logical coordinates: queries ``(ty, tx)`` per program and keys ``(kty, ktx)`` per step."""

    query: Tuple[int, int]
    key: Tuple[int, int]


def triton_importable() -> bool:
    """Whether the ``triton`` package can be imported here."""
    return importlib.util.find_spec("triton") is not None


# Both are read inside torch.compile'd code (backend resolution): dynamo treats their results as constants.
@torch.compiler.assume_constant_result
def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=1)
def _triton_interprets() -> bool:
    import triton
    import triton.language as tl

    # Triton decorates its own library (tl.zeros, ...) once, when it is first imported: the mode is per process.
    return not isinstance(tl.zeros, triton.JITFunction)


@torch.compiler.assume_constant_result
def triton_interprets() -> bool:
    """Whether this process imported Triton in interpreter mode (``TRITON_INTERPRET=1`` before its first import)."""
    return _triton_interprets()


@functools.lru_cache(maxsize=1)
def _kernels() -> ModuleType:
    # The kernel file is decorated in the mode Triton itself runs in, whatever TRITON_INTERPRET says now.
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if triton_interprets() else "0"
    try:
        return importlib.import_module(f"{__package__}.triton_kernels")
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def unsupported_reason(q: Tensor, op: Optional[str] = None) -> Optional[str]:
    """Why the Triton kernels cannot take ``q`` (dtype, head_dim; on CUDA, a dtype and head_dim with no spill-free
    launch configuration for ``op``), or ``None`` when they can."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"the triton backend takes float32, float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"the triton backend takes head_dim <= {MAX_HEAD_DIM}, got {q.shape[-1]}"
    if op is not None and q.device.type == "cuda" and q.dtype == torch.float32:
        limit = FP32_MAX_HEAD_DIM["window" if op == "window_attention" else "neighborhood"]
        if q.shape[-1] > limit:
            return (f"the triton backend takes float32 {op} on CUDA up to head_dim {limit} (larger fp32 tiles spill "
                    f"registers on sm_90), got {q.shape[-1]}; use bfloat16/float16")
    return None


def _lanes(count: int) -> int:
    # Block sizes must be powers of two, and tl.dot needs at least 16 along every axis.
    return max(16, 1 << (count - 1).bit_length())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LaunchConfig:
    """How the kernels are launched for one geometry, dtype and head_dim: tiles and warps per program."""

    tiles: Tiles
    num_warps: int
    num_stages: int = 2


# Chosen so that ptxas (sm_90a, Triton's own flags) reports no spill store or load for any of the three kernels, with
# Triton 3.8 and with 3.6 (their ptxas and code generation differ); tests/sm90_compile.py checks every entry and
# docs/kernels.md lists the registers each uses. Keys: half precision
# (fp16/bf16) or fp32, then head_dim rounded up to a power of two (>= 16). Values: (tile, num_warps).
# Neighborhood attention: queries and keys in tiles of this (y, x) shape.
NA_CONFIGS: Dict[Tuple[bool, int], Tuple[Tuple[int, int], int]] = {
    (True, 16): ((4, 8), 8), (True, 32): ((4, 8), 8), (True, 64): ((4, 8), 8), (True, 128): ((4, 8), 8),
    (False, 16): ((4, 8), 8), (False, 32): ((4, 8), 8),
}
# Window attention: whole rows of a window per tile; (rows, num_warps) for Swin's 7 and 12, else the most rows that
# fit 16 lanes with 4 warps. (7x7 windows in 64 lanes spill at every head_dim: one row of 7 per tile does not.)
WINDOW_CONFIGS: Dict[Tuple[bool, int], Dict[int, Tuple[int, int]]] = {
    (True, 16): {7: (1, 4), 12: (4, 8)}, (True, 32): {7: (1, 8), 12: (2, 4)},
    (True, 64): {7: (1, 4), 12: (2, 4)}, (True, 128): {7: (1, 8), 12: (1, 8)},
    (False, 16): {7: (1, 4), 12: (2, 8)},
}
WINDOW_FALLBACK_LANES = 16
# The largest fp32 head_dim with a spill-free configuration on CUDA (the interpreter on CPU takes any).
FP32_MAX_HEAD_DIM = {"neighborhood": 32, "window": 16}


def launch_config(geometry: Geometry, dtype: torch.dtype, head_dim: int) -> LaunchConfig:
    """The launch configuration for one call (see :data:`NA_CONFIGS` and :data:`WINDOW_CONFIGS`). Combinations
    with no entry (fp32 beyond :data:`FP32_MAX_HEAD_DIM`, which only the CPU interpreter runs) take the smallest
    tiles."""
    half = dtype != torch.float32
    lanes = _lanes(head_dim)
    if not geometry.is_window:
        tile, warps = NA_CONFIGS.get((half, lanes), ((4, 8), 8))
        return LaunchConfig(Tiles(tile, tile), warps)
    wh, ww = geometry.kernel
    tuned = WINDOW_CONFIGS.get((half, lanes), {}).get(ww) if wh == ww else None
    if tuned is not None:
        rows, warps = tuned
    else:
        rows = max((r for r in range(1, wh + 1) if wh % r == 0 and r * ww <= WINDOW_FALLBACK_LANES), default=1)
        warps = 4
    return LaunchConfig(Tiles((rows, ww), (rows, ww)), warps)


def _allocate(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    # Every kernel output comes from here, so tests can poison it (NaN) and catch elements no program writes.
    return torch.empty(shape, dtype=dtype, device=device)


def _strides(x: Tensor) -> Tuple[int, ...]:
    return tuple(x.stride())


def _launch_common(q: Tensor, geometry: Geometry, tiles: Tiles, scale: float, per_key: bool = False,
                   num_warps: int = 4, num_stages: int = 2):
    batch, height, width, heads, head_dim = q.shape
    dh, dw = geometry.dilation
    ty, tx = tiles.key if per_key else tiles.query
    # Sized for the longest dilation group; programs past a shorter group's end return at once.
    tiles_y = _ceil_div(_ceil_div(height, dh), ty)
    tiles_x = _ceil_div(_ceil_div(width, dw), tx)
    grid = (dh * dw * tiles_y * tiles_x, batch * heads)
    unpadded = geometry.unpadded or (height, width)
    scalars = (height, width, heads, head_dim, *geometry.kernel, dh, dw, *geometry.shift, *unpadded, tiles_y, tiles_x,
               scale)
    constants = dict(
        IS_WINDOW=geometry.is_window,
        TY=tiles.query[0], TX=tiles.query[1], BQ=_lanes(tiles.query[0] * tiles.query[1]),
        KTY=tiles.key[0], KTX=tiles.key[1], BK=_lanes(tiles.key[0] * tiles.key[1]),
        BD=_lanes(head_dim),
        # fp32 inputs get exact fp32 products (as the other backends); half types use the tensor cores natively.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return grid, scalars, constants


def _check_tiles(tiles: Tiles) -> None:
    for name, (a, b) in (("query", tiles.query), ("key", tiles.key)):
        if a < 1 or b < 1 or a * b > 1024:
            raise ValueError(f"tiles.{name} must be two positive ints with a product <= 1024, got {(a, b)}")


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], geometry: Geometry, scale: float,
            tiles: Optional[Tiles] = None) -> Tuple[Tensor, Tensor]:
    """Output ``(B, H, W, heads, head_dim)`` and the base-2 log-sum-exp ``(B, heads, H, W)`` (fp32). ``tiles``
    overrides the tiles of :func:`launch_config` (tests)."""
    config = launch_config(geometry, q.dtype, q.shape[-1])
    tiles = tiles or config.tiles
    _check_tiles(tiles)
    kernels = _kernels()
    batch, height, width, heads, head_dim = q.shape
    out = _allocate(q.shape, q.dtype, q.device)
    lse = _allocate((batch, heads, height, width), torch.float32, q.device)
    table = rpb.contiguous() if rpb is not None else q  # never read without HAS_RPB
    grid, scalars, constants = _launch_common(q, geometry, tiles, scale, num_warps=config.num_warps,
                                              num_stages=config.num_stages)
    kernels.local_attention_fwd[grid](
        q, k, v, table, out, lse, *_strides(q), *_strides(k), *_strides(v), *scalars,
        HAS_RPB=rpb is not None, **constants,
    )
    return out, lse


def backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             geometry: Geometry, scale: float, rpb_grad: bool,
             tiles: Optional[Tiles] = None) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v (q's dtype) and of rpb (rpb's dtype, or ``None`` when not asked)."""
    config = launch_config(geometry, q.dtype, q.shape[-1])
    tiles = tiles or config.tiles
    _check_tiles(tiles)
    kernels = _kernels()
    batch, height, width, heads, head_dim = q.shape
    has_rpb = rpb is not None
    rpb_grad = rpb_grad and has_rpb
    table = rpb.contiguous() if has_rpb else q
    delta = _allocate(lse.shape, torch.float32, q.device)
    grad_q = _allocate(q.shape, q.dtype, q.device)
    grad_k = _allocate(q.shape, q.dtype, q.device)
    grad_v = _allocate(q.shape, q.dtype, q.device)

    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    grid, scalars, constants = _launch_common(q, geometry, tiles, scale, **launch)
    table_size = (2 * geometry.kernel[0] - 1) * (2 * geometry.kernel[1] - 1)
    if rpb_grad:
        # One partial table per program (reduced inside the program), summed here: no contention across programs.
        partials = torch.zeros((batch * grid[0], heads, table_size), dtype=torch.float32, device=q.device)
    else:
        partials = lse  # never written without RPB_GRAD
    kernels.local_attention_bwd_query[grid](
        q, k, v, table, out, grad, lse, delta, grad_q, partials,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad), *scalars,
        HAS_RPB=has_rpb, RPB_GRAD=rpb_grad, **constants,
    )
    grid, scalars, constants = _launch_common(q, geometry, tiles, scale, per_key=True, **launch)
    kernels.local_attention_bwd_key[grid](
        q, k, v, table, grad, lse, delta, grad_k, grad_v,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad), *scalars,
        HAS_RPB=has_rpb, **constants,
    )
    grad_rpb = None
    if rpb_grad:
        grad_rpb = partials.sum(dim=0).view(rpb.shape).to(rpb.dtype)
    return grad_q, grad_k, grad_v, grad_rpb


class _LocalAttention(torch.autograd.Function):
    """Autograd over the Triton forward and its two-pass backward (saves the log-sum-exp, recomputes scores)."""

    @staticmethod
    def forward(q, k, v, rpb, geometry, scale, tiles):  # type: ignore[override]
        return forward(q, k, v, rpb, geometry, scale, tiles)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        q, k, v, rpb, geometry, scale, tiles = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, rpb, out, lse)
        ctx.geometry, ctx.scale, ctx.tiles = geometry, scale, tiles
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):  # type: ignore[override]
        q, k, v, rpb, out, lse = ctx.saved_tensors
        grad_q, grad_k, grad_v, grad_rpb = backward(
            grad_out, q, k, v, rpb, out, lse, ctx.geometry, ctx.scale, bool(ctx.needs_input_grad[3]), ctx.tiles
        )
        return grad_q, grad_k, grad_v, grad_rpb, None, None, None


def local_attention(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], geometry: Geometry, scale: float,
                    tiles: Optional[Tiles] = None) -> Tensor:
    """Differentiable local attention on the Triton kernels (validated arguments assumed)."""
    reason = unsupported_reason(q)
    if reason is not None:
        raise ValueError(reason + "; use backend='torch'")
    out, _ = _LocalAttention.apply(q, k, v, rpb, geometry, scale, tiles)
    return out


def neighborhood_attention(q: Tensor, k: Tensor, v: Tensor, kernel: Tuple[int, int], dilation: Tuple[int, int],
                           rpb: Optional[Tensor], scale: float, tiles: Optional[Tiles] = None) -> Tensor:
    """Neighborhood attention (NATTEN semantics) on the Triton kernels."""
    return local_attention(q, k, v, rpb, Geometry(False, tuple(kernel), dilation=tuple(dilation)), scale, tiles)


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: Tuple[int, int], shift: Tuple[int, int],
                     rpb: Optional[Tensor], scale: float, tiles: Optional[Tiles] = None,
                     unpadded: Optional[Tuple[int, int]] = None) -> Tensor:
    """Swin (shifted) window attention on the Triton kernels."""
    geometry = Geometry(True, tuple(window), shift=tuple(shift), unpadded=tuple(unpadded) if unpadded else None)
    return local_attention(q, k, v, rpb, geometry, scale, tiles)


# Looked up once: backend selection runs inside torch.compile'd code, where an import-system query would break the
# graph.
_TRITON_IMPORTABLE = triton_importable()


def triton_available() -> bool:
    """Whether the Triton kernels can be used at all here (the ``triton`` package is importable)."""
    return _TRITON_IMPORTABLE


def triton_refusal(device: torch.device | str) -> Optional[str]:
    """Why the Triton kernels cannot run on ``device`` in this process, or ``None`` when they can."""
    device = torch.device(device)
    if not triton_available():
        return "backend='triton' needs the triton package, which is not installed; use backend='torch' or None"
    if device.type == "cpu":
        if not interpreter_requested():
            return (
                "backend='triton' runs on CUDA tensors; on CPU it needs TRITON_INTERPRET=1 (Triton's interpreter: "
                "slow, for testing kernels). Use backend='torch' or None for CPU tensors"
            )
        if not triton_interprets():
            return (
                "backend='triton' on CPU: TRITON_INTERPRET=1 was set after triton had been imported in compiled mode; "
                "set it in the environment that starts Python (TRITON_INTERPRET=1 python ...)"
            )
        return None
    if device.type == "cuda":
        if triton_interprets():
            return "backend='triton' on CUDA: this process runs Triton's interpreter (TRITON_INTERPRET=1); unset it"
        return None
    return f"backend='triton' runs on CUDA tensors, got tensors on {device}; use backend='torch' or None"


@dataclass(frozen=True)
class ValidatedConfiguration:
    """Calls that the CUDA tests (``tests/test_kernels_triton.py``, run by ``benchmarks/gpu_check.sh``) have passed on
    real hardware: one op, one dtype, head_dim up to a bound, on GPUs of one compute capability."""

    op: str
    dtype: torch.dtype
    max_head_dim: int
    capability: Tuple[int, int]
    gpu: str  # the GPU the tests ran on, and when: the evidence for this row
    date: str


# ``backend=None`` picks Triton on CUDA only for calls covered here; everything else stays on the torch backend, which
# runs on CUDA too. No CUDA test has run on a GPU yet, so the table is empty. An explicit ``backend="triton"`` (or a
# ``use_backend("triton")`` block) runs the kernels wherever they can run, covered or not.
VALIDATED_ON_GPU: Tuple[ValidatedConfiguration, ...] = ()


@functools.lru_cache(maxsize=None)
def _device_capability(index: int) -> Tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


# Read inside torch.compile'd code (backend selection): dynamo treats the result as a constant.
@torch.compiler.assume_constant_result
def cuda_capability(index: int) -> Tuple[int, int]:
    """Compute capability of CUDA device ``index``, e.g. ``(9, 0)`` for Hopper."""
    return _device_capability(index)


def covered(rows: Tuple[ValidatedConfiguration, ...], op: str, dtype: torch.dtype, head_dim: int,
            capability: Tuple[int, int]) -> bool:
    """Whether one of ``rows`` covers a call of ``op`` with this dtype and head_dim on this compute capability."""
    return any(row.op == op and row.dtype == dtype and head_dim <= row.max_head_dim and row.capability == capability
               for row in rows)


def validated_on_gpu(op: str, q: Tensor) -> bool:
    """Whether a call of ``op`` on ``q`` (a CUDA tensor) is covered by :data:`VALIDATED_ON_GPU`."""
    if not VALIDATED_ON_GPU or q.device.type != "cuda":
        return False
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    return covered(VALIDATED_ON_GPU, op, q.dtype, q.shape[-1], cuda_capability(index))


class TritonBackend(Backend):
    """Fused local-attention kernels (neighborhood and window attention), forward and backward. The automatic choice
    for CUDA calls that :data:`VALIDATED_ON_GPU` covers."""

    name = "triton"
    title = "Triton kernel"

    def device_refusal(self, device: torch.device) -> Optional[str]:
        return triton_refusal(device)

    def input_refusal(self, op: str, q: Tensor) -> Optional[str]:
        return unsupported_reason(q, op)

    def automatic(self, op: str, q: Tensor) -> bool:
        return q.device.type == "cuda" and self.refusal(op, q) is None and validated_on_gpu(op, q)

    def neighborhood_attention(self, q, k, v, rpb, kernel, dilation, scale):
        return neighborhood_attention(q, k, v, kernel, dilation, rpb, scale)

    def window_attention(self, q, k, v, rpb, window, shift, scale, unpadded):
        return window_attention(q, k, v, window, shift, rpb, scale, unpadded=unpadded)

    def neighborhood_grads(self, grad, q, k, v, rpb, kernel, dilation, scale, rpb_grad):
        return _recomputed_grads(grad, q, k, v, rpb, Geometry(False, tuple(kernel), dilation=tuple(dilation)), scale,
                                 rpb_grad)

    def window_grads(self, grad, q, k, v, rpb, window, shift, scale, unpadded, rpb_grad):
        geometry = Geometry(True, tuple(window), shift=tuple(shift), unpadded=tuple(unpadded))
        return _recomputed_grads(grad, q, k, v, rpb, geometry, scale, rpb_grad)


def _recomputed_grads(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], geometry: Geometry,
                      scale: float, rpb_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward again (for the log-sum-exp), then the two backward passes; rpb's gradient is an empty tensor
    when none is wanted, since a custom op returns tensors only."""
    out, lse = forward(q, k, v, rpb, geometry, scale)
    grad_q, grad_k, grad_v, grad_rpb = backward(grad, q, k, v, rpb, out, lse, geometry, scale, rpb_grad)
    return grad_q, grad_k, grad_v, (grad_rpb if grad_rpb is not None else q.new_empty(0))
