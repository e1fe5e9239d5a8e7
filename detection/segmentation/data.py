"""Semantic segmentation data: the ADE20K layout and generic image/mask folder pairs, checked and read; mmseg's
training pipeline (random resize, crop with a category-ratio cap, flip, photometric distortion); the embedded
synthetic scenes."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from vithub.train.data import DataError, Unreadable

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ADE_SPLITS = {"train": "training", "val": "validation"}
ADE_CLASS_FILES = ("objectInfo150.txt", "objectInfo150.csv")
CLASSES_FILE = "classes.txt"  # one name per line: an ADE20K-layout folder of other classes
ADE_NUM_CLASSES = 150

# (image, label map): the label map holds class indices after reduce_zero_label, 255 = ignored.
PairReader = Callable[[int], Tuple[Image.Image, np.ndarray]]


@dataclass
class SegmentationSplit:
    """One split: image/mask file pairs (or, for the embedded set, just a count), the class names and whether label
    0 means "other" (ignored, classes shifted down by one, mmseg's ``reduce_zero_label``)."""

    source: str
    class_names: List[str]
    reduce_zero_label: bool
    pairs: List[Tuple[Path, Path]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)


def read_class_names(path: Path) -> List[str]:
    """Class names from ``path``: one per line, or ADE20K's ``objectInfo150.txt`` (tab-separated, with a ``Name``
    column; the first synonym is kept) / ``objectInfo150.csv``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"classes file {path} does not exist")
    text = path.read_text(encoding="utf-8").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"classes file {path} lists no class")
    delimiter = "\t" if "\t" in lines[0] else "," if path.suffix == ".csv" else None
    if delimiter is not None:
        header = [cell.strip().lower() for cell in lines[0].split(delimiter)]
        if "name" in header:
            rows = list(csv.reader(lines[1:], delimiter=delimiter))
            column = header.index("name")
            names = [row[column].split(";")[0].strip() for row in rows if len(row) > column]
            if not names:
                raise DataError(f"classes file {path} has a Name column but no rows")
            return names
    return [line.strip() for line in lines]


def _images_in(folder: Path) -> List[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def folder_split(images: Path, masks: Path, class_names: Sequence[str], reduce_zero_label: bool = False,
                 mask_suffix: str = ".png") -> SegmentationSplit:
    """The pairs of ``images/NAME.<jpg|png|...>`` and ``masks/NAME<mask_suffix>`` (single-channel PNGs of class
    indices). Every image needs its mask and every mask its image: the unmatched ones are named in the error."""
    images, masks = Path(images), Path(masks)
    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist")
    if not class_names:
        raise DataError(f"no class names for {images}: give a classes file")
    image_files = _images_in(images)
    mask_files = {path.name[: -len(mask_suffix)]: path for path in masks.iterdir()
                  if path.name.endswith(mask_suffix) and path.is_file()}
    image_stems = {path.stem for path in image_files}
    without_mask = [path.name for path in image_files if path.stem not in mask_files]
    without_image = sorted(stem for stem in mask_files if stem not in image_stems)
    if without_mask or without_image:
        raise DataError(f"{images} / {masks}: {len(without_mask)} image(s) without a mask {without_mask[:5]} and "
                        f"{len(without_image)} mask(s) without an image {without_image[:5]}")
    if not image_files:
        raise DataError(f"{images} holds no image/mask pair (images: {', '.join(IMAGE_SUFFIXES)}; masks: "
                        f"NAME{mask_suffix} in {masks})")
    pairs = [(path, mask_files[path.stem]) for path in image_files]
    return SegmentationSplit(f"{images}", list(class_names), reduce_zero_label, pairs)


def ade20k_class_names(root: Path) -> List[str]:
    """The class names of an ADE20K-layout folder: ADE20K's ``objectInfo150.txt``/``.csv`` when it ships one, else
    a ``classes.txt`` (one name per line; a data set of other classes in this layout), else ``class_1`` ..
    ``class_150``."""
    for name in ADE_CLASS_FILES:
        if (Path(root) / name).is_file():
            names = read_class_names(Path(root) / name)
            if len(names) != ADE_NUM_CLASSES:
                raise DataError(f"{Path(root) / name} lists {len(names)} classes, ADE20K has {ADE_NUM_CLASSES}")
            return names
    if (Path(root) / CLASSES_FILE).is_file():
        return read_class_names(Path(root) / CLASSES_FILE)
    return [f"class_{index}" for index in range(1, ADE_NUM_CLASSES + 1)]


def is_ade20k_folder(root: Path) -> bool:
    return (Path(root) / "images" / ADE_SPLITS["train"]).is_dir()


def ade20k_split(root: Path, split: str, class_names: Optional[Sequence[str]] = None) -> SegmentationSplit:
    """``split`` (``"train"``/``"val"``) of an ADE20K folder (``images/{training,validation}/*.jpg``,
    ``annotations/{training,validation}/*.png``; label 0 = "other", ignored, classes shifted down by one)."""
    if split not in ADE_SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    names = list(class_names) if class_names else ade20k_class_names(root)
    return folder_split(root / "images" / ADE_SPLITS[split], root / "annotations" / ADE_SPLITS[split], names,
                        reduce_zero_label=True)


def decode_label(mask: Image.Image, reduce_zero_label: bool) -> np.ndarray:
    """A mask image as class indices (uint8): palette ("P") and grey ("L"/"I") images are read as indices; with
    ``reduce_zero_label`` 0 becomes 255 (ignored) and every other value drops by one."""
    if mask.mode not in ("P", "L", "I", "I;16"):
        raise ValueError(f"a mask must be a single-channel image of class indices (PNG mode P or L), got mode "
                         f"{mask.mode}")
    label = np.asarray(mask, dtype=np.int64)
    if label.max(initial=0) > 255 or label.min(initial=0) < 0:
        raise ValueError(f"mask values must be in 0..255, got {label.min()}..{label.max()}")
    label = label.astype(np.uint8)
    if reduce_zero_label:
        label = label.astype(np.int16) - 1
        label[label < 0] = IGNORE_INDEX
        label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
        label = label.astype(np.uint8)
    return label


def check_label(label: np.ndarray, num_classes: int, source: str) -> None:
    """Every value must be a class index or the ignore index."""
    values = np.unique(label)
    bad = [int(value) for value in values if value >= num_classes and value != IGNORE_INDEX]
    if bad:
        raise DataError(f"{source}: label value(s) {bad[:10]} are outside the {num_classes} classes (0.."
                        f"{num_classes - 1}, {IGNORE_INDEX} = ignored)")


def pair_reader(split: SegmentationSplit) -> PairReader:
    def read(index: int) -> Tuple[Image.Image, np.ndarray]:
        image_path, mask_path = split.pairs[index]
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
        with Image.open(mask_path) as opened:
            opened.load()
            label = decode_label(opened, split.reduce_zero_label)
        if label.shape != (image.height, image.width):
            raise DataError(f"{mask_path}: the mask is {label.shape[1]}x{label.shape[0]}, its image {image_path} "
                            f"is {image.width}x{image.height}")
        check_label(label, len(split.class_names), str(mask_path))
        return image, label

    return read


# --- the pipeline -------------------------------------------------------------------------------------------------

def rescale_size(height: int, width: int, long_max: float, short_max: float) -> Tuple[int, int]:
    """The size of ``(height, width)`` resized with its aspect ratio kept so that it fits ``long_max``×``short_max``
    (mmseg's keep-ratio ``Resize``)."""
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    # bilinear without antialiasing, as mmseg's (OpenCV) resize
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def _resize_label(label: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].to(label.dtype)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float()


def photometric_distortion(image: torch.Tensor, uniform: Callable[[], float]) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a ``(3, H, W)`` image in 0..255, each step with probability 1/2: brightness
    ±32, contrast ×0.5–1.5 (before or after the colour steps, at random), saturation ×0.5–1.5 and hue ±18° of the
    HSV colour wheel's 180 (OpenCV's hue units)."""
    from torchvision.transforms.v2 import functional as TF

    def clip(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_(0, 255)

    if uniform() < 0.5:
        image = clip(image + (uniform() * 64 - 32))
    contrast_first = uniform() < 0.5
    contrast = uniform() < 0.5, 0.5 + uniform()
    if contrast_first and contrast[0]:
        image = clip(image * contrast[1])
    if uniform() < 0.5:
        image = clip(TF.adjust_saturation(image / 255, 0.5 + uniform()) * 255)
    if uniform() < 0.5:
        image = clip(TF.adjust_hue(image / 255, (uniform() * 36 - 18) / 180) * 255)
    if not contrast_first and contrast[0]:
        image = clip(image * contrast[1])
    return image


class SegmentationDataset(Dataset):
    """One split as ``(image, label)``: ``image`` a ``(3, H, W)`` float tensor in [0, 1], ``label`` ``(H, W)`` int64
    class indices (255 = ignored). An image or mask that cannot be decoded comes back as
    :class:`~vithub.train.data.Unreadable`; a mask whose size differs from its image or with values outside the
    classes raises :class:`~vithub.train.data.DataError` naming the file.

    Training (``train=True``): mmseg's pipeline at crop size ``S``: keep-ratio resize to ``(4S, S)`` times a factor
    drawn from ``ratio_range``, a random ``S``×``S`` crop (up to ten tries for one where no class covers more than
    ``cat_max_ratio`` of the labelled pixels), horizontal flip, photometric distortion, padding to ``S``×``S``
    (label 255). Evaluation: the image resized (keep ratio) to fit ``(4S, S)``, the label left at its own size
    (metrics are taken at the original resolution). Draws come from ``(seed, epoch, index)`` (the trainer calls
    :meth:`set_epoch`), and the copy number under repeated augmentation (:meth:`set_copy`)."""

    def __init__(self, split: SegmentationSplit, reader: PairReader, crop_size: int, train: bool = False,
                 ratio_range: Tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 photometric: bool = True, seed: int = 0, sources: Optional[Callable[[int], str]] = None) -> None:
        if crop_size < 16:
            raise ValueError(f"img_size (the crop size) must be >= 16, got {crop_size}")
        self.split = split
        self.reader = reader
        self.crop_size = crop_size
        self.train = train
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.photometric = photometric
        self.seed = seed
        self.epoch = 0
        self.copy = 0
        self._sources = sources

    @property
    def num_classes(self) -> int:
        return len(self.split.class_names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_copy(self, copy: int) -> None:
        """The copy number of the next samples under repeated augmentation (0 otherwise): copies draw apart."""
        self.copy = copy

    def __len__(self) -> int:
        return len(self.split)

    def source(self, index: int) -> str:
        if self._sources is not None:
            return self._sources(index)
        return str(self.split.pairs[index][0])

    def __getitem__(self, index: int) -> Any:
        try:
            image, label_array = self.reader(index)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            return Unreadable(index, self.source(index), f"{type(error).__name__}: {error}")
        image_tensor = _to_tensor(image)
        label = torch.from_numpy(label_array.astype(np.int64))
        size = self.crop_size
        if not self.train:
            height, width = image_tensor.shape[-2:]
            resized = _resize_image(image_tensor, rescale_size(height, width, 4 * size, size))
            return resized.div_(255.0), label
        key = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        if self.copy:  # a repeated-augmentation copy draws its own crop, flip and distortion
            key = int(np.random.SeedSequence([key, self.copy]).generate_state(1, dtype=np.uint64)[0] >> 1)
        generator = torch.Generator().manual_seed(key)

        def uniform() -> float:
            return torch.rand((), generator=generator).item()

        ratio = self.ratio_range[0] + (self.ratio_range[1] - self.ratio_range[0]) * uniform()
        height, width = image_tensor.shape[-2:]
        target = rescale_size(height, width, 4 * size * ratio, size * ratio)
        image_tensor, label = _resize_image(image_tensor, target), _resize_label(label, target)
        image_tensor, label = self._crop(image_tensor, label, uniform)
        if uniform() < 0.5:
            image_tensor, label = image_tensor.flip(-1), label.flip(-1)
        if self.photometric:
            image_tensor = photometric_distortion(image_tensor, uniform)
        pad_h, pad_w = size - image_tensor.shape[-2], size - image_tensor.shape[-1]
        if pad_h or pad_w:
            image_tensor = F.pad(image_tensor, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return image_tensor.div_(255.0).contiguous(), label.contiguous()

    def _crop(self, image: torch.Tensor, label: torch.Tensor, uniform: Callable[[], float]
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        size = self.crop_size
        height, width = label.shape
        crop_h, crop_w = min(size, height), min(size, width)
        top = left = 0
        for _attempt in range(10):
            top = int(uniform() * (height - crop_h + 1))
            left = int(uniform() * (width - crop_w + 1))
            if self.cat_max_ratio >= 1.0:
                break
            window = label[top:top + crop_h, left:left + crop_w]
            counts = torch.bincount(window[window != IGNORE_INDEX].flatten(), minlength=1)
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                break
        return image[:, top:top + crop_h, left:left + crop_w], label[top:top + crop_h, left:left + crop_w]


def collate_segmentation(samples: Sequence[Any]) -> Tuple[Any, Any, List[Unreadable]]:
    """``(images, labels, unreadable)``: stacked tensors when every readable sample has the same size (training
    crops), else lists (evaluation at each image's own size); ``None`` when no sample was readable."""
    bad = [sample for sample in samples if isinstance(sample, Unreadable)]
    good = [sample for sample in samples if not isinstance(sample, Unreadable)]
    if not good:
        return None, None, bad
    images, labels = [image for image, _ in good], [label for _, label in good]
    if len({tuple(image.shape) for image in images}) == 1 and len({tuple(label.shape) for label in labels}) == 1:
        return torch.stack(images), torch.stack(labels), bad
    return images, labels, bad


# --- the embedded synthetic scenes --------------------------------------------------------------------------------

SYNTHETIC_CLASSES = ("sky", "ground", "square", "disk", "triangle")
SYNTHETIC_SIZE = 96
SYNTHETIC_IMAGES = {"train": 192, "val": 48}
_SYNTHETIC_SEED = {"train": 11, "val": 12}
# Each shape class has its own colour family (as real classes have their typical colours), varied per shape.
_SHAPE_COLOURS = ((230, 60, 50), (60, 220, 80), (240, 200, 40))


def synthetic_scene(index: int, split: str, size: int = SYNTHETIC_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: ``(image (size, size, 3) uint8, mask (size, size) uint8)`` in ADE20K's encoding (0 =
    "other": a two-pixel band on every shape's outline; ``1 + class`` elsewhere): sky above a random horizon,
    ground below, one to three squares (reddish), disks (greenish) or triangles (yellowish) of random size, place and
    shade; all from the index alone."""
    if split not in SYNTHETIC_IMAGES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    rng = random.Random(_SYNTHETIC_SEED[split] * 1_000_003 + index)
    noise = np.random.default_rng(_SYNTHETIC_SEED[split] * 1_000_003 + index)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    horizon = rng.uniform(0.25, 0.6) * size + rng.uniform(-0.15, 0.15) * (cols - size / 2)
    mask = np.where(rows < horizon, 1, 2).astype(np.uint8)
    sky = np.array([rng.randint(90, 150), rng.randint(140, 200), rng.randint(200, 255)], dtype=np.float32)
    ground = np.array([rng.randint(80, 140), rng.randint(60, 110), rng.randint(20, 60)], dtype=np.float32)
    image = np.where((rows < horizon)[..., None], sky, ground)
    image = image + noise.normal(0, 12, size=(size, size, 3))
    outline = np.zeros((size, size), dtype=bool)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(3)
        side = rng.randint(size // 6, size // 2)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        cx, cy = x + side / 2, y + side / 2
        if kind == 0:
            inside = (np.abs(cols - cx) <= side / 2) & (np.abs(rows - cy) <= side / 2)
            grown = (np.abs(cols - cx) <= side / 2 + 1) & (np.abs(rows - cy) <= side / 2 + 1)
        elif kind == 1:
            distance = np.hypot(cols - cx, rows - cy)
            inside, grown = distance <= side / 2, distance <= side / 2 + 1
        else:
            def triangle(margin: float) -> np.ndarray:
                within = (rows >= y - margin) & (rows <= y + side + margin)
                return within & (np.abs(cols - cx) <= (rows - y) / side * (side / 2) + margin)
            inside, grown = triangle(0.0), triangle(1.5)
        colour = np.array(_SHAPE_COLOURS[kind], dtype=np.float32) * rng.uniform(0.6, 1.0) + rng.uniform(-25, 25)
        image[inside] = colour + noise.normal(0, 8, size=(int(inside.sum()), 3))
        mask[inside] = 3 + kind
        outline &= ~inside
        outline |= grown & ~inside
    mask[outline] = 0
    return np.clip(image, 0, 255).astype(np.uint8), mask


def synthetic_split(split: str, size: int = SYNTHETIC_SIZE, num_images: Optional[int] = None
                    ) -> Tuple[SegmentationSplit, PairReader, Callable[[int], str]]:
    """The embedded segmentation set (``split``: ``"train"``, 192 scenes, or ``"val"``, 48), made from fixed seeds:
    the split, its reader and a name per index."""
    count = num_images or SYNTHETIC_IMAGES[split]
    segmentation_split = SegmentationSplit(f"embedded synthetic scenes ({split})", list(SYNTHETIC_CLASSES), True,
                                           [(Path(f"synthetic_{split}_{i:05d}.png"),) * 2 for i in range(count)])

    def read(index: int) -> Tuple[Image.Image, np.ndarray]:
        image, mask = synthetic_scene(index, split, size)
        return Image.fromarray(image), decode_label(Image.fromarray(mask), True)

    return segmentation_split, read, lambda index: f"synthetic {split} scene {index}"


def write_ade20k_folder(root: Path, num_train: Optional[int] = None, num_val: Optional[int] = None,
                        size: int = SYNTHETIC_SIZE, image_format: str = "jpg") -> Path:
    """Write the embedded scenes as an ADE20K folder (``images/...`` JPEGs, ``annotations/...`` PNGs, and a class
    list): for tests and for trying the folder path."""
    root = Path(root)
    for split, count in (("train", num_train), ("val", num_val)):
        images = root / "images" / ADE_SPLITS[split]
        annotations = root / "annotations" / ADE_SPLITS[split]
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for index in range(count or SYNTHETIC_IMAGES[split]):
            image, mask = synthetic_scene(index, split, size)
            name = f"ADE_{split}_{index:08d}"
            Image.fromarray(image).save(images / f"{name}.{image_format}", quality=95)
            Image.fromarray(mask).save(annotations / f"{name}.png")
    (root / CLASSES_FILE).write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    return root
