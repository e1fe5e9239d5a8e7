"""LeViT-256 on ImageNet-1k, 81.6% top-1 with hard distillation from a RegNetY-16GF (Graham et al., "LeViT: a Vision
Transformer in ConvNet's Clothing for Faster Inference", ICCV 2021)."""

from . import Recipe

_REPO = "facebookresearch/LeViT"
_MAIN = f"{_REPO} main.py (argument defaults; lr x batch x GPUs / 512) @ 3772b8e7517b900330ee1f46e11b0ae917dae323"
_SAMPLER = f"{_REPO} samplers.py (RASampler: 3 repeats) @ 3772b8e7517b900330ee1f46e11b0ae917dae323"
_MODEL = f"{_REPO} levit.py (LeViT_256: drop_path 0) @ 3772b8e7517b900330ee1f46e11b0ae917dae323"

RECIPE = Recipe(
    name="levit_256_in1k",
    description="LeViT-256 from scratch on ImageNet-1k: 1000 epochs of AdamW with hard distillation from "
                "RegNetY-16GF, RandAugment, repeated augmentation, EMA, adaptive gradient clipping",
    values={
        "model": "vh_levit_256", "drop_path": 0.0, "batch_size": 256, "epochs": 1000,
        "model_ema": True, "model_ema_decay": 0.99996,
        "opt": "adamw", "opt_eps": 1e-8, "clip_grad": 0.01, "clip_mode": "agc", "momentum": 0.9,
        "weight_decay": 0.025, "sched": "cosine", "lr_base": 5e-4, "lr_base_size": 512, "lr_base_scale": "linear",
        "warmup_lr": 1e-6, "min_lr": 1e-5, "warmup_epochs": 5, "cooldown_epochs": 0, "decay_rate": 0.1,
        "color_jitter": 0.4, "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1, "train_interpolation": "bicubic",
        "aug_repeats": 3, "reprob": 0.25, "remode": "pixel", "recount": 1,
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "teacher": "regnety_160.deit_in1k", "teacher_pretrained": True, "distillation": "hard",
        "distillation_alpha": 0.5, "distillation_tau": 1.0, "seed": 0,
    },
    sources={"aug_repeats": _SAMPLER, "drop_path": _MODEL, "*": _MAIN},
    notes=("batch_size is per process (256 per GPU; the README trains on 8 GPUs); only the lr is scaled by the "
           "global batch / 512, as main.py does. The teacher is DeiT's RegNetY-16GF (main.py's --teacher-path "
           "regnety_160-a5fe301d.pth), which timm publishes as regnety_160.deit_in1k; its weights download on "
           "first use. main.py builds its scheduler with 10 cooldown epochs but its loop stops at --epochs, so no "
           "cooldown runs. The official schedule steps once an epoch, vithub's once an iteration."),
)
