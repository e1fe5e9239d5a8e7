"""Hugging Face transformers' DiNAT on vithub's kernels: ``import vithub.compat.transformers`` (or call
:func:`enable`) and ``DinatModel``, ``DinatForImageClassification`` and ``DinatBackbone`` (with it OneFormer's and
Mask2Former's DiNAT variants) build and run, whether NATTEN is absent, 0.17 or 0.20+ (which removed the functions
transformers calls).

What it changes, in ``transformers.models.dinat.modeling_dinat`` only (other models are untouched):

- the module imports even where ``natten`` is installed without ``natten2dqkrpb``/``natten2dav``;
- its ``natten2dqkrpb``/``natten2dav`` are :mod:`vithub.compat.natten`'s, and its backend check no longer asks
  for ``natten``;
- ``NeighborhoodAttention.forward`` runs on vithub's ops: the fused :func:`vithub.kernels.neighborhood_attention`,
  or, when the probabilities are wanted (``output_attentions=True``) or attention dropout is active, the unfused
  logits, softmax, dropout and weighted sum. It is replaced rather than fed the old functions because recent
  transformers (5.x) hand those functions their inputs with the height and heads axes swapped (the module's
  ``.transpose(1, 2)`` of a 5-D view), which NATTEN's layout ``(B, heads, H, W, dim)`` cannot take.

A transformers whose DiNAT attention module does not have the parts this relies on (``query``/``key``/``value``,
``rpb``, ``kernel_size``, ``dilation``, ``dropout``, ``forward(hidden_states, output_attentions)``) is refused with an
error naming its version, rather than run wrongly.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import sys
from types import ModuleType
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from vithub.compat import natten as legacy_natten
from vithub.kernels import neighborhood_attention, neighborhood_attention_av, neighborhood_attention_qk

__all__ = ["enable", "DinatLayoutError"]

_LOG = logging.getLogger(__name__)
_MODULE = "transformers.models.dinat.modeling_dinat"
_ENABLED = "_vithub_compat"  # marks the patched module
# transformers' own NeighborhoodAttention.forward, kept by enable() (tests compare against it)
transformers_forward: Optional[Callable[..., Any]] = None


class DinatLayoutError(RuntimeError):
    """The installed transformers' DiNAT code differs from what :func:`enable` knows how to run."""


def neighborhood_attention_forward(self: nn.Module, hidden_states: torch.Tensor,
                                   output_attentions: Optional[bool] = False) -> Tuple[torch.Tensor, ...]:
    """transformers' ``NeighborhoodAttention.forward`` on vithub's ops: ``hidden_states`` ``(B, H, W, C)`` →
    ``(context,)``, or ``(context, probabilities)`` with ``output_attentions`` (probabilities ``(B, heads, H, W,
    K*K)``, NATTEN's layout, as transformers returns them)."""
    batch, height, width, _ = hidden_states.shape
    shape = (batch, height, width, self.num_attention_heads, self.attention_head_size)
    query = self.query(hidden_states).view(shape)
    key = self.key(hidden_states).view(shape)
    value = self.value(hidden_states).view(shape)
    dropout_active = self.training and self.dropout.p > 0
    if not output_attentions and not dropout_active:
        context = neighborhood_attention(query, key, value, self.kernel_size, self.dilation, self.rpb)
        return (context.reshape(batch, height, width, -1),)
    logits = neighborhood_attention_qk(query / math.sqrt(self.attention_head_size), key, self.kernel_size,
                                       self.dilation, self.rpb)
    probabilities = self.dropout(nn.functional.softmax(logits, dim=-1))
    context = neighborhood_attention_av(probabilities, value, self.kernel_size, self.dilation)
    context = context.reshape(batch, height, width, -1)
    return (context, probabilities.movedim(-2, 1)) if output_attentions else (context,)


def _transformers_version() -> str:
    import transformers

    return getattr(transformers, "__version__", "unknown")


