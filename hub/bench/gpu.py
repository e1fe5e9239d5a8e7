"""``vithub bench gpu``: the Triton kernels against the GPU anchors, side by side in one run (CUDA only).

Rows are the NAT-T and Swin-T stage shapes at a training batch, bf16, forward and forward+backward. Columns:

* ``triton``: our Triton backend; ``torch``: our tiled PyTorch backend on the same GPU;
* ``flex``: ``torch.nn.attention.flex_attention`` under ``torch.compile`` with a block mask built from the same
  neighbourhood (or shifted-window) rule and the rpb added by a ``score_mod`` (it cannot take the table otherwise);
* ``timm_core`` (window rows): timm's Swin attention on the q/k/v map with identity projections: roll, window
  partition, SDPA with bias and mask, reverse, roll.

Each row also gives the bytes a kernel must move at least (q, k, v read and out written, plus the backward's reads
and writes) and the achieved GB/s of ``triton`` as a share of the copy bandwidth measured at the start of the run:
49-token windows are memory-bound, so that share is the roofline that matters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from vithub.kernels import neighborhood_attention, rpb_from_swin_table, window_attention

from .timing import measure, report

_logger = logging.getLogger(__name__)

# (name, B, H, W, heads, head_dim, kernel_or_window, shift); shift None for NA rows.
NA_SHAPES = [
    ("nat_tiny_s1", 128, 56, 56, 2, 32, 7, None),
    ("nat_tiny_s2", 128, 28, 28, 4, 32, 7, None),
    ("nat_tiny_s3", 128, 14, 14, 8, 32, 7, None),
    ("nat_tiny_s4", 128, 7, 7, 16, 32, 7, None),
]
WINDOW_SHAPES = [
    ("swin_tiny_s1", 128, 56, 56, 3, 32, 7, 0),
    ("swin_tiny_s1_shift", 128, 56, 56, 3, 32, 7, 3),
    ("swin_tiny_s2_shift", 128, 28, 28, 6, 32, 7, 3),
    ("swin_tiny_s3_shift", 128, 14, 14, 12, 32, 7, 3),
    ("swin_tiny_s4", 128, 7, 7, 24, 32, 7, 0),
]


@dataclass
class GpuRow:
    op: str
    shape: str
    mode: str
    ms: Dict[str, float]
    min_bytes: int
    hbm_gbps: float
    derived: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = self.ms["triton"]
        self.derived["triton_gbps"] = round(self.min_bytes / (base * 1e-3) / 1e9, 1)
        self.derived["triton_pct_of_hbm"] = round(100 * self.derived["triton_gbps"] / self.hbm_gbps, 1)
        for name, value in self.ms.items():
            if name != "triton":
                self.derived[f"triton_speedup_vs_{name}"] = round(value / base, 3)


class GpuUnavailableError(RuntimeError):
    """The GPU benchmark was asked for where no CUDA device is visible."""


def min_bytes(batch: int, height: int, width: int, heads: int, head_dim: int, element: int, backward: bool) -> int:
    """Bytes any kernel must move: q, k, v in and out once; backward adds q, k, v, out, dO in and dq, dk, dv out.

    The fp32 log-sum-exp (4 B per query and head) is counted both ways; rpb tables are negligible.
    """
    tensor = batch * height * width * heads * head_dim * element
    rows = batch * height * width * heads * 4
    forward = 4 * tensor + rows
    if not backward:
        return forward
    return forward + 8 * tensor + 3 * rows  # reads q,k,v,o,dO + writes dq,dk,dv; lse read, delta write + read


def copy_bandwidth_gbps(device: torch.device, megabytes: int = 2048, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth (bytes read + bytes written per second), the practical HBM roofline."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = measure({"copy": lambda: target.copy_(source)}, repeats, warmup=3, device=device, digits=4)["copy"]
    return 2 * source.numel() / (times * 1e-3) / 1e9


# --- FlexAttention with the same rules ------------------------------------------------------------------------------

def _na_axis_start(coord: torch.Tensor, length: int, kernel: int) -> torch.Tensor:
    left = kernel // 2
    right = kernel - 1 - left
    return torch.clamp(coord, min=left, max=length - 1 - right) - left


def neighborhood_flex_mods(height: int, width: int, kernel: int, rpb: Optional[torch.Tensor]):
    """``mask_mod`` and ``score_mod`` for FlexAttention on flattened ``(H*W)`` tokens: NA, dilation 1, key-minus-query
    rpb. Built from tensor ops so FlexAttention can both vmap them and compile them."""

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = q_idx // width, q_idx % width
        ky, kx = kv_idx // width, kv_idx % width
        sy, sx = _na_axis_start(qy, height, kernel), _na_axis_start(qx, width, kernel)
        return (ky >= sy) & (ky < sy + kernel) & (kx >= sx) & (kx < sx + kernel)

    def score_mod(score, b, h, q_idx, kv_idx):
        qy, qx = q_idx // width, q_idx % width
        ky, kx = kv_idx // width, kv_idx % width
        # FlexAttention also scores masked pairs, whose offsets fall outside the table: clamp, they are dropped.
        last = 2 * kernel - 2
        return score + rpb[h, (ky - qy + kernel - 1).clamp(0, last), (kx - qx + kernel - 1).clamp(0, last)]

    return mask_mod, (score_mod if rpb is not None else None)


def window_flex_mods(height: int, width: int, window: int, shift: int, rpb: Optional[torch.Tensor]):
    """``mask_mod`` and ``score_mod`` for Swin (shifted) windows on the unrolled map: same window of the rolled map
    and same Swin region; rpb by key minus query in rolled coordinates."""

    def rolled(coord, length):
        return (coord - shift + length) % length

    def region(coord, length):
        return (coord >= length - window).to(torch.int32) + (coord >= length - shift).to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = rolled(q_idx // width, height), rolled(q_idx % width, width)
        ky, kx = rolled(kv_idx // width, height), rolled(kv_idx % width, width)
        same_window = (qy // window == ky // window) & (qx // window == kx // window)
        same_region = (region(qy, height) == region(ky, height)) & (region(qx, width) == region(kx, width))
        return same_window & same_region

    def score_mod(score, b, h, q_idx, kv_idx):
        qy, qx = rolled(q_idx // width, height), rolled(q_idx % width, width)
        ky, kx = rolled(kv_idx // width, height), rolled(kv_idx % width, width)
        last = 2 * window - 2
        return score + rpb[h, (ky - qy + window - 1).clamp(0, last), (kx - qx + window - 1).clamp(0, last)]

    return mask_mod, (score_mod if rpb is not None else None)


def flex_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_mod, score_mod, compiled: bool = True):
    """FlexAttention on heads-last maps: returns a closure computing ``(B, H, W, heads, d)``."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, height, width, heads, head_dim = q.shape
    tokens = height * width
    block_mask = create_block_mask(mask_mod, None, None, tokens, tokens, device=q.device)
    attend = torch.compile(flex_attention) if compiled else flex_attention

    def to_flex(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

    def run() -> torch.Tensor:
        out = attend(to_flex(q), to_flex(k), to_flex(v), score_mod=score_mod, block_mask=block_mask)
        return out.transpose(1, 2).reshape(batch, height, width, heads, head_dim)

    return run


# --- rows -----------------------------------------------------------------------------------------------------------

def _step(fn: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor], backward: bool) -> Callable[[], None]:
    if not backward:
        def forward_only() -> None:
            with torch.no_grad():
                fn()
        return forward_only

    def train() -> None:
        for leaf in leaves:
            leaf.grad = None
        fn().float().sum().backward()

    return train


