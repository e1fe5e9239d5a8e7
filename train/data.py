"""Data for ``vithub train``: the embedded default (scikit-learn's bundled handwritten digits), an ImageNet-style
folder, or a dataset spec that timm's ``create_dataset`` understands (``torch/cifar10``, ``hfds/...``), all read
through ``timm.data``; unreadable images are skipped and counted, not silently replaced."""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate, get_worker_info

_logger = logging.getLogger(__name__)

DIGITS = "digits"
DIGITS_SIZE = 32  # the default image size of the embedded digits
DIGITS_VAL_EVERY = 5  # every 5th image (by index) is validation: 360 of 1797, all ten classes


class DataError(ValueError):
    """The data argument names something that cannot be trained on; the message says what and where."""


class DigitsDataset(Dataset):
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels, ten classes), shipped inside the package: no
    download. Images are scaled to ``image_size`` (bilinear), repeated to three channels and normalised to [-1, 1].
    ``split``: ``"train"`` (1437 images) or ``"val"`` (360, every fifth by index)."""

    num_classes = 10

    def __init__(self, split: str, image_size: int = DIGITS_SIZE) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        is_val = torch.arange(len(labels)) % DIGITS_VAL_EVERY == 0
        keep = is_val if split == "val" else ~is_val
        images = F.interpolate(images[keep][:, None], size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
        self.images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
        self.labels = labels[keep]
        self.classes = [str(index) for index in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    classes: List[str]
    description: str
    input_size: Tuple[int, int, int]


# Prefixes of timm's create_dataset specs. The streaming ones have no length and no random access, which the exact
# resume (a permutation of indices per epoch) needs.
MAP_STYLE_PREFIXES = ("torch", "hfds")
STREAMING_PREFIXES = ("hfids", "tfds")  # hfids/ is read by vithub.train.streams; tfds/ is refused
SHARD_PREFIX = "wds"  # tar shards, read by vithub's own random-access reader (vithub.train.shards)


# What PIL raises for an image that does not decode (not an image, truncated, corrupt, too large).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class Unreadable(NamedTuple):
    """A sample whose image could not be decoded: its index in the split, the file (when known) and why."""

    index: int
    source: str
    reason: str


@contextmanager
def sample_rng(seed: int, epoch: int, index: int, copy: int = 0) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded from ``(seed, epoch, index)`` alone inside the
    block (and ``copy``, the copy number under repeated augmentation, when not 0). timm's transforms draw from
    those three, so an augmented sample is the same in any process, worker and order: the exact resume then holds
    with loader workers (the workers' own generator states are not part of a checkpoint). In the training process
    the generators are restored after the block (mixup and dropout draw from them); a loader worker's are its own
    and are left seeded."""
    entropy = [seed, epoch, index] + ([copy] if copy else [])
    value = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])

    def reseed() -> None:
        torch.default_generator.manual_seed(value)  # CPU only: torch.manual_seed would queue CUDA seeding too
        random.seed(value)
        np.random.seed(value % (1 << 32))

    if get_worker_info() is not None:
        reseed()
        yield
        return
    states = torch.default_generator.get_state(), random.getstate(), np.random.get_state()
    reseed()
    try:
        yield
    finally:
        torch.default_generator.set_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class ReadableSamples(Dataset):
    """A split whose unreadable images come back as :class:`Unreadable` instead of an image, for
    :func:`collate_readable` to drop and the training loop to count. timm's ``ImageDataset`` would replace a bad file
    by its neighbour without telling the caller, so for it the image is opened here from its reader. Images reach
    ``transform`` as RGB, as timm's transforms expect. ``seed``: augment each sample with random draws from
    ``(seed, epoch, index)`` alone (:func:`sample_rng`; the trainer calls :meth:`set_epoch`, and :meth:`set_copy`
    under repeated augmentation); ``None``: from the process's generators."""

    def __init__(self, dataset: Dataset, transform: Optional[Any] = None, seed: Optional[int] = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.copy = 0
        self.reads_files = hasattr(dataset, "reader") and hasattr(dataset, "filename")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_copy(self, copy: int) -> None:
        """The copy number of the next samples under repeated augmentation (0 otherwise): copies draw apart."""
        self.copy = copy

    def __len__(self) -> int:
        return len(self.dataset)

    def source(self, index: int) -> str:
        """The file behind sample ``index`` when the reader can say (folders, tars), else ``"sample <index>"``."""
        name = None
        if self.reads_files:
            try:
                name = self.dataset.filename(index, absolute=True)  # timm's base reader gives None
            except KeyError:  # a Hugging Face dataset row whose image has no path
                name = None
        return str(name) if name else f"sample {index}"

    def _load(self, index: int) -> Tuple[Any, Any]:
        if not self.reads_files:  # torchvision datasets decode themselves; MNIST-style ones give grey images
            image, target = self.dataset[index]
            if isinstance(image, Image.Image) and image.mode != "RGB":
                image = image.convert("RGB")
            return image, target
        handle, target, *_ = self.dataset.reader[index]
        try:
            with Image.open(handle) as opened:
                return opened.convert(self.dataset.input_img_mode or "RGB"), target  # decodes every pixel
        finally:
            if hasattr(handle, "close"):
                handle.close()

    def __getitem__(self, index: int) -> Any:
        try:
            image, target = self._load(index)
        except DataError:  # malformed data (a shard's label), not an unreadable image: stop with its message
            raise
        except DECODE_ERRORS as error:
            return Unreadable(index, self.source(index), f"{type(error).__name__}: {error}")
        return self.augment(image, index, self.copy), -1 if target is None else target

    def augment(self, image: Any, index: int, copy: int = 0) -> Any:
        """``image`` through the transform, with draws from ``(seed, epoch, index, copy)`` when seeded."""
        if self.transform is None:
            return image
        if self.seed is None:
            return self.transform(image)
        with sample_rng(self.seed, self.epoch, index, copy):
            return self.transform(image)


def collate_readable(samples: Sequence[Any]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], List[Unreadable]]:
    """``(images, labels, unreadable)``: the readable samples stacked (``None`` when there are none) and the
    unreadable ones listed."""
    bad = [sample for sample in samples if isinstance(sample, Unreadable)]
    good = [sample for sample in samples if not isinstance(sample, Unreadable)]
    if not good:
        return None, None, bad
    images, labels = default_collate(good)
    return images, labels, bad


