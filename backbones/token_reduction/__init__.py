"""Token reduction on timm's ``VisionTransformer`` family, each method equal to its official code on committed goldens
(``tests/golden/``): ToMe (Bolya et al., ICLR 2023), LTMP (Bonnaerens & Dambre, TMLR 2023) and Token Cropr (Bergner
et al., CVPR 2025).

:func:`reduce_tokens` turns a timm ViT (DeiT, DeiT-3, ViT AugReg/MAE/CLIP, with or without class, distillation or
register tokens, LayerScale, qk-norm) into a token-reduced one in place, and ``reduce_tokens(model, None)`` gives the
original back, bit for bit. Every block is run from its own submodules; a block or attention layout it does not know
is refused with an error naming it, never run with a part left out. Attention goes through
:func:`vithub.kernels.global_attention` (proportional attention is its per-key bias, LTMP's masks its key mask).
``model.token_counts`` reports the tokens that entered each block in the last forward.

The package: ``runner.py`` (what the methods share, and the :class:`Reducer` interface each implements), one module
per method (``tome.py``, ``ltmp.py``, ``cropr.py``), ``reduce.py`` (:func:`reduce_tokens`, the class swap and the
forward paths) and ``models.py`` (the registered ``vh_*_{tome,ltmp,cropr}`` members).
"""

from . import models  # noqa: F401  (registers the vh_*_{tome,ltmp,cropr} members)
from .cropr import Cropr, CroprRouter, cropr_schedule, official_state_dict
from .ltmp import LTMP, ltmp_block_forward
from .reduce import (METHODS, REDUCERS, TokenReduced, parse_spec, reduce_tokens, reduce_tokens_from_spec,
                     reduction_config)
from .runner import Reducer, check_block
from .tome import ToMe, block_forward, merge_schedule, merge_tokens

__all__ = ["METHODS", "REDUCERS", "Cropr", "CroprRouter", "LTMP", "Reducer", "ToMe", "TokenReduced", "block_forward",
           "check_block", "cropr_schedule", "ltmp_block_forward", "merge_schedule", "merge_tokens", "official_state_dict",
           "parse_spec",
           "reduce_tokens", "reduce_tokens_from_spec", "reduction_config"]
