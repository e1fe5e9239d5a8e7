"""DeiT-S on ImageNet-1k, 79.8% top-1 without distillation (Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021): the base model of ToMe's DeiT-S results."""

from . import Recipe

_REPO = "facebookresearch/deit"
_MAIN = f"{_REPO} main.py (argument defaults; lr x batch x GPUs / 512) @ 100e3cd2a95d4375166952451b7d8ea59f6b9432"
_SAMPLER = f"{_REPO} samplers.py (RASampler: 3 repeats) @ 0c4b8f60bdbe6acb438bc7f4805a331ddd19e017"

RECIPE = Recipe(
    name="deit_small_in1k",
    description="DeiT-S from scratch on ImageNet-1k: 300 epochs of AdamW, RandAugment, repeated augmentation, EMA",
    values={
        "model": "deit_small_patch16_224", "batch_size": 64, "epochs": 300, "drop": 0.0, "drop_path": 0.1,
        "model_ema": True, "model_ema_decay": 0.99996,
        "opt": "adamw", "opt_eps": 1e-8, "momentum": 0.9, "weight_decay": 0.05, "sched": "cosine",
        "lr_base": 5e-4, "lr_base_size": 512, "lr_base_scale": "linear", "warmup_lr": 1e-6, "min_lr": 1e-5,
        "warmup_epochs": 5, "cooldown_epochs": 0, "decay_rate": 0.1,
        "color_jitter": 0.4, "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1, "train_interpolation": "bicubic",
        "aug_repeats": 3, "reprob": 0.25, "remode": "pixel", "recount": 1,
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "seed": 0,
    },
    sources={"aug_repeats": _SAMPLER, "*": _MAIN},
    notes=("batch_size is per process (64 per GPU); only the lr is scaled by the global batch / 512, as main.py "
           "does. The official schedule steps once an epoch, vithub's once an iteration (same shape). main.py "
           "builds its scheduler with 10 cooldown epochs but its loop stops at --epochs, so no cooldown runs. For "
           "DeiT-S with distillation add --model deit_small_distilled_patch16_224 --teacher regnety_160.deit_in1k "
           "--teacher-pretrained (hard, DeiT's teacher; not the default of main.py)."),
)
