"""vithub backbones in mmdet and mmseg configs: importing this module registers :class:`VithubBackbone` in the model
registries of whichever of mmdet / mmseg is importable, so a config can say::

    custom_imports = dict(imports=["vithub.detection.mm"], allow_failed_imports=False)
    model = dict(backbone=dict(type="VithubBackbone", model_name="vh_swin_tiny_patch4_window7_224",
                               out_indices=(0, 1, 2, 3), frozen_stages=-1, drop_path_rate=0.2))

mmdet and mmseg are optional: their compiled mmcv ops do not install from the package index on current PyTorch
(see docs/detection.md for a build route). Without them this module still imports, and :class:`VithubBackbone` is
a plain ``torch.nn.Module``.
"""

from __future__ import annotations

import importlib
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .backbone import LevelFeatures


class VithubBackbone(LevelFeatures):
    """A timm ``features_only`` model with a LayerNorm on each output level, returning a tuple of NCHW maps (what
    mmdet/mmseg necks take), with the names the official Swin/NAT detection backbones use for their output norms
    (``norms.{i}`` ↔ official ``norm{i}``; :func:`vithub.detection.convert.convert_official_detection_checkpoint`
    maps official checkpoints onto it).

    ``pretrained``: timm's pretrained weights; ``checkpoint``: an official or vithub detection checkpoint loaded in
    :meth:`init_weights`; ``frozen_stages``: as in the official backbones (``-1`` none, ``0`` the stem, ``k`` also
    stages ``0..k-1``)."""

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), pretrained: bool = False,
                 checkpoint: Optional[str] = None, frozen_stages: int = -1, level_norm: bool = True,
                 init_cfg: Optional[dict] = None, **model_kwargs: Any) -> None:
        super().__init__(model_name, out_indices, frozen_stages, level_norm, pretrained, **model_kwargs)
        self.out_channels: List[int] = self.in_channels
        self.strides: List[int] = self.reductions
        self.checkpoint = checkpoint
        self.init_cfg = init_cfg

    def init_weights(self) -> None:
        """Load ``checkpoint`` (official Swin/NAT/DiNAT mmdet/mmseg layout) when one is set."""
        if self.checkpoint:
            from .convert import load_official_detection_checkpoint

            load_official_detection_checkpoint(self, self.checkpoint)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.levels(images))


def register(packages: Sequence[str] = ("mmdet", "mmseg")) -> List[str]:
    """Register :class:`VithubBackbone` in the ``MODELS`` registry of each importable package of ``packages``;
    returns the packages it was registered in."""
    registered = []
    for package in packages:
        try:
            registry = importlib.import_module(f"{package}.registry")
        except ImportError:
            continue
        models = getattr(registry, "MODELS", None)
        if models is None:
            continue
        models.register_module(name="VithubBackbone", module=VithubBackbone, force=True)
        registered.append(package)
    return registered


REGISTERED_IN = register()

__all__ = ["REGISTERED_IN", "VithubBackbone", "register"]
