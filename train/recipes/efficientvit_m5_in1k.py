"""EfficientViT-M5 on ImageNet-1k, 77.1% top-1 (Liu et al., "EfficientViT: Memory Efficient Vision Transformer with
Cascaded Group Attention", CVPR 2023)."""

from . import Recipe

_REPO = "microsoft/Cream"
_MAIN = (f"{_REPO} EfficientViT/classification/main.py (argument defaults; lr x batch x GPUs / 512) @ "
         "de2d467b08f2f7f362dddb6d0e3e307a23935174")
_SAMPLER = (f"{_REPO} EfficientViT/classification/data/samplers.py (RASampler: 3 repeats) @ "
            "74fb8c5ebfc3a3dbfb397df27d74b2e4322d68a0")

RECIPE = Recipe(
    name="efficientvit_m5_in1k",
    description="EfficientViT-M5 from scratch on ImageNet-1k: 300 epochs of AdamW, RandAugment, repeated "
                "augmentation, EMA, adaptive gradient clipping",
    values={
        "model": "vh_efficientvit_m5", "batch_size": 256, "epochs": 300, "model_ema": True,
        "model_ema_decay": 0.99996, "opt": "adamw", "opt_eps": 1e-8, "clip_grad": 0.02, "clip_mode": "agc",
        "momentum": 0.9, "weight_decay": 0.025, "sched": "cosine", "lr_base": 1e-3, "lr_base_size": 512,
        "lr_base_scale": "linear", "warmup_lr": 1e-6, "min_lr": 1e-5, "warmup_epochs": 5, "cooldown_epochs": 0,
        "decay_rate": 0.1, "color_jitter": 0.4, "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1,
        "train_interpolation": "bicubic", "aug_repeats": 3, "reprob": 0.25, "remode": "pixel", "recount": 1,
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch", "seed": 0,
    },
    sources={"aug_repeats": _SAMPLER, "*": _MAIN},
    notes=("batch_size is per process (256 per GPU); only the lr is scaled by the global batch / 512, as main.py "
           "does. The official schedule steps once an epoch, vithub's once an iteration. main.py builds its "
           "scheduler with 10 cooldown epochs but its loop stops at --epochs, so no cooldown runs. No distillation "
           "(main.py's default distillation type is none)."),
)
