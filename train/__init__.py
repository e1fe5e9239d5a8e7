"""vithub.train: fine-tuning and validation of any timm model on timm.data / timm.optim / timm.scheduler.

``train(TrainConfig(...))`` from Python (notebooks), ``vithub train`` / ``vithub validate`` or
``python -m vithub.train`` from a shell. With no data it trains on scikit-learn's bundled handwritten digits.
"""

from .data import DataError, DigitsDataset
from .engine import TrainConfig, TrainingError, evaluate, train, validate

__all__ = ["DataError", "DigitsDataset", "TrainConfig", "TrainingError", "evaluate", "train", "validate"]
