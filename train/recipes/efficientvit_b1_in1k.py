"""EfficientViT-B1 on ImageNet-1k, 79.4% top-1 at 224 (Cai et al., "EfficientViT: Lightweight Multi-Scale Attention
for High-Resolution Dense Prediction", ICCV 2023)."""

from . import Recipe

_REPO = "mit-han-lab/efficientvit"
_COMMIT = "de7d7733cc0329f391b33f1f459271562ec27bd5"
_DEFAULT = f"{_REPO} applications/efficientvit_cls/configs/imagenet/default.yaml @ {_COMMIT}"
_B1 = f"{_REPO} applications/efficientvit_cls/configs/imagenet/efficientvit_b1.yaml @ {_COMMIT}"
_SETUP = f"{_REPO} efficientvit/apps/setup.py (init_lr = base_lr x processes) @ {_COMMIT}"
_RANDAUG = f"{_REPO} efficientvit/apps/data_provider/augment/color_aug.py (RandAug: timm's rand-nN-mM) @ {_COMMIT}"
_MIXUP = f"{_REPO} efficientvit/clscore/trainer/cls_trainer.py (one of mixup/cutmix per batch) @ {_COMMIT}"

RECIPE = Recipe(
    name="efficientvit_b1_in1k",
    description="EfficientViT-B1 from scratch on ImageNet-1k: 20 warmup + 300 cosine epochs of AdamW, light "
                "RandAugment, mixup/cutmix, BCE with label smoothing, EMA",
    values={
        "model": "vh_efficientvit_b1", "drop": 0.0, "drop_path": 0.05,
        "batch_size": 128, "epochs": 320, "warmup_epochs": 20, "warmup_lr": 0.0, "min_lr": 0.0, "sched": "cosine",
        "lr_base": 2.5e-4, "lr_base_size": 128, "lr_base_scale": "linear", "weight_decay": 0.1,
        "opt": "adamw", "opt_eps": 1e-8, "opt_betas": [0.9, 0.999], "clip_grad": 2.0, "clip_mode": "norm",
        "model_ema": True, "model_ema_decay": 0.9998,
        "aa": "rand-n1-m3-mstd1.0-inc1", "color_jitter": 0.0, "reprob": 0.0, "train_interpolation": "random",
        "hflip": 0.5, "vflip": 0.0,
        "mixup": 0.1, "cutmix": 0.1, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "smoothing": 0.1, "bce_loss": True,
    },
    sources={"drop": _B1, "lr_base_size": _SETUP, "lr_base_scale": _SETUP, "aa": _RANDAUG,
             "mixup_switch_prob": _MIXUP, "mixup_mode": _MIXUP, "*": _DEFAULT},
    notes=("batch_size is per process (base_batch_size 128); the lr is base_lr x processes, i.e. 2.5e-4 per 128 "
           "images, scaled linearly. Where vithub differs from the official trainer: it trains at 224 only (the "
           "official one draws 128/160/192/224 per batch and re-estimates BatchNorm statistics before evaluating), "
           "timm's cosine counts the 20 warmup epochs inside the 320 (the official cosine starts after them), and "
           "timm's batch-mode cutmix cuts one box per batch (the official one a box per image). The official runs "
           "use AMP (--amp bf16 in the README's commands); pass --amp bfloat16 on a GPU."),
)
