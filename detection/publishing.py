"""Detectors and segmentors as files: ``config.json`` (the factory's arguments, class names, for detectors the COCO
category ids), ``model.safetensors`` and a model card, so that ``vithub push`` publishes a detection or
segmentation run and ``vithub.load`` / :func:`load_dense_model` rebuild it with its weights verified."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from vithub.train.checkpoint import load_state, replace_durably, state_dict_mismatch
from vithub.train.config import config_from_args

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


@dataclass(frozen=True)
class DenseKind:
    """What differs between a published detector and a published segmentor."""

    format: str  # config.json's "format"
    settings: str  # the model attribute (and config.json key) holding the factory's arguments
    task: str  # the vithub train task whose runs hold this kind
    pipeline_tag: str
    metric_keys: Tuple[str, ...]  # the metrics.jsonl columns that go onto the card
    head_key: str  # the settings key naming the detector or head

    def architecture(self, model: torch.nn.Module) -> str:
        """``<detector or head>:<backbone>``, e.g. ``mask_rcnn:vh_nat_tiny``."""
        settings = getattr(model, self.settings)
        return f"{settings[self.head_key]}:{settings['backbone']}"

    def build(self, settings: Dict[str, Any], **overrides: Any) -> torch.nn.Module:
        if self.task == "detection":
            from .detectors import detector_from_config

            return detector_from_config(settings, **overrides)
        from .segmentation.models import segmentor_from_config

        return segmentor_from_config(settings, **overrides)

    def task_object(self):
        if self.task == "detection":
            from .task import DetectionTask

            return DetectionTask()
        from .segmentation.task import SegmentationTask

        return SegmentationTask()


DETECTOR = DenseKind("vithub-detector", "detector_config", "detection", "object-detection",
                     ("bbox_ap", "bbox_ap50", "bbox_ap75", "segm_ap", "segm_ap50", "segm_ap75"), "detector")
SEGMENTOR = DenseKind("vithub-segmentor", "segmentor_config", "segmentation", "image-segmentation",
                      ("miou", "macc", "aacc"), "head")
KINDS = (DETECTOR, SEGMENTOR)
FORMATS = tuple(kind.format for kind in KINDS)


def kind_of_model(model: torch.nn.Module) -> Optional[DenseKind]:
    """The kind of a model from :func:`~vithub.detection.create_detector` or
    :func:`~vithub.detection.segmentation.create_segmentor`; ``None`` for anything else."""
    return next((kind for kind in KINDS if getattr(model, kind.settings, None)), None)


def kind_of_task(task: Optional[str]) -> Optional[DenseKind]:
    """The kind a ``vithub train`` task's runs hold (``"detection"``, ``"segmentation"``); ``None`` for others."""
    return next((kind for kind in KINDS if kind.task == task), None)


def is_dense_config(config: Mapping[str, Any]) -> bool:
    return config.get("format") in FORMATS


