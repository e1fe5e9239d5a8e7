"""WebDataset-style tar shards for ``vithub train`` and ``vithub data pack``.

A shard folder holds ``<split>-NNNNNN.tar`` files whose members are ``<key>.<image ext>`` and ``<key>.cls`` (the class
index as text), and ``_info.json`` in the layout timm's ``wds/`` reader reads (``splits.<split>.filenames``,
``shard_lengths``, ``num_samples``) plus the class names. The same folder trains with ``--data FOLDER`` or
``--data wds/<name> --data-dir FOLDER``.

The reader is our own, and map-style: it indexes every member's byte range once (tar headers only) and reads a sample
with one seek. Streaming readers (the ``webdataset`` package, timm's ``wds/`` reader) have no position that a
checkpoint can hold, so a resumed run could not equal an unbroken one; with random access the trainer's
per-epoch permutation, its DDP split (each rank a slice of every global batch) and its exact resume work as for
image folders, and each loader worker reads whole batches. Object stores and other sequential-only storage are not
supported (copy the shards to a local disk).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .checkpoint import atomic_write
from .data import DataError

_logger = logging.getLogger(__name__)

INFO_FILE = "_info.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTENSION = "cls"

__all__ = ["INFO_FILE", "ShardSplit", "is_shard_folder", "pack_image_folder", "read_info"]


def is_shard_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of tar shards (it has ``_info.json`` or ``*.tar`` files)."""
    path = Path(path)
    return path.is_dir() and ((path / INFO_FILE).is_file() or any(path.glob("*.tar")))


def read_info(root: Path) -> Dict[str, Any]:
    """``_info.json`` of a shard folder; a folder without one gets an info made from its ``<split>-*.tar`` names."""
    root = Path(root)
    info_path = root / INFO_FILE
    if info_path.is_file():
        try:
            return json.loads(info_path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"data: {info_path} is not valid JSON ({error})") from error
    splits: Dict[str, Dict[str, Any]] = {}
    for shard in sorted(root.glob("*.tar")):
        split = shard.name.rsplit("-", 1)[0] if "-" in shard.name else "train"
        splits.setdefault(split, {"name": split, "filenames": []})["filenames"].append(shard.name)
    return {"splits": splits}


@dataclass(frozen=True)
class _Sample:
    shard: int
    key: str
    image: Tuple[int, int]  # byte offset and size of the image member
    label: Tuple[int, int]


