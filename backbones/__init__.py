"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Each family runs its attention through :mod:`vithub.kernels`.
"""

if __name__ != "vithub.backbones":  # imported under its folder name from a clone's root (see vithub.kernels._shadowing)
    raise ImportError(f"{__path__[0]} is vithub's source folder for 'vithub.backbones', imported as '{__name__}' "
                      "because the repository root is on sys.path: run from another folder, or install "
                      "vithub (`pip install -e .`) and import 'vithub.backbones'.", name=__name__)

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
