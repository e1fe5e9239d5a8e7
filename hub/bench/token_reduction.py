"""``vithub bench tokens``: eval throughput of token-reduced ViTs against the same timm model unreduced, same
weights, side by side in one run."""

from __future__ import annotations

import logging
import copy
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch

from .timing import device_name, measure, report

_logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("deit_small_patch16_224", "vit_base_patch16_224")
DEFAULT_R = (0, 8, 13, 16)
DEFAULT_CROPR_RATES = (8,)


def bench_token_reduction(models: Sequence[str] = DEFAULT_MODELS, r_values: Sequence[int] = DEFAULT_R,
                          batch_sizes: Sequence[int] = (1, 32), repeats: int = 3, device: str = "cpu",
                          amp: Optional[str] = None, img_size: Optional[int] = None,
                          output: Optional[str] = None, cropr_rates: Sequence[int] = DEFAULT_CROPR_RATES,
                          ltmp_overhead: bool = True) -> Dict[str, Any]:
    """Time eval forwards (images/s) of each timm ViT in ``models`` unreduced, with ToMe at each r of ``r_values``,
    with Cropr (last-layer fusion) at each rate of ``cropr_rates`` and, with ``ltmp_overhead``, with LTMP at
    thresholds that keep every token (what its scoring and masking cost; its speed-up depends on trained
    thresholds), all with the same weights (copies of one model), per batch size, candidates round-robin; print the
    table, write JSON to ``output`` and return it. Rows carry the speed ratio against the unreduced model, the
    tokens left after the last block and the fewest tokens any block ran on."""
    if amp not in (None, "bfloat16", "float16"):
        raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {amp!r}")
    if (repeats < 1 or any(size < 1 for size in batch_sizes) or any(r < 0 for r in r_values)
            or any(rate < 0 for rate in cropr_rates)):
        raise ValueError("repeats and batch sizes must be >= 1, r values and cropr rates >= 0")
    torch_device = torch.device(device)
    dtype = getattr(torch, amp) if amp else torch.float32
    rows: List[Dict[str, Any]] = []
    for name in models:
        torch.manual_seed(0)
        kwargs = {"img_size": img_size} if img_size else {}
        base = timm.create_model(name, pretrained=False, **kwargs).to(torch_device).eval()
        side = base.patch_embed.img_size
        candidates = _variants(base, r_values, cropr_rates, ltmp_overhead)
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, *side, device=torch_device)

            def run(model: torch.nn.Module) -> Callable[[], None]:
                def call() -> None:
                    with torch.no_grad(), torch.autocast(torch_device.type, dtype=dtype, enabled=amp is not None):
                        model(images)
                return call

            times = measure({label: run(model) for label, model in candidates.items()}, repeats, warmup=1,
                            device=torch_device)
            rows += [_row(name, label, model, batch_size, times) for label, model in candidates.items()]
    _logger.info("%s", format_table(rows))
    payload = {"benchmark": "token_reduction", "methods": ["tome", "cropr", "ltmp"], "device": device_name(torch_device),
               "torch": torch.__version__, "timm": timm.__version__,
               "dtype": f"float32 weights, autocast {amp}" if amp else "float32", "repeats": repeats,
               "weights": "random (the same in every variant of a model: speed does not depend on them)",
               "rows": rows}
    report(output, payload)
    return payload


def _variants(base: torch.nn.Module, r_values: Sequence[int], cropr_rates: Sequence[int],
              ltmp_overhead: bool) -> Dict[str, torch.nn.Module]:
    """The unreduced model and its token-reduced copies, by row label."""
    from vithub import reduce_tokens

    candidates: Dict[str, torch.nn.Module] = {"timm": base}
    for r in r_values:
        candidates[f"tome r={r}"] = reduce_tokens(copy.deepcopy(base), "tome", r=r)
    for rate in cropr_rates:
        candidates[f"cropr rate={rate}"] = reduce_tokens(copy.deepcopy(base), "cropr", rate=rate).eval()
    if ltmp_overhead:
        candidates["ltmp keep-all"] = reduce_tokens(copy.deepcopy(base), "ltmp", flops_ratio=1.0,
                                                    merge_threshold=2.0, prune_threshold=-1.0).eval()
    return candidates


def _row(name: str, label: str, model: torch.nn.Module, batch_size: int, times: Dict[str, float]) -> Dict[str, Any]:
    """One results row: speed against the unreduced model, tokens after the last block, fewest tokens any block saw."""
    tokens_left = fewest = None
    if label.startswith("tome"):
        tokens_left = model.token_counts[-1] - model.token_merges[-1]
        fewest = min(model.token_counts + [tokens_left])
    elif label != "timm":
        tokens_left, fewest = round(model.token_counts[-1]), round(min(model.token_counts))
    return {"model": name, "variant": label, "batch_size": batch_size, "ms": times[label],
            "images_per_second": round(1e3 * batch_size / times[label], 2),
            "speed_vs_timm": round(times["timm"] / times[label], 3),
            "tokens_after_last_block": tokens_left, "fewest_tokens": fewest}


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    header = f"{'model':<26}{'variant':<16}{'batch':>6}{'img/s':>10}{'vs timm':>9}{'tokens left':>13}{'fewest':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        left = "" if row["tokens_after_last_block"] is None else str(row["tokens_after_last_block"])
        fewest = "" if row.get("fewest_tokens") is None else str(row["fewest_tokens"])
        lines.append(f"{row['model']:<26}{row['variant']:<16}{row['batch_size']:>6}{row['images_per_second']:>10.1f}"
                     f"{row['speed_vs_timm']:>9.2f}{left:>13}{fewest:>8}")
    return "\n".join(lines)