def save_dense_model(model: torch.nn.Module, path: Union[str, Path], *, label_names: Optional[Sequence[str]] = None,
                     category_ids: Optional[Sequence[int]] = None, metrics: Optional[Mapping[str, float]] = None,
                     dataset_name: Optional[str] = None, license: Optional[str] = None, repo_id: Optional[str] = None,
                     description: Optional[str] = None, datasets: Optional[Sequence[str]] = None) -> Path:
    """Write a detector or segmentor to the folder ``path``; each file replaces its old version atomically (weights
    first, so a config never names absent weights)."""
    kind = kind_of_model(model)
    if kind is None:
        raise ValueError(f"model: expected a detector from vithub.detection.create_detector or a segmentor from "
                         f"vithub.detection.segmentation.create_segmentor, got {type(model).__name__}")
    settings = getattr(model, kind.settings)
    if label_names is not None and len(label_names) != settings["num_classes"]:
        raise ValueError(f"label_names: {len(label_names)} names for {settings['num_classes']} classes")
    body = getattr(model.backbone.body, "model", model.backbone.body)
    licence = license or getattr(body, "pretrained_cfg", {}).get("license") or "apache-2.0"
    config = {"format": kind.format, kind.settings: settings, "label_names": list(label_names or []),
              "license": licence, "metrics": dict(metrics or {}), "datasets": list(datasets or []),
              "loading": LOADING_NOTE}
    if kind is DETECTOR:
        config["category_ids"] = list(category_ids or range(1, settings["num_classes"] + 1))
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".saving-") as staging:
        save_file({key: value.contiguous() for key, value in model.state_dict().items()},
                  str(Path(staging) / WEIGHTS_NAME), metadata={"format": "pt"})
        (Path(staging) / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        (Path(staging) / CARD_NAME).write_text(model_card(config, repo_id, dataset_name, description),
                                               encoding="utf-8")
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            replace_durably(Path(staging) / name, target / name)
    return target


def _kind_of_config(config: Mapping[str, Any]) -> DenseKind:
    return next(kind for kind in KINDS if kind.format == config.get("format"))


# What a dense repo's config.json and card say about loading it (transformers has no class for these models).
LOADING_NOTE = ("loads with vithub.load (or vithub.detection.publishing.load_dense_model), not with Hugging Face "
                "transformers' Auto classes: it is a torchvision-style detector or segmentor over a timm backbone, "
                "with no transformers architecture")


def model_card(config: Mapping[str, Any], repo_id: Optional[str] = None, dataset_name: Optional[str] = None,
               description: Optional[str] = None) -> str:
    """A ``README.md`` with YAML metadata (task, licence, metrics) and a usage snippet."""
    kind = _kind_of_config(config)
    settings = config[kind.settings]
    model_type = settings["detector"] if kind is DETECTOR else settings["head"]
    name = (repo_id or f"{model_type}_{settings['backbone']}").split("/")[-1]
    metrics = config.get("metrics", {})
    yaml = ["---", "library_name: vithub", f"pipeline_tag: {kind.pipeline_tag}", f"license: {config['license']}",
            "tags:", f"- {kind.pipeline_tag}", "- vithub", f"- {model_type}", f"- {settings['backbone']}"]
    if config.get("datasets"):
        yaml += ["datasets:", *(f"- {name}" for name in config["datasets"])]
    yaml.append("---")
    lines = [*yaml, f"# {name}", ""]
    if description:
        lines += [description, ""]
    labels = config.get("label_names") or []
    if kind is DETECTOR:
        details = [f"- **Detector:** torchvision {model_type} over `{settings['backbone']}` (feature pyramid of "
                   f"{settings['fpn_channels']} channels)", f"- **Scale:** short side {settings['img_size']}"]
        units = "COCO metrics, fractions"
        usage = ["from vithub.detection.publishing import load_dense_model", "",
                 'model = load_dense_model("{source}").eval()',
                 "outputs = model([torch.rand(3, 480, 640)])  # images in [0, 1]; boxes, labels, scores (, masks)"]
    else:
        details = [f"- **Segmentor:** {'UPerNet' if model_type == 'upernet' else 'Semantic FPN'} over "
                   f"`{settings['backbone']}`"]
        units = "percent"
        usage = ["from vithub.detection.publishing import load_dense_model", "",
                 'model = load_dense_model("{source}").eval()',
                 "probabilities = model.predict(torch.rand(1, 3, 512, 512))  # images in [0, 1]; (1, classes, H, W)",
                 "classes = probabilities.argmax(dim=1)"]
    lines += ["## Model details", *details, f"- **Classes:** {settings['num_classes']}" + _label_list(labels),
              f"- **Licence:** {config['license']}"]
    if metrics:
        lines += ["", f"## Results ({dataset_name or 'validation split'}, {units})", "", "| metric | value |",
                  "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
    source = f"hf-hub:{repo_id}" if repo_id else "/path/to/this/folder"
    lines += ["", "## Usage", "", f"This repo {LOADING_NOTE}.", "", "```python", "import torch",
              "import vithub", "", f'model = vithub.load("{source}").eval()  # or, the same:',
              *(line.replace("{source}", source) for line in usage), "```", ""]
    return "\n".join(lines)


def _label_list(labels: Sequence[str]) -> str:
    if not labels:
        return ""
    return f" ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"


def load_dense_model(folder: Union[str, Path], **overrides: Any) -> torch.nn.Module:
    """A detector or segmentor from a folder :func:`save_dense_model` wrote (or a pulled Hub snapshot of one), with
    its weights checked key by key; ``label_names`` (and a detector's ``category_ids``) are attached to the model."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    if not is_dense_config(config):
        raise ValueError(f"{folder}/{CONFIG_NAME} does not describe a vithub detector or segmentor (format one of "
                         f"{FORMATS})")
    kind = _kind_of_config(config)
    model = kind.build(config[kind.settings], **overrides)
    weights = load_file(str(folder / WEIGHTS_NAME))
    mismatch = state_dict_mismatch(model, weights)
    if mismatch:
        raise ValueError(f"{folder}: the weights do not fit the {kind.task} model in its config.json:\n{mismatch}")
    model.load_state_dict(weights)
    model.label_names = config.get("label_names")
    if kind is DETECTOR:
        model.category_ids = config.get("category_ids")
    return model


def dense_model_from_run(run_dir: Union[str, Path]) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The best model of a ``vithub train --task detection|segmentation`` output folder and the arguments of
    :func:`save_dense_model` for it (class names, the best epoch's metrics, the data)."""
    run = Path(run_dir)
    summary = json.loads((run / "summary.json").read_text())
    kind = kind_of_task(summary.get("task"))
    if kind is None:
        raise ValueError(f"{run}: task {summary.get('task')!r} is neither detection nor segmentation")
    state = load_state(run / "last.state.pt")
    config = config_from_args(state["config"])
    classes: List[str] = [str(name) for name in state.get("classes") or []]
    model = kind.task_object().build_model(config, SimpleNamespace(num_classes=len(classes)))
    checkpoint = run / (summary.get("best_checkpoint") or "last.safetensors")
    weights = load_file(str(checkpoint))
    mismatch = state_dict_mismatch(model, weights)
    if mismatch:
        raise ValueError(f"{checkpoint}: the weights do not fit the run's {kind.task} model:\n{mismatch}")
    model.load_state_dict(weights)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = next((row for row in rows if f"best-e{row['epoch']:03d}.safetensors" == checkpoint.name), rows[-1])
    metrics = {key: best[key] for key in kind.metric_keys if key in best}
    settings = getattr(model, kind.settings)
    what = settings["detector"] if kind is DETECTOR else settings["head"]
    card = {"label_names": classes, "metrics": metrics, "dataset_name": summary.get("data"),
            "description": f"Trained with `vithub train --task {kind.task}` ({what} on `{config.model}`) on "
                           f"{summary.get('data')} for {config.epochs} epochs."}
    if kind is DETECTOR:
        card["category_ids"] = summary.get("category_ids")
    return model, card
