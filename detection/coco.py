"""COCO-format detection data: reading and checking annotation files, polygon and RLE masks, the training
augmentation (flip, random crop; the detector itself jitters the scale), aspect-ratio groups, and the embedded
synthetic set that ``vithub train --task detection`` uses when no data is given."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vithub.train.data import DataError, Unreadable



def _mask_api():
    """COCO's mask functions (the same C API in both packages): faster-coco-eval's, else pycocotools'. Imported on
    first use, so detectors build and train on in-memory targets without either."""
    try:
        from faster_coco_eval.core import mask
    except ImportError:
        try:
            from pycocotools import mask
        except ImportError as error:
            raise ImportError("COCO masks need faster-coco-eval or pycocotools: pip install 'vithub[detection]'"
                              ) from error
    return mask

REQUIRED_KEYS = ("images", "annotations", "categories")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A ``(height, width)`` uint8 mask from COCO polygons (a list of ``[x1, y1, x2, y2, ...]``), uncompressed RLE
    (``{"counts": [...], "size": [h, w]}``) or compressed RLE (``counts`` a string)."""
    mask_api = _mask_api()
    if isinstance(segmentation, list):
        rles = mask_api.frPyObjects([list(map(float, polygon)) for polygon in segmentation], height, width)
        rle = mask_api.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_api.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    return np.ascontiguousarray(mask_api.decode(rle), dtype=np.uint8)


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """Compressed COCO RLE (``counts`` as a string, JSON-ready) of a 2-D binary mask."""
    rle = _mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclass
class CocoSplit:
    """A checked COCO annotation file: images (all of them, with or without annotations), the trainable
    annotations of each image (crowd regions and degenerate boxes left out), categories and their contiguous labels
    (``1..N`` in id order), and the ground truth as COCO evaluation reads it."""

    source: str
    images: List[Dict[str, Any]]
    annotations: Dict[int, List[Dict[str, Any]]]
    category_ids: List[int]
    category_names: List[str]
    ground_truth: Dict[str, Any]
    dropped_boxes: List[str] = field(default_factory=list)

    @property
    def label_of(self) -> Dict[int, int]:
        return {category: index + 1 for index, category in enumerate(self.category_ids)}


def _fail(source: str, message: str) -> DataError:
    return DataError(f"{source}: {message}")