def bench_rows(shapes_na, shapes_window, repeats: int, dtype: torch.dtype, hbm_gbps: float,
               device: torch.device) -> List[GpuRow]:
    from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse

    rows: List[GpuRow] = []
    element = torch.tensor([], dtype=dtype).element_size()
    for op, shapes in (("neighborhood", shapes_na), ("window", shapes_window)):
        for name, b, h, w, heads, d, kernel, shift in shapes:
            for backward in (False, True):
                qkv = torch.randn(b, h, w, 3, heads, d, dtype=dtype, device=device, requires_grad=backward)
                rpb = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, dtype=dtype, device=device,
                                  requires_grad=backward)
                q, k, v = qkv.unbind(3)
                leaves = [qkv, rpb]
                if op == "neighborhood":
                    fns = {
                        "triton": lambda: neighborhood_attention(q, k, v, kernel, 1, rpb, backend="triton"),
                        "torch": lambda: neighborhood_attention(q, k, v, kernel, 1, rpb, backend="torch"),
                    }
                    mask_mod, score_mod = neighborhood_flex_mods(h, w, kernel, rpb)
                else:
                    fns = {
                        "triton": lambda: window_attention(q, k, v, kernel, shift, rpb, backend="triton"),
                        "torch": lambda: window_attention(q, k, v, kernel, shift, rpb, backend="torch"),
                    }
                    mask_mod, score_mod = window_flex_mods(h, w, kernel, shift, rpb)
                    fns["timm_core"], timm_params = _timm_core(qkv, heads, d, kernel, shift, rpb, WindowAttention,
                                                               window_partition, window_reverse)
                    leaves += timm_params
                fns["flex"] = flex_call(q, k, v, mask_mod, score_mod)
                timed = {key: _step(fn, leaves, backward) for key, fn in fns.items()}
                ms = measure(timed, repeats, warmup=3, device=device, digits=4)
                rows.append(GpuRow(op, name, "fwd+bwd" if backward else "fwd", ms,
                                   min_bytes(b, h, w, heads, d, element, backward), hbm_gbps))
                _logger.info("%s", format_row(rows[-1]))
    return rows


