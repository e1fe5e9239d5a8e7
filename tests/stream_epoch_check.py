"""Run under torchrun by test_train_streams: builds a vithub train run on a streamed dataset (hfids/, 2 processes,
gloo, 2 loader workers each), reads two epochs through the run's own training loader, checks each batch's labels
against the records the batch sampler dealt, and writes the record names each rank read per epoch to a JSON file
(rank 0)."""

import json
import sys

import torch
import torch.distributed as dist

from vithub.train import TrainConfig
from vithub.train.engine import prepare_epoch, resolve_config, setup
from vithub.train.tasks import get_task


def main(data: str, report: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    task = get_task("classification")
    config = resolve_config(TrainConfig(data=data, batch_size=2, img_size=16, workers=2, seed=11,
                                        stream_shuffle_size=8, output=f"{report}.run{rank}", progress=False), task)
    run = setup(config, task, torch.device("cpu"), rank, world)
    seen = {}
    for epoch in (0, 1):
        run.progress.epoch = epoch
        prepare_epoch(run)
        items = [item for batch in run.train_loader.batch_sampler for _, item in batch]
        labels = torch.cat([batch[1] for batch in run.train_loader])
        assert labels.tolist() == [item.record["label"] for item in items]
        gathered = [None] * world
        dist.all_gather_object(gathered, [item.record["name"] for item in items])
        seen[str(epoch)] = gathered
    if rank == 0:
        with open(report, "w") as handle:
            json.dump(seen, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
