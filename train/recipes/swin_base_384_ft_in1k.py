"""Swin-B fine-tuned at 384 px (window 12) on ImageNet-1k from its 224 px ImageNet-1k weights (Liu et al., "Swin
Transformer", ICCV 2021)."""

from . import Recipe
from .swin_tiny_in1k import RECIPE as _FROM_SCRATCH

_REPO = "microsoft/Swin-Transformer"
_COMMIT = "f82860bfb5225915aca09c3227159ee9e1df874d"
_MODEL = f"{_REPO} configs/swin/swin_base_patch4_window12_384_finetune.yaml @ {_COMMIT}"
_FINETUNE = ("model", "drop_path", "epochs", "warmup_epochs", "weight_decay", "lr_base", "warmup_lr", "min_lr")

RECIPE = Recipe(
    name="swin_base_384_ft_in1k",
    description="Swin-B 224 px ImageNet-1k weights fine-tuned 30 epochs at 384 px, window 12 (AdamW, lr 2e-5 per 512)",
    # config.py's defaults and main.py's lr scaling, as for training from scratch; the fine-tune config sets the rest
    values=dict(_FROM_SCRATCH.values, model="vh_swin_base_patch4_window12_384", drop_path=0.5, epochs=30,
                warmup_epochs=5, weight_decay=1e-8, lr_base=2e-5, warmup_lr=2e-8, min_lr=2e-7),
    sources=dict(_FROM_SCRATCH.sources, **{name: _MODEL for name in _FINETUNE}),
    notes=("Starts from the Swin-B 224 px window-7 ImageNet-1k weights (--pretrained-path): the relative position "
           "bias tables are resized to window 12 by the model's checkpoint filter, as the official loader "
           "resizes them (bicubic); the classifier is kept. Evaluation resizes to 384 px without a crop (TEST.CROP: "
           "False), as the model's data config (crop_pct 1.0) does. batch_size is per process; the lr, warmup lr "
           "and min lr scale linearly by the global batch / 512. The official runs use CUDA AMP; pass --amp on a "
           "GPU."),
    requires={"pretrained_path": "the Swin-B 224 px ImageNet-1k weights (swin_base_patch4_window7_224.pth from the "
                                 "official release, or a safetensors file of them)"},
)
