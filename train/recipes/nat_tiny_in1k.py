"""NAT-Tiny on ImageNet-1k, 83.2% top-1 (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023)."""

from . import Recipe

_REPO = "SHI-Labs/Neighborhood-Attention-Transformer"
_CONFIG = f"{_REPO} classification/configs/nat_tiny.yml @ c061005462a9b4438f025f65acdcb884da22e63a"
_TRAIN = f"{_REPO} classification/train.py (argument defaults) @ c061005462a9b4438f025f65acdcb884da22e63a"
_MODEL = f"{_REPO} classification/nat.py, nat_tiny @ c061005462a9b4438f025f65acdcb884da22e63a"

RECIPE = Recipe(
    name="nat_tiny_in1k",
    description="NAT-Tiny from scratch on ImageNet-1k: 300 epochs of AdamW, RandAugment, mixup/cutmix, erasing",
    values={
        "model": "vh_nat_tiny",
        # configs/nat_tiny.yml
        "lr": 1e-3, "warmup_lr": 1e-6, "min_lr": 5e-6, "epochs": 300, "cooldown_epochs": 10, "warmup_epochs": 20,
        "batch_size": 128, "sched": "cosine", "weight_decay": 0.05,
        # train.py defaults
        "opt": "adamw", "opt_eps": 1e-8, "opt_betas": [0.9, 0.999], "momentum": 0.9, "clip_grad": 5.0,
        "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1, "color_jitter": 0.4,
        "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "hflip": 0.5, "vflip": 0.0, "train_interpolation": "random",
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "smoothing": 0.1, "drop": 0.0, "seed": 42,
        # nat.py
        "drop_path": 0.2,
    },
    sources={"model": _MODEL, "drop_path": _MODEL, **{name: _CONFIG for name in (
        "lr", "warmup_lr", "min_lr", "epochs", "cooldown_epochs", "warmup_epochs", "batch_size", "sched",
        "weight_decay")}, "*": _TRAIN},
    notes=("batch_size is per process (the official dist_train.sh runs 128 per GPU on $NUM_GPUS GPUs) and the "
           "official code applies lr 1e-3 at any GPU count, so this preset does too (pass --lr-base to scale "
           "instead). The official runs use CUDA AMP (amp: True); pass --amp float16 or bfloat16 on a GPU. The lr "
           "schedule steps per iteration (sched_epochwise: False), as vithub's does."),
)
