"""Swin-T fine-tuned on ImageNet-1k from its ImageNet-22k weights (Liu et al., "Swin Transformer", ICCV 2021)."""

from . import Recipe
from .swin_base_384_ft_in1k import _FINETUNE, RECIPE as _BASE_384

_REPO = "microsoft/Swin-Transformer"
_COMMIT = "f82860bfb5225915aca09c3227159ee9e1df874d"
_MODEL = f"{_REPO} configs/swin/swin_tiny_patch4_window7_224_22kto1k_finetune.yaml @ {_COMMIT}"

RECIPE = Recipe(
    name="swin_tiny_22kto1k_ft",
    description="Swin-T from ImageNet-22k weights, fine-tuned 30 epochs on ImageNet-1k (AdamW, lr 2e-5 per 512)",
    # Swin's fine-tune configs set the same schedule (epochs, warmup, weight decay, lr, warmup lr, min lr) over the
    # same config.py defaults; this one at 224 px, window 7, with its own stochastic depth
    values=dict(_BASE_384.values, model="vh_swin_tiny_patch4_window7_224", drop_path=0.1),
    sources=dict(_BASE_384.sources, **{name: _MODEL for name in _FINETUNE}),
    notes=("Starts from the Swin-T ImageNet-22k weights (--pretrained-path; the official .pth or a safetensors "
           "file). The official loader (utils.py load_pretrained) keeps the 22k classifier's rows of the 1k "
           "classes, listed in the repository's data/map22kto1k.txt: give that file as --pretrained-head-rows to do "
           "the same; without it the classifier starts fresh. batch_size is per process; the lr, warmup lr and "
           "min lr scale linearly by the global batch / 512 as the official main.py does. The official runs use "
           "CUDA AMP; pass --amp on a GPU."),
    requires={"pretrained_path": "the Swin-T ImageNet-22k weights (swin_tiny_patch4_window7_224_22k.pth from the "
                                 "official release, or a safetensors file of them)"},
)
