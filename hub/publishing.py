"""Saving, pushing and pulling weights in the repo format timm writes and reads (``config.json``,
``model.safetensors``, a ``README.md`` model card), through ``huggingface_hub``'s public API.

After ``import vithub`` a plain timm user loads a pushed model with ``timm.create_model("hf-hub:org/repo",
pretrained=True)`` or a saved folder with ``"local-dir:/path"``; :func:`load` does the same with its weights verified
key by key, and also takes a bare folder, a training run or a training checkpoint. Downloaded data is never
unpickled: safetensors first, and a legacy ``.bin``/``.pth`` only through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from safetensors.torch import load_file

from vithub.train.checkpoint import UnsafeWeightsError, read_state_dict, replace_durably, state_dict_mismatch

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
LEGACY_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.pth", "model.pth")
HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"


class HubError(RuntimeError):
    """A save, push, pull or load cannot be done; the message names the repo or path and what is wrong."""


class WeightsMismatchError(HubError):
    """Weights do not fit the architecture: the missing and unexpected keys and the shape mismatches are listed."""


# --- saving -------------------------------------------------------------------------------------------------------

def save_pretrained(model: torch.nn.Module, path: Union[str, Path], *, repo_id: Optional[str] = None,
                    data_config: Optional[Mapping[str, Any]] = None, label_names: Optional[Sequence[str]] = None,
                    label_descriptions: Optional[Mapping[str, str]] = None, license: Optional[str] = None,
                    datasets: Optional[Sequence[str]] = None,
                    metrics: Optional[Mapping[str, float]] = None, dataset_name: Optional[str] = None,
                    tags: Optional[Sequence[str]] = None, description: Optional[str] = None) -> Path:
    """Write ``model`` to the folder ``path`` as timm does (``config.json`` with architecture, num_classes,
    num_features, global_pool, model_args and pretrained_cfg; ``model.safetensors``) plus a model card.

    ``data_config``: the preprocessing the weights expect (input_size, mean, std, interpolation, crop_pct); default:
    the model's pretrained cfg. ``metrics``: e.g. ``{"top1": 81.2, "top5": 95.4}`` measured on ``dataset_name``.
    ``label_names``: the class of each classifier row (timm's ``label_names``, transformers' ``id2label``);
    ``label_descriptions``: name → description (default: WordNet's, from timm, when every name is an ImageNet synset
    such as ``n01440764``). ``repo_id`` only fills the card's usage snippet. Each file replaces its old version
    atomically."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "pretrained_cfg"):
        raise HubError("model: expected a timm model (built with timm.create_model, so it has a pretrained_cfg), "
                       f"got {type(model).__name__}")
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    model_config: Dict[str, Any] = {}
    if label_names is not None:
        if len(label_names) != model.num_classes:
            raise HubError(f"label_names: {len(label_names)} names for a classifier of {model.num_classes} classes")
        model_config["label_names"] = list(label_names)
        descriptions = synset_descriptions(label_names) if label_descriptions is None else dict(label_descriptions)
        if descriptions:
            known = set(model_config["label_names"])
            unknown = [name for name in descriptions if name not in known]
            if unknown:
                raise HubError(f"label_descriptions: {unknown[:3]} are not among label_names")
            model_config["label_descriptions"] = descriptions
    elif label_descriptions is not None:
        raise HubError("label_descriptions: given without label_names (descriptions are keyed by label name)")
    licence = license or model.pretrained_cfg.get("license") or "apache-2.0"
    model_config["pretrained_cfg"] = {"license": licence}
    from vithub.backbones.token_reduction import reduction_config

    reduction = reduction_config(model)
    if reduction:  # vithub.reduce_tokens settings: load() applies them again (learned thresholds are in the weights)
        model_config["token_reduction"] = reduction
    with tempfile.TemporaryDirectory(dir=target, prefix=".saving-") as staging:
        timm.models.save_for_hf(model, staging, model_config=model_config, safe_serialization=True,
                                data_config=dict(data_config) if data_config else None)
        config = portable_config(json.loads((Path(staging) / CONFIG_NAME).read_text()))
        (Path(staging) / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
        card = model_card(model, config, repo_id=repo_id, license=licence, datasets=datasets, metrics=metrics,
                          dataset_name=dataset_name, tags=tags, description=description)
        (Path(staging) / CARD_NAME).write_text(card, encoding="utf-8")
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):  # weights first: a config never names absent weights
            replace_durably(Path(staging) / name, target / name)
    return target


