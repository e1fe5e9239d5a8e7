"""``vithub bench tokens``: eval throughput of token-reduced ViTs against the same timm model unreduced, same
weights, side by side in one run."""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch

from .timing import device_name, measure, report

DEFAULT_MODELS = ("deit_small_patch16_224", "vit_base_patch16_224")
DEFAULT_R = (0, 8, 13, 16)


def bench_token_reduction(models: Sequence[str] = DEFAULT_MODELS, r_values: Sequence[int] = DEFAULT_R,
                          batch_sizes: Sequence[int] = (1, 32), repeats: int = 3, device: str = "cpu",
                          amp: Optional[str] = None, img_size: Optional[int] = None,
                          output: Optional[str] = None) -> Dict[str, Any]:
    """Time eval forwards (images/s) of each timm ViT in ``models`` unreduced and with ToMe at each r of
    ``r_values`` (same weights: copies of one model), per batch size, candidates round-robin; print the table,
    write JSON to ``output`` and return it. Rows carry the speed ratio against the unreduced model and the tokens
    left after the last block."""
    from vithub import reduce_tokens

    if amp not in (None, "bfloat16", "float16"):
        raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {amp!r}")
    if repeats < 1 or any(size < 1 for size in batch_sizes) or any(r < 0 for r in r_values):
        raise ValueError("repeats and batch sizes must be >= 1 and r values >= 0")
    torch_device = torch.device(device)
    dtype = getattr(torch, amp) if amp else torch.float32
    rows: List[Dict[str, Any]] = []
    for name in models:
        torch.manual_seed(0)
        kwargs = {"img_size": img_size} if img_size else {}
        base = timm.create_model(name, pretrained=False, **kwargs).to(torch_device).eval()
        side = base.patch_embed.img_size
        candidates: Dict[str, torch.nn.Module] = {"timm": base}
        for r in r_values:
            candidates[f"tome r={r}"] = reduce_tokens(copy.deepcopy(base), "tome", r=r)
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, *side, device=torch_device)

            def run(model: torch.nn.Module) -> Callable[[], None]:
                def call() -> None:
                    with torch.no_grad(), torch.autocast(torch_device.type, dtype=dtype, enabled=amp is not None):
                        model(images)
                return call

            times = measure({label: run(model) for label, model in candidates.items()}, repeats, warmup=1,
                            device=torch_device)
            for label, model in candidates.items():
                tokens_left = (model.token_counts[-1] - model.token_merges[-1]) if label != "timm" else None
                rows.append({"model": name, "variant": label, "batch_size": batch_size, "ms": times[label],
                             "images_per_second": round(1e3 * batch_size / times[label], 2),
                             "speed_vs_timm": round(times["timm"] / times[label], 3),
                             "tokens_after_last_block": tokens_left})
    print(format_table(rows))
    payload = {"benchmark": "token_reduction", "method": "tome", "device": device_name(torch_device),
               "torch": torch.__version__, "timm": timm.__version__,
               "dtype": f"float32 weights, autocast {amp}" if amp else "float32", "repeats": repeats,
               "weights": "random (the same in every variant of a model: speed does not depend on them)",
               "rows": rows}
    report(output, payload)
    return payload


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    header = f"{'model':<26}{'variant':<12}{'batch':>6}{'img/s':>10}{'vs timm':>9}{'tokens left':>13}"
    lines = [header, "-" * len(header)]
    for row in rows:
        left = "" if row["tokens_after_last_block"] is None else str(row["tokens_after_last_block"])
        lines.append(f"{row['model']:<26}{row['variant']:<12}{row['batch_size']:>6}{row['images_per_second']:>10.1f}"
                     f"{row['speed_vs_timm']:>9.2f}{left:>13}")
    return "\n".join(lines)
