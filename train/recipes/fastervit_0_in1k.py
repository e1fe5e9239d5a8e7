"""FasterViT-0 on ImageNet-1k, 82.1% top-1 (Hatamizadeh et al., "FasterViT: Fast Vision Transformers with
Hierarchical Attention", ICLR 2024)."""

from . import Recipe

_REPO = "NVlabs/FasterViT"
_CONFIG = f"{_REPO} fastervit/configs/faster_vit_0_224_1k.yaml @ 22154cc15ad42fc7d9311e84859b691cdaca1ff5"
_MODEL = (f"{_REPO} fastervit/models/faster_vit.py (faster_vit_0_224: drop_path_rate 0.2) @ "
          "22154cc15ad42fc7d9311e84859b691cdaca1ff5")

RECIPE = Recipe(
    name="fastervit_0_in1k",
    description="FasterViT-0 from scratch on ImageNet-1k: 310 + 10 cooldown epochs of AdamW, RandAugment, "
                "mixup/cutmix, erasing, EMA",
    values={
        "model": "vh_fastervit_0_224", "drop_path": 0.2,
        "batch_size": 128, "epochs": 310, "cooldown_epochs": 10, "warmup_epochs": 20, "sched": "cosine",
        "lr": 5e-3, "warmup_lr": 1e-6, "min_lr": 5e-6, "weight_decay": 0.05, "decay_rate": 0.1,
        "opt": "adamw", "opt_eps": 1e-8, "opt_betas": [0.9, 0.999], "momentum": 0.9,
        "clip_grad": 5.0, "clip_mode": "norm", "model_ema": True, "model_ema_decay": 0.9998,
        "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1, "color_jitter": 0.4,
        "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "hflip": 0.5, "vflip": 0.0, "train_interpolation": "random",
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "smoothing": 0.1, "drop": 0.0, "aug_repeats": 0, "channels_last": True, "seed": 31,
    },
    sources={"drop_path": _MODEL, "*": _CONFIG},
    notes=("batch_size is per process (128); the official train.py applies lr 5e-3 at any GPU count (it does not "
           "scale the lr; the repository does not state its GPU count), so this preset does too (pass --lr-base "
           "to scale instead). The yaml's drop_path is null, which train.py passes on as drop_path_rate=None; the "
           "model factory's default, 0.2, is the value here. The official runs use CUDA AMP (amp: true); pass "
           "--amp on a GPU. mesa is 0 (off) in the yaml."),
)
