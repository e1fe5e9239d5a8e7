"""Token reduction on timm's ``VisionTransformer`` family, each method equal to its official code on committed goldens
(``tests/golden/``): ToMe (Bolya et al., ICLR 2023), LTMP (Bonnaerens & Dambre, TMLR 2023) and Token Cropr (Bergner
et al., CVPR 2025).

:func:`reduce_tokens` turns a timm ViT (DeiT, DeiT-3, ViT AugReg/MAE/CLIP, with or without class, distillation or
register tokens, LayerScale, qk-norm) into a token-reduced one in place, and ``reduce_tokens(model, None)`` gives the
original back, bit for bit. Every block is run from its own submodules; a block or attention layout it does not know
is refused with an error naming it, never run with a part left out. Attention goes through
:func:`vithub.kernels.global_attention` (proportional attention is its per-key bias, LTMP's masks its key mask).
``model.token_counts`` reports the tokens that entered each block in the last forward.

The package: ``runner.py`` (what the methods share: the blocks' halves, the ViT's forward paths and the
:class:`Reducer` interface each method implements), one module per method (``tome.py``, ``ltmp.py``, ``cropr.py``:
its block loop, its step between attention and MLP, its options), ``reduce.py`` (:func:`reduce_tokens` and the class
swap) and ``models.py`` (the registered ``vh_*_{tome,ltmp,cropr}`` members). The one forward path runs eagerly,
traces with FX and scripts with TorchScript.
"""

from . import models  # noqa: F401  (registers the vh_*_{tome,ltmp,cropr} members)
from .cropr import Cropr, CroprRouter, CroprTransformer, cropr_schedule, official_state_dict
from .ltmp import LTMP, LTMPBlock, LTMPTransformer
from .reduce import METHODS, REDUCERS, parse_spec, reduce_tokens, reduce_tokens_from_spec, reduction_config
from .runner import Reducer, ReducibleBlock, TokenReduced, check_block
from .tome import ToMe, ToMeBlock, ToMeTransformer, merge_schedule, merge_tokens

__all__ = ["METHODS", "REDUCERS", "Cropr", "CroprRouter", "CroprTransformer", "LTMP", "LTMPBlock", "LTMPTransformer",
           "Reducer", "ReducibleBlock", "ToMe", "ToMeBlock", "ToMeTransformer", "TokenReduced", "check_block",
           "cropr_schedule", "merge_schedule", "merge_tokens", "official_state_dict", "parse_spec", "reduce_tokens",
           "reduce_tokens_from_spec", "reduction_config"]
