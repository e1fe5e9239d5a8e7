"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

from . import nat
from .nat import NAT

__all__ = ["NAT", "nat"]