def parse_coco(coco: Any, source: str, max_dropped: float = 0.01) -> CocoSplit:
    """Check a COCO detection dict (``source`` names it in errors) and index it. Boxes with non-positive width or
    height, or wholly outside their image, are dropped and counted; past ``max_dropped`` of all boxes the file is
    refused. Boxes that stick out of the image are clipped to it."""
    if not isinstance(coco, dict):
        raise _fail(source, f"a COCO file holds a JSON object, got {type(coco).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in coco]
    if missing:
        raise _fail(source, f"not a COCO detection file: missing key(s) {missing} (needs {list(REQUIRED_KEYS)})")
    if not coco["images"]:
        raise _fail(source, "the split is empty: 'images' lists no image")
    categories = {}
    for category in coco["categories"]:
        if "id" not in category:
            raise _fail(source, f"a category lacks 'id': {category}")
        categories[int(category["id"])] = str(category.get("name", category["id"]))
    if not categories:
        raise _fail(source, "'categories' is empty")
    images, sizes = [], {}
    for image in coco["images"]:
        for key in ("id", "file_name", "height", "width"):
            if key not in image:
                raise _fail(source, f"image entry {image.get('id', image)} lacks {key!r}")
        sizes[int(image["id"])] = (int(image["height"]), int(image["width"]))
        images.append(image)
    if len(sizes) != len(images):
        raise _fail(source, "image ids are not unique")
    per_image: Dict[int, List[Dict[str, Any]]] = {image_id: [] for image_id in sizes}
    evaluated, dropped = [], []
    for annotation in coco["annotations"]:
        name = f"annotation {annotation.get('id', '?')}"
        for key in ("image_id", "category_id", "bbox"):
            if key not in annotation:
                raise _fail(source, f"{name} lacks {key!r}")
        image_id, category = int(annotation["image_id"]), int(annotation["category_id"])
        if image_id not in sizes:
            raise _fail(source, f"{name} refers to image_id {image_id}, which 'images' does not list")
        if category not in categories:
            raise _fail(source, f"{name} has category_id {category}, which is not in 'categories' "
                        f"({sorted(categories)})")
        bbox = annotation["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise _fail(source, f"{name}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, width, height = (float(value) for value in bbox)
        image_h, image_w = sizes[image_id]
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + width, float(image_w)), min(y + height, float(image_h))
        if not all(math.isfinite(value) for value in (x, y, width, height)) or width <= 0 or height <= 0 \
                or x2 <= x1 or y2 <= y1:
            dropped.append(f"{name} (image {image_id}, bbox {bbox})")
            continue
        crowd = int(annotation.get("iscrowd", 0))
        entry = dict(annotation, iscrowd=crowd, area=float(annotation.get("area", width * height)))
        evaluated.append(entry)
        if not crowd:
            per_image[image_id].append(dict(entry, clipped=[x1, y1, x2, y2]))
    total = len(coco["annotations"])
    if dropped and len(dropped) > max_dropped * total:
        raise _fail(source, f"{len(dropped)} of {total} boxes are degenerate (non-positive size or outside the "
                    f"image), more than the allowed fraction {max_dropped}; first: {dropped[:3]}")
    category_ids = sorted(categories)
    ground_truth = {"images": images, "categories": [dict(id=cid, name=categories[cid]) for cid in category_ids],
                    "annotations": [{key: value for key, value in entry.items() if key != "clipped"}
                                    for entry in evaluated]}
    for index, annotation in enumerate(ground_truth["annotations"]):
        annotation.setdefault("id", index + 1)
    return CocoSplit(source, images, per_image, category_ids, [categories[cid] for cid in category_ids],
                     ground_truth, dropped)


def read_coco(path: Path, max_dropped: float = 0.01) -> CocoSplit:
    """:func:`parse_coco` of a COCO annotation file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a JSON file ({error})") from error
    return parse_coco(coco, str(path), max_dropped)


ImageReader = Callable[[Dict[str, Any]], Image.Image]


def folder_reader(folder: Path, split: CocoSplit) -> ImageReader:
    """Reads each image's ``file_name`` under ``folder``; every file must exist (checked now, with the missing ones
    named)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist (for {split.source})")
    missing = [image["file_name"] for image in split.images if not (folder / image["file_name"]).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {split.source} are missing from {folder}: {missing[:5]}")

    def read(image: Dict[str, Any]) -> Image.Image:
        with Image.open(folder / image["file_name"]) as opened:
            return opened.convert("RGB")

    read.folder = folder  # type: ignore[attr-defined]
    return read


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class CocoDetection(Dataset):
    """One split of COCO-format data as torchvision's detectors take it: ``(image, target)`` with ``image`` a
    ``(3, H, W)`` float tensor in [0, 1] and ``target`` holding ``boxes`` (xyxy, pixels), ``labels`` (``1..N``),
    ``masks`` (``(n, H, W)`` uint8, when ``with_masks``) and ``image_id``. An image that cannot be decoded comes back
    as :class:`~vithub.train.data.Unreadable`. ``augment``: horizontal flip and, half of the time, a random crop
    (60–100 % of each side) that keeps what remains of the boxes. The draws come from ``(seed, epoch, index)``
    alone (the trainer calls :meth:`set_epoch`), so they do not depend on loader workers or on where a resumed
    run started."""

    def __init__(self, split: CocoSplit, reader: ImageReader, with_masks: bool = False, augment: bool = False,
                 crop_probability: float = 0.5, seed: int = 0) -> None:
        self.split = split
        self.reader = reader
        self.with_masks = with_masks
        self.augment = augment
        self.crop_probability = crop_probability
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.images)

    def source(self, index: int) -> str:
        image = self.split.images[index]
        folder = getattr(self.reader, "folder", None)
        return str(folder / image["file_name"]) if folder is not None else f"image {image['id']}"

    def aspect_groups(self) -> List[int]:
        """Per image: 0 when wider than tall, 1 otherwise (batches are drawn within one group)."""
        return [0 if image["width"] > image["height"] else 1 for image in self.split.images]

    def __getitem__(self, index: int) -> Any:
        info = self.split.images[index]
        try:
            image = self.reader(info)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            return Unreadable(index, self.source(index), f"{type(error).__name__}: {error}")
        tensor = _to_tensor(image)
        height, width = tensor.shape[-2:]
        if (height, width) != (int(info["height"]), int(info["width"])):
            return Unreadable(index, self.source(index), f"image is {width}x{height}, the annotation file says "
                              f"{info['width']}x{info['height']}")
        annotations = self.split.annotations[int(info["id"])]
        label_of = self.split.label_of
        boxes = torch.tensor([annotation["clipped"] for annotation in annotations], dtype=torch.float32
                             ).reshape(-1, 4)
        target: Dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor([label_of[int(annotation["category_id"])] for annotation in annotations],
                                   dtype=torch.int64),
            "image_id": int(info["id"]),
        }
        if self.with_masks:
            masks = [decode_segmentation(annotation["segmentation"], height, width) if annotation.get("segmentation")
                     else _box_mask(annotation["clipped"], height, width) for annotation in annotations]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width,
                                                                                          dtype=torch.uint8)
        if self.augment:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            tensor, target = self._augment(tensor, target, generator)
        return tensor, target

    def _augment(self, image: torch.Tensor, target: Dict[str, Any], generator: torch.Generator
                 ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        height, width = image.shape[-2:]

        def uniform() -> float:
            return torch.rand((), generator=generator).item()

        if uniform() < 0.5:
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        if uniform() < self.crop_probability:
            crop_h = int(height * (0.6 + 0.4 * uniform()))
            crop_w = int(width * (0.6 + 0.4 * uniform()))
            top = int(uniform() * (height - crop_h + 1))
            left = int(uniform() * (width - crop_w + 1))
            boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, crop_w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, crop_h)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
            image = image[:, top:top + crop_h, left:left + crop_w]
            target["boxes"], target["labels"] = boxes[keep], target["labels"][keep]
            if "masks" in target:
                target["masks"] = target["masks"][keep][:, top:top + crop_h, left:left + crop_w]
        return image.contiguous(), target


