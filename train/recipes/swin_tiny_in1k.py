"""Swin-T on ImageNet-1k, 81.2% top-1 (Liu et al., "Swin Transformer", ICCV 2021)."""

from . import Recipe

_REPO = "microsoft/Swin-Transformer"
_MODEL = f"{_REPO} configs/swin_tiny_patch4_window7_224.yaml @ 3dc2a55301a02d71e956b382b50943a35c4abee9"
_DEFAULTS = f"{_REPO} config.py (defaults) @ 00f28005ee4ee750d48a31de241cdfaf03252879"
_MAIN = f"{_REPO} main.py (linear scaling of lr, warmup lr and min lr by batch x GPUs / 512) @ " \
        "00f28005ee4ee750d48a31de241cdfaf03252879"

RECIPE = Recipe(
    name="swin_tiny_in1k",
    description="Swin-T from scratch on ImageNet-1k: 300 epochs of AdamW, RandAugment, mixup/cutmix, erasing",
    values={
        "model": "vh_swin_tiny_patch4_window7_224", "drop_path": 0.2,
        "batch_size": 128, "epochs": 300, "warmup_epochs": 20, "weight_decay": 0.05, "sched": "cosine",
        "lr_base": 5e-4, "lr_base_size": 512, "lr_base_scale": "linear", "lr_base_bounds": True,
        "warmup_lr": 5e-7, "min_lr": 5e-6, "clip_grad": 5.0,
        "opt": "adamw", "opt_eps": 1e-8, "opt_betas": [0.9, 0.999], "momentum": 0.9,
        "color_jitter": 0.4, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1,
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "smoothing": 0.1, "drop": 0.0, "train_interpolation": "bicubic", "seed": 0,
    },
    sources={"model": _MODEL, "drop_path": _MODEL, "lr_base_size": _MAIN, "lr_base_scale": _MAIN,
             "lr_base_bounds": _MAIN, "*": _DEFAULTS},
    notes=("batch_size is per process (128 per GPU); the lr, warmup lr and min lr are scaled linearly by the "
           "global batch / 512 as the official main.py does (5e-4 x 1024 / 512 = 1e-3 on 8 GPUs). The official "
           "runs use CUDA AMP (AMP_ENABLE: True); pass --amp on a GPU. The official seed is 0 plus the rank."),
)
