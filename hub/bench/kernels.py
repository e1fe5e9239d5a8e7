"""``vithub bench kernels``: the attention ops against their anchors, side by side in one run.

Every candidate of a row is timed round-robin by :func:`vithub.bench.timing.measure` (CUDA events on a GPU), median
kept. Columns:

* ``torch``: our fast backend; ``reference``: our naive backend (small shapes only);
* ``fused``: for the unfused rows (qk, softmax, av as ``vithub.kernels.neighborhood_attention_qk``/``_av``, the torch
  backend's offset-by-offset form), our fused :func:`neighborhood_attention` on the same tensors; ``reference`` there
  is the naive form (every neighbourhood gathered, then einsums);
* ``floor``: SDPA over the same number of disjoint ``K*K``-token blocks, already partitioned: the same FLOPs with no
  gather and no waste, the practical floor for any local-attention kernel;
* ``natten``: NATTEN's ``na2d`` (only when NATTEN is installed; its CPU path takes no rpb, so NA rows compare rpb=None);
* ``sdpa``: ``scaled_dot_product_attention`` with the same gathered bias (table rows: the alternative to our explicit
  matmul path);
* ``timm_core``: for the table and linear rows, timm's own attention arithmetic (LeViT/EfficientViT-M: ``q @ k *
  scale + bias``, softmax, ``@ v``; EfficientViT-B LiteMLA: ``v`` padded with ones, two fp32 matmuls) on the same
  tensors; for window rows, timm's Swin attention with identity projections (roll, window partition, SDPA with bias and mask,
  reverse, roll) on the q/k/v tensor; ``timm_block``: timm's ``SwinTransformerBlock._attn`` with its projections,
  against ours (same weights: qkv linear, :func:`window_attention`, proj linear).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from vithub.kernels import (
    gather_table_bias,
    neighborhood_attention,
    neighborhood_attention_av,
    neighborhood_attention_qk,
    relu_linear_attention,
    rpb_from_swin_table,
    table_bias_attention,
    window_attention,
)

from .timing import device_name, measure, report

_logger = logging.getLogger(__name__)

# Shapes: (name, B, H, W, heads, head_dim, kernel_or_window, shift); shift is None for NA rows.
NA_SHAPES = [
    ("anchor_nat_tiny_s1", 8, 56, 56, 2, 32, 7, None),  # the 56x56 anchor is also NAT-Tiny's stage-1 shape
    ("nat_tiny_s2", 8, 28, 28, 4, 32, 7, None),
    ("nat_tiny_s3", 8, 14, 14, 8, 32, 7, None),
    ("nat_tiny_s4", 8, 7, 7, 16, 32, 7, None),
]
WINDOW_SHAPES = [
    ("swin_tiny_s1", 8, 56, 56, 3, 32, 7, 0),
    ("swin_tiny_s1_shift", 8, 56, 56, 3, 32, 7, 3),
    ("swin_tiny_s2", 8, 28, 28, 6, 32, 7, 0),
    ("swin_tiny_s2_shift", 8, 28, 28, 6, 32, 7, 3),
    ("swin_tiny_s3", 8, 14, 14, 12, 32, 7, 0),
    ("swin_tiny_s3_shift", 8, 14, 14, 12, 32, 7, 3),
    ("swin_tiny_s4", 8, 7, 7, 24, 32, 7, 0),
]
# (name, B, H, W, heads, key_dim, value_dim, query_stride): LeViT-256 at 224 (stage-1 attention, the stage-2
# subsampling attention) and EfficientViT-M5's first-stage 7x7 windows (4 windows per image, one head per call).
TABLE_SHAPES = [
    ("levit_256_s1", 32, 14, 14, 4, 32, 64, 1),
    ("levit_256_down2", 32, 14, 14, 8, 32, 128, 2),
    ("effvit_m5_s1_windows", 128, 7, 7, 1, 16, 64, 1),
]
# (name, B, H, W, groups, head_dim): EfficientViT-B1 at 224, LiteMLA in stages 3 and 4 (2 scales x heads groups).
LINEAR_SHAPES = [
    ("effvit_b1_s3", 32, 14, 14, 16, 16),
    ("effvit_b1_s4", 32, 7, 7, 32, 16),
]
# (name, B, spatial, heads, head_dim, kernel, dilation): the unfused ops at DiNAT-T's shapes (224 px; stage 1 with
# its most dilated block, stage 2 plain) and a 1-D sequence (natten1d users: audio frames).
UNFUSED_SHAPES = [
    ("dinat_tiny_s1_d8", 4, (56, 56), 2, 32, 7, 8),
    ("dinat_tiny_s2", 4, (28, 28), 4, 32, 7, 1),
    ("seq_1d_2048", 4, (2048,), 4, 32, 7, 1),
]
REFERENCE_MAX_ELEMENTS = 60_000_000  # gathered (B, H, W, K, K, heads, d) elements the reference may build


@dataclass
class Row:
    op: str
    shape: str
    mode: str  # "fwd" or "fwd+bwd"
    rpb: bool
    ms: Dict[str, float]

    def speedups(self) -> Dict[str, float]:
        """Other candidate's ms / ours: > 1 means our ``torch`` backend is faster."""
        base = self.ms["torch"]
        return {f"torch_speedup_vs_{name}": round(value / base, 3) for name, value in self.ms.items() if name != "torch"}


