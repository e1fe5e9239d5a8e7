"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

from . import fastervit, nat, swin
from .fastervit import FasterViT
from .nat import NAT
from .swin import Swin

__all__ = ["FasterViT", "NAT", "Swin", "fastervit", "nat", "swin"]
