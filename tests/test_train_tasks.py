"""The trainer's seams: every TrainConfig option is a command-line flag made from its field, and a task plugs into
the loop through vithub.train.tasks without the loop knowing it."""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import fields

import pytest

from vithub import cli
from vithub.train import ClassificationTask, TrainConfig, get_task, register_task, task_names, train
from vithub.train.cli import COMMAND_FLAGS, add_train_arguments, add_validate_arguments
from vithub.train.config import config_from_args
from vithub.train.tasks import task_classes


def _parser(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser


def _check_flag(parser, config_field, hint):
    """The field's flag parses a sample of its type into the field's attribute."""
    samples = {int: ("7", 7), float: ("0.25", 0.25), str: ("abc", "abc")}
    flag = "--" + config_field.name.replace("_", "-")
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    base = inner[0] if typing.get_origin(hint) is typing.Union else hint
    if base is bool:
        assert getattr(parser.parse_args([flag]), config_field.name) is True
    elif typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        text, value = samples[item]
        assert getattr(parser.parse_args([flag, text, text]), config_field.name) == [value, value]
    elif config_field.metadata["choices"] or config_field.name == "task":
        choice = (config_field.metadata["choices"] or task_names())[-1]
        assert getattr(parser.parse_args([flag, choice]), config_field.name) == choice
    else:
        text, value = samples[base]
        assert getattr(parser.parse_args([flag, text]), config_field.name) == value, config_field.name


def test_every_option_is_a_flag_with_the_fields_type_and_default():
    parser = _parser(add_train_arguments)
    defaults = vars(parser.parse_args([]))
    hints = typing.get_type_hints(TrainConfig)
    command_line = [f for f in fields(TrainConfig) if f.metadata["cli"]]
    task_flags = {f.name for task_cls in task_classes() if task_cls.options for f in fields(task_cls.options)}
    # task flags that are not given stay out of the namespace: the chosen task fills in its own defaults
    assert {f.name for f in command_line} == set(defaults) - set(COMMAND_FLAGS)
    assert not {f.name for f in command_line} & task_flags  # a task's flag never shadows a shared one
    assert config_from_args(defaults) == TrainConfig()  # no default is written twice
    for config_field in command_line:
        _check_flag(parser, config_field, hints[config_field.name])
    for task_cls in task_classes():
        if task_cls.options is not None:
            task_hints = typing.get_type_hints(task_cls.options)
            for config_field in fields(task_cls.options):
                _check_flag(parser, config_field, task_hints[config_field.name])
    aliases = parser.parse_args(["--dataset", "d", "-b", "3", "-j", "2", "--log-wandb"])
    assert (aliases.data, aliases.batch_size, aliases.workers, aliases.wandb) == ("d", 3, 2, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "float64"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "no-such-task"])


def test_validate_takes_the_shared_options_and_a_checkpoint():
    args = _parser(add_validate_arguments).parse_args(["--checkpoint", "w.safetensors", "--val-split", "test"])
    assert args.checkpoint == "w.safetensors" and args.val_split == "test" and args.batch_size is None  # task's
    assert not hasattr(args, "epochs")


class Top5Task(ClassificationTask):
    """Classification judged by top-5, counting what the loop asks of it."""

    name = "test-top5-classification"
    primary_metric = "top5"
    calls: typing.List[str] = []

    def build_data(self, config):
        Top5Task.calls.append("build_data")
        return super().build_data(config)

    def build_model(self, config, data):
        Top5Task.calls.append("build_model")
        return super().build_model(config, data)

    def training_loss(self, config, data):
        inner = super().training_loss(config, data)

        def loss(model, images, labels):
            Top5Task.calls.append("loss")
            return inner(model, images, labels)

        return loss

    def evaluate(self, *args, **kwargs):
        Top5Task.calls.append("evaluate")
        return super().evaluate(*args, **kwargs)

    def summary(self, history, best):
        return {"top5": history[-1]["top5"], "best_top5": best[0]["top5"]}