def natten_na2d() -> Optional[Callable]:
    """NATTEN's ``na2d`` when installed (an optional extra), else None."""
    try:
        from natten.functional import na2d  # type: ignore
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return na2d


def _train_step(fn: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        fn().float().sum().backward()

    return step


def _floor(batch: int, tokens: int, heads: int, head_dim: int, block: int, grad: bool, dtype, device):
    """SDPA over disjoint ``block``-token groups holding ``tokens`` queries: same FLOPs as a K*K local attention."""
    groups = -(-tokens // block)
    q, k, v = (torch.randn(batch, heads * groups, block, head_dim, dtype=dtype, device=device, requires_grad=grad)
               for _ in range(3))
    return (lambda: F.scaled_dot_product_attention(q, k, v)), (q, k, v)


def bench_neighborhood(repeats: int, device: torch.device, dtype: torch.dtype, shapes: Sequence[tuple]) -> List[Row]:
    rows: List[Row] = []
    na2d = natten_na2d()
    for name, b, h, w, heads, d, kernel, _ in shapes:
        for with_rpb in (False, True):
            for mode in ("fwd", "fwd+bwd"):
                grad = mode == "fwd+bwd"
                q, k, v = (torch.randn(b, h, w, heads, d, dtype=dtype, device=device, requires_grad=grad)
                           for _ in range(3))
                rpb = (torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, dtype=dtype, device=device,
                                   requires_grad=grad) if with_rpb else None)
                leaves = [t for t in (q, k, v, rpb) if t is not None]
                floor, floor_leaves = _floor(b, h * w, heads, d, kernel * kernel, grad, dtype, device)
                fns: Dict[str, Callable[[], torch.Tensor]] = {
                    "torch": lambda: neighborhood_attention(q, k, v, kernel, 1, rpb, backend="torch"),
                    "floor": floor,
                }
                if b * h * w * kernel * kernel * heads * d <= REFERENCE_MAX_ELEMENTS:
                    fns["reference"] = lambda: neighborhood_attention(q, k, v, kernel, 1, rpb, backend="reference")
                # NATTEN's CPU path (eager flex) has no rpb and no backward on CPU.
                if na2d is not None and not with_rpb and (not grad or device.type == "cuda"):
                    fns["natten"] = lambda: na2d(q, k, v, kernel_size=kernel)
                rows.append(_run(fns, leaves, floor_leaves, grad, repeats, "neighborhood", name, mode, with_rpb))
    return rows


def bench_window(repeats: int, device: torch.device, dtype: torch.dtype, shapes: Sequence[tuple]) -> List[Row]:
    from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

    rows: List[Row] = []
    for name, b, h, w, heads, d, window, shift in shapes:
        dim = heads * d
        block = SwinTransformerBlock(dim, (h, w), num_heads=heads, window_size=window, shift_size=shift)
        block = block.to(device=device, dtype=dtype)
        attn = block.attn
        shift = block.shift_size[0]  # timm drops the shift when the window covers the map
        window = block.window_size[0]
        mask = block.attn_mask
        rpb_ours = rpb_from_swin_table(attn.relative_position_bias_table.detach(), window)
        # timm's attention core: its WindowAttention with identity projections, sharing the block's bias table.
        core_attn = type(attn)(dim, heads, window_size=window).to(device=device, dtype=dtype)
        core_attn.qkv = torch.nn.Identity()
        core_attn.proj = torch.nn.Identity()
        core_attn.relative_position_bias_table = attn.relative_position_bias_table
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            qkv = torch.randn(b, h, w, 3, heads, d, dtype=dtype, device=device, requires_grad=grad)
            rpb = rpb_ours.clone().requires_grad_(grad)
            leaves = [qkv, rpb]

            def timm_core() -> torch.Tensor:
                x = qkv.view(b, h, w, 3 * dim)
                if shift:
                    x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
                windows = window_partition(x, (window, window)).view(-1, window * window, 3 * dim)
                out = core_attn(windows, mask=mask).view(-1, window, window, dim)
                out = window_reverse(out, (window, window), h, w)
                return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out

            def ours_core() -> torch.Tensor:
                q, k, v = qkv.unbind(3)
                return window_attention(q, k, v, window, shift, rpb, backend="torch")

            floor, floor_leaves = _floor(b, h * w, heads, d, window * window, grad, dtype, device)
            fns = {"torch": ours_core, "timm_core": timm_core, "floor": floor}
            if b * h * w * heads * d * window * window <= REFERENCE_MAX_ELEMENTS:
                fns["reference"] = lambda: window_attention(*qkv.unbind(3), window, shift, rpb, backend="reference")
            rows.append(_run(fns, leaves + list(core_attn.parameters()), floor_leaves, grad, repeats, "window",
                             name, mode, True))

            # Whole attention path with projections, same weights on both sides.
            x = torch.randn(b, h, w, dim, dtype=dtype, device=device, requires_grad=grad)

            def ours_block() -> torch.Tensor:
                qkv_map = attn.qkv(x).view(b, h, w, 3, heads, d)
                q, k, v = qkv_map.unbind(3)
                rpb_block = rpb_from_swin_table(attn.relative_position_bias_table, window)
                out = window_attention(q, k, v, window, shift, rpb_block, backend="torch")
                return attn.proj(out.reshape(b, h, w, dim))

            fns_block = {"torch": ours_block, "timm_block": lambda: block._attn(x)}
            rows.append(_run(fns_block, [x] + list(block.parameters()), [], grad, repeats, "window_block", name, mode,
                             True))
    return rows


def bench_table(repeats: int, device: torch.device, dtype: torch.dtype, shapes: Sequence[tuple]) -> List[Row]:
    rows: List[Row] = []
    for name, b, h, w, heads, key_dim, value_dim, stride in shapes:
        q_h, q_w = -(-h // stride), -(-w // stride)
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            q = torch.randn(b, q_h, q_w, heads, key_dim, dtype=dtype, device=device, requires_grad=grad)
            k = torch.randn(b, h, w, heads, key_dim, dtype=dtype, device=device, requires_grad=grad)
            v = torch.randn(b, h, w, heads, value_dim, dtype=dtype, device=device, requires_grad=grad)
            table = torch.randn(heads, h, w, dtype=dtype, device=device, requires_grad=grad)
            scale = key_dim ** -0.5

            def gathered() -> torch.Tensor:
                return gather_table_bias(table, (q_h, q_w), stride)

            def sdpa() -> torch.Tensor:
                out = F.scaled_dot_product_attention(q.flatten(1, 2).transpose(1, 2), k.flatten(1, 2).transpose(1, 2),
                                                     v.flatten(1, 2).transpose(1, 2), attn_mask=gathered())
                return out.transpose(1, 2)

            def timm_core() -> torch.Tensor:
                # timm's LeViT/EfficientViT-M arithmetic: (B, heads, N, d) operands, bias added to scaled logits.
                attn = q.flatten(1, 2).permute(0, 2, 1, 3) @ k.flatten(1, 2).permute(0, 2, 3, 1) * scale + gathered()
                return attn.softmax(dim=-1) @ v.flatten(1, 2).permute(0, 2, 1, 3)

            fns = {"torch": lambda: table_bias_attention(q, k, v, table, stride, backend="torch"),
                   "sdpa": sdpa, "timm_core": timm_core}
            rows.append(_run(fns, [q, k, v, table], [], grad, repeats, "table_bias", name, mode, True))
    return rows


def bench_linear(repeats: int, device: torch.device, dtype: torch.dtype, shapes: Sequence[tuple]) -> List[Row]:
    rows: List[Row] = []
    for name, b, h, w, groups, dim in shapes:
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            q, k, v = (torch.randn(b, h, w, groups, dim, dtype=dtype, device=device, requires_grad=grad)
                       for _ in range(3))

            def timm_core() -> torch.Tensor:
                # timm's LiteMLA._attn on (B, groups, N, d) operands: v padded with ones for the normaliser.
                tq, tk, tv = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))
                tq, tk = F.relu(tq).float(), F.relu(tk).float()
                tv = F.pad(tv, (0, 1), mode="constant", value=1.0).float()
                out = tq @ (tk.transpose(-1, -2) @ tv)
                return out[..., :-1] / (out[..., -1:] + 1e-5)

            fns = {"torch": lambda: relu_linear_attention(q, k, v, 1e-5, backend="torch"), "timm_core": timm_core}
            rows.append(_run(fns, [q, k, v], [], grad, repeats, "relu_linear", name, mode, False))
    return rows


