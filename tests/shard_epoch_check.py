"""Run under torchrun by test_train_shards: builds a vithub train run on a shard folder (2 processes, gloo, 2 loader
workers each), reads two epochs through the run's own training loader, checks each batch's labels against the keys
the batch sampler dealt, and writes the sample names each rank read per epoch to a JSON file (rank 0)."""

import json
import sys

import torch
import torch.distributed as dist

from vithub.train import TrainConfig
from vithub.train.engine import prepare_epoch, resolve_config, setup
from vithub.train.tasks import get_task


def main(shards: str, report: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    task = get_task("classification")
    config = resolve_config(TrainConfig(data=shards, batch_size=2, img_size=16, workers=2, seed=11,
                                        output=f"{report}.run{rank}", progress=False), task)
    run = setup(config, task, torch.device("cpu"), rank, world)
    split = run.data.train.dataset
    seen = {}
    for epoch in (0, 1):
        run.progress.epoch = epoch
        prepare_epoch(run)
        keys = [index for batch in run.train_loader.batch_sampler for _, index in batch]
        labels = torch.cat([batch[1] for batch in run.train_loader])
        assert labels.tolist() == [split.reader[index][1] for index in keys]
        names = [split.filename(index) for index in keys]
        gathered = [None] * world
        dist.all_gather_object(gathered, names)
        seen[str(epoch)] = gathered
    if rank == 0:
        with open(report, "w") as handle:
            json.dump(seen, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