def synset_descriptions(label_names: Sequence[str]) -> Optional[Dict[str, str]]:
    """WordNet's descriptions of ``label_names`` from timm's ImageNet-22k info (e.g. ``n01440764`` → ``tench, Tinca
    tinca``) when every name is a synset it knows, as an ImageNet folder's class names are; else ``None``."""
    if not label_names or not all(re.fullmatch(r"n\d{8}", str(name)) for name in label_names):
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-22k")
    try:
        return {str(name): info.label_name_to_description(str(name)) for name in label_names}
    except KeyError:
        return None


def portable_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """timm's ``config.json`` made loadable by transformers' ``TimmWrapper`` classes too: no argument both in
    ``model_args`` and at the top level (transformers passes ``num_classes`` itself, so ``model_args`` repeating it
    is a ``TypeError`` there; the top-level ``global_pool`` is informational in timm), and a registered token-reduced
    member's reduction options in ``model_args`` (so any loader that calls ``create_model`` rebuilds the same
    reduction). timm and :func:`load` read the result as before."""
    config = dict(config)
    model_args = dict(config.get("model_args") or {})
    if "num_classes" in model_args:
        if model_args.pop("num_classes") != config.get("num_classes"):
            raise HubError(f"config.json: model_args num_classes differs from num_classes {config.get('num_classes')}")
    if "global_pool" in model_args:
        config.pop("global_pool", None)
    reduction = config.get("token_reduction")
    architecture = config.get("architecture", "")
    if reduction and architecture.endswith(f"_{reduction.get('method')}") and architecture.startswith("vh_"):
        model_args.update({key: value for key, value in reduction.items() if key != "method"})
    if model_args:
        config["model_args"] = model_args
    else:
        config.pop("model_args", None)
    return config


def model_card(model: torch.nn.Module, config: Mapping[str, Any], *, repo_id: Optional[str] = None,
               license: str = "apache-2.0", datasets: Optional[Sequence[str]] = None,
               metrics: Optional[Mapping[str, float]] = None, dataset_name: Optional[str] = None,
               tags: Optional[Sequence[str]] = None, description: Optional[str] = None) -> str:
    """A ``README.md`` with YAML metadata (library_name timm, tags, licence, datasets, metrics, model-index) and a
    usage snippet."""
    from huggingface_hub import EvalResult, ModelCardData

    architecture = config["architecture"]
    name = (repo_id or architecture).split("/")[-1]
    metrics = dict(metrics or {})
    results = [EvalResult(task_type="image-classification", dataset_type=dataset_name or "custom",
                          dataset_name=dataset_name or "custom", metric_type="accuracy", metric_value=float(value),
                          metric_name=f"{key.replace('top', 'top-')} accuracy")
               for key, value in metrics.items() if key in ("top1", "top5")]
    card_tags = list(dict.fromkeys(["image-classification", "timm", "vithub", architecture, *(tags or [])]))
    data = ModelCardData(library_name="timm", license=license, tags=card_tags, pipeline_tag="image-classification",
                         datasets=list(datasets) if datasets else None, metrics=["accuracy"] if results else None,
                         model_name=name if results else None, eval_results=results or None)
    pretrained_cfg = config.get("pretrained_cfg", {})
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    parameters = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    labels = config.get("label_names")
    lines = [f"---\n{data.to_yaml()}\n---", f"# {name}", ""]
    if description:
        lines += [description, ""]
    lines += [
        "## Model details",
        f"- **Architecture:** `{architecture}` (a vithub model, registered with timm by `import vithub`)",
        f"- **Parameters (M):** {parameters:.2f}",
        f"- **Classes:** {config['num_classes']}" + (f" ({', '.join(map(str, labels[:10]))}"
                                                      f"{', ...' if len(labels) > 10 else ''})" if labels else ""),
        f"- **Input size:** {tuple(pretrained_cfg.get('input_size', ()))}, mean {pretrained_cfg.get('mean')}, "
        f"std {pretrained_cfg.get('std')}, crop_pct {pretrained_cfg.get('crop_pct')}",
        f"- **Licence:** {license}",
    ]
    if datasets:
        lines.append(f"- **Dataset:** {', '.join(datasets)}")
    if results:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {result.metric_name} ({result.dataset_name}) | {result.metric_value:.2f} |" for result in results]
    hf_source = repo_id or "/path/to/this/folder"
    lines += ["", "## Usage", "", "With timm:", "", "```python", "import timm",
              "import vithub  # registers the vh_* architectures",
              "", f'model = timm.create_model("{source}", pretrained=True).eval()',
              "config = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**config)", "```", "",
              "With Hugging Face transformers (its TimmWrapper classes run timm models):", "", "```python",
              "import vithub  # registers the vh_* architectures with timm, which transformers builds them through",
              "from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline", "",
              f'model = AutoModelForImageClassification.from_pretrained("{hf_source}")',
              f'processor = AutoImageProcessor.from_pretrained("{hf_source}")',
              f'classify = pipeline("image-classification", model="{hf_source}")', "```", ""]
    if repo_id:
        lines += ["Or from a shell: `vithub pull " + repo_id + "`.", ""]
    method = (config.get("token_reduction") or {}).get("method")
    if method in _TRAINING_NOTES:
        lines += ["## Training", "", _TRAINING_NOTES[method], ""]
    return "\n".join(lines)


