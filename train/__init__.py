"""vithub.train: training and validation of any timm model on timm.data / timm.optim / timm.scheduler.

``train(TrainConfig(...))`` from Python (notebooks), ``vithub train`` / ``vithub validate`` or
``python -m vithub.train`` from a shell. With no data it trains a classifier on scikit-learn's bundled handwritten
digits. The loop (``engine.py``) is task-independent; a task (``tasks.py``: classification built in, detection and
segmentation from ``vithub.detection`` through the ``vithub.tasks`` entry point) supplies data, model, loss and
metrics.
"""

if __name__ != "vithub.train":  # imported under its folder name from a clone's root (see vithub.kernels._shadowing)
    raise ImportError(f"{__path__[0]} is vithub's source folder for 'vithub.train', imported as '{__name__}' "
                      "because the repository root is on sys.path: run from another folder, or install "
                      "vithub (`pip install -e .`) and import 'vithub.train'.", name=__name__)

from .config import TrainConfig
from .data import DataError, DigitsDataset
from .engine import evaluate, train, validate
from .tasks import ClassificationTask, Task, TrainingError, get_task, register_task, task_names

__all__ = ["ClassificationTask", "DataError", "DigitsDataset", "Task", "TrainConfig", "TrainingError", "evaluate",
           "get_task", "register_task", "task_names", "train", "validate"]
