"""The fine-tuning loop behind ``vithub train``: any timm model (ours or timm's), timm's optimizers, schedulers,
losses, mixup and EMA, checkpoints that a kill cannot corrupt, and an exact resume."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Sampler

from .checkpoint import (
    STATE_SUFFIX,
    UnsafeWeightsError,
    atomic_write,
    complete_checkpoints,
    load_state,
    load_weights,
    read_state_dict,
    rng_state,
    save_state,
    save_weights,
    set_rng_state,
    state_dict_mismatch,
)
from .data import DIGITS, DIGITS_SIZE, DataBundle, DataError, UnreadableLimit, build_data, collate_readable
from .reporting import WandbRun, require_wandb, write_curves

DEFAULT_MODEL = "vh_efficientvit_m0"


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit); the last good checkpoint stays."""


@dataclass
class TrainConfig:
    """Options of ``vithub train``, named as in timm's ``train.py`` where it has them."""

    model: str = DEFAULT_MODEL
    pretrained: bool = False
    initial_checkpoint: Optional[str] = None
    data: Optional[str] = None  # None / "digits": the embedded default; a folder with train/ and val/; a timm spec
    data_dir: Optional[str] = None  # where a timm dataset spec (torch/cifar10, hfds/...) keeps its files
    train_split: str = "train"
    val_split: str = "validation"
    dataset_download: bool = False
    max_unreadable: float = 0.01  # the largest fraction of a split's images that may be unreadable (skipped)
    output: str = "output/train"
    epochs: int = 6
    batch_size: int = 64
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: int = 1
    min_lr: float = 1e-5
    layer_decay: Optional[float] = None
    drop_path: Optional[float] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.1
    model_ema: bool = False
    model_ema_decay: float = 0.998
    amp: Optional[str] = None  # "bfloat16" or "float16"; CUDA only
    grad_accum_steps: int = 1
    clip_grad: Optional[float] = None
    channels_last: bool = False
    torchcompile: bool = False
    seed: int = 42
    img_size: Optional[int] = None
    workers: int = 0
    resume: Optional[str] = None  # "auto" (newest complete checkpoint in output) or a .state.pt path
    checkpoint_every: int = 0  # also save a step checkpoint every N optimizer updates (0: epoch ends only)
    keep_best: int = 3
    device: Optional[str] = None
    progress: Optional[bool] = None  # None: a progress bar when stderr is a terminal
    wandb: bool = False
    wandb_project: str = "vithub"
    wandb_name: Optional[str] = None  # default: the output folder's name
    wandb_tags: Optional[List[str]] = None

    def check(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                    "keep_best": self.keep_best}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.checkpoint_every < 0 or self.workers < 0:
            raise ValueError("checkpoint_every and workers must be >= 0")
        if self.amp not in (None, "bfloat16", "float16"):
            raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {self.amp!r}")
        if not 0.0 <= self.max_unreadable <= 1.0:
            raise ValueError(f"max_unreadable must be a fraction in [0, 1], got {self.max_unreadable}")