# What a plain ``loss.backward()`` on the logits does not do for a token-reduced model (docs/token_reduction.md).
_TRAINING_NOTES = {
    "cropr": ("Token Cropr's routers learn only from their auxiliary classification heads: in train mode the model "
              "keeps their logits in `model.token_reduction_aux_logits`, and the training loss is the task loss of "
              "the main logits plus that of each auxiliary head (what `vithub train` does). A plain "
              "`loss(model(x), y).backward()` leaves the routers without a gradient."),
    "ltmp": ("The official LTMP recipe trains the thresholds only, against a FLOPs target: `vithub train` calls "
             "`model.freeze_for_training()` and adds `model.token_reduction_losses`. Created as is, every parameter "
             "is trainable."),
}


# --- pushing ------------------------------------------------------------------------------------------------------

def push_to_hub(model: torch.nn.Module, repo_id: str, *, private: bool = False, token: Optional[str] = None,
                revision: Optional[str] = None, commit_message: str = "Upload model with vithub",
                **card: Any) -> str:
    """Create ``repo_id`` if needed (``private`` applies when it is created; pushing to an existing public repo with
    ``private=True`` is refused), then commit :func:`save_pretrained`'s files to ``revision`` (a branch, created from
    main if new). The commit replaces config.json, model.safetensors and README.md, so the card always describes
    the weights next to it. ``token``: default the ``HF_TOKEN`` environment variable or the ``hf auth login``
    token; it is never printed. ``card``: :func:`save_pretrained`'s card arguments. Returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from vithub import __version__

    _check_repo_id(repo_id)
    api = HfApi(token=token, library_name="vithub", library_version=__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if private and not api.repo_info(repo_id).private:
            raise HubError(f"repo_id: {repo_id} exists and is public; private=True only applies when a repo is "
                           "created. Make it private on the Hub first, or push without --private")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vithub-push-") as staging:
            from vithub.detection.publishing import kind_of_model, save_dense_model

            if kind_of_model(model) is not None:  # a vithub.detection detector or segmentor: its own config and card
                save_dense_model(model, staging, repo_id=repo_id, **card)
            else:
                save_pretrained(model, staging, repo_id=repo_id, **card)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                                       commit_message=commit_message)
    except HfHubHTTPError as error:
        raise HubError(f"push to {repo_id} failed: {_without_secrets(error)}") from error
    return commit.commit_url


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if not repo_id or len(parts) > 2 or not all(parts) or repo_id.startswith((HUB_PREFIX, LOCAL_PREFIX)):
        raise HubError(f"repo_id: expected 'namespace/name' (or 'name' in your own namespace), got {repo_id!r}")


def _without_secrets(error: Exception) -> str:
    """The first line of a client error; the request headers (and so the token) are never part of it."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# --- pulling ------------------------------------------------------------------------------------------------------