def _timm_core(qkv, heads, head_dim, window, shift, rpb, window_attention_cls, partition, reverse):
    """timm's Swin attention on a qkv map with identity projections; its bias table holds our rpb (converted)."""
    b, h, w, _, _, _ = qkv.shape
    dim = heads * head_dim
    attn = window_attention_cls(dim, heads, window_size=window).to(device=qkv.device, dtype=qkv.dtype)
    attn.qkv = torch.nn.Identity()
    attn.proj = torch.nn.Identity()
    with torch.no_grad():
        # Our rpb is key - query; timm's table is query - key: flip both axes back into timm's row layout.
        attn.relative_position_bias_table.copy_(rpb.detach().flip(1, 2).permute(1, 2, 0).reshape(-1, heads))
    assert torch.equal(rpb_from_swin_table(attn.relative_position_bias_table.detach(), window), rpb.detach())
    mask = None
    if shift:
        from timm.models.swin_transformer import SwinTransformerBlock

        mask = SwinTransformerBlock(dim, (h, w), num_heads=heads, window_size=window, shift_size=shift).attn_mask
        mask = mask.to(qkv.device)

    def run() -> torch.Tensor:
        x = qkv.view(b, h, w, 3 * dim)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = partition(x, (window, window)).view(-1, window * window, 3 * dim)
        out = attn(windows, mask=mask).view(-1, window, window, dim)
        out = reverse(out, (window, window), h, w)
        return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out

    return run, list(attn.parameters())


def format_row(row: GpuRow) -> str:
    cells = "".join(f"{row.ms.get(c, float('nan')):>12.3f}" for c in ("triton", "torch", "flex", "timm_core"))
    speedups = "".join(
        f"{row.derived.get(f'triton_speedup_vs_{c}', float('nan')):>10.2f}x" for c in ("torch", "flex", "timm_core")
    )
    return (f"{row.op:<13}{row.shape:<20}{row.mode:<9}{cells}{row.derived['triton_gbps']:>10.0f}"
            f"{row.derived['triton_pct_of_hbm']:>8.1f}%{speedups}")


def header() -> str:
    columns = "".join(f"{c + ' ms':>12}" for c in ("triton", "torch", "flex", "timm_core"))
    return (f"{'op':<13}{'shape':<20}{'mode':<9}{columns}{'GB/s':>10}{'%HBM':>9}"
            f"{'vs torch':>11}{'vs flex':>11}{'vs timm':>11}")


def run_gpu_bench(output: Optional[str] = None, repeats: int = 20, dtype: str = "bfloat16",
                  quick: bool = False) -> dict:
    """Run the GPU kernel benchmark, print the table, write JSON to ``output`` (if given) and return the payload."""
    if not torch.cuda.is_available():
        raise GpuUnavailableError("vithub bench gpu needs a CUDA GPU (it times the Triton kernels); none is visible here")
    device = torch.device("cuda")
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    hbm = copy_bandwidth_gbps(device)
    _logger.info(f"{torch.cuda.get_device_name(device)}: measured copy bandwidth {hbm:.0f} GB/s")
    _logger.info("%s", header())
    na_shapes = NA_SHAPES[:1] if quick else NA_SHAPES
    window_shapes = WINDOW_SHAPES[:2] if quick else WINDOW_SHAPES
    rows = bench_rows(na_shapes, window_shapes, repeats, torch_dtype, hbm, device)
    payload = {
        "benchmark": "gpu_kernels",
        "device": torch.cuda.get_device_name(device),
        "dtype": dtype,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "repeats": repeats,
        "measured_copy_gbps": round(hbm, 1),
        "rows": [dict(row.__dict__) for row in rows],
    }
    report(output, payload)
    return payload