class UnreadableLimit:
    """Counts the distinct unreadable images of each split and raises :class:`DataError` once a split has more than
    ``max_fraction`` of its images unreadable."""

    def __init__(self, sizes: Dict[str, int], max_fraction: float, verbose: bool = True) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_unreadable must be a fraction in [0, 1], got {max_fraction}")
        self.sizes = sizes
        self.max_fraction = max_fraction
        self.verbose = verbose
        self.found: Dict[str, Dict[int, Unreadable]] = {split: {} for split in sizes}

    def record(self, split: str, samples: Sequence[Unreadable]) -> None:
        found = self.found[split]
        for sample in samples:
            if sample.index not in found:
                found[sample.index] = sample
                if self.verbose:
                    _logger.warning("skipped unreadable %s image %s (%s)", split, sample.source, sample.reason)
        limit = int(self.max_fraction * self.sizes[split])
        if len(found) > limit:
            first = "; ".join(f"{item.source}: {item.reason}" for item in list(found.values())[:3])
            raise DataError(f"data: {len(found)} of the {self.sizes[split]} {split} images are unreadable, more than "
                            f"max_unreadable={self.max_fraction:g} allows ({limit}); first: {first}")

    def state(self) -> Dict[str, List[Tuple[int, str, str]]]:
        """The unreadable samples found so far, as plain tuples (a weights-only checkpoint can hold them)."""
        return {split: [tuple(item) for item in found.values()] for split, found in self.found.items()}

    def restore(self, split: str, items: Sequence[Sequence[Any]], check: bool = False) -> None:
        """Add samples found earlier (a resumed run, or other processes); ``check``: apply the limit as well."""
        samples = [Unreadable(int(index), str(source), str(reason)) for index, source, reason in items]
        if check:
            self.record(split, samples)
        else:
            for sample in samples:
                self.found[split].setdefault(sample.index, sample)

    def counts(self) -> Dict[str, int]:
        return {split: len(found) for split, found in self.found.items()}

    def files(self, limit: int = 20) -> Dict[str, List[str]]:
        return {split: [item.source for item in list(found.values())[:limit]] for split, found in self.found.items()}