def pull(repo_id: str, *, revision: Optional[str] = None, cache_dir: Optional[Union[str, Path]] = None,
         token: Optional[str] = None) -> Path:
    """Download a timm model repo (config, weights, card) at ``revision`` (branch, tag or commit; default main) into
    the Hugging Face cache (or ``cache_dir``) and return the local snapshot folder. With ``HF_HUB_OFFLINE=1`` it is
    served from the cache, or fails naming the repo and what is missing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = _split_revision(repo_id, revision)
    _check_repo_id(repo_id)
    where = f"{repo_id}@{revision or 'main'}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
        if not (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
            _pull_legacy_weights(repo_id, revision, cache_dir, token, folder)
    except RevisionNotFoundError as error:
        raise HubError(f"{repo_id}: revision {revision!r} does not exist (a branch, tag or commit sha)") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"{repo_id}: no such repo, or it is private and this token (HF_TOKEN or `hf auth login`) "
                       "cannot read it") from error
    except LocalEntryNotFoundError as error:
        raise HubError(f"{where}: not in the cache ({cache_dir or 'the default Hugging Face cache'}) and the Hub "
                       f"cannot be reached (HF_HUB_OFFLINE is {os.environ.get('HF_HUB_OFFLINE', 'unset')}); pull it "
                       "once online, or pass the --cache-dir that holds it") from error
    except HfHubHTTPError as error:
        raise HubError(f"{where}: download failed: {_without_secrets(error)}") from error
    has_weights = any((folder / name).is_file() for name in (WEIGHTS_NAME, *LEGACY_WEIGHTS_NAMES))
    missing = [name for name, present in ((CONFIG_NAME, (folder / CONFIG_NAME).is_file()),
                                          (WEIGHTS_NAME, has_weights)) if not present]
    if missing:
        raise HubError(f"{where}: {', '.join(missing)} missing in {folder} (a timm model repo has config.json and "
                       "model.safetensors)")
    return folder


def _pull_legacy_weights(repo_id: str, revision: Optional[str], cache_dir: Any, token: Optional[str],
                         folder: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in LEGACY_WEIGHTS_NAMES:
        try:
            hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, token=token)
        except EntryNotFoundError:
            continue
        if (folder / name).is_file():
            return


def _split_revision(repo_id: str, revision: Optional[str]) -> Tuple[str, Optional[str]]:
    if "@" in repo_id:
        repo_id, _, pinned = repo_id.partition("@")
        if revision and revision != pinned:
            raise HubError(f"revision: {revision!r} given twice, differently (the repo id pins {pinned!r})")
        revision = pinned
    return repo_id, revision


# --- loading ------------------------------------------------------------------------------------------------------

def load(source: Union[str, Path], *, revision: Optional[str] = None, cache_dir: Optional[Union[str, Path]] = None,
         token: Optional[str] = None, **model_kwargs: Any) -> torch.nn.Module:
    """A model with verified weights, from ``source``:

    - ``"hf-hub:org/repo"`` (optionally ``@revision``) or a bare ``"org/repo"`` that is not a local path: pulled;
    - ``"local-dir:/path"`` or a folder with ``config.json``: a saved repo;
    - a training run folder (``summary.json``): its best checkpoint;
    - a training checkpoint (``*.safetensors`` whose metadata names its model, or ``*.state.pt``).

    Missing or unexpected keys and shape mismatches raise :class:`WeightsMismatchError`, listing them."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return _load_repo_folder(pull(text[len(HUB_PREFIX):], revision=revision, cache_dir=cache_dir, token=token),
                                 model_kwargs)
    path = Path(text[len(LOCAL_PREFIX):] if text.startswith(LOCAL_PREFIX) else text).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return _load_repo_folder(path, model_kwargs)
    if path.is_dir() and (path / "summary.json").is_file():
        model, _ = model_from_run(path, **model_kwargs)
        return model
    if path.is_file():
        model, _ = model_from_checkpoint(path, **model_kwargs)
        return model
    if text.startswith(LOCAL_PREFIX) or path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise HubError(f"source: {text} is not a saved model folder (config.json), a training run (summary.json), a "
                       "checkpoint file, or a Hub repo id 'org/name'")
    try:  # no such local path: read it as a Hub repo id, and say both readings if that fails too
        folder = pull(text, revision=revision, cache_dir=cache_dir, token=token)
    except HubError as error:
        raise HubError(f"source {text!r} is neither a local path ({path.resolve()} does not exist) nor a Hub repo "
                       f"that answers ({error})") from error
    return _load_repo_folder(folder, model_kwargs)


