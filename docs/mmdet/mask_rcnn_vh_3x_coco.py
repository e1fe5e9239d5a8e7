# Mask R-CNN 3x (36 epochs, multi-scale training) on COCO with a vithub backbone, in mmdet 3.x config style.
# The settings follow the official Swin-T / NAT-T / DiNAT-T Mask R-CNN 3x configs (published COCO val:
# Swin-T 46.0 box / 41.6 mask AP, NAT-T 47.7 / 42.6, DiNAT-T 48.6 / 43.5); only the backbone block differs.
# Needs mmdet >= 3 and a built mmcv (see docs/detection.md); run with: mim train mmdet mask_rcnn_vh_3x_coco.py
_base_ = ["mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"]
custom_imports = dict(imports=["vithub.detection.mm"], allow_failed_imports=False)

# vh_swin_tiny_patch4_window7_224 (channels 96..768), vh_nat_tiny or vh_dinat_tiny (64..512)
backbone_name = "vh_swin_tiny_patch4_window7_224"
channels = [96, 192, 384, 768] if "swin" in backbone_name else [64, 128, 256, 512]

model = dict(
    backbone=dict(
        _delete_=True,
        type="VithubBackbone",
        model_name=backbone_name,
        out_indices=(0, 1, 2, 3),
        pretrained=True,  # the ImageNet weights through timm (vh_* pretrained cfgs)
        drop_path_rate=0.2,
        frozen_stages=-1,
        # checkpoint="mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco.pth",  # official weights
    ),
    neck=dict(in_channels=channels),
)

multi_scale = [(1333, short) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomChoice", transforms=[
        [dict(type="RandomChoiceResize", scales=multi_scale, keep_ratio=True)],
        [dict(type="RandomChoiceResize", scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
         dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
         dict(type="RandomChoiceResize", scales=multi_scale, keep_ratio=True)],
    ]),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))  # x 8 GPUs, as the official runs

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    type="OptimWrapper",
    _delete_=True,
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    # no weight decay on position-bias tables (Swin: rpb after conversion; NAT: rpb) and norms
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0),
                                    "absolute_pos_embed": dict(decay_mult=0.0)}),
)
