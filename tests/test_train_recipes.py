"""vithub train --recipe: the official recipe presets reach the resolved configuration, options given explicitly
win (even at their default values), --print-config shows the result without training, and every preset names a
source for each value."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import timm

import vithub  # noqa: F401  (registers the vh_* models)
from vithub import cli
from vithub.train import TrainConfig
from vithub.train.engine import resolve_config
from vithub.train.recipes import RECIPES, apply_recipe

OPTION_NAMES = {field.name for field in fields(TrainConfig)}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_a_valid_configuration_with_a_source_for_each_value(name):
    recipe = RECIPES[name]
    assert set(recipe.values) <= OPTION_NAMES, set(recipe.values) - OPTION_NAMES
    assert all(name in recipe.sources or "*" in recipe.sources for name in recipe.values)
    assert all(" @ " in source and len(source.rsplit(" @ ", 1)[1]) == 40 for source in recipe.sources.values())
    assert timm.is_model(recipe.values["model"])
    applied = apply_recipe(TrainConfig(recipe=name))
    assert all(getattr(applied, option) == value for option, value in recipe.values.items())
    assert applied.recipe_applied == name and applied.recipe is None
    given = {option: "weights.safetensors" for option in recipe.requires}  # a fine-tune's starting weights
    assert set(given) <= OPTION_NAMES
    resolve_config(TrainConfig(recipe=name, **given)).check()  # a valid run configuration


def test_nat_tiny_recipe_holds_the_official_values():
    """The values of SHI-Labs' configs/nat_tiny.yml and train.py defaults (the design notes quote lr 1e-3 at 128
    per GPU, 300 epochs, warmup 20, cooldown 10, wd 0.05, cosine)."""
    config = resolve_config(TrainConfig(recipe="nat_tiny_in1k"))
    assert (config.lr, config.batch_size, config.epochs, config.warmup_epochs, config.cooldown_epochs,
            config.weight_decay, config.sched, config.opt) == (1e-3, 128, 300, 20, 10, 0.05, "cosine", "adamw")
    assert (config.aa, config.reprob, config.mixup, config.cutmix, config.smoothing, config.drop_path) == (
        "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1, 0.2)
    assert config.total_epochs == 310


def test_options_given_explicitly_override_the_recipe(capsys):
    # from Python: what differs from the defaults wins
    config = resolve_config(TrainConfig(recipe="nat_tiny_in1k", mixup=0.5, epochs=30))
    assert (config.mixup, config.epochs, config.cutmix) == (0.5, 30, 1.0)
    # on the command line: what was typed wins, even a value equal to the default (mixup off)
    assert cli.main(["train", "--recipe", "dinat_tiny_in1k", "--mixup", "0", "--lr-base", "5e-4", "--lr",
                     "2e-4", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["mixup"], printed["cutmix"], printed["lr"], printed["recipe_applied"]) == (
        "vh_dinat_tiny", 0.0, 1.0, 2e-4, "dinat_tiny_in1k")
    assert apply_recipe(apply_recipe(TrainConfig(recipe="nat_tiny_in1k", mixup=0.0), {"mixup"})).mixup == 0.0


def test_recipes_command_and_bad_names(capsys):
    assert cli.main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in RECIPES)
    assert cli.main(["recipes", "nat_tiny_in1k"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["values"]["model"] == "vh_nat_tiny" and "classification/configs/nat_tiny.yml" in shown["sources"]["lr"]
    assert cli.main(["recipes", "nat_tiny"]) == 2
    assert "unknown recipe 'nat_tiny'" in capsys.readouterr().err
    assert cli.main(["train", "--recipe", "nat_tiny", "--print-config"]) == 2
    assert "recipe: unknown recipe 'nat_tiny'" in capsys.readouterr().err


def test_swin_recipe_scales_lr_warmup_and_min_lr_by_the_global_batch_as_its_main_py(monkeypatch):
    """Swin's main.py: lr, warmup lr and min lr x (batch x GPUs / 512); at its 8 x 128 that is 1e-3, 1e-6, 1e-5."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    config = resolve_config(TrainConfig(recipe="swin_tiny_in1k"))
    assert (config.lr, config.warmup_lr, config.min_lr) == pytest.approx((1e-3, 1e-6, 1e-5))
    monkeypatch.setenv("WORLD_SIZE", "1")
    single = resolve_config(TrainConfig(recipe="swin_tiny_in1k", batch_size=64))
    assert (single.lr, single.warmup_lr, single.min_lr) == pytest.approx((5e-4 / 8, 5e-7 / 8, 5e-6 / 8))
    plain = resolve_config(TrainConfig(lr_base=5e-4, lr_base_size=512, lr_base_scale="linear", batch_size=64,
                                       min_lr=5e-6))
    assert plain.min_lr == 5e-6  # without lr_base_bounds only the lr scales (timm's rule)


