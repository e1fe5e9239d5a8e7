"""The training loop behind ``vithub train``, for any task (:mod:`vithub.train.tasks`) and any timm model: timm's
optimizers, schedulers and EMA, checkpoints that a kill cannot corrupt, an exact resume, W&B, DDP under torchrun and
AMP on CUDA.

It reads as timm's ``train.py`` does: :func:`train` runs :func:`setup`, :func:`resume` (when asked), then per epoch
:func:`train_one_epoch` and :func:`end_epoch` (evaluation through the task, metrics, best checkpoints), then
:func:`finish` (``summary.json``). Everything task-specific (data, model, loss, metrics) comes from the task.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from timm.models import model_parameters
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
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
from .config import RESUME_FIXED, TrainConfig, scaled_lr
from .data import DataBundle, DataError, UnreadableLimit
from .loader import CurrentEpoch, KeyedByEpoch, data_loader, default_workers, rank_share
from .streams import StreamSamples
from .reporting import WandbRun, require_wandb, write_curves
from .tasks import ClassificationTask, LossFn, Task, TrainingError, get_task

_logger = logging.getLogger(__name__)

__all__ = ["EpochBatches", "Progress", "Run", "end_epoch", "evaluate", "finish", "prepare_epoch", "resume",
           "save_checkpoint", "setup", "start_logging", "train", "train_one_epoch", "validate"]


class EpochBatches(Sampler):
    """This process's batches of an epoch: a permutation drawn from ``(seed, epoch)`` alone, cut into full global
    batches of ``batch_size * world`` images, of which rank ``r`` takes the ``r``-th slice; starting at global batch
    ``start`` (a resumed epoch skips what it has seen, so the order matches an unbroken run)."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world: int = 1, groups: Optional[Sequence[int]] = None, repeats: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(size, generator=generator).tolist()
        step = batch_size * world
        if repeats > 1:
            if groups is not None:
                raise ValueError("aug_repeats: repeated augmentation does not combine with batches grouped by "
                                 "aspect ratio (the detection task's)")
            self.batches = repeated_batches(order, repeats, batch_size, rank, world)[start:]
            return
        global_batches = ([order[i:i + step] for i in range(0, size - step + 1, step)] if groups is None
                          else grouped_batches(order, groups, step))
        self.batches = [rank_share(batch, rank, world, batch_size) for batch in global_batches][start:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def repeated_batches(order: Sequence[int], repeats: int, batch_size: int, rank: int, world: int
                     ) -> List[List[Tuple[int, int]]]:
    """Repeated augmentation (Hoffer et al.; timm's ``RepeatAugSampler``): each index of ``order`` ``repeats`` times
    in a row, dealt to the processes in turn, so the copies of one image go to different processes (and get
    different augmentations); the epoch keeps the length it has without repeats (``len(order) // (batch_size *
    world)`` global batches), so it covers the first ``1/repeats`` of the order. Returns process ``rank``'s
    batches, of ``(index, copy)`` entries: the copy number keys the copy's own augmentation draws (the datasets
    draw from ``(seed, epoch, index, copy)``), since copies augmented alike would only repeat the image."""
    repeated = [(index, copy) for index in order for copy in range(repeats)]
    step = batch_size * world
    return [rank_share(repeated[i * step:(i + 1) * step], rank, world, batch_size, repeats)
            for i in range(len(order) // step)]


def grouped_batches(order: Sequence[int], groups: Sequence[int], size: int) -> List[List[int]]:
    """Full batches of ``size`` indices, each from one group, in the order their last member comes up in
    ``order`` (timm/torchvision's aspect-ratio grouping, made deterministic); each group's remainder is dropped."""
    if len(groups) != len(order):
        raise ValueError(f"groups has {len(groups)} entries for {len(order)} samples")
    pending: Dict[int, List[int]] = {}
    batches = []
    for index in order:
        bucket = pending.setdefault(groups[index], [])
        bucket.append(index)
        if len(bucket) == size:
            batches.append(bucket)
            pending[groups[index]] = []
    return batches


def batches_per_epoch(size: int, batch_size: int, world: int, groups: Optional[Sequence[int]]) -> int:
    """How many global batches an epoch has (the same for every epoch: per-group counts do not depend on the
    order)."""
    step = batch_size * world
    if groups is None:
        return size // step
    counts: Dict[int, int] = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    return sum(count // step for count in counts.values())


# The metrics columns that measure wall-clock time: they differ between a resumed run and an unbroken one.
WALL_CLOCK_COLUMNS = ("data_wait", "seconds")


@dataclass
class Progress:
    """Where a run stands: everything a checkpoint must carry for a resume to continue the same run."""

    epoch: int = 0
    batch_in_epoch: int = 0
    num_updates: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)  # one metrics row per finished epoch
    best: List[Dict[str, Any]] = field(default_factory=list)  # [{primary metric, "epoch", "file"}], best first
    epoch_loss: Tuple[float, int] = (0.0, 0)  # running train loss (sum, batches) of the current epoch
    epoch_wait: Tuple[float, float] = (0.0, 0.0)  # seconds waiting for batches, seconds in all, of the current epoch
    wandb_id: Optional[str] = None


@dataclass
class Run:
    """One training run: its settings, task, model and optimisation state, and where it stands."""

    config: TrainConfig
    task: Task
    device: torch.device
    rank: int
    world: int
    output: Path
    data: DataBundle
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model as the training step calls it (DDP-wrapped, compiled)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Optional[ModelEmaV3]
    scaler: torch.amp.GradScaler
    loss_fn: LossFn
    batches_per_epoch: int
    unreadable: UnreadableLimit
    groups: Optional[Sequence[int]] = None  # the task's batch groups of the training samples
    train_loader: Optional[DataLoader] = None  # one loader for the run (its workers persist across epochs)
    val_loader: Optional[DataLoader] = None
    progress: Progress = field(default_factory=Progress)
    wandb: Optional[WandbRun] = None
    started: float = field(default_factory=time.time)
    images_seen: int = 0
    train_seconds: float = 0.0

    @property
    def main(self) -> bool:
        """Only rank 0 evaluates, logs and writes files."""
        return self.rank == 0

    @property
    def use_amp(self) -> bool:
        return _amp_enabled(self.config, self.device)

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train ``config.model`` on ``config.data`` for ``config.task``; returns the summary also written to
    ``output/summary.json`` (other torchrun ranks return only their rank and whether the ranks agree)."""
    task = get_task(config.task)
    config = resolve_config(config, task)
    if config.wandb:
        require_wandb()  # before any data or model work
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
        run = setup(config, task, device, rank, world)
        resume_path = _resume_path(config, run.output)
        if resume_path is not None:
            resume(run, resume_path)
        start_logging(run)
        try:
            show_progress = run.main and (sys.stderr.isatty() if config.progress is None else config.progress)
            while run.progress.epoch < config.total_epochs:
                train_one_epoch(run, show_progress)
                end_epoch(run)
            summary = finish(run, resume_path)
        except BaseException:
            if run.wandb is not None:
                run.wandb.finish(exit_code=1)
            raise
        if run.wandb is not None:
            run.wandb.finish(summary=summary)
        return summary
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def resolve_config(config: TrainConfig, task: Optional[Task] = None) -> TrainConfig:
    """The configuration a run uses: its recipe's values where no option was given, the task's defaults for the
    options left unset, the lr scaled from ``lr_base`` to the global batch (torchrun's ``WORLD_SIZE`` processes)
    when no lr was given, the loader workers from the CPUs when not given, checked."""
    from .recipes import apply_recipe

    config = apply_recipe(config)
    task = task or get_task(config.task)
    if config.teacher and not task.distills:
        raise ValueError(f"teacher: task {task.name!r} does not distil (knowledge distillation is for "
                         "classification)")
    lr_unset = config.lr is None
    config = task.resolve(config)
    if lr_unset and config.lr_base is not None:  # timm's rule: lr_base scaled to the run's global batch
        lr = scaled_lr(config, int(os.environ.get("WORLD_SIZE", "1")))
        bounds = lr / config.lr_base if config.lr_base_bounds else 1.0  # Swin's rule scales them all
        config = replace(config, lr=lr, min_lr=config.min_lr * bounds, warmup_lr=config.warmup_lr * bounds)
    if config.workers is None:
        config = replace(config, workers=default_workers(config.data))
    config.check()
    return config


def setup(config: TrainConfig, task: Task, device: torch.device, rank: int = 0, world: int = 1) -> Run:
    """Seeds, data, model (and initial weights), optimizer, scheduler, EMA, AMP scaler and the task's loss, for a
    ``config`` whose unset options the task has filled in (``task.resolve``, as :func:`train` does)."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    task.output = output
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    data = task.build_data(config)
    model = task.build_model(config, data).to(device)
    if config.initial_checkpoint:
        _load_initial(model, config.initial_checkpoint)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world > 1 and config.sync_bn:  # before the optimizer and EMA see the model (same parameters either way)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = task.build_optimizer(config, model)
    groups = task.batch_groups(data.train)
    total_batches = batches_per_epoch(len(data.train), config.batch_size, world, groups)
    if total_batches == 0:
        raise ValueError(f"batch_size {config.batch_size} x {world} processes is larger than the "
                         f"{len(data.train)} training images" + (" (of any one aspect-ratio group)" if groups else ""))
    updates_per_epoch = max(1, total_batches // config.grad_accum_steps)
    scheduler, _ = create_scheduler_v2(optimizer, sched=config.sched, num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                                       cooldown_epochs=config.cooldown_epochs, min_lr=config.min_lr,
                                       decay_rate=config.decay_rate,
                                       step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None
    scaler = torch.amp.GradScaler("cuda", enabled=_amp_enabled(config, device) and config.amp == "float16")
    step_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    step_model = torch.compile(step_model) if config.torchcompile else step_model
    unreadable = UnreadableLimit({"train": len(data.train), "val": len(data.val)}, config.max_unreadable,
                                 verbose=rank == 0)
    train_loader = data_loader(KeyedByEpoch(data.train), config, device, task.collate_fn,
                               batch_sampler=CurrentEpoch())
    val_loader = data_loader(data.val, config, device, task.collate_fn, batch_size=config.batch_size,
                             batch_sampler=_in_order(data.val, config.batch_size))
    return Run(config, task, device, rank, world, output, data, model, step_model, optimizer, scheduler, ema, scaler,
               task.training_loss(config, data), total_batches, unreadable, groups=groups, train_loader=train_loader,
               val_loader=val_loader)


def resume(run: Run, path: Path) -> None:
    """Continue the run saved in ``path``: weights, optimizer, scheduler, EMA, scaler, RNG states and progress."""
    state = load_state(path)
    _check_resumable(state.get("config", {}), run.config, path)
    if state.get("world_size", 1) != run.world:
        raise TrainingError(f"resume: {path} was written by {state.get('world_size', 1)} processes, this run has "
                            f"{run.world}: the per-process batches (and so the data order) would differ")
    weights = load_weights(Path(path).parent / state["weights"])
    try:
        run.model.load_state_dict(weights)
    except RuntimeError as error:
        raise TrainingError(f"resume: {path} does not fit model {run.config.model}: {error}") from error
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None and state.get("ema") is not None:
        run.ema.load_state_dict(state["ema"])
    run.scaler.load_state_dict(state["scaler"])
    run.progress = Progress(state["epoch"], state["batch_in_epoch"], state["num_updates"], state["history"],
                            state["best"], epoch_loss=tuple(state["epoch_loss"]), wandb_id=state.get("wandb_id"),
                            epoch_wait=tuple(state.get("epoch_wait", (0.0, 0.0))))
    if isinstance(run.data.train, StreamSamples):
        run.data.train.check_position(state.get("stream"), path)
    for split, items in state.get("unreadable", {}).items():
        run.unreadable.restore(split, items)
    set_rng_state(state["rng"])


def start_logging(run: Run) -> None:
    """Open the W&B run on rank 0 when asked (a resumed run continues its W&B run)."""
    if not (run.main and run.config.wandb):
        return
    config, data = run.config, run.data
    wandb_config = dict(asdict(config), num_classes=data.num_classes, data_description=data.description,
                        train_images=len(data.train), val_images=len(data.val), world_size=run.world,
                        parameters=sum(parameter.numel() for parameter in run.model.parameters()))
    run.wandb = WandbRun(run.output, config.wandb_project, config.wandb_name, config.wandb_tags, wandb_config,
                         run.progress.wandb_id)
    run.progress.wandb_id = run.wandb.id


def prepare_epoch(run: Run) -> None:
    """Hand the training loader this process's batches of epoch ``run.progress.epoch``, from the batch a resumed
    epoch stopped at (:class:`EpochBatches`; a streamed split's own, :mod:`vithub.train.streams`)."""
    config, progress = run.config, run.progress
    if isinstance(run.data.train, StreamSamples):  # a stream has no random access: its batches come in its order
        batches: Any = run.data.train.epoch_batches(progress.epoch, config.batch_size, run.batches_per_epoch,
                                                    progress.batch_in_epoch, run.rank, run.world, config.aug_repeats)
    else:
        batches = EpochBatches(len(run.data.train), config.batch_size, config.seed, progress.epoch,
                               progress.batch_in_epoch, run.rank, run.world, run.groups, config.aug_repeats).batches
    run.train_loader.batch_sampler.set(progress.epoch, batches)


def train_one_epoch(run: Run, show_progress: bool = False) -> None:
    """The batches of one epoch (from where a resumed epoch stopped): loss through the task, gradient accumulation,
    clipping, AMP, optimizer and scheduler steps, EMA, step checkpoints."""
    config, progress = run.config, run.progress
    run.model.train()
    prepare_epoch(run)
    bar = _progress_bar(run.batches_per_epoch, progress.batch_in_epoch, progress.epoch, config.total_epochs,
                        show_progress)
    epoch_start = time.time()
    loss_sum, loss_count = progress.epoch_loss
    wait_before, seconds_before = progress.epoch_wait
    waited = 0.0
    amp_dtype = getattr(torch, config.amp) if config.amp else torch.float32
    run.optimizer.zero_grad(set_to_none=True)
    batches = iter(run.train_loader)
    while True:
        asked = time.perf_counter()
        try:
            inputs, targets, bad = next(batches)
        except StopIteration:
            break
        waited += time.perf_counter() - asked
        # A batch that unreadable images left with fewer than two (of a larger batch size) is skipped: BatchNorm
        # cannot train on one image.
        usable = inputs is not None and len(inputs) >= min(2, config.batch_size)
        _check_batch(run.unreadable, bad, not usable, progress.batch_in_epoch, run.rank, run.world, run.device)
        if usable:
            inputs, targets = run.task.move_to_device(inputs, targets, run.device)
            with torch.autocast(run.device.type, dtype=amp_dtype, enabled=run.use_amp):
                loss = run.loss_fn(run.step_model, inputs, targets)
            loss_value = loss.detach().float()
            if run.world > 1:  # the mean over ranks: every rank logs, and stops on, the same value
                dist.all_reduce(loss_value)
                loss_value /= run.world
            if not torch.isfinite(loss_value):
                raise TrainingError(
                    f"loss is {loss_value.item()} at epoch {progress.epoch}, batch {progress.batch_in_epoch} (update "
                    f"{progress.num_updates}); nothing was saved after the last good checkpoint in {run.output}. "
                    "Lower lr, add warmup or clip_grad, or check the data")
            loss_sum += loss_value.item()
            loss_count += 1
            run.scaler.scale(loss / config.grad_accum_steps).backward()
            run.images_seen += len(inputs) * run.world
        progress.batch_in_epoch += 1
        progress.epoch_loss = (loss_sum, loss_count)
        progress.epoch_wait = (wait_before + waited, seconds_before + time.time() - epoch_start)
        if progress.batch_in_epoch % config.grad_accum_steps == 0:
            _optimizer_step(run)
        if bar is not None and loss_count:
            elapsed = max(run.train_seconds + time.time() - epoch_start, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}", img_s=f"{run.images_seen / elapsed:.0f}",
                            data=f"{progress.epoch_wait[0] / max(progress.epoch_wait[1], 1e-9):.0%}")
            bar.update(1)
    if bar is not None:
        bar.close()
    run.train_seconds += time.time() - epoch_start
    progress.epoch += 1
    progress.batch_in_epoch = 0


def _optimizer_step(run: Run) -> None:
    config, progress = run.config, run.progress
    if config.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        # timm's train.py: adaptive clipping leaves the classifier (the last two parameters) out
        dispatch_clip_grad(model_parameters(run.model, exclude_head=config.clip_mode == "agc"), config.clip_grad,
                           mode=config.clip_mode)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    progress.num_updates += 1
    run.scheduler.step_update(progress.num_updates)
    if run.ema is not None:
        run.ema.update(run.model, step=progress.num_updates)
    if config.checkpoint_every and progress.num_updates % config.checkpoint_every == 0:
        save_checkpoint(run, "step")


def end_epoch(run: Run) -> None:
    """After an epoch's batches: merge the ranks' unreadable images, then on rank 0 evaluate through the task, add
    the metrics row, keep the best checkpoints, rewrite metrics files and curves, checkpoint ``last`` and log."""
    config, progress = run.config, run.progress
    loss_sum, loss_count = progress.epoch_loss
    waited, seconds = progress.epoch_wait
    progress.epoch_loss, progress.epoch_wait = (0.0, 0), (0.0, 0.0)
    if run.world > 1:  # each rank saw its slice: every rank merges all, so every rank stops alike
        gathered: List[Any] = [None] * run.world
        dist.all_gather_object(gathered, run.unreadable.state()["train"])
        run.unreadable.restore("train", [item for part in gathered for item in part], check=True)
    if not run.main:
        return
    metrics = run.task.evaluate(run.eval_model(), run.val_loader, run.device, config.channels_last, run.unreadable)
    counts = run.unreadable.counts()
    row = {"epoch": progress.epoch, "train_loss": loss_sum / max(loss_count, 1), **run.task.epoch_columns(metrics),
           "lr": run.optimizer.param_groups[0]["lr"], "unreadable_train": counts["train"],
           "unreadable_val": counts["val"], "data_wait": round(waited / seconds, 4) if seconds else 0.0,
           "seconds": round(time.time() - run.started, 2)}
    progress.history.append(row)
    progress.best = _update_best(run, row)
    _write_history(run.output, progress.history)
    write_curves(run.output / "curves.png", progress.history, run.task.curve_metrics, run.task.curve_label)
    save_checkpoint(run, "last")
    if run.wandb is not None:
        run.wandb.log_epoch(row)
    columns = run.task.epoch_columns(metrics)
    shown = " ".join(f"{key} {columns[key]:.3f}" for key in ("val_loss", *run.task.curve_metrics, "flops_ratio")
                     if key in columns)
    _logger.info("epoch %d/%d: train_loss %.4f %s", progress.epoch, config.total_epochs, row["train_loss"], shown)


def save_checkpoint(run: Run, tag: str) -> None:
    """``<tag>.safetensors`` and ``<tag>.state.pt`` (rank 0 only), each written atomically."""
    if not run.main:
        return
    progress = run.progress
    weights_name = f"{tag}.safetensors"
    save_weights(run.output / weights_name, run.model.state_dict(), {"model": run.config.model})
    save_state(run.output / f"{tag}{STATE_SUFFIX}", {
        "weights": weights_name, "epoch": progress.epoch, "batch_in_epoch": progress.batch_in_epoch,
        "num_updates": progress.num_updates, "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
        "scaler": run.scaler.state_dict(), "rng": rng_state(), "history": progress.history, "best": progress.best,
        "config": asdict(run.config), "epoch_loss": list(progress.epoch_loss),
        "epoch_wait": list(progress.epoch_wait), "world_size": run.world,
        "unreadable": run.unreadable.state(), "wandb_id": progress.wandb_id,
        "model": run.config.model, "num_classes": run.data.num_classes, "classes": run.data.classes,
        "stream": (run.data.train.position(progress.epoch, progress.batch_in_epoch, run.config.batch_size, run.world,
                                           run.config.aug_repeats)
                   if isinstance(run.data.train, StreamSamples) else None),
    })


def finish(run: Run, resume_path: Optional[Path]) -> Dict[str, Any]:
    """Check that the ranks agree, then write ``summary.json`` (rank 0) and return it."""
    ranks_identical = _ranks_agree(run.model) if run.world > 1 else True
    if not run.main:
        return {"rank": run.rank, "ranks_identical": ranks_identical}
    config, data, progress = run.config, run.data, run.progress
    metrics = run.task.summary(progress.history, progress.best)
    summary = {
        "world_size": run.world, "ranks_identical": ranks_identical, "task": config.task,
        "model": config.model, "data": data.description, "num_classes": data.num_classes, "classes": data.classes,
        "epochs": config.total_epochs, **metrics, "metric_names": list(metrics),
        "best_checkpoint": progress.best[0]["file"] if progress.best else None,
        "seconds": round(time.time() - run.started, 2),
        "images_per_second": round(run.images_seen / run.train_seconds, 2) if run.train_seconds else None,
        "resumed_from": str(resume_path) if resume_path else None,
        "unreadable_images": run.unreadable.counts(), "unreadable_files": run.unreadable.files(),
        "curves": "curves.png", "wandb_run_id": progress.wandb_id,
    }
    atomic_write(run.output / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return summary


def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
             unreadable: Optional[UnreadableLimit] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of a classifier over ``loader`` (see
    :meth:`vithub.train.tasks.ClassificationTask.evaluate`)."""
    return ClassificationTask().evaluate(model, loader, device, channels_last, unreadable)


def validate(model_name: Optional[str], checkpoint: Optional[str], data: Optional[str],
             batch_size: Optional[int] = None, img_size: Optional[int] = None, device: Optional[str] = None, data_dir: Optional[str] = None,
             val_split: str = "validation", max_unreadable: float = 0.01,
             task: str = "classification", task_options: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """The task's metrics (classification: top-1/top-5) of ``model_name`` (``None``: the task's default model;
    weights from ``checkpoint``, a safetensors or weights-only file) on the validation split of ``data``, and how
    many of its images were unreadable (skipped). ``batch_size`` ``None``: the task's default."""
    chosen = get_task(task)
    config = chosen.resolve(TrainConfig(task=task, model=model_name, data=data, img_size=img_size, device=device,
                                        data_dir=data_dir, val_split=val_split, batch_size=batch_size,
                                        task_options=dict(task_options or {})))
    bundle = chosen.build_data(config)
    model = chosen.build_model(config, bundle)
    if checkpoint:
        _load_initial(model, checkpoint)
    torch_device = _device(config)
    in_order = _in_order(bundle.val, config.batch_size)
    loader = (DataLoader(bundle.val, batch_sampler=in_order, collate_fn=chosen.collate_fn) if in_order is not None
              else DataLoader(bundle.val, batch_size=config.batch_size, shuffle=False, collate_fn=chosen.collate_fn))
    unreadable = UnreadableLimit({"val": len(bundle.val)}, max_unreadable)
    metrics = chosen.evaluate(model.to(torch_device), loader, torch_device, unreadable=unreadable)
    return dict(metrics, unreadable_images=unreadable.counts()["val"])


# --- helpers --------------------------------------------------------------------------------------------------------

def _in_order(dataset: Any, batch_size: int) -> Optional[Any]:
    """A streamed split's in-order batches (it has no indices to batch); ``None`` for any other dataset."""
    return dataset.in_order_batches(batch_size) if isinstance(dataset, StreamSamples) else None


def _amp_enabled(config: TrainConfig, device: torch.device) -> bool:
    """Mixed precision is CUDA-only: elsewhere ``amp`` is ignored and the run is fp32."""
    return config.amp is not None and device.type == "cuda"


def _device(config: TrainConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def _update_best(run: Run, row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Keep the ``keep_best`` best epochs by the task's primary metric as ``best-eNNN.safetensors``; drop the files
    that fall out."""
    metric, best, keep = run.task.primary_metric, run.progress.best, run.config.keep_best
    if len(best) >= keep and row[metric] <= best[-1][metric]:
        return best
    name = f"best-e{row['epoch']:03d}.safetensors"
    save_weights(run.output / name, run.eval_model().state_dict(), {"model": run.config.model,
                                                                    metric: str(row[metric])})
    best = sorted(best + [{metric: row[metric], "epoch": row["epoch"], "file": name}],
                  key=lambda item: (-item[metric], item["epoch"]))
    for dropped in best[keep:]:
        (run.output / dropped["file"]).unlink(missing_ok=True)
    return best[:keep]


def _progress_bar(total: int, done: int, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
