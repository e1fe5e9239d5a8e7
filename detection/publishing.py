"""Detectors as files: ``config.json`` (the ``create_detector`` arguments, class names and COCO category ids),
``model.safetensors`` and a model card, so that ``vithub push`` publishes a detection run and ``vithub.load`` /
:func:`load_detector` rebuild it with its weights verified."""

from __future__ import annotations

import json
import tempfile
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from vithub.train.checkpoint import load_state, replace_durably, state_dict_mismatch
from vithub.train.config import config_from_args

from .detectors import detector_from_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "vithub-detector"


def is_detector_config(config: Mapping[str, Any]) -> bool:
    return config.get("format") == FORMAT


def save_detector(model: torch.nn.Module, path: Union[str, Path], *, label_names: Optional[Sequence[str]] = None,
                  category_ids: Optional[Sequence[int]] = None, metrics: Optional[Mapping[str, float]] = None,
                  dataset_name: Optional[str] = None, license: Optional[str] = None, repo_id: Optional[str] = None,
                  description: Optional[str] = None, datasets: Optional[Sequence[str]] = None) -> Path:
    """Write a detector made by :func:`~vithub.detection.create_detector` to the folder ``path``; each file
    replaces its old version atomically (weights first, so a config never names absent weights)."""
    settings = getattr(model, "detector_config", None)
    if settings is None:
        raise ValueError(f"model: expected a detector from vithub.detection.create_detector, got "
                         f"{type(model).__name__}")
    if label_names is not None and len(label_names) != settings["num_classes"]:
        raise ValueError(f"label_names: {len(label_names)} names for {settings['num_classes']} classes")
    body = getattr(model.backbone.body, "model", model.backbone.body)
    licence = license or getattr(body, "pretrained_cfg", {}).get("license") or "apache-2.0"
    config = {"format": FORMAT, "detector_config": settings, "label_names": list(label_names or []),
              "category_ids": list(category_ids or range(1, settings["num_classes"] + 1)), "license": licence,
              "metrics": dict(metrics or {}), "datasets": list(datasets or [])}
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".saving-") as staging:
        save_file({key: value.contiguous() for key, value in model.state_dict().items()},
                  str(Path(staging) / WEIGHTS_NAME), metadata={"format": "pt"})
        (Path(staging) / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        (Path(staging) / CARD_NAME).write_text(detector_card(config, repo_id, dataset_name, description),
                                               encoding="utf-8")
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            replace_durably(Path(staging) / name, target / name)
    return target


def detector_card(config: Mapping[str, Any], repo_id: Optional[str] = None, dataset_name: Optional[str] = None,
                  description: Optional[str] = None) -> str:
    """A ``README.md`` with YAML metadata (object-detection, licence, COCO metrics) and a usage snippet."""
    settings = config["detector_config"]
    name = (repo_id or f"{settings['detector']}_{settings['backbone']}").split("/")[-1]
    metrics = config.get("metrics", {})
    yaml = ["---", "library_name: vithub", "pipeline_tag: object-detection", f"license: {config['license']}",
            "tags:", "- object-detection", "- vithub", f"- {settings['detector']}", f"- {settings['backbone']}"]
    if config.get("datasets"):
        yaml += ["datasets:", *(f"- {name}" for name in config["datasets"])]
    yaml.append("---")
    lines = [*yaml, f"# {name}", ""]
    if description:
        lines += [description, ""]
    labels = config.get("label_names") or []
    lines += ["## Model details",
              f"- **Detector:** torchvision {settings['detector']} over `{settings['backbone']}` (feature pyramid of "
              f"{settings['fpn_channels']} channels)",
              f"- **Classes:** {settings['num_classes']}" + _label_list(labels),
              f"- **Scale:** short side {settings['img_size']}",
              f"- **Licence:** {config['license']}"]
    if metrics:
        lines += ["", f"## Results ({dataset_name or 'validation split'}, COCO metrics, fractions)", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
    source = f"hf-hub:{repo_id}" if repo_id else "/path/to/this/folder"
    lines += ["", "## Usage", "", "```python", "import torch", "from vithub.detection.publishing import load_detector",
              "", f'model = load_detector("{source}").eval()',
              "outputs = model([torch.rand(3, 480, 640)])  # images in [0, 1]; boxes, labels, scores (, masks)",
              "```", ""]
    return "\n".join(lines)


def _label_list(labels: Sequence[str]) -> str:
    if not labels:
        return ""
    return f" ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"


def load_detector(folder: Union[str, Path], **overrides: Any) -> torch.nn.Module:
    """A detector from a folder :func:`save_detector` wrote (or a pulled Hub snapshot of one), with its weights
    checked key by key; ``label_names`` and ``category_ids`` are attached to the model."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    if not is_detector_config(config):
        raise ValueError(f"{folder}/{CONFIG_NAME} does not describe a vithub detector (format {FORMAT!r})")
    model = detector_from_config(config["detector_config"], **overrides)
    weights = load_file(str(folder / WEIGHTS_NAME))
    mismatch = state_dict_mismatch(model, weights)
    if mismatch:
        raise ValueError(f"{folder}: the weights do not fit the detector in its config.json:\n{mismatch}")
    model.load_state_dict(weights)
    model.label_names = config.get("label_names")
    model.category_ids = config.get("category_ids")
    return model


def detector_from_run(run_dir: Union[str, Path]) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The best detector of a ``vithub train --task detection`` output folder and the arguments of
    :func:`save_detector` for it (class names, the best epoch's COCO metrics, the data)."""
    from .task import DetectionTask

    run = Path(run_dir)
    summary = json.loads((run / "summary.json").read_text())
    state = load_state(run / "last.state.pt")
    config = config_from_args(state["config"])
    bundle_classes = state.get("classes") or []
    model = DetectionTask().build_model(config, SimpleNamespace(num_classes=len(bundle_classes)))
    checkpoint = run / (summary.get("best_checkpoint") or "last.safetensors")
    weights = load_file(str(checkpoint))
    mismatch = state_dict_mismatch(model, weights)
    if mismatch:
        raise ValueError(f"{checkpoint}: the weights do not fit the run's detector:\n{mismatch}")
    model.load_state_dict(weights)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = next((row for row in rows if f"best-e{row['epoch']:03d}.safetensors" == checkpoint.name), rows[-1])
    metrics = {key: best[key] for key in ("bbox_ap", "bbox_ap50", "bbox_ap75", "segm_ap", "segm_ap50", "segm_ap75")
               if key in best}
    card = {"label_names": [str(name) for name in bundle_classes], "metrics": metrics,
            "category_ids": summary.get("category_ids"), "dataset_name": summary.get("data"),
            "description": f"Trained with `vithub train --task detection` ({config.task_options['detector']} on "
                           f"`{config.model}`) on {summary.get('data')} for {config.epochs} epochs."}
    return model, card

