# Cascade Mask R-CNN 3x on COCO with a vithub backbone, in mmdet 3.x config style, following the official
# Swin-T / NAT-T / DiNAT-T Cascade Mask R-CNN 3x configs (published COCO val: Swin-T 50.4 box / 43.7 mask AP,
# NAT-T 51.4 / 44.5, DiNAT-T 52.2 / 45.1): three four-conv box heads with synchronised BN and GIoU loss, and the
# 3x multi-scale schedule of mask_rcnn_vh_3x_coco.py (repeated here: mmengine refuses keys defined by two bases).
_base_ = ["mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py"]
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
    roi_head=dict(bbox_head=[
        dict(type="ConvFCBBoxHead", num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
             fc_out_channels=1024, roi_feat_size=7, num_classes=80, reg_class_agnostic=False, reg_decoded_bbox=True,
             bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds),
             norm_cfg=dict(type="SyncBN", requires_grad=True),
             loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type="GIoULoss", loss_weight=10.0))
        # one head per cascade stage, each stage's box deltas normalised more tightly
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]),
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
