# UPerNet, 160k iterations at 512x512 on ADE20K with a vithub backbone, in mmseg 1.x config style.
# The settings follow the official Swin-T / NAT-T / DiNAT-T UPerNet configs (published ADE20K val mIoU, single
# scale: Swin-T 44.5, NAT-T 47.1, DiNAT-T 47.8); only the backbone block differs.
# Needs mmseg >= 1 and a built mmcv (see docs/detection.md); run with: mim train mmseg upernet_vh_512x512_160k_ade20k.py
# `vithub train --task segmentation --head upernet --model vh_nat_tiny --data ADE_DIR` is the same recipe in vithub.
_base_ = [
    "mmseg::_base_/models/upernet_r50.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
]
custom_imports = dict(imports=["vithub.detection.mm"], allow_failed_imports=False)

# vh_swin_tiny_patch4_window7_224 (channels 96..768), vh_nat_tiny or vh_dinat_tiny (64..512)
backbone_name = "vh_nat_tiny"
channels = [96, 192, 384, 768] if "swin" in backbone_name else [64, 128, 256, 512]
crop_size = (512, 512)

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type="VithubBackbone",
        model_name=backbone_name,
        out_indices=(0, 1, 2, 3),
        pretrained=True,  # the ImageNet weights through timm (vh_* pretrained cfgs)
        drop_path_rate=0.2 if "swin" not in backbone_name else 0.3,
        frozen_stages=-1,
        # checkpoint="upernet_nat_tiny.pth",  # official segmentation weights (backbone part)
    ),
    decode_head=dict(in_channels=channels, channels=512, num_classes=150),
    auxiliary_head=dict(in_channels=channels[2], channels=256, num_classes=150),
)

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    # no weight decay on position-bias tables (Swin: rpb after conversion; NAT: rpb) and norms
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0),
                                    "absolute_pos_embed": dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)  # x 8 GPUs, as the official runs
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
