"""DiNAT-Tiny on ImageNet-1k, 82.7% top-1 (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022): the
official config (``classification/configs/dinat_tiny.yml``) holds the same values as NAT-Tiny's, with the same
training script and drop path, so this preset is NAT-Tiny's on ``vh_dinat_tiny``."""

from dataclasses import replace

from . import nat_tiny_in1k

_REPO = "SHI-Labs/Neighborhood-Attention-Transformer"
_CONFIG = f"{_REPO} classification/configs/dinat_tiny.yml @ eab2a1c41ecad017a6049b168ca31ff16152b6b2"
_MODEL = f"{_REPO} classification/dinat.py, dinat_tiny @ a66e80b03b9b76f7fd974aa7467e081f9d158331"

_BASE = nat_tiny_in1k.RECIPE
RECIPE = replace(
    _BASE, name="dinat_tiny_in1k", description=_BASE.description.replace("NAT-Tiny", "DiNAT-Tiny"),
    values=dict(_BASE.values, model="vh_dinat_tiny"),
    sources={name: (_MODEL if name in ("model", "drop_path") else _CONFIG if "configs/" in source else source)
             for name, source in _BASE.sources.items()},
)