class EpochBatches(Sampler):
    """This process's batches of an epoch: a permutation drawn from ``(seed, epoch)`` alone, cut into full global
    batches of ``batch_size * world`` images, of which rank ``r`` takes the ``r``-th slice; starting at global batch
    ``start`` (a resumed epoch skips what it has seen, so the order matches an unbroken run)."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(size, generator=generator).tolist()
        step = batch_size * world
        self.batches = [order[i + rank * batch_size:i + (rank + 1) * batch_size]
                        for i in range(0, size - step + 1, step)][start:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def batches_per_epoch(size: int, batch_size: int) -> int:
    return size // batch_size


def _device(config: TrainConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _create_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    kwargs: Dict[str, Any] = {"num_classes": num_classes}
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    return timm.create_model(config.model, pretrained=config.pretrained, **kwargs)


def data_config_for(config: TrainConfig) -> Dict[str, Any]:
    """The preprocessing of a run, as a timm data config: image folders and dataset specs take the model's pretrained
    cfg (read from a model built on the meta device: no weights are made or downloaded for it), with ``img_size``
    overriding the size; the embedded digits have their own fixed preprocessing."""
    if config.data in (None, DIGITS):
        size = config.img_size or DIGITS_SIZE
        return {"input_size": (3, size, size), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}
    with torch.device("meta"):
        probe = timm.create_model(config.model)
    size = {"input_size": (3, config.img_size, config.img_size)} if config.img_size else {}
    return resolve_data_config(size, model=probe)


def _build_data(config: TrainConfig) -> DataBundle:
    return build_data(config.data, config.img_size or 0, data_config_for(config), config.data_dir,
                      config.train_split, config.val_split, config.dataset_download)


def _load_initial(model: torch.nn.Module, path: str) -> None:
    try:
        state_dict = read_state_dict(Path(path))
    except UnsafeWeightsError as error:
        raise TrainingError(f"initial_checkpoint {error}") from error
    mismatch = state_dict_mismatch(model, state_dict)
    if mismatch:
        raise TrainingError(f"initial_checkpoint {path} does not fit {type(model).__name__}:\n{mismatch}\n(a "
                            "classifier of another class count? train with that many classes, or drop the head keys)")
    model.load_state_dict(state_dict)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
             unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over ``loader``. Batches may carry a third item, the
    unreadable samples (:func:`vithub.train.data.collate_readable`): those are skipped and recorded in
    ``unreadable`` under ``"val"``."""
    model.eval()
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    for images, labels, *rest in loader:
        if rest and unreadable is not None:
            unreadable.record("val", rest[0])
        if images is None:
            continue
        images, labels = images.to(device), labels.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        seen += len(labels)
    if seen == 0:
        raise TrainingError("evaluation: no readable validation image")
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen}