def bench_unfused(repeats: int, device: torch.device, dtype: torch.dtype, shapes: Sequence[tuple]) -> List[Row]:
    """Unfused qk + softmax + av (with rpb, as DiNAT calls them) against our fused op and the naive gather."""
    rows: List[Row] = []
    for name, b, spatial, heads, d, kernel, dilation in shapes:
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            q, k, v = (torch.randn(b, *spatial, heads, d, dtype=dtype, device=device, requires_grad=grad)
                       for _ in range(3))
            rpb = torch.randn(heads, *(2 * kernel - 1 for _ in spatial), dtype=dtype, device=device,
                              requires_grad=grad)
            scale = d ** -0.5

            def unfused(backend: str) -> torch.Tensor:
                logits = neighborhood_attention_qk(q * scale, k, kernel, dilation, rpb, backend=backend)
                return neighborhood_attention_av(logits.softmax(-1), v, kernel, dilation, backend=backend)

            fns: Dict[str, Callable[[], torch.Tensor]] = {"torch": lambda: unfused("torch")}
            if len(spatial) == 2:
                fns["fused"] = lambda: neighborhood_attention(q, k, v, kernel, dilation, rpb, backend="torch")
            elements = b * heads * d * kernel ** len(spatial)
            for size in spatial:
                elements *= size
            if elements <= REFERENCE_MAX_ELEMENTS:
                fns["reference"] = lambda: unfused("reference")
            rows.append(_run(fns, [q, k, v, rpb], [], grad, repeats, "unfused_na", name, mode, True))
    return rows


