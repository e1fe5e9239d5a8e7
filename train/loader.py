"""The loaders of a run, set up to keep a GPU fed without giving up the exact resume: worker processes that persist
across epochs, pinned memory and a prefetch depth on CUDA, and samples read by ``(epoch, index)`` keys, so that a
dataset whose augmentation draws from ``(seed, epoch, index)`` gets its epoch in whichever worker reads it."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["CurrentEpoch", "KeyedByEpoch", "MAX_DEFAULT_WORKERS", "data_loader", "default_workers", "rank_share"]

MAX_DEFAULT_WORKERS = 8  # per process: more rarely helps decoding + augmentation keep up, and costs memory


def default_workers(data: Optional[str]) -> int:
    """Loader workers per process when ``--workers`` is left out: 0 for the embedded digits (already tensors in
    memory), else the CPUs this process may use shared among the node's torchrun processes (``LOCAL_WORLD_SIZE``),
    at most :data:`MAX_DEFAULT_WORKERS`."""
    from .data import DIGITS

    if data in (None, DIGITS):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // local_processes))


def rank_share(window: Sequence[Any], rank: int, world: int, batch_size: int, repeats: int = 0) -> List[Any]:
    """Process ``rank``'s batch of one global batch ``window`` (``batch_size * world`` entries in the epoch's
    order): its ``rank``-th slice, or under repeated augmentation (``repeats`` > 1, each image's copies in a row)
    every ``world``-th entry from ``rank``, so the copies of one image go to different processes. Image folders,
    shards and streams split their batches by this one rule."""
    if repeats > 1:
        return list(window[rank::world])
    return list(window[rank * batch_size:(rank + 1) * batch_size])


class KeyedByEpoch(Dataset):
    """``dataset`` read with ``(epoch, index)`` or ``(epoch, index, copy)`` keys: the epoch reaches
    ``dataset.set_epoch`` and the copy ``dataset.set_copy`` (where it has them) in the process that reads the sample,
    a persistent worker included, which a call in the main process would not reach."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch: Optional[int] = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, ...]) -> Any:
        epoch, index, *copy = key  # (epoch, index), or (epoch, index, copy) under repeated augmentation
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        if hasattr(self.dataset, "set_copy"):
            self.dataset.set_copy(copy[0] if copy else 0)
        return self.dataset[index]


class CurrentEpoch(Sampler):
    """The batch sampler of a run's one training loader: the batches of the epoch last :meth:`set`, as
    ``(epoch, index)`` keys for :class:`KeyedByEpoch`. The loader (and its persistent workers) stays; each epoch
    hands it a new order."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batches: Sequence[List[int]] = []

    def set(self, epoch: int, batches: Sequence[List[int]]) -> None:
        self.epoch, self.batches = epoch, batches

    def __iter__(self) -> Iterator[List[Tuple[int, ...]]]:
        epoch = self.epoch
        for batch in self.batches:  # entries are indices, or (index, copy) pairs under repeated augmentation
            yield [(epoch, *entry) if isinstance(entry, tuple) else (epoch, entry) for entry in batch]

    def __len__(self) -> int:
        return len(self.batches)


def data_loader(dataset: Dataset, config: Any, device: torch.device, collate_fn: Callable,
                batch_sampler: Optional[Sampler] = None, batch_size: Optional[int] = None) -> DataLoader:
    """A loader with the run's ``workers`` (persistent across epochs when there are any, ``prefetch_factor``
    batches ahead each) and pinned memory on CUDA; ``batch_sampler`` for training, ``batch_size`` (in order) for
    validation. The workers' seeds come from the run's seed (not the global generator, which a resume restores
    only later)."""
    workers = config.workers if config.workers is not None else default_workers(config.data)
    options: dict = {"num_workers": workers, "collate_fn": collate_fn, "pin_memory": device.type == "cuda",
                     "generator": torch.Generator().manual_seed(config.seed)}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=config.prefetch_factor)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **options)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **options)