def _write_history(output: Path, history: List[Dict[str, Any]]) -> None:
    """metrics.csv and metrics.jsonl rewritten whole from the history (so a resumed run's files match an unbroken
    one's)."""
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    text = buffer.getvalue()
    atomic_write(output / "metrics.csv", lambda tmp: Path(tmp).write_text(text))
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(output / "metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))


def train(config: TrainConfig) -> Dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the summary also written to ``output/summary.json``."""
    config.check()
    if config.wandb:
        require_wandb()  # before any data or model work
    started = time.time()
    device = _device(config)
    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        use_nccl = device.type == "cuda"
        if use_nccl:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_nccl else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    try:
        return _train(config, device, rank, world, started)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, device: torch.device, rank: int, world: int, started: float) -> Dict[str, Any]:
    main = rank == 0  # only rank 0 evaluates, logs and writes files
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    resume_path = _resume_path(config, output)
    data = _build_data(config)
    model = _create_model(config, data.num_classes).to(device)
    if config.initial_checkpoint:
        _load_initial(model, config.initial_checkpoint)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                    layer_decay=config.layer_decay)
    total_batches = batches_per_epoch(len(data.train), config.batch_size * world)
    if total_batches == 0:
        raise ValueError(f"batch_size {config.batch_size} x {world} processes is larger than the "
                         f"{len(data.train)} training images")
    updates_per_epoch = max(1, total_batches // config.grad_accum_steps)
    scheduler, _ = create_scheduler_v2(optimizer, sched=config.sched, num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, min_lr=config.min_lr,
                                       step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None
    use_amp = config.amp is not None and device.type == "cuda"
    amp_dtype = getattr(torch, config.amp) if config.amp else torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and config.amp == "float16")
    mixup = (Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                   num_classes=data.num_classes) if config.mixup > 0 or config.cutmix > 0 else None)
    criterion = SoftTargetCrossEntropy() if mixup else (
        LabelSmoothingCrossEntropy(config.smoothing) if config.smoothing > 0 else torch.nn.CrossEntropyLoss())
    step_fn = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    step_fn = torch.compile(step_fn) if config.torchcompile else step_fn

    epoch, batch_in_epoch, num_updates = 0, 0, 0
    resumed_loss = (0.0, 0)  # a step checkpoint carries the running train loss of its unfinished epoch
    history: List[Dict[str, Any]] = []
    best: List[Dict[str, Any]] = []  # [{"top1", "epoch", "file"}], best first
    unreadable_saved: Dict[str, List[Any]] = {}
    wandb_id: Optional[str] = None
    if resume_path is not None:
        state = load_state(resume_path)
        _check_resumable(state.get("config", {}), config, resume_path)
        if state.get("world_size", 1) != world:
            raise TrainingError(f"resume: {resume_path} was written by {state.get('world_size', 1)} processes, this "
                                f"run has {world}: the per-process batches (and so the data order) would differ")
        weights = load_weights(Path(resume_path).parent / state["weights"])
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            raise TrainingError(f"resume: {resume_path} does not fit model {config.model}: {error}") from error
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        scaler.load_state_dict(state["scaler"])
        epoch, batch_in_epoch, num_updates = state["epoch"], state["batch_in_epoch"], state["num_updates"]
        history, best = state["history"], state["best"]
        resumed_loss = tuple(state["epoch_loss"])
        unreadable_saved = state.get("unreadable", {})
        wandb_id = state.get("wandb_id")
        set_rng_state(state["rng"])

    unreadable = UnreadableLimit({"train": len(data.train), "val": len(data.val)}, config.max_unreadable,
                                 verbose=main)
    for split, items in unreadable_saved.items():
        unreadable.restore(split, items)
    val_loader = DataLoader(data.val, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                            collate_fn=collate_readable)
    wandb_run = None
    if main and config.wandb:
        wandb_config = dict(asdict(config), num_classes=data.num_classes, data_description=data.description,
                            train_images=len(data.train), val_images=len(data.val), world_size=world,
                            parameters=sum(parameter.numel() for parameter in model.parameters()))
        wandb_run = WandbRun(output, config.wandb_project, config.wandb_name, config.wandb_tags, wandb_config,
                             wandb_id)
        wandb_id = wandb_run.id
    images_seen, train_seconds = 0, 0.0

    loss_sum, loss_count = 0.0, 0

    def checkpoint(tag: str) -> None:
        if not main:
            return
        weights_name = f"{tag}.safetensors"
        save_weights(output / weights_name, model.state_dict(), {"model": config.model})
        save_state(output / f"{tag}{STATE_SUFFIX}", {
            "weights": weights_name, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "num_updates": num_updates,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "scaler": scaler.state_dict(),
            "rng": rng_state(), "history": history, "best": best, "config": asdict(config),
            "epoch_loss": [loss_sum, loss_count], "world_size": world, "unreadable": unreadable.state(),
            "wandb_id": wandb_id,
            "model": config.model, "num_classes": data.num_classes, "classes": data.classes,
        })

    try:
        show_progress = main and (sys.stderr.isatty() if config.progress is None else config.progress)
        while epoch < config.epochs:
            model.train()
            sampler = EpochBatches(len(data.train), config.batch_size, config.seed, epoch, batch_in_epoch, rank, world)
            loader = DataLoader(data.train, batch_sampler=sampler, num_workers=config.workers,
                                collate_fn=collate_readable)
            progress = _progress(total_batches, batch_in_epoch, epoch, config.epochs, show_progress)
            epoch_start = time.time()
            loss_sum, loss_count = resumed_loss
            resumed_loss = (0.0, 0)
            optimizer.zero_grad(set_to_none=True)
            for images, labels, bad in loader:
                # A batch that unreadable images left with fewer than two (of a larger batch size) is skipped:
                # BatchNorm cannot train on one image.
                usable = images is not None and len(images) >= min(2, config.batch_size)
                _check_batch(unreadable, bad, not usable, batch_in_epoch, rank, world, device)
                if usable:
                    images, labels = images.to(device), labels.to(device)
                    if mixup is not None:
                        images, labels = mixup(images, labels)
                    if config.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        loss = criterion(step_fn(images), labels)
                    loss_value = loss.detach().float()
                    if world > 1:  # the mean over ranks: every rank logs, and stops on, the same value
                        dist.all_reduce(loss_value)
                        loss_value /= world
                    if not torch.isfinite(loss_value):
                        raise TrainingError(
                            f"loss is {loss_value.item()} at epoch {epoch}, batch {batch_in_epoch} (update "
                            f"{num_updates}); nothing was saved after the last good checkpoint in {output}. Lower "
                            "lr, add warmup or clip_grad, or check the data")
                    loss_sum += loss_value.item()
                    loss_count += 1
                    scaler.scale(loss / config.grad_accum_steps).backward()
                    images_seen += len(labels) * world
                batch_in_epoch += 1
                if batch_in_epoch % config.grad_accum_steps == 0:
                    if config.clip_grad is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    num_updates += 1
                    scheduler.step_update(num_updates)
                    if ema is not None:
                        ema.update(model, step=num_updates)
                    if config.checkpoint_every and num_updates % config.checkpoint_every == 0:
                        checkpoint("step")
                if progress is not None and loss_count:
                    elapsed = max(train_seconds + time.time() - epoch_start, 1e-9)
                    progress.set_postfix(loss=f"{loss_sum / loss_count:.3f}", img_s=f"{images_seen / elapsed:.0f}")
                    progress.update(1)
            if progress is not None:
                progress.close()
            train_seconds += time.time() - epoch_start
            epoch += 1
            batch_in_epoch = 0
            if world > 1:  # each rank saw its slice: every rank merges all, so every rank stops alike
                gathered: List[Any] = [None] * world
                dist.all_gather_object(gathered, unreadable.state()["train"])
                unreadable.restore("train", [item for part in gathered for item in part], check=True)
            if not main:
                continue
            metrics = evaluate(ema.module if ema is not None else model, val_loader, device, config.channels_last,
                               unreadable)
            counts = unreadable.counts()
            row = {"epoch": epoch, "train_loss": loss_sum / max(loss_count, 1), "val_loss": metrics["loss"],
                   "top1": metrics["top1"], "top5": metrics["top5"], "lr": optimizer.param_groups[0]["lr"],
                   "unreadable_train": counts["train"], "unreadable_val": counts["val"],
                   "seconds": round(time.time() - started, 2)}
            history.append(row)
            best = _update_best(output, best, row, model if ema is None else ema.module, config)
            _write_history(output, history)
            write_curves(output / "curves.png", history)
            checkpoint("last")
            if wandb_run is not None:
                wandb_run.log_epoch(row)
            print(f"epoch {epoch}/{config.epochs}: train_loss {row['train_loss']:.4f} val top1 {row['top1']:.2f} "
                  f"top5 {row['top5']:.2f}", flush=True)

        ranks_identical = _ranks_agree(model) if world > 1 else True
        if not main:
            return {"rank": rank, "ranks_identical": ranks_identical}
        summary = {
            "world_size": world, "ranks_identical": ranks_identical,
            "model": config.model, "data": data.description, "num_classes": data.num_classes, "classes": data.classes,
            "epochs": config.epochs, "top1": history[-1]["top1"], "top5": history[-1]["top5"],
            "best_top1": best[0]["top1"] if best else history[-1]["top1"], "best_checkpoint": best[0]["file"] if best
            else None, "seconds": round(time.time() - started, 2),
            "images_per_second": round(images_seen / train_seconds, 2) if train_seconds else None,
            "resumed_from": str(resume_path) if resume_path else None,
            "unreadable_images": unreadable.counts(), "unreadable_files": unreadable.files(),
            "curves": "curves.png", "wandb_run_id": wandb_id,
        }
        atomic_write(output / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    except BaseException:
        if wandb_run is not None:
            wandb_run.finish(exit_code=1)
        raise
    if wandb_run is not None:
        wandb_run.finish(summary=summary)
    return summary


# Settings that fix the data order and the update count: a resumed run must keep them to continue the same run.
RESUME_FIXED = ("model", "data", "train_split", "batch_size", "grad_accum_steps", "seed", "epochs", "img_size")


def _check_batch(unreadable: UnreadableLimit, bad: List[Any], unusable: bool, batch: int, rank: int, world: int,
                 device: torch.device) -> None:
    """Count a batch's unreadable images; stop past the limit. Under torchrun the ranks agree on stopping first (one
    tiny all-reduce), so no rank waits forever on one that stopped; a batch left (nearly) empty cannot be skipped
    there, since DDP needs every rank's gradients."""
    problem: Optional[Exception] = None
    try:
        if bad:
            unreadable.record("train", bad)
    except DataError as error:
        problem = error
    if world == 1:
        if problem is not None:
            raise problem
        return
    if problem is None and unusable:
        problem = TrainingError(f"batch {batch} on rank {rank} has fewer than two readable images; under torchrun "
                                "it cannot be skipped (remove the unreadable files listed above)")
    flag = torch.tensor([0.0 if problem is None else 1.0], device=device)
    dist.all_reduce(flag)
    if problem is not None:
        raise problem
    if flag.item():
        raise TrainingError(f"another process stopped the run at batch {batch} (its error is in its own output)")