def _run(fns, leaves, floor_leaves, grad, repeats, op, name, mode, with_rpb) -> Row:
    device = leaves[0].device
    if grad:
        timed = {key: _train_step(fn, floor_leaves if key == "floor" else leaves) for key, fn in fns.items()}
        ms = measure(timed, repeats, device=device)
    else:
        with torch.no_grad():
            ms = measure(fns, repeats, device=device)
    return Row(op, name, mode, with_rpb, ms)


def format_table(rows: Sequence[Row]) -> str:
    columns = ["torch", "fused", "floor", "natten", "sdpa", "timm_core", "timm_block", "reference"]
    header = f"{'op':<13}{'shape':<20}{'mode':<9}{'rpb':<5}" + "".join(f"{c + ' ms':>14}" for c in columns)
    header += f"{'vs floor':>10}{'vs natten':>11}{'timm/torch':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = "".join(f"{row.ms[c]:>14.2f}" if c in row.ms else f"{'-':>14}" for c in columns)
        torch_ms = row.ms["torch"]
        vs_floor = f"{torch_ms / row.ms['floor']:.2f}x" if "floor" in row.ms else "-"
        vs_natten = f"{row.ms['natten'] / torch_ms:.0f}x" if "natten" in row.ms else "-"
        timm_key = "timm_core" if "timm_core" in row.ms else "timm_block" if "timm_block" in row.ms else None
        vs_timm = f"{row.ms[timm_key] / torch_ms:.2f}x" if timm_key else "-"
        lines.append(f"{row.op:<13}{row.shape:<20}{row.mode:<9}{str(row.rpb):<5}{cells}{vs_floor:>10}"
                     f"{vs_natten:>11}{vs_timm:>12}")
    return "\n".join(lines)


