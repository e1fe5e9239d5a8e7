"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

from . import fastervit, levit, nat, swin
from .fastervit import FasterViT
from .levit import Levit
from .nat import NAT
from .swin import Swin

__all__ = ["FasterViT", "Levit", "NAT", "Swin", "fastervit", "levit", "nat", "swin"]
