"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

from . import efficientvit_mit, efficientvit_msra, fastervit, levit, nat, swin, token_reduction
from .efficientvit_mit import EfficientVitMit
from .efficientvit_msra import EfficientVitMsra
from .fastervit import FasterViT
from .levit import Levit
from .nat import NAT
from .swin import Swin
from .token_reduction import reduce_tokens

__all__ = [
    "EfficientVitMit",
    "EfficientVitMsra",
    "FasterViT",
    "Levit",
    "NAT",
    "Swin",
    "efficientvit_mit",
    "efficientvit_msra",
    "fastervit",
    "levit",
    "nat",
    "reduce_tokens",
    "swin",
    "token_reduction",
]
