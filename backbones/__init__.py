"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

from . import nat, swin
from .nat import NAT
from .swin import Swin

__all__ = ["NAT", "Swin", "nat", "swin"]
