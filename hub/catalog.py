"""Model catalogue helpers behind ``vithub list`` and ``vithub info``: names, sizes, cfgs, through timm's public API."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from vithub.kernels import use_backend


class UnknownModelError(ValueError):
    """A model name timm does not know; the message lists close matches."""


@dataclass
class ModelSummary:
    """One row of ``vithub list``."""

    name: str
    params_m: float
    gmacs: Optional[float]
    input_size: Tuple[int, int, int]
    pretrained_tags: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def list_vithub_models() -> List[str]:
    """Every architecture vithub registers with timm (all start with ``vh_``)."""
    return timm.list_models("vh_*")


def check_model_name(name: str) -> str:
    """Return the architecture of ``name`` (``arch`` or ``arch.tag``) or raise with close matches."""
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return arch
    known = timm.list_models()
    matches = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(matches)}" if matches else "; `vithub list` shows vithub's models"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def pretrained_tags(arch: str) -> List[str]:
    """Pretrained tags timm knows for ``arch`` (e.g. ``in1k``), without the architecture prefix."""
    return [full.split(".", 1)[1] for full in timm.list_pretrained(f"{arch}.*")]


def default_input_size(arch: str) -> Tuple[int, int, int]:
    cfg = timm.models.get_pretrained_cfg(arch)
    return tuple(cfg.input_size) if cfg is not None else (3, 224, 224)


def count_params_m(model: torch.nn.Module) -> float:
    """Parameters in millions, rounded to thousands."""
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def count_macs(model: torch.nn.Module, input_size: Tuple[int, int, int]) -> float:
    """Multiply-accumulates of one forward at ``input_size``, counted on the meta device.

    Attention runs on the ``reference`` backend while counting, so each query is charged for exactly the keys it
    attends to, as the papers count, not for the masked keys a tiled fast path also touches.
    """
    with torch.device("meta"), use_backend("reference"), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *input_size))
    return counter.get_total_flops() / 2


def summarize(arch: str, with_macs: bool = True) -> ModelSummary:
    """Parameter count (millions), GMACs and default input size of ``arch``, built on the meta device."""
    arch = check_model_name(arch)
    input_size = default_input_size(arch)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False).eval()
    # a model whose work depends on the image (LTMP's learned thresholds) has no single MAC count
    counted = with_macs and not getattr(model, "input_dependent_macs", False)
    gmacs = round(count_macs(model, input_size) / 1e9, 3) if counted else None
    return ModelSummary(arch, count_params_m(model), gmacs, input_size, pretrained_tags(arch))


def model_info(name: str) -> Dict[str, Any]:
    """Pretrained cfg and feature_info of ``name`` (``arch`` or ``arch.tag``), as plain JSON-able data."""
    arch = check_model_name(name)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    # A classifier model (not features_only) carries feature_info as a plain list of dicts.
    feature_info = getattr(model, "feature_info", None) or []
    return {
        "name": arch,
        "pretrained_cfg": dict(model.pretrained_cfg or {}),
        "pretrained_tags": pretrained_tags(arch),
        "feature_info": [dict(item) for item in feature_info],
        "num_features": getattr(model, "num_features", None),
        "num_classes": getattr(model, "num_classes", None),
        "params_m": count_params_m(model),
    }