def _box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(value)) for value in box)
    mask[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)] = 1
    return mask


def collate_detection(samples: Sequence[Any]) -> Tuple[Optional[List[torch.Tensor]], Optional[List[Dict[str, Any]]],
                                                       List[Unreadable]]:
    """``(images, targets, unreadable)``: lists of the readable samples (``None`` when none is) and the unreadable
    ones."""
    bad = [sample for sample in samples if isinstance(sample, Unreadable)]
    good = [sample for sample in samples if not isinstance(sample, Unreadable)]
    if not good:
        return None, None, bad
    return [image for image, _ in good], [target for _, target in good], bad


# --- the embedded synthetic set ---------------------------------------------------------------------------------

SYNTHETIC_CLASSES = ("square", "disk", "triangle")
SYNTHETIC_SIZE = 160  # side of each synthetic image, and the default detection scale on it
SYNTHETIC_IMAGES = {"train": 240, "val": 48}
_SYNTHETIC_SEED = {"train": 1, "val": 2}


def _synthetic_shapes(image_id: int, split: str, size: int) -> List[Tuple[int, Tuple[int, int, int, int],
                                                                           Tuple[int, int, int]]]:
    """1–3 non-overlapping shapes per image: (class index, (x, y, w, h), colour), from the image id alone."""
    rng = random.Random(_SYNTHETIC_SEED[split] * 1_000_003 + image_id)
    shapes, taken = [], []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(20):
            side = rng.randint(size // 6, size // 2)
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            if all(x + side <= ox or ox + os <= x or y + side <= oy or oy + os <= y for ox, oy, os in taken):
                taken.append((x, y, side))
                kind = rng.randrange(len(SYNTHETIC_CLASSES))
                colour = tuple(rng.randint(60, 255) for _ in range(3))
                shapes.append((kind, (x, y, side, side), colour))
                break
    return shapes


def _shape_mask(kind: int, box: Tuple[int, int, int, int], size: int) -> np.ndarray:
    x, y, w, h = box
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if SYNTHETIC_CLASSES[kind] == "square":
        inside = (cols >= x) & (cols < x + w) & (rows >= y) & (rows < y + h)
    elif SYNTHETIC_CLASSES[kind] == "disk":
        inside = ((cols - x - w / 2) / (w / 2)) ** 2 + ((rows - y - h / 2) / (h / 2)) ** 2 <= 1.0
    else:  # apex at the top centre, base along the bottom
        within = (rows >= y) & (rows < y + h)
        half = (rows - y) / h * (w / 2)
        inside = within & (np.abs(cols - (x + w / 2)) <= half)
    return inside.astype(np.uint8)


def _triangle_polygon(box: Tuple[int, int, int, int]) -> List[float]:
    x, y, w, h = box
    return [x + w / 2, y, x + w, y + h, x, y + h]


def synthetic_split(split: str, size: int = SYNTHETIC_SIZE, num_images: Optional[int] = None
                    ) -> Tuple[CocoSplit, ImageReader]:
    """The embedded detection set: ``size``×``size`` images of squares, disks and triangles in random colours on a
    noisy background, with boxes and masks (squares and triangles as polygons, disks as RLE), made from fixed seeds
    (the same on every machine). ``split``: ``"train"`` (240 images) or ``"val"`` (48)."""
    if split not in SYNTHETIC_IMAGES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    count = num_images or SYNTHETIC_IMAGES[split]
    images, annotations = [], []
    for image_id in range(1, count + 1):
        images.append({"id": image_id, "file_name": f"synthetic_{split}_{image_id:05d}.png", "height": size,
                       "width": size})
        for kind, box, _ in _synthetic_shapes(image_id, split, size):
            if SYNTHETIC_CLASSES[kind] == "disk":
                segmentation: Any = encode_mask(_shape_mask(kind, box, size))
            elif SYNTHETIC_CLASSES[kind] == "square":
                x, y, w, h = box
                segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            else:
                segmentation = [_triangle_polygon(box)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kind + 1,
                                "bbox": list(box), "iscrowd": 0, "segmentation": segmentation,
                                "area": float(_shape_mask(kind, box, size).sum())})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": index + 1, "name": name} for index, name in enumerate(SYNTHETIC_CLASSES)]}

    def read(image: Dict[str, Any]) -> Image.Image:
        return Image.fromarray(render_synthetic(int(image["id"]), split, size))

    return parse_coco(coco, f"embedded synthetic shapes ({split})"), read


