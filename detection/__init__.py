"""vithub.detection: multi-scale feature adapters and COCO heads for vithub backbones (not in this build yet)."""