def _import_dinat() -> ModuleType:
    """transformers' DiNAT module, imported with its NATTEN probe answering "absent" when the installed natten lacks
    the legacy functions (NATTEN 0.20+), so the import cannot fail on them."""
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    from transformers import utils as hf_utils
    from transformers.utils import import_utils

    legacy_available = False
    if import_utils.is_natten_available():
        try:
            from natten.functional import natten2dav, natten2dqkrpb  # noqa: F401  (NATTEN <= 0.17)
            legacy_available = True
        except ImportError:
            legacy_available = False
    if legacy_available:
        return importlib.import_module(_MODULE)
    saved = hf_utils.is_natten_available, import_utils.is_natten_available
    hf_utils.is_natten_available = import_utils.is_natten_available = lambda: False
    try:
        return importlib.import_module(_MODULE)
    finally:
        hf_utils.is_natten_available, import_utils.is_natten_available = saved


def _check_layout(module: ModuleType) -> None:
    """Refuse a DiNAT module whose attention lacks what :func:`neighborhood_attention_forward` uses."""
    problems: List[str] = []
    for name in ("NeighborhoodAttention", "DinatConfig", "requires_backends"):
        if not hasattr(module, name):
            problems.append(f"no {name}")
    if not problems:
        parameters = list(inspect.signature(module.NeighborhoodAttention.forward).parameters)
        if parameters[:3] != ["self", "hidden_states", "output_attentions"]:
            problems.append(f"NeighborhoodAttention.forward takes {parameters}")
        try:
            config = module.DinatConfig(embed_dim=8, num_heads=[2], depths=[1], kernel_size=3, dilations=[[1]])
            attention = module.NeighborhoodAttention(config, 8, 2, kernel_size=3, dilation=1)
        except Exception as error:  # noqa: BLE001  (any failure means the layout is not the known one)
            problems.append(f"NeighborhoodAttention(config, dim, heads, kernel_size=, dilation=) failed: {error}")
        else:
            expected = {"query": nn.Linear, "key": nn.Linear, "value": nn.Linear, "dropout": nn.Dropout,
                        "rpb": nn.Parameter}
            for name, kind in expected.items():
                if not isinstance(getattr(attention, name, None), kind):
                    problems.append(f"NeighborhoodAttention.{name} is not a {kind.__name__}")
            for name in ("kernel_size", "dilation", "num_attention_heads", "attention_head_size"):
                if not isinstance(getattr(attention, name, None), int):
                    problems.append(f"NeighborhoodAttention.{name} is not an int")
            rpb = getattr(attention, "rpb", None)
            if isinstance(rpb, torch.Tensor) and tuple(rpb.shape) != (2, 5, 5):
                problems.append(f"NeighborhoodAttention.rpb has shape {tuple(rpb.shape)}, not (heads, 2K-1, 2K-1)")
    if problems:
        raise DinatLayoutError(
            f"vithub.compat.transformers cannot run transformers {_transformers_version()}'s DiNAT: its code differs "
            f"from the layout vithub patches ({'; '.join(problems)}). Use vithub's own vh_dinat_* models (they load "
            "the same checkpoints), or a transformers version whose DiNAT matches.")


def _without_natten(requires_backends: Callable[..., Any]) -> Callable[..., Any]:
    def requires_backends_but_natten(obj: Any, backends: Any) -> Any:
        names = [backends] if isinstance(backends, str) else list(backends)
        rest = [name for name in names if name != "natten"]
        return requires_backends(obj, rest) if rest else None

    requires_backends_but_natten.__wrapped__ = requires_backends  # type: ignore[attr-defined]
    return requires_backends_but_natten


def enable() -> ModuleType:
    """Run transformers' DiNAT classes on vithub's ops (idempotent); returns the patched module. Raises
    :class:`DinatLayoutError` for a transformers whose DiNAT code differs from the known layout."""
    module = _import_dinat()
    if getattr(module, _ENABLED, False):
        return module
    _check_layout(module)
    global transformers_forward
    transformers_forward = module.NeighborhoodAttention.forward
    module.natten2dqkrpb = legacy_natten.natten2dqkrpb
    module.natten2dav = legacy_natten.natten2dav
    module.requires_backends = _without_natten(module.requires_backends)
    module.NeighborhoodAttention.forward = neighborhood_attention_forward
    setattr(module, _ENABLED, True)
    _LOG.info("transformers %s: DiNAT runs on vithub's neighborhood-attention ops", _transformers_version())
    return module


enable()