def _check_resumable(saved: Dict[str, Any], config: TrainConfig, path: Path) -> None:
    changed = [f"{name}: checkpoint {saved[name]!r}, now {getattr(config, name)!r}" for name in RESUME_FIXED
               if name in saved and saved[name] != getattr(config, name)]
    if changed:
        raise TrainingError(f"resume: {path} belongs to a run with other settings ({'; '.join(changed)}); resume "
                            "with the same ones, or start a new run (no --resume) or use --initial-checkpoint")


def _ranks_agree(model: torch.nn.Module) -> bool:
    """Whether every rank ends with the same parameters (a float64 fingerprint of each, gathered). BatchNorm
    running statistics are per rank between DDP's broadcasts from rank 0, and rank 0's are the ones saved."""
    fingerprint = torch.stack([parameter.detach().double().sum() for parameter in model.parameters()])
    gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _resume_path(config: TrainConfig, output: Path) -> Optional[Path]:
    if not config.resume:
        return None
    if config.resume == "auto":
        found = complete_checkpoints(output)
        return found[0][1] if found else None  # nothing saved yet: start from scratch
    path = Path(config.resume)
    if not path.is_file():
        raise TrainingError(f"resume: {path} does not exist (pass 'auto' or a *{STATE_SUFFIX} file)")
    return path


