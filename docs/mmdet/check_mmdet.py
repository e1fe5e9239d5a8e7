"""Build the configs in this folder with mmdet and run one Mask R-CNN loss and backward on a random image.

Not part of the test suite (mmcv's compiled ops do not install from the package index on current PyTorch); run it
after the build route in docs/detection.md:  python docs/mmdet/check_mmdet.py
"""

from pathlib import Path

import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

import mmdet.models  # noqa: F401  (registers the detectors; mmdet.datasets needs imgaug, which NumPy 2 broke)
import vithub.detection.mm as vithub_mm
from mmdet.registry import MODELS

HERE = Path(__file__).resolve().parent


def main() -> None:
    DefaultScope.get_instance("vithub-check", scope_name="mmdet")
    print("VithubBackbone registered in:", vithub_mm.register())
    config = Config.fromfile(str(HERE / "mask_rcnn_vh_3x_coco.py"))
    config.model.backbone.update(pretrained=False, model_name="vh_nat_mini")  # no download; NAT-Mini channels
    config.model.neck.in_channels = [64, 128, 256, 512]
    model = MODELS.build(config.model)
    model.init_weights()
    sample = DetDataSample(metainfo=dict(img_shape=(128, 160), pad_shape=(128, 160), ori_shape=(128, 160),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(128, 160)))
    instances = InstanceData()
    instances.bboxes = torch.tensor([[10.0, 20.0, 60.0, 90.0]])
    instances.labels = torch.tensor([3])
    masks = np.zeros((1, 128, 160), np.uint8)
    masks[0, 20:90, 10:60] = 1
    instances.masks = BitmapMasks(masks, 128, 160)
    sample.gt_instances = instances
    model.train()
    losses = model.loss(torch.rand(1, 3, 128, 160), [sample])
    parts = [value for key, value in losses.items() if "loss" in key]  # a tensor or a list per level
    total = sum(sum(part) if isinstance(part, list) else part for part in parts)
    total.backward()
    print(f"{type(model).__name__} with {type(model.backbone).__name__}: loss {total.item():.4f} "
          f"({', '.join(sorted(key for key in losses if 'loss' in key))}), backward ok")
    cascade = Config.fromfile(str(HERE / "cascade_mask_rcnn_vh_3x_coco.py"))
    print(f"cascade config: {cascade.model.type}, {len(cascade.model.roi_head.bbox_head)} box heads, "
          f"lr {cascade.optim_wrapper.optimizer.lr}, {cascade.train_cfg.max_epochs} epochs")


if __name__ == "__main__":
    main()
