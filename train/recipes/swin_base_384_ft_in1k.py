"""Swin-B fine-tuned at 384 px (window 12) on ImageNet-1k from its 224 px ImageNet-1k weights (Liu et al., "Swin
Transformer", ICCV 2021)."""

from . import Recipe

_REPO = "microsoft/Swin-Transformer"
_COMMIT = "f82860bfb5225915aca09c3227159ee9e1df874d"
_MODEL = f"{_REPO} configs/swin/swin_base_patch4_window12_384_finetune.yaml @ {_COMMIT}"
_DEFAULTS = f"{_REPO} config.py (defaults) @ {_COMMIT}"
_MAIN = f"{_REPO} main.py (linear scaling of lr, warmup lr and min lr by batch x GPUs / 512) @ {_COMMIT}"
_UTILS = f"{_REPO} utils.py load_pretrained (bias tables resized bicubically) @ {_COMMIT}"

RECIPE = Recipe(
    name="swin_base_384_ft_in1k",
    description="Swin-B 224 px ImageNet-1k weights fine-tuned 30 epochs at 384 px, window 12 (AdamW, lr 2e-5 per 512)",
    values={
        "model": "vh_swin_base_patch4_window12_384", "drop_path": 0.5,
        "batch_size": 128, "epochs": 30, "warmup_epochs": 5, "weight_decay": 1e-8, "sched": "cosine",
        "lr_base": 2e-5, "lr_base_size": 512, "lr_base_scale": "linear", "lr_base_bounds": True,
        "warmup_lr": 2e-8, "min_lr": 2e-7, "clip_grad": 5.0,
        "opt": "adamw", "opt_eps": 1e-8, "opt_betas": [0.9, 0.999], "momentum": 0.9,
        "color_jitter": 0.4, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1,
        "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
        "smoothing": 0.1, "drop": 0.0, "train_interpolation": "bicubic", "seed": 0,
    },
    sources={"model": _MODEL, "drop_path": _MODEL, "epochs": _MODEL, "warmup_epochs": _MODEL,
             "weight_decay": _MODEL, "lr_base": _MODEL, "warmup_lr": _MODEL, "min_lr": _MODEL,
             "lr_base_size": _MAIN, "lr_base_scale": _MAIN, "lr_base_bounds": _MAIN, "*": _DEFAULTS},
    notes=("Starts from the Swin-B 224 px window-7 ImageNet-1k weights (--pretrained-path): the relative position "
           "bias tables are resized to window 12 by the model's checkpoint filter, as the official loader "
           "resizes them (bicubic); the classifier is kept. Evaluation resizes to 384 px without a crop (TEST.CROP: "
           "False), as the model's data config (crop_pct 1.0) does. batch_size is per process; the lr, warmup lr "
           "and min lr scale linearly by the global batch / 512. The official runs use CUDA AMP; pass --amp on a "
           "GPU."),
    requires={"pretrained_path": "the Swin-B 224 px ImageNet-1k weights (swin_base_patch4_window7_224.pth from the "
                                 "official release, or a safetensors file of them)"},
)
