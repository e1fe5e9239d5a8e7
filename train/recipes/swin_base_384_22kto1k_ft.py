"""Swin-B fine-tuned at 384 px (window 12) on ImageNet-1k from its 224 px ImageNet-22k weights (Liu et al., "Swin
Transformer", ICCV 2021)."""

from . import Recipe
from .swin_base_384_ft_in1k import _FINETUNE, RECIPE as _IN1K

_REPO = "microsoft/Swin-Transformer"
_COMMIT = "f82860bfb5225915aca09c3227159ee9e1df874d"
_MODEL = f"{_REPO} configs/swin/swin_base_patch4_window12_384_22kto1k_finetune.yaml @ {_COMMIT}"

RECIPE = Recipe(
    name="swin_base_384_22kto1k_ft",
    description="Swin-B 224 px ImageNet-22k weights fine-tuned 30 epochs on ImageNet-1k at 384 px, window 12",
    # the same as the 1k fine-tune but for the stochastic depth (both files set every value listed here)
    values=dict(_IN1K.values, drop_path=0.2),
    sources=dict(_IN1K.sources, **{name: _MODEL for name in _FINETUNE}),
    notes=("Starts from the Swin-B ImageNet-22k weights (--pretrained-path): bias tables resized to window 12 by "
           "the model's checkpoint filter. The official loader keeps the 22k classifier's rows of the 1k classes "
           "(data/map22kto1k.txt in the repository): give that file as --pretrained-head-rows to do the same; "
           "without it the classifier starts fresh. batch_size is per process; the lr, warmup lr and min lr scale "
           "linearly by the global batch / 512. The official runs use CUDA AMP; pass --amp on a GPU."),
    requires={"pretrained_path": "the Swin-B ImageNet-22k weights (swin_base_patch4_window7_224_22k.pth from the "
                                 "official release, or a safetensors file of them)"},
)
