"""Hugging Face datasets read in streaming mode (``--data hfids/<name>``) with vithub's exact resume.

A stream has no random access, so its epoch order is the stream's own: the shards in an order drawn from ``(seed,
epoch)``, read a few at a time into a shuffle buffer that draws from ``(seed, epoch)`` too, the same in every
process. Each process reads the whole stream in that order with the images left encoded, and keeps its slice of
every global batch (``batch_size x world`` records in a row; DDP ranks as for image folders); the loader workers
only decode and augment what it hands them (their draws come from ``(seed, epoch, position)``, as a folder's come
from ``(seed, epoch, index)``). The position in the stream is the number of global batches read: a checkpoint holds
it, and a resumed epoch skips that many records (reading their bytes, not decoding them) before it goes on, so the
resumed run equals an unbroken one.

Why not ``datasets``' own worker and node split: it deals whole shards to workers and ranks, whose record counts
differ, so ranks would run out at different steps (DDP needs the same count) and the order would depend on the
worker count; and a resumable position across workers needs torchdata's ``StatefulDataLoader``. The price of one
global order is that every process reads every record's bytes (what ``datasets`` itself does when the shards do
not divide among the ranks); decoding, the costly part, is not repeated.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from .data import DECODE_ERRORS, DataError, ReadableSamples, Unreadable
from .loader import rank_share

__all__ = ["DEFAULT_SHUFFLE_SIZE", "StreamItem", "StreamSamples", "StreamSplit", "stream_length"]

_logger = logging.getLogger(__name__)

DEFAULT_SHUFFLE_SIZE = 4096  # records in the shuffle buffer, timm's hfids reader's default
OPEN_SHARDS = 10  # shards read in turn to fill the shuffle buffer (datasets' default for its own shuffle)


@dataclass(frozen=True)
class StreamItem:
    """One record of a stream as a loader key: its position in the epoch's order, its repeated-augmentation copy
    number and the record itself (image still encoded)."""

    position: int
    copy: int
    record: Dict[str, Any]


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise DataError("data: hfids/ specs read Hugging Face datasets in streaming mode; install the datasets "
                        "package (pip install datasets)") from error
    return datasets


def stream_length(builder: Any, split: str) -> Optional[int]:
    """The record count of ``split`` when the dataset says it (its split info) or its data files are local Parquet
    files (their footers hold the row counts); ``None`` otherwise."""
    splits = getattr(builder.info, "splits", None) or {}
    if split in splits and getattr(splits[split], "num_examples", None):
        return int(splits[split].num_examples)
    files = (getattr(builder.config, "data_files", None) or {}).get(split)
    if not files or not all(str(name).endswith(".parquet") and Path(str(name)).is_file() for name in files):
        return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(str(name)).metadata.num_rows for name in files)


class StreamSplit:
    """One split of a Hugging Face dataset read as a stream: ``name`` is a Hub id or a local folder of data files
    (``cache_dir``: ``datasets``' cache). ``length``: its record count when the dataset does not say
    (``--train-num-samples``/``--val-num-samples``). Images stay encoded until :meth:`decode`."""

    def __init__(self, name: str, split: str, cache_dir: Optional[str] = None, length: Optional[int] = None,
                 input_key: str = "image", target_key: str = "label", shuffle_size: int = DEFAULT_SHUFFLE_SIZE,
                 length_option: str = "--train-num-samples") -> None:
        datasets = _import_datasets()
        self.name, self.split = name, split
        self.input_key, self.target_key = input_key, target_key
        self.shuffle_size = shuffle_size
        spec = f"hfids/{name}"
        try:
            builder = datasets.load_dataset_builder(name, cache_dir=cache_dir)
            stream = datasets.load_dataset(name, split=split, streaming=True, cache_dir=cache_dir)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
            raise DataError(f"data: cannot stream {spec} split {split!r}: {error}") from error
        features = stream.features or {}
        for key, option in ((input_key, "--input-key"), (target_key, "--target-key")):
            if key not in features:
                raise DataError(f"data: {spec} split {split!r} has no column {key!r} ({option}); its columns: "
                                f"{sorted(features)}")
        if not isinstance(features[input_key], datasets.Image):
            raise DataError(f"data: {spec} column {input_key!r} (--input-key) holds {features[input_key]}, not images")
        labels = features[target_key]
        if not isinstance(labels, datasets.ClassLabel):
            raise DataError(f"data: {spec} column {target_key!r} (--target-key) holds {labels}, not class labels "
                            "(a ClassLabel column names the classes)")
        self.classes: List[str] = [str(name) for name in labels.names]
        known = stream_length(builder, split)
        if length is None and known is None:
            raise DataError(f"data: {spec} does not say how many records its {split!r} split has; give "
                            f"{length_option} N (the schedule needs the epoch's length)")
        self.length = int(length if length is not None else known)
        if self.length <= 0:
            raise DataError(f"data: {spec} split {split!r} is empty ({length_option} {self.length})")
        self.num_shards = int(getattr(stream, "num_shards", 1) or 1)
        # the bytes travel to the loader workers; decoding happens there
        self.stream = stream.cast_column(input_key, datasets.Image(decode=False))

    def __len__(self) -> int:
        return self.length

    def records(self, epoch: int, seed: Optional[int]) -> Iterator[Dict[str, Any]]:
        """The split's records in epoch ``epoch``'s order, or the stored order when ``seed`` is ``None``. The shards
        come in an order drawn from ``(seed, epoch)``, :data:`OPEN_SHARDS` of them read in turn into a shuffle
        buffer of ``shuffle_size`` records, from which the records leave at random (draws from ``(seed, epoch)``).
        This is our own shuffle, not ``IterableDataset.shuffle``: the order then does not change with the
        ``datasets`` version (a resume across an upgrade keeps it), and no reader threads are started and waited
        for (``datasets`` 5 pauses five seconds whenever its interleaving threads stop)."""
        if seed is None:
            yield from self.stream
            return
        rng = np.random.default_rng([seed, epoch])
        waiting = iter(rng.permutation(self.num_shards).tolist())

        def open_shard() -> Optional[Iterator[Dict[str, Any]]]:
            index = next(waiting, None)
            return None if index is None else iter(self.stream.shard(num_shards=self.num_shards, index=index))

        readers = [open_shard() for _ in range(min(OPEN_SHARDS, self.num_shards))]
        buffer: List[Dict[str, Any]] = []
        turn = 0
        while readers:
            turn %= len(readers)
            record = next(readers[turn], None)
            if record is None:  # this shard is done: the next one takes its turn
                replacement = open_shard()
                if replacement is None:
                    del readers[turn]
                else:
                    readers[turn] = replacement
                continue
            turn += 1
            if len(buffer) < self.shuffle_size:
                buffer.append(record)
                continue
            pick = int(rng.integers(len(buffer)))
            yield buffer[pick]
            buffer[pick] = record
        for pick in rng.permutation(len(buffer)).tolist():
            yield buffer[pick]

    def source(self, item: StreamItem) -> str:
        path = (item.record.get(self.input_key) or {}).get("path")
        return f"hfids/{self.name}:{self.split} record {item.position}" + (f" ({path})" if path else "")

    def record_id(self, item: StreamItem) -> int:
        """A number that names a record in every epoch (its position changes with the order), from its image's
        bytes: an unreadable record is counted once however often it comes up."""
        image = item.record.get(self.input_key) or {}
        payload = image.get("bytes") or str(image.get("path") or f"position {item.position}").encode()
        return int.from_bytes(hashlib.blake2b(payload, digest_size=7).digest(), "big")

    def decode(self, item: StreamItem) -> Tuple[Image.Image, int]:
        """The record's image (RGB) and class index; a record without its image or label is a :class:`DataError`,
        an image that does not decode raises what PIL raises."""
        image, label = item.record.get(self.input_key), item.record.get(self.target_key)
        if not isinstance(image, dict) or not (image.get("bytes") or image.get("path")):
            raise DataError(f"data: {self.source(item)} has no image in {self.input_key!r} (--input-key)")
        if not isinstance(label, int) or not 0 <= label < len(self.classes):
            raise DataError(f"data: {self.source(item)} has label {label!r} in {self.target_key!r} (--target-key), "
                            f"not a class index below {len(self.classes)}")
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        with Image.open(source) as opened:
            return opened.convert("RGB"), label  # decodes every pixel


class StreamBatches:
    """This process's batches of one pass over a stream, read lazily in the loader's main process: global batches
    of ``batch_size * world`` records in the stream's order, rank ``r`` taking the ``r``-th slice (with
    ``repeats`` > 1 each record ``repeats`` times in a row, dealt to the ranks in turn, as for image folders).
    ``count`` global batches (``None``: to the stream's end, the last one partial), from global batch ``start``,
    whose predecessors are read and dropped."""

    def __init__(self, split: StreamSplit, epoch: int, seed: Optional[int], batch_size: int, count: Optional[int],
                 start: int = 0, rank: int = 0, world: int = 1, repeats: int = 0) -> None:
        self.split, self.epoch, self.seed = split, epoch, seed
        self.batch_size, self.count, self.start = batch_size, count, start
        self.rank, self.world, self.repeats = rank, world, max(1, repeats)

    def __len__(self) -> int:
        if self.count is not None:
            return self.count - self.start
        return -(-len(self.split) // (self.batch_size * self.world))

    def _items(self) -> Iterator[StreamItem]:
        for position, record in enumerate(self.split.records(self.epoch, self.seed)):
            for copy in range(self.repeats):
                yield StreamItem(position, copy, record)

    def __iter__(self) -> Iterator[List[StreamItem]]:
        step = self.batch_size * self.world
        items = self._items()
        batch = 0
        while self.count is None or batch < self.count:
            window = [item for _, item in zip(range(step), items)]
            if len(window) < step and self.count is not None:
                raise DataError(f"data: hfids/{self.split.name} split {self.split.split!r} ended after "
                                f"{batch * step + len(window)} records in epoch {self.epoch}, before the "
                                f"{self.count * step} of the epoch's {self.count} batches (the split was said to "
                                f"have {len(self.split)}; check --train-num-samples)")
            if not window:
                return
            if batch >= self.start:
                yield rank_share(window, self.rank, self.world, self.batch_size, self.repeats)
            batch += 1
            if len(window) < step:
                return


class StreamSamples(ReadableSamples):
    """A streamed split as the trainer's dataset: read with :class:`StreamItem` keys (the loader's batches come
    from :meth:`epoch_batches` and :meth:`in_order_batches`), decoded and augmented where the loader reads them,
    an unreadable image returned as :class:`~vithub.train.data.Unreadable` (named by its record)."""

    def __init__(self, split: StreamSplit, transform: Optional[Any] = None, seed: Optional[int] = None) -> None:
        super().__init__(split, transform, seed)
        self.classes = split.classes

    def epoch_batches(self, epoch: int, batch_size: int, count: int, start: int = 0, rank: int = 0,
                      world: int = 1, repeats: int = 0) -> StreamBatches:
        """Epoch ``epoch``'s shuffled batches for process ``rank`` (``count`` full global batches)."""
        return StreamBatches(self.dataset, epoch, self.seed if self.seed is not None else 0, batch_size, count,
                             start, rank, world, repeats)

    def in_order_batches(self, batch_size: int) -> StreamBatches:
        """Every record once, in the stored order (evaluation)."""
        return StreamBatches(self.dataset, 0, None, batch_size, None)

    def position(self, epoch: int, batch_in_epoch: int, batch_size: int, world: int, repeats: int = 0
                 ) -> Dict[str, Any]:
        """Where a run stands in the stream, for its checkpoint: the epoch, the global batches and records read
        (``records``), and the dataset, split and shard count that fix the order."""
        read = batch_in_epoch * batch_size * world
        return {"dataset": self.dataset.name, "split": self.dataset.split, "shards": self.dataset.num_shards,
                "epoch": epoch, "global_batches": batch_in_epoch, "records": -(-read // max(1, repeats))}

    def check_position(self, saved: Optional[Dict[str, Any]], path: Any) -> None:
        """Refuse a resume whose checkpoint was not written on this stream, or on one with another shard count
        (the shard order, and so the record order, would differ)."""
        if not saved:
            raise DataError(f"resume: {path} was not written by a run on a streamed dataset")
        here = {"dataset": self.dataset.name, "split": self.dataset.split, "shards": self.dataset.num_shards}
        changed = {key: (saved.get(key), value) for key, value in here.items() if saved.get(key) != value}
        if changed:
            changes = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise DataError(f"resume: {path} was written on another stream ({changes}); the records would come in "
                            "another order")

    def __getitem__(self, item: StreamItem) -> Any:  # type: ignore[override]
        try:
            image, target = self.dataset.decode(item)
        except DataError:
            raise
        except DECODE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
            return Unreadable(self.dataset.record_id(item), self.dataset.source(item), reason)
        return self.augment(image, item.position, item.copy), target