def _update_best(output: Path, best: List[Dict[str, Any]], row: Dict[str, Any], model: torch.nn.Module,
                 config: TrainConfig) -> List[Dict[str, Any]]:
    """Keep the ``keep_best`` best epochs by top-1 as ``best-eNNN.safetensors``; drop the files that fall out."""
    if len(best) >= config.keep_best and row["top1"] <= best[-1]["top1"]:
        return best
    name = f"best-e{row['epoch']:03d}.safetensors"
    save_weights(output / name, model.state_dict(), {"model": config.model, "top1": str(row["top1"])})
    best = sorted(best + [{"top1": row["top1"], "epoch": row["epoch"], "file": name}],
                  key=lambda item: (-item["top1"], item["epoch"]))
    for dropped in best[config.keep_best:]:
        (output / dropped["file"]).unlink(missing_ok=True)
    return best[:config.keep_best]


def _progress(total: int, done: int, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)


def config_from_args(values: Dict[str, Any]) -> TrainConfig:
    names = {field.name for field in fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in values.items() if key in names})


def validate(model_name: str, checkpoint: Optional[str], data: Optional[str], batch_size: int = 64,
             img_size: Optional[int] = None, device: Optional[str] = None, data_dir: Optional[str] = None,
             val_split: str = "validation", max_unreadable: float = 0.01) -> Dict[str, float]:
    """Top-1/top-5 of ``model_name`` (weights from ``checkpoint``, a safetensors or weights-only file) on the
    validation split of ``data``, and how many of its images were unreadable (skipped)."""
    config = TrainConfig(model=model_name, data=data, img_size=img_size, device=device, data_dir=data_dir,
                         val_split=val_split)
    bundle = _build_data(config)
    model = _create_model(config, bundle.num_classes)
    if checkpoint:
        _load_initial(model, checkpoint)
    torch_device = _device(config)
    loader = DataLoader(bundle.val, batch_size=batch_size, shuffle=False, collate_fn=collate_readable)
    unreadable = UnreadableLimit({"val": len(bundle.val)}, max_unreadable)
    metrics = evaluate(model.to(torch_device), loader, torch_device, unreadable=unreadable)
    return dict(metrics, unreadable_images=unreadable.counts()["val"])