def render_synthetic(image_id: int, split: str, size: int = SYNTHETIC_SIZE) -> np.ndarray:
    """The pixels of one synthetic image (``(size, size, 3)`` uint8)."""
    rng = np.random.default_rng(_SYNTHETIC_SEED[split] * 1_000_003 + image_id)
    canvas = rng.integers(0, 50, size=(size, size, 3)).astype(np.uint8)
    for kind, box, colour in _synthetic_shapes(image_id, split, size):
        canvas[_shape_mask(kind, box, size).astype(bool)] = colour
    return canvas


def shape_boxes_and_masks(image_id: int, split: str, size: int = SYNTHETIC_SIZE
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detector targets of one synthetic image straight from its shapes: ``boxes`` (xyxy), ``labels`` (1..3) and
    ``masks`` ``(n, size, size)`` uint8."""
    shapes = _synthetic_shapes(image_id, split, size)
    boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h), _ in shapes], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([kind + 1 for kind, _, _ in shapes], dtype=torch.int64)
    masks = torch.from_numpy(np.stack([_shape_mask(kind, box, size) for kind, box, _ in shapes]))
    return boxes, labels, masks


def write_coco_split(split: CocoSplit, reader: ImageReader, annotation_file: Path, image_folder: Path) -> None:
    """Write a split as a COCO folder (annotation JSON and PNG images): the embedded set made into the real layout,
    for tests and for trying the folder path."""
    image_folder.mkdir(parents=True, exist_ok=True)
    for image in split.images:
        reader(image).save(image_folder / image["file_name"])
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(split.ground_truth))