def _image_folder_classes(split_dir: Path) -> List[str]:
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image files>)")
    return classes


def dataset_spec_prefix(data: str) -> Optional[str]:
    """The timm ``create_dataset`` prefix of ``data`` (``"torch"`` for ``"torch/cifar10"``), or ``None`` for a
    folder path."""
    prefix, sep, rest = data.partition("/")
    if sep and rest and prefix.lower() in MAP_STYLE_PREFIXES + STREAMING_PREFIXES + (SHARD_PREFIX,) and \
            not Path(data).is_dir():
        return prefix.lower()
    return None


def train_augmentation(config: Any) -> Dict[str, Any]:
    """The training-transform keywords of timm's ``create_transform`` that a :class:`~vithub.train.TrainConfig`
    sets, under timm's meanings (``--aa``, ``--reprob``/``--remode``/``--recount``, ``--color-jitter``,
    ``--scale``/``--ratio``, ``--hflip``/``--vflip``, ``--train-interpolation``)."""
    options: Dict[str, Any] = {"auto_augment": config.aa, "re_prob": config.reprob, "re_mode": config.remode,
                               "re_count": config.recount, "color_jitter": config.color_jitter,
                               "hflip": config.hflip, "vflip": config.vflip}
    for name in ("scale", "ratio"):
        if getattr(config, name):
            options[name] = tuple(getattr(config, name))
    if config.train_interpolation:
        options["interpolation"] = config.train_interpolation
    return options


def stream_options(config: Any) -> Dict[str, Any]:
    """What a :class:`~vithub.train.TrainConfig` says about a streamed (``hfids/``) dataset: record counts, columns
    and the shuffle buffer (:class:`vithub.train.streams.StreamSplit`)."""
    return {"lengths": {"train": config.train_num_samples, "val": config.val_num_samples},
            "input_key": config.input_key, "target_key": config.target_key,
            "shuffle_size": config.stream_shuffle_size}


def posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's RandAugment/AutoAugment posterize for current Pillow: Pillow 13 refuses 0 bits (timm passes 0 at full
    magnitude, e.g. ``rand-m9-mstd0.5-inc1`` whenever the drawn magnitude reaches 10, and at low levels of the v0
    policies), which would stop a run on about one image in 300. 0 bits gives the black image older Pillow gave."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return image.point([0] * (256 * len(image.getbands())))
    from PIL import ImageOps

    return ImageOps.posterize(image, bits_to_keep)


