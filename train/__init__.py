"""vithub.train: fine-tuning and validation on top of timm.data / timm.optim / timm.scheduler (not in this build yet)."""
