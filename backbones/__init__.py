"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

from . import efficientvit_msra, fastervit, levit, nat, swin
from .efficientvit_msra import EfficientVitMsra
from .fastervit import FasterViT
from .levit import Levit
from .nat import NAT
from .swin import Swin

__all__ = ["EfficientVitMsra", "FasterViT", "Levit", "NAT", "Swin", "efficientvit_msra", "fastervit", "levit", "nat", "swin"]