def _load_repo_folder(folder: Path, model_kwargs: Dict[str, Any]) -> torch.nn.Module:
    config = json.loads((folder / CONFIG_NAME).read_text())
    from vithub.detection.publishing import is_dense_config, load_dense_model

    if is_dense_config(config):
        try:
            return load_dense_model(folder, **model_kwargs)
        except ValueError as error:
            raise WeightsMismatchError(str(error)) from error
    if not timm.is_model(config.get("architecture", "")):
        raise HubError(f"{folder}/config.json: architecture {config.get('architecture')!r} is not a registered "
                       "timm model (a vh_* name needs `import vithub`; is vithub older than the repo?)")
    model = timm.create_model(f"{LOCAL_PREFIX}{folder}", pretrained=False, **model_kwargs)
    reduction = config.get("token_reduction")
    if reduction:  # before the weights: a reduction may own parameters (LTMP's thresholds)
        from vithub.backbones.token_reduction import reduce_tokens

        options = {key: value for key, value in reduction.items() if key != "method"}
        reduce_tokens(model, reduction["method"], **options)
    load_verified(model, read_weights(folder), str(folder))
    return model


def read_weights(folder_or_file: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict of a folder (``model.safetensors``, else a legacy ``pytorch_model.bin``/``.pth``) or a file.
    Legacy files go through ``torch.load(weights_only=True)``: a pickle that would run code is refused."""
    path = Path(folder_or_file)
    if path.is_dir():
        candidates = [path / name for name in (WEIGHTS_NAME, *LEGACY_WEIGHTS_NAMES) if (path / name).is_file()]
        if not candidates:
            raise HubError(f"{path}: no {WEIGHTS_NAME} (or legacy {', '.join(LEGACY_WEIGHTS_NAMES)})")
        path = candidates[0]
    try:
        return read_state_dict(path)
    except UnsafeWeightsError as error:
        raise HubError(str(error)) from error


def load_verified(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict)`` after checking that the keys and shapes match exactly; otherwise
    :class:`WeightsMismatchError` lists every missing and unexpected key and every shape mismatch."""
    mismatch = state_dict_mismatch(model, dict(state_dict))
    if mismatch:
        raise WeightsMismatchError(f"{source}: the weights do not fit {type(model).__name__} "
                                   f"({model.pretrained_cfg.get('architecture', '?')}):\n{mismatch}")
    model.load_state_dict(state_dict)


# --- training runs ------------------------------------------------------------------------------------------------

def model_from_run(run_dir: Union[str, Path], **model_kwargs: Any) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The best model of a ``vithub train`` output folder and its card arguments (preprocessing, class names,
    dataset, the best epoch's top-1/top-5; for a detection or segmentation run, the model and its COCO or mIoU metrics)."""
    run = Path(run_dir)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise HubError(f"{run}: no summary.json; is it a finished `vithub train` output folder? (pass a checkpoint "
                       "file to push an unfinished run)")
    summary = json.loads(summary_path.read_text())
    from vithub.detection.publishing import dense_model_from_run, kind_of_task

    if kind_of_task(summary.get("task")) is not None:
        return dense_model_from_run(run)
    checkpoint = run / (summary.get("best_checkpoint") or "last.safetensors")
    if not checkpoint.is_file():
        raise HubError(f"{run}: its best checkpoint {checkpoint.name} is missing")
    model, card = model_from_checkpoint(checkpoint, **model_kwargs)
    rows = _history(run)
    best_epoch = next((row for row in rows if f"best-e{row['epoch']:03d}.safetensors" == checkpoint.name), None)
    top1 = best_epoch["top1"] if best_epoch else summary.get("best_top1", summary.get("top1"))
    top5 = best_epoch["top5"] if best_epoch else summary.get("top5")
    card["metrics"] = {key: value for key, value in (("top1", top1), ("top5", top5)) if value is not None}
    return model, card


def _history(run: Path) -> List[Dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def model_from_checkpoint(path: Union[str, Path], model_name: Optional[str] = None,
                          **model_kwargs: Any) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """A model from a ``vithub train`` checkpoint: a ``*.safetensors`` (its metadata names the model; the run's
    ``last.state.pt`` next to it gives classes and preprocessing) or a ``*.state.pt``. ``model_name`` overrides or
    supplies the architecture for safetensors without that metadata."""
    from safetensors import safe_open

    from vithub.train.checkpoint import STATE_SUFFIX, load_state
    from vithub.train.config import TrainConfig, config_from_args
    from vithub.train.tasks import data_config_for

    path = Path(path)
    if not path.is_file():
        raise HubError(f"checkpoint: {path} does not exist")
    state_path = path if path.name.endswith(STATE_SUFFIX) else path.parent / f"last{STATE_SUFFIX}"
    state = load_state(state_path) if state_path.is_file() else {}
    if path.name.endswith(STATE_SUFFIX):
        path = path.parent / state["weights"]
    if path.suffix != ".safetensors":
        raise HubError(f"checkpoint: expected a .safetensors or {STATE_SUFFIX} file, got {path.name}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    name = model_name or metadata.get("model") or state.get("model")
    if not name:
        raise HubError(f"checkpoint: {path} does not say its model (no 'model' metadata); pass --model NAME")
    weights = load_file(path)
    config = config_from_args(state["config"]) if state.get("config") else TrainConfig(model=name)
    head = {"num_classes": state["num_classes"]} if "num_classes" in state else _classifier_width(name, weights)
    model = timm.create_model(name, **{**head, **model_kwargs})
    if config.token_reduction:  # the run trained a token-reduced model: publish it reduced the same way (before the
        from vithub.backbones.token_reduction import reduce_tokens_from_spec  # weights: LTMP's thresholds are some)

        reduce_tokens_from_spec(model, config.token_reduction)
    load_verified(model, weights, str(path))
    card: Dict[str, Any] = {"data_config": data_config_for(config) if state else None}
    if card["data_config"]:  # so resolve_data_config(model=...) gives the run's preprocessing, as after a pull
        model.pretrained_cfg = {**model.pretrained_cfg, **card["data_config"]}
    if state.get("classes"):
        card["label_names"] = [str(label) for label in state["classes"]]
    if state:
        card["dataset_name"] = config.data or "digits"
        if (config.data or "").lower().startswith("hfds/"):  # a Hub dataset: the card's metadata can link it
            card["datasets"] = [config.data.split("/", 1)[1]]
        data = config.data or "the embedded digits (scikit-learn)"
        card["description"] = f"Fine-tuned with `vithub train` from `{name}` on {data} for {config.epochs} epochs."
    return model, card


def _classifier_width(name: str, weights: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Without a training state, the class count is the output width of the classifier the architecture's
    pretrained cfg names (LeViT names two heads of one width)."""
    with torch.device("meta"):
        classifier = timm.create_model(name).pretrained_cfg.get("classifier")
    for module in (classifier,) if isinstance(classifier, str) else tuple(classifier or ()):
        if f"{module}.weight" in weights:
            return {"num_classes": weights[f"{module}.weight"].shape[0]}
    return {}


__all__ = ["HubError", "WeightsMismatchError", "load", "load_verified", "model_card", "model_from_checkpoint",
           "model_from_run", "pull", "push_to_hub", "read_weights", "save_pretrained"]
