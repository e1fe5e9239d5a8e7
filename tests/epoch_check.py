"""Run under torchrun by test_train_shards and test_train_streams: builds a vithub train run on tar shards or a
streamed dataset (2 processes, gloo, 2 loader workers each), reads two epochs through the run's own training loader,
checks each batch's labels against the samples the batch sampler dealt, and writes the sample names each rank read
per epoch to a JSON file (rank 0)."""

import json
import sys

import torch
import torch.distributed as dist

from vithub.train import TrainConfig
from vithub.train.engine import prepare_epoch, resolve_config, setup
from vithub.train.streams import StreamItem
from vithub.train.tasks import get_task


def label_and_name(split, key):
    """A dealt sample's label and name: a stream's record carries both, a shard sample is read by index."""
    if isinstance(key, StreamItem):
        return key.record["label"], key.record["name"]
    return split.reader[key][1], split.filename(key)


def main(data: str, report: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    task = get_task("classification")
    config = resolve_config(TrainConfig(data=data, batch_size=2, img_size=16, workers=2, seed=11,
                                        stream_shuffle_size=8, output=f"{report}.run{rank}", progress=False), task)
    run = setup(config, task, torch.device("cpu"), rank, world)
    split = run.data.train.dataset
    seen = {}
    for epoch in (0, 1):
        run.progress.epoch = epoch
        prepare_epoch(run)
        dealt = [label_and_name(split, key) for batch in run.train_loader.batch_sampler for _, key in batch]
        labels = torch.cat([batch[1] for batch in run.train_loader])
        assert labels.tolist() == [label for label, _ in dealt]
        gathered = [None] * world
        dist.all_gather_object(gathered, [name for _, name in dealt])
        seen[str(epoch)] = gathered
    if rank == 0:
        with open(report, "w") as handle:
            json.dump(seen, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
