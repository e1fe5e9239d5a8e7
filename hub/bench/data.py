"""``vithub bench data``: the input pipeline of ``vithub train`` against timm's, on one folder of random JPEGs.

* **pipeline**: decode + training augmentation (RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25,
  random-resized crop to 224, flip) + collate, in images per second, per loader worker count: ``vithub train``'s
  loader (``ReadableSamples`` with per-sample seeded augmentation, persistent workers, ``(epoch, index)`` keys)
  against timm's ``create_loader`` with the same transform options, timed side by side (round-robin, median).
* **reader**: what skipping-and-counting unreadable images costs: ``ReadableSamples`` (opens each image itself, so
  a bad file is reported instead of replaced) against timm's ``ImageDataset``, eval transform, one process.
* **data wait**: the fraction of a training epoch of ``--epoch-model`` that ``vithub train`` spent waiting for
  batches (the ``data_wait`` column of ``metrics.csv``) with its default workers.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from PIL import Image
from timm.data import create_dataset, create_loader, create_transform

from vithub.train.config import TrainConfig
from vithub.train.data import ReadableSamples, collate_readable, pillow_safe, train_augmentation
from vithub.train.loader import CurrentEpoch, KeyedByEpoch, data_loader, default_workers

from .timing import device_name, measure, report

_logger = logging.getLogger(__name__)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUGMENTATION = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25}  # the recipe-like training transform


def _make_folder(root: Path, images: int, size: int, classes: int = 4) -> Path:
    generator = torch.Generator().manual_seed(0)
    for index in range(images):
        folder = root / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return root


def _read_all(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def _drain(loader) -> int:
    seen = 0
    for batch in loader:
        seen += len(batch[0])
    return seen


def _pipeline_loaders(root: Path, workers: int, batch_size: int) -> Dict[str, object]:
    """vithub train's training loader and timm's ``create_loader`` over ``root`` with the same transform options
    and worker count (both persistent), each reading every full batch of the folder once per pass."""
    config = TrainConfig(workers=workers, seed=0, **AUGMENTATION)
    options = dict(input_size=(3, 224, 224), interpolation="bicubic", mean=MEAN, std=STD, crop_pct=0.875)
    transform = pillow_safe(create_transform(**options, is_training=True, **train_augmentation(config)))
    ours = ReadableSamples(create_dataset("", root=str(root)), transform, seed=0)
    batches = CurrentEpoch()
    count = len(ours) // batch_size
    batches.set(0, [list(range(i * batch_size, (i + 1) * batch_size)) for i in range(count)])
    vithub_loader = data_loader(KeyedByEpoch(ours), config, torch.device("cpu"), collate_readable,
                                batch_sampler=batches)
    timm_loader = create_loader(create_dataset("", root=str(root), is_training=True), is_training=True,
                                batch_size=batch_size, use_prefetcher=False, num_workers=workers,
                                persistent_workers=workers > 0, auto_augment=config.aa, re_prob=config.reprob,
                                re_mode=config.remode, color_jitter=config.color_jitter, **options)
    pillow_safe(timm_loader.dataset.transform)  # timm's posterize stops at 0 bits under Pillow 13: same fix both
    first_ours, first_timm = next(iter(vithub_loader))[0], next(iter(timm_loader))[0]
    if first_ours.shape != first_timm.shape:  # the same work, or the comparison means nothing
        raise RuntimeError(f"the loaders disagree on the batch: {tuple(first_ours.shape)} vs {tuple(first_timm.shape)}")
    return {"vithub train": vithub_loader, "timm create_loader": timm_loader}


def _epoch_data_wait(root: Path, model: str, batch_size: int) -> Dict[str, object]:
    """One epoch of ``vithub train`` on ``root`` (a train/ and val/ split of it) and its ``data_wait`` column."""
    from vithub.train import train

    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "data"
        for part in ("train", "val"):
            for image in sorted(root.rglob("*.jpg")):
                target = split / part / image.parent.name / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(image)
        output = Path(tmp) / "run"
        summary = train(TrainConfig(model=model, data=str(split), epochs=1, batch_size=batch_size, output=str(output),
                                    progress=False, **AUGMENTATION))
        row = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    return {"model": model, "batch_size": batch_size, "workers": default_workers(str(split)),
            "data_wait": row["data_wait"], "images_per_second": summary["images_per_second"]}


def run_data_bench(output: Optional[str] = None, images: int = 256, size: int = 256, repeats: int = 5,
                   workers: Sequence[int] = (0, 1, 2), batch_size: int = 32,
                   epoch_model: Optional[str] = "vh_efficientvit_b1") -> dict:
    """Time the training pipelines per worker count and both readers over ``images`` random JPEGs of ``size``²,
    measure one training epoch's data-wait fraction (``epoch_model``; ``None`` skips it), log tables, write JSON
    to ``output``."""
    if images < batch_size:
        raise ValueError(f"images ({images}) must be at least batch_size ({batch_size}): the pipelines read full "
                         "batches")
    eval_transform = create_transform(input_size=(3, 224, 224), is_training=False, interpolation="bicubic",
                                      crop_pct=0.875, mean=MEAN, std=STD)
    pipeline: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = _make_folder(Path(tmp), images, size)
        for count in workers:
            loaders = _pipeline_loaders(root, count, batch_size)
            seen = _drain(loaders["vithub train"])
            ms = measure({name: (lambda loader=loader: _drain(loader)) for name, loader in loaders.items()},
                         repeats, warmup=1)
            rates = {name: seen * 1e3 / value for name, value in ms.items()}
            pipeline.append({"workers": count, "images": seen, "median_ms": ms,
                             "images_per_second": {name: round(rate, 1) for name, rate in rates.items()},
                             "speed_ratio_vithub_over_timm": round(rates["vithub train"] / rates["timm create_loader"],
                                                                   4)})
            del loaders
        timm_dataset = create_dataset("", root=str(root), transform=eval_transform)
        ours = ReadableSamples(create_dataset("", root=str(root)), eval_transform)
        for index in (0, len(ours) - 1):  # same tensors, or the comparison means nothing
            torch.testing.assert_close(ours[index][0], timm_dataset[index][0], rtol=0, atol=0)
        reader_ms = measure({"timm ImageDataset": lambda: _read_all(timm_dataset),
                             "ReadableSamples": lambda: _read_all(ours)}, repeats, warmup=1)
        epoch = _epoch_data_wait(root, epoch_model, batch_size) if epoch_model else None
    ratio = reader_ms["ReadableSamples"] / reader_ms["timm ImageDataset"]
    _logger.info(f"training pipeline: {images} JPEGs {size}x{size} -> 224, rand-m9-mstd0.5-inc1, reprob 0.25, "
                 f"batch {batch_size}, median of {repeats}")
    _logger.info(f"{'workers':>8}{'vithub img/s':>15}{'timm img/s':>13}{'vithub / timm':>15}")
    for row in pipeline:
        rates = row["images_per_second"]
        _logger.info(f"{row['workers']:>8}{rates['vithub train']:>15.1f}{rates['timm create_loader']:>13.1f}"
                     f"{row['speed_ratio_vithub_over_timm']:>15.3f}")
    _logger.info(f"reader (eval transform, 1 process): ReadableSamples / timm ImageDataset time: {ratio:.3f}")
    if epoch:
        _logger.info(f"{epoch['model']} training epoch, {epoch['workers']} workers: data wait "
                     f"{epoch['data_wait']:.1%} of the epoch, {epoch['images_per_second']} img/s")
    payload = {"benchmark": "data", "device": device_name("cpu"), "images": images, "size": size,
               "repeats": repeats, "batch_size": batch_size, "augmentation": dict(AUGMENTATION),
               "pipeline": pipeline,
               "reader": {"median_ms": reader_ms, "time_ratio_ours_over_timm": round(ratio, 4)},
               "training_epoch": epoch, "torch_threads": torch.get_num_threads()}
    report(output, payload)
    return payload