def test_issue_recipe_set_is_present():
    assert {"swin_tiny_in1k", "nat_tiny_in1k", "dinat_tiny_in1k", "fastervit_0_in1k", "efficientvit_b1_in1k",
            "efficientvit_m5_in1k", "levit_256_in1k", "deit_small_in1k"} <= set(RECIPES)


def test_levit_recipe_distils_from_deits_teacher_and_scales_lr_like_its_main_py(monkeypatch):
    """LeViT's main.py: hard distillation from RegNetY-16GF (alpha 0.5, tau 1), lr 5e-4 x batch x GPUs / 512, agc
    clipping at 0.01, repeated augmentation; the cooldown its loop never reaches is left out."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    config = resolve_config(TrainConfig(recipe="levit_256_in1k"))
    assert (config.teacher, config.teacher_pretrained, config.distillation, config.distillation_alpha,
            config.distillation_tau) == ("regnety_160.deit_in1k", True, "hard", 0.5, 1.0)
    assert config.lr == pytest.approx(5e-4 * 256 * 8 / 512)
    assert (config.clip_grad, config.clip_mode, config.aug_repeats, config.total_epochs) == (0.01, "agc", 3, 1000)
    assert timm.is_model("regnety_160.deit_in1k")


def test_efficientvit_b1_lr_is_base_lr_times_processes_and_fastervit_keeps_its_lr(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    b1 = resolve_config(TrainConfig(recipe="efficientvit_b1_in1k"))
    assert b1.lr == pytest.approx(2.5e-4 * 8) and b1.bce_loss and (b1.mixup, b1.cutmix) == (0.1, 0.1)
    faster = resolve_config(TrainConfig(recipe="fastervit_0_in1k"))
    assert (faster.lr, faster.total_epochs, faster.model_ema_decay, faster.drop_path) == (5e-3, 320, 0.9998, 0.2)


def test_fine_tuning_recipes_hold_the_official_values_and_need_their_starting_weights(monkeypatch, capsys):
    """Swin's fine-tune configs (30 epochs, warmup 5, wd 1e-8, lr 2e-5 / warmup 2e-8 / min 2e-7 per 512, scaled by
    8 x 128 to 4e-5, 4e-8, 4e-7) and DeiT's README command (16 GPUs x 32 at lr 5e-6: 5e-6 again); without the
    starting weights a recipe that needs them stops with exit 2 naming the option."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    weights = {"pretrained_path": "weights.safetensors"}
    tiny = resolve_config(TrainConfig(recipe="swin_tiny_22kto1k_ft", **weights))
    assert (tiny.model, tiny.epochs, tiny.warmup_epochs, tiny.weight_decay, tiny.drop_path) == (
        "vh_swin_tiny_patch4_window7_224", 30, 5, 1e-8, 0.1)
    assert (tiny.lr, tiny.warmup_lr, tiny.min_lr) == pytest.approx((4e-5, 4e-8, 4e-7))
    base = resolve_config(TrainConfig(recipe="swin_base_384_ft_in1k", **weights))
    base22k = resolve_config(TrainConfig(recipe="swin_base_384_22kto1k_ft", **weights))
    assert (base.model, base.drop_path, base22k.drop_path) == ("vh_swin_base_patch4_window12_384", 0.5, 0.2)
    monkeypatch.setenv("WORLD_SIZE", "16")
    deit = resolve_config(TrainConfig(recipe="deit_base_384_ft_in1k", **weights))
    assert (deit.model, deit.batch_size, deit.epochs, deit.weight_decay, deit.min_lr, deit.aug_repeats) == (
        "deit_base_patch16_384", 32, 30, 1e-8, 5e-6, 3)
    assert deit.lr == pytest.approx(5e-6)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.main(["train", "--recipe", "swin_base_384_ft_in1k", "--epochs", "1"]) == 2
    assert "recipe swin_base_384_ft_in1k needs --pretrained-path: the Swin-B 224 px" in capsys.readouterr().err
    assert cli.main(["recipes", "swin_tiny_22kto1k_ft"]) == 0
    assert "pretrained_path" in json.loads(capsys.readouterr().out)["requires"]