def pillow_safe(transform: Any) -> Any:
    """``transform`` (a timm transform, or a ``Compose`` of them) with the posterize of its AutoAugment, RandAugment
    and AugMix ops replaced by :func:`posterize`; everything else unchanged. Returns the same object."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", [transform]):
        ops = list(getattr(step, "ops", None) or [])
        ops += [op for sub_policy in getattr(step, "policy", None) or [] for op in sub_policy]
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize
    return transform


def build_data(data: Optional[str], image_size: int, data_config: Dict[str, Any], data_dir: Optional[str] = None,
               train_split: str = "train", val_split: str = "validation", download: bool = False,
               train_augmentation: Optional[Dict[str, Any]] = None, seed: Optional[int] = None,
               stream: Optional[Dict[str, Any]] = None) -> DataBundle:
    """``data``: ``None`` or ``"digits"`` for the embedded default; a folder holding ``train/`` and ``val/`` with
    one sub-folder of images per class (the classes of both must match); or a timm dataset spec such as
    ``"torch/cifar10"`` or ``"hfds/<name>"``, read from ``data_dir`` (``download``: let torchvision fetch it there)
    with ``train_split`` and ``val_split``. ``train_augmentation``: timm ``create_transform`` keywords for the training
    transform only (RandAugment, random erasing, flips, crop ranges: :func:`train_augmentation`). ``seed``: the
    training split's augmentation draws from ``(seed, epoch, index)`` (:class:`ReadableSamples`). ``stream``: the
    options of an ``"hfids/<name>"`` spec, read in streaming mode (:func:`stream_options`, :mod:`.streams`)."""
    if data in (None, DIGITS):
        size = image_size or DIGITS_SIZE
        return DataBundle(DigitsDataset("train", size), DigitsDataset("val", size), 10,
                          [str(i) for i in range(10)], DIGITS, (3, size, size))
    from timm.data import create_transform

    transforms = {"train": pillow_safe(create_transform(**dict(data_config, is_training=True,
                                                              **(train_augmentation or {})))),
                  "val": create_transform(**dict(data_config, is_training=False))}
    input_size = tuple(data_config["input_size"])
    prefix = dataset_spec_prefix(data)
    if prefix == SHARD_PREFIX or (prefix is None and _is_shard_folder(data)):
        if prefix and not data_dir:
            raise DataError(f"data: {data} needs --data-dir, the folder that holds its tar shards and _info.json")
        root = Path(data_dir) if prefix else Path(data)
        return _build_shards(root, data, {"train": train_split, "val": val_split}, transforms, input_size, seed)
    if prefix == "hfids":
        return _build_stream(data, data_dir, {"train": train_split, "val": val_split}, transforms, input_size, seed,
                             stream or {})
    if prefix is not None:
        return _build_spec(data, prefix, data_dir, {"train": train_split, "val": val_split}, download, transforms,
                           input_size, seed)
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data: {root} is not a directory (expected a folder with train/ and val/, 'digits', or a "
                        f"timm dataset spec such as torch/cifar10 with --data-dir)")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"data: {root} has no {split}/ folder (expected {root}/{split}/<class>/<images>)")
    classes = _image_folder_classes(root / "train")
    val_classes = _image_folder_classes(root / "val")
    if val_classes != classes:
        raise DataError(f"data: class folders differ between {root}/train ({len(classes)}) and {root}/val "
                        f"({len(val_classes)}): {sorted(set(classes) ^ set(val_classes))[:5]}")
    from timm.data import create_dataset

    datasets = {}
    for split in ("train", "val"):
        try:
            dataset = create_dataset("", root=str(root / split), is_training=split == "train")
        except RuntimeError as error:  # timm's folder reader refuses a tree without images
            if "Found 0 images" not in str(error):
                raise
            raise DataError(f"data: {root}/{split} holds no images in its class folders ({error})") from error
        if len(dataset) == 0:
            raise DataError(f"data: {root}/{split} holds no images in its class folders")
        datasets[split] = ReadableSamples(dataset, transforms[split], seed if split == "train" else None)
    return DataBundle(datasets["train"], datasets["val"], len(classes), classes, str(root), input_size)


def _is_shard_folder(data: str) -> bool:
    from .shards import is_shard_folder

    return is_shard_folder(Path(data))


def _build_shards(root: Path, description: str, splits: Dict[str, str], transforms: Dict[str, Any],
                  input_size: Tuple[int, int, int], seed: Optional[int]) -> DataBundle:
    """The splits of a tar-shard folder (:mod:`vithub.train.shards`); ``"validation"`` falls back to ``"val"``."""
    from .shards import ShardSplit, read_info

    if not root.is_dir():
        raise DataError(f"data: {root} is not a directory of tar shards")
    info = read_info(root)
    datasets: Dict[str, ReadableSamples] = {}
    for split, name in splits.items():
        if split == "val" and name not in info.get("splits", {}) and name == "validation":
            name = "val"
        shards = ShardSplit(root, name, info)
        datasets[split] = ReadableSamples(shards, transforms[split], seed if split == "train" else None)
    classes = datasets["train"].dataset.classes
    if datasets["val"].dataset.classes != classes:
        raise DataError(f"data: the shards' {splits['val']!r} split has other classes than {splits['train']!r}")
    return DataBundle(datasets["train"], datasets["val"], len(classes), classes, description, input_size)


def _build_stream(spec: str, data_dir: Optional[str], splits: Dict[str, str], transforms: Dict[str, Any],
                  input_size: Tuple[int, int, int], seed: Optional[int], options: Dict[str, Any]) -> DataBundle:
    """The splits of a Hugging Face dataset read in streaming mode (``hfids/<name>``, :mod:`.streams`)."""
    from .streams import DEFAULT_SHUFFLE_SIZE, StreamSamples, StreamSplit

    name = spec.partition("/")[2]
    lengths = options.get("lengths") or {}
    datasets: Dict[str, Any] = {}
    for split, split_name in splits.items():
        stream = StreamSplit(name, split_name, data_dir, lengths.get(split), options.get("input_key", "image"),
                             options.get("target_key", "label"), options.get("shuffle_size", DEFAULT_SHUFFLE_SIZE),
                             length_option=f"--{split}-num-samples")
        datasets[split] = StreamSamples(stream, transforms[split], seed if split == "train" else None)
    classes = datasets["train"].classes
    if datasets["val"].classes != classes:
        raise DataError(f"data: {spec} has other classes in split {splits['val']!r} than in {splits['train']!r}")
    return DataBundle(datasets["train"], datasets["val"], len(classes), classes, spec, input_size)


def _spec_classes(dataset: Any, spec: str) -> List[str]:
    classes = getattr(dataset, "classes", None)
    if classes is None:
        class_to_idx = getattr(getattr(dataset, "reader", None), "class_to_idx", None)
        if class_to_idx:
            classes = sorted(class_to_idx, key=class_to_idx.get)
    if not classes:
        raise DataError(f"data: {spec} does not say its classes (no .classes or class_to_idx); use an image folder")
    return [str(name) for name in classes]


def _build_spec(spec: str, prefix: str, data_dir: Optional[str], splits: Dict[str, str], download: bool,
                transforms: Dict[str, Any], input_size: Tuple[int, int, int], seed: Optional[int] = None
                ) -> DataBundle:
    if prefix in STREAMING_PREFIXES:
        raise DataError(f"data: {spec} is a TensorFlow dataset stream ({prefix}/), which vithub train does not read; "
                        "use an image folder, tar shards, torch/<name>, hfds/<name> or hfids/<name>")
    if not data_dir:
        raise DataError(f"data: {spec} needs --data-dir, the folder that holds its files (or where "
                        "--dataset-download should put them)")
    from timm.data import create_dataset

    datasets, classes = {}, None
    for split, split_name in splits.items():
        try:
            dataset = create_dataset(spec, root=data_dir, split=split_name, is_training=split == "train",
                                     download=download)
        except (RuntimeError, FileNotFoundError, AssertionError, ValueError, ImportError) as error:
            raise DataError(f"data: cannot open {spec} split {split_name!r} in {data_dir}: {error}") from error
        if len(dataset) == 0:
            raise DataError(f"data: {spec} split {split_name!r} in {data_dir} is empty")
        split_classes = _spec_classes(dataset, spec)
        if classes is not None and split_classes != classes:
            raise DataError(f"data: {spec} has other classes in split {split_name!r} than in {splits['train']!r}")
        classes = split_classes
        datasets[split] = ReadableSamples(dataset, transforms[split], seed if split == "train" else None)
    return DataBundle(datasets["train"], datasets["val"], len(classes), classes, spec, input_size)