def _sample_key(member_name: str) -> Tuple[str, str]:
    """WebDataset's rule: the key is the member path up to the first dot of its base name, the rest its extension."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower() if dot else ""


def _index_shard(path: Path, shard_index: int) -> List[_Sample]:
    """The samples of one shard, from its tar headers; a malformed or truncated shard, or a sample missing its image
    or label member, raises :class:`DataError` naming the shard (and the sample key)."""
    size = path.stat().st_size
    members: Dict[str, Dict[str, Tuple[int, int]]] = {}
    order: List[str] = []
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise DataError(f"data: shard {path} is truncated: member {member.name} ends at byte "
                                    f"{member.offset_data + member.size}, the file has {size}")
                key, extension = _sample_key(member.name)
                if key not in members:
                    members[key] = {}
                    order.append(key)
                members[key][extension] = (member.offset_data, member.size)
    except (tarfile.TarError, EOFError) as error:
        raise DataError(f"data: shard {path} is not a readable tar file ({type(error).__name__}: {error})") from error
    samples = []
    for key in order:
        parts = members[key]
        image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
        if image is None:
            raise DataError(f"data: shard {path}, sample {key!r} has no image member (one of "
                            f"{', '.join('.' + ext for ext in IMAGE_EXTENSIONS)}; it has {sorted(parts)})")
        if LABEL_EXTENSION not in parts:
            raise DataError(f"data: shard {path}, sample {key!r} has no label member (.{LABEL_EXTENSION}; it has "
                            f"{sorted(parts)})")
        samples.append(_Sample(shard_index, key, image, parts[LABEL_EXTENSION]))
    return samples


class _ShardReader:
    """Random access into the shards by byte range, one open file per shard and process (a forked loader worker
    opens its own)."""

    def __init__(self, split: "ShardSplit") -> None:
        self.split = split
        self._files: Dict[int, Any] = {}
        self._pid = os.getpid()

    def _read(self, shard: int, span: Tuple[int, int]) -> bytes:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file offsets
            self._files, self._pid = {}, os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = open(self.split.shards[shard], "rb")
        handle.seek(span[0])
        data = handle.read(span[1])
        if len(data) != span[1]:
            raise OSError(f"short read from {self.split.shards[shard]} at byte {span[0]}")
        return data

    def __getitem__(self, index: int) -> Tuple[io.BytesIO, int]:
        sample = self.split.samples[index]
        text = self._read(sample.shard, sample.label).decode().strip()
        try:
            label = int(text)
        except ValueError:
            raise DataError(f"data: shard {self.split.shards[sample.shard]}, sample {sample.key!r}: its .cls is "
                            f"{text!r}, not a class index") from None
        if not 0 <= label < self.split.num_classes:
            raise DataError(f"data: shard {self.split.shards[sample.shard]}, sample {sample.key!r}: class {label} "
                            f"is outside 0..{self.split.num_classes - 1}")
        return io.BytesIO(self._read(sample.shard, sample.image)), label

    def __getstate__(self) -> Dict[str, Any]:  # open files do not travel to spawned workers
        return {"split": self.split, "_files": {}, "_pid": -1}


class ShardSplit:
    """One split of a shard folder as a map-style dataset with timm's ``ImageDataset`` reading protocol
    (``reader[index] -> (file, label)``, ``filename``), which :class:`~vithub.train.data.ReadableSamples` decodes,
    augments and counts unreadable images of."""

    input_img_mode = "RGB"

    def __init__(self, root: Path, split: str, info: Optional[Dict[str, Any]] = None) -> None:
        root = Path(root)
        info = info if info is not None else read_info(root)
        splits = info.get("splits", {})
        if split not in splits:
            raise DataError(f"data: the shards in {root} have no split {split!r} (they have {sorted(splits)}); "
                            "choose one with --train-split/--val-split")
        split_info = splits[split]
        self.shards = [root / name for name in split_info["filenames"]]
        missing = [str(path) for path in self.shards if not path.is_file()]
        if missing:
            raise DataError(f"data: split {split!r} of {root} lists shards that do not exist: {missing[:3]}")
        self.samples: List[_Sample] = []
        for index, path in enumerate(self.shards):
            found = _index_shard(path, index)
            expected = (split_info.get("shard_lengths") or [None] * len(self.shards))[index]
            if expected is not None and len(found) != expected:
                raise DataError(f"data: shard {path} holds {len(found)} samples, {INFO_FILE} says {expected} "
                                "(truncated or replaced?)")
            self.samples.extend(found)
        if not self.samples:
            raise DataError(f"data: split {split!r} of {root} has no samples")
        self.classes = [str(name) for name in info.get("classes", [])]
        if not self.classes:  # no names recorded: the labels themselves, read once
            count = 1 + max(self._label_of(index) for index in range(len(self.samples)))
            self.classes = [str(label) for label in range(count)]
        self.num_classes = len(self.classes)
        self.root, self.split = root, split
        self.reader = _ShardReader(self)

    def _label_of(self, index: int) -> int:
        sample = self.samples[index]
        with open(self.shards[sample.shard], "rb") as handle:
            handle.seek(sample.label[0])
            return int(handle.read(sample.label[1]).decode().strip())

    def __len__(self) -> int:
        return len(self.samples)

    def filename(self, index: int, absolute: bool = False) -> str:
        sample = self.samples[index]
        shard = self.shards[sample.shard]
        return f"{shard if absolute else shard.name}:{sample.key}"

    def __getitem__(self, index: int) -> Any:
        raise TypeError("ShardSplit is read through ReadableSamples (reader[index] gives the image file and label)")


def _image_folder_split(folder: Path) -> Tuple[List[str], List[Tuple[Path, int]]]:
    from timm.data.readers.reader_image_folder import find_images_and_targets

    samples, class_to_index = find_images_and_targets(str(folder))
    classes = sorted(class_to_index, key=class_to_index.get)
    return classes, [(Path(path), int(target)) for path, target in samples]


def pack_image_folder(source: Path, output: Path, shard_size: int = 1000,
                      splits: Sequence[Tuple[str, str]] = (("train", "train"), ("val", "validation"))) -> Dict[str, Any]:
    """Write the ImageNet-style ``source`` (``train/`` and ``val/``, one sub-folder per class) as tar shards of at
    most ``shard_size`` samples into ``output`` (``train-NNNNNN.tar``, ``validation-NNNNNN.tar`` and ``_info.json``).
    Images are stored byte for byte (no re-encoding) in timm's folder order; each file is written atomically.
    Returns the info written."""
    source, output = Path(source), Path(output)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    present = [(folder, name) for folder, name in splits if (source / folder).is_dir()]
    if not present or present[0][0] != "train":
        raise DataError(f"data pack: {source} has no train/ folder (expected {source}/train/<class>/<images> and "
                        f"{source}/val/<class>/<images>)")
    output.mkdir(parents=True, exist_ok=True)
    info: Dict[str, Any] = {"name": source.name, "classes": None, "splits": {}}
    for folder, name in present:
        classes, files = _image_folder_split(source / folder)
        if info["classes"] is None:
            info["classes"] = classes
        elif classes != info["classes"]:
            raise DataError(f"data pack: the class folders of {source}/{folder} differ from {source}/train")
        if not files:
            raise DataError(f"data pack: {source}/{folder} holds no images")
        filenames, lengths = [], []
        for start in range(0, len(files), shard_size):
            shard_name = f"{name}-{start // shard_size:06d}.tar"
            chunk = files[start:start + shard_size]
            atomic_write(output / shard_name, lambda tmp, chunk=chunk, start=start: _write_shard(tmp, chunk, name,
                                                                                                 start))
            filenames.append(shard_name)
            lengths.append(len(chunk))
        info["splits"][name] = {"name": name, "num_samples": len(files), "filenames": filenames,
                                "shard_lengths": lengths}
        _logger.info("%s: %d images in %d shards", name, len(files), len(filenames))
    text = json.dumps(info, indent=1)
    atomic_write(output / INFO_FILE, lambda tmp: Path(tmp).write_text(text))
    return info


def _write_shard(path: str, files: Sequence[Tuple[Path, int]], split: str, start: int) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for offset, (image, label) in enumerate(files):
            key = f"{split}_{start + offset:08d}"
            extension = image.suffix.lower().lstrip(".")
            extension = "jpg" if extension == "jpeg" else extension
            for member, payload in ((f"{key}.{extension}", image.read_bytes()), (f"{key}.cls", str(label).encode())):
                entry = tarfile.TarInfo(member)
                entry.size, entry.mtime, entry.mode = len(payload), 0, 0o644
                archive.addfile(entry, io.BytesIO(payload))
