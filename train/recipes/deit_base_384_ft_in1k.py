"""DeiT-B fine-tuned at 384 px on ImageNet-1k from its 224 px weights (Touvron et al., "Training data-efficient
image transformers & distillation through attention", ICML 2021)."""

from . import Recipe
from .deit_small_in1k import RECIPE as _DEIT

_REPO = "facebookresearch/deit"
_README = f"{_REPO} README_deit.md (fine-tuning command) @ 4da66916c72caaeaeb5da788390244524fa993c6"

RECIPE = Recipe(
    name="deit_base_384_ft_in1k",
    description="DeiT-B 224 px ImageNet-1k weights fine-tuned 30 epochs at 384 px (AdamW, lr 5e-6, weight decay 1e-8)",
    # main.py's defaults (the DeiT-S preset's values), with what the fine-tuning command sets
    values=dict(_DEIT.values, model="deit_base_patch16_384", batch_size=32, epochs=30, lr_base=5e-6,
                min_lr=5e-6, weight_decay=1e-8),
    sources=dict(_DEIT.sources, model=_README, batch_size=_README, epochs=_README, lr_base=_README,
                 min_lr=_README, weight_decay=_README),
    notes=("Starts from the DeiT-B 224 px weights (--pretrained-path, e.g. deit_base_patch16_224-b5f2ef4d.pth): the "
           "position embedding is resized to 24 x 24 by timm's checkpoint filter, as main.py's --finetune "
           "interpolates it (bicubic); the classifier is kept when its classes match. The official command runs "
           "2 nodes x 8 GPUs with 32 images each (a global batch of 512, where lr 5e-6 x batch / 512 is 5e-6); "
           "batch_size is per process and only the lr scales by the global batch / 512. Everything else is "
           "main.py's defaults, as for deit_small_in1k (repeated augmentation, EMA, RandAugment, mixup/cutmix)."),
    requires={"pretrained_path": "the DeiT-B 224 px weights (deit_base_patch16_224-b5f2ef4d.pth from the official "
                                 "release, or a safetensors file of them)"},
)