def test_a_registered_task_runs_through_the_loop(tmp_path, capsys):
    register_task(Top5Task)
    assert isinstance(get_task("test-top5-classification"), Top5Task)
    Top5Task.calls.clear()
    output = tmp_path / "run"
    assert cli.main(["train", "--task", "test-top5-classification", "--output", str(output), "--epochs", "1",
                     "--batch-size", "128", "--keep-best", "1"]) == 0
    calls = Top5Task.calls
    assert calls[:2] == ["build_data", "build_model"] and calls[-1] == "evaluate"
    assert calls.count("loss") == 1437 // 128 and calls.count("evaluate") == 1
    summary = json.loads((output / "summary.json").read_text())
    assert summary["task"] == "test-top5-classification" and "best_top1" not in summary
    assert summary["best_top5"] == summary["top5"] and summary["best_checkpoint"] == "best-e001.safetensors"
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"top5", "best_top5", "seconds"}
    from vithub.train.checkpoint import load_state

    assert load_state(output / "last.state.pt")["best"] == [
        {"top5": summary["top5"], "epoch": 1, "file": "best-e001.safetensors"}]


def test_unknown_task_is_refused_by_name():
    with pytest.raises(ValueError, match=r"task must be one of \["):
        train(TrainConfig(task="segmentation-someday"))


def test_resume_at_an_epoch_boundary_matches_an_unbroken_run(tmp_path):
    """The loop's steps, driven by hand: an unbroken two-epoch run, and a run stopped after epoch 1 and resumed from
    its ``last`` checkpoint. The second epoch's metrics row (train loss included) and the weights must match: the
    finished epoch's running loss must not leak into the next epoch."""
    import torch

    from vithub.train import engine
    from vithub.train.checkpoint import load_weights
    from vithub.train.tasks import ClassificationTask

    def config(folder):
        return TrainConfig(output=str(tmp_path / folder), epochs=2, batch_size=128, progress=False, seed=3)

    task = ClassificationTask()
    unbroken = engine.setup(task.resolve(config("unbroken")), task, torch.device("cpu"))
    for _ in range(2):
        engine.train_one_epoch(unbroken)
        engine.end_epoch(unbroken)
    first = engine.setup(task.resolve(config("broken")), task, torch.device("cpu"))
    engine.train_one_epoch(first)
    engine.end_epoch(first)  # writes last.state.pt at the epoch boundary
    from vithub.train.checkpoint import load_state

    assert load_state(tmp_path / "broken" / "last.state.pt")["epoch_loss"] == [0.0, 0]  # nothing running at a boundary
    resumed = engine.setup(task.resolve(config("broken")), task, torch.device("cpu"))
    engine.resume(resumed, tmp_path / "broken" / "last.state.pt")
    engine.train_one_epoch(resumed)
    engine.end_epoch(resumed)

    def without_clock(row):
        return {key: value for key, value in row.items() if key not in engine.WALL_CLOCK_COLUMNS}

    assert [without_clock(r) for r in resumed.progress.history] == [
        without_clock(r) for r in unbroken.progress.history]
    expected, actual = (load_weights(tmp_path / folder / "last.safetensors") for folder in ("unbroken", "broken"))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


def test_train_help_takes_each_tasks_defaults_from_the_task():
    """The help of the options a task fills in is made from the registered tasks' own defaults, so it cannot drift
    from what a run does (full data and, where they differ, the embedded set)."""
    from vithub.train.cli import task_defaults_help
    from vithub.train.tasks import get_task

    texts = task_defaults_help()
    for task_name in ("classification", "detection", "segmentation"):
        full = get_task(task_name).defaults_for(TrainConfig(task=task_name, data="DATA"))
        embedded = get_task(task_name).defaults_for(TrainConfig(task=task_name))
        for option in ("epochs", "lr", "model"):
            expected = f"{task_name} {full[option]}"
            if embedded[option] != full[option]:
                expected += f", {embedded[option]} on its embedded data"
            assert expected in texts[option], (option, texts[option])