def run_kernel_bench(
    output: Optional[str] = None, repeats: int = 7, device: str = "cpu", dtype: str = "float32",
    quick: bool = False, ops: Sequence[str] = ("neighborhood", "window"),
    na_shapes: Optional[Sequence[tuple]] = None, window_shapes: Optional[Sequence[tuple]] = None,
    unfused_shapes: Optional[Sequence[tuple]] = None,
) -> dict:
    """Run the kernel benchmark, print the table, write JSON to ``output`` (if given) and return the payload.

    ``quick`` keeps the first NA shape and the first two window shapes; ``na_shapes``/``window_shapes``/
    ``unfused_shapes`` override the shape lists (rows as in :data:`NA_SHAPES`, :data:`WINDOW_SHAPES` and
    :data:`UNFUSED_SHAPES`).
    """
    torch_device = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    rows: List[Row] = []
    if na_shapes is None:
        na_shapes = NA_SHAPES[:1] if quick else NA_SHAPES
    if window_shapes is None:
        window_shapes = WINDOW_SHAPES[:2] if quick else WINDOW_SHAPES
    if "neighborhood" in ops:
        rows += bench_neighborhood(repeats, torch_device, torch_dtype, na_shapes)
    if "window" in ops:
        rows += bench_window(repeats, torch_device, torch_dtype, window_shapes)
    if "table" in ops:
        rows += bench_table(repeats, torch_device, torch_dtype, TABLE_SHAPES[:1] if quick else TABLE_SHAPES)
    if "linear" in ops:
        rows += bench_linear(repeats, torch_device, torch_dtype, LINEAR_SHAPES[:1] if quick else LINEAR_SHAPES)
    if "unfused" in ops:
        if unfused_shapes is None:
            unfused_shapes = UNFUSED_SHAPES[:1] if quick else UNFUSED_SHAPES
        rows += bench_unfused(repeats, torch_device, torch_dtype, unfused_shapes)
    _logger.info("%s", format_table(rows))
    payload = {
        "benchmark": "kernels",
        "device": device_name(torch_device),
        "dtype": dtype,
        "torch": torch.__version__,
        "repeats": repeats,
        "natten": natten_na2d() is not None,
        "rows": [dict(row.__dict__, speedups=row.speedups()) for row in rows],
    }
    report(output, payload)
    return payload
