"""Publishing weights: save/load round trips through local-dir:, push -> pull -> identical outputs against the
stand-in Hub (tests/hub_server.py, reached through HF_ENDPOINT, so huggingface_hub's and timm's real client code
runs), revisions, private repos, HF_HUB_OFFLINE, a crafted pickle that must not run, and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file

import vithub
from vithub import HubError, WeightsMismatchError, cli
from vithub.train import TrainConfig, TrainingError, train
from vithub.train.checkpoint import save_weights

TOKEN = "hf_vithub_test_write_token"
OTHER_TOKEN = "hf_vithub_test_other_token"


def _randomised(name: str, **kwargs) -> torch.nn.Module:
    """A model with random weights and random BatchNorm statistics (so a wrong or missing buffer shows)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _same_outputs(first: torch.nn.Module, second: torch.nn.Module, size: int = 64) -> None:
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(second.eval()(images), first.eval()(images), rtol=0, atol=0)


@pytest.fixture()
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


@pytest.mark.parametrize("name", ["vh_efficientvit_m0", "resnet18"])
def test_save_pretrained_round_trips_through_local_dir(tmp_path, name):
    model = _randomised(name, num_classes=5)
    folder = vithub.save_pretrained(model, tmp_path / "saved", label_names=list("abcde"),
                                    metrics={"top1": 91.25, "top5": 99.5}, dataset_name="toy-shapes",
                                    datasets=["toy-shapes"], license="cc-by-4.0")
    assert sorted(entry.name for entry in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == 5 and config["label_names"] == list("abcde")
    assert config["num_features"] == model.num_features and "model_args" in config
    assert config["pretrained_cfg"]["license"] == "cc-by-4.0" and config["pretrained_cfg"]["mean"]

    plain_timm = timm.create_model(f"local-dir:{folder}", pretrained=True)
    _same_outputs(model, plain_timm)
    _same_outputs(model, vithub.load(folder))
    _same_outputs(model, vithub.load(f"local-dir:{folder}"))

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "cc-by-4.0"
    assert "timm" in card.data.tags and name in card.data.tags and card.data.datasets == ["toy-shapes"]
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == {"top-1 accuracy": 91.25, "top-5 accuracy": 99.5}
    assert 'timm.create_model("local-dir:' in card.text and "import vithub" in card.text


def test_push_pull_identical_outputs_and_revisions(tmp_path, test_hub, token):
    first = _randomised("vh_efficientvit_m0", num_classes=3)
    url = vithub.push_to_hub(first, "tester/m0-demo", metrics={"top1": 50.0})
    first_commit = url.rstrip("/").split("/")[-1]
    second = _randomised("vh_efficientvit_m0", num_classes=3)
    with torch.no_grad():
        second.head.linear.weight.add_(1.0)
    vithub.push_to_hub(second, "tester/m0-demo", commit_message="second weights")

    _same_outputs(second, timm.create_model("hf-hub:tester/m0-demo", pretrained=True))  # a plain timm user
    _same_outputs(second, vithub.load("tester/m0-demo"))
    _same_outputs(first, vithub.load("hf-hub:tester/m0-demo", revision=first_commit))
    _same_outputs(first, vithub.load(f"hf-hub:tester/m0-demo@{first_commit}"))
    HfApi().create_tag("tester/m0-demo", tag="v1", revision=first_commit)
    _same_outputs(first, vithub.load("tester/m0-demo", revision="v1"))
    pinned = vithub.pull("tester/m0-demo", revision=first_commit, cache_dir=tmp_path / "cache")
    assert pinned.name == first_commit and pinned.is_relative_to(tmp_path / "cache")

    vithub.push_to_hub(first, "tester/m0-demo", revision="experiment")  # a new branch from main
    _same_outputs(first, vithub.load("tester/m0-demo", revision="experiment"))
    _same_outputs(second, vithub.load("tester/m0-demo", revision="main"))
    with pytest.raises(HubError, match="revision 'no-such-branch' does not exist"):
        vithub.pull("tester/m0-demo", revision="no-such-branch")
    card = ModelCard.load(vithub.pull("tester/m0-demo") / "README.md")
    assert 'timm.create_model("hf-hub:tester/m0-demo", pretrained=True)' in card.text
    assert test_hub.state.unhandled == []


def _digits_run(path: Path) -> Path:
    train(TrainConfig(output=str(path), epochs=1, progress=False))
    return path


def test_training_run_push_pull_private_offline(tmp_path, test_hub, token, capsys, monkeypatch):
    run = _digits_run(tmp_path / "run")
    capsys.readouterr()
    seen = len(test_hub.state.authorizations)
    assert cli.main(["push", str(run), "tester/digits-m0", "--private", "--license", "mit"]) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err, "the token must never be printed"
    assert f"Bearer {TOKEN}" in test_hub.state.authorizations[seen:], "the push used the HF_TOKEN token"
    pushed = json.loads(out)
    summary = json.loads((run / "summary.json").read_text())
    assert pushed["metrics"]["top1"] == pytest.approx(summary["best_top1"])
    assert test_hub.state.repos["tester/digits-m0"].private

    cache = tmp_path / "cache"
    assert cli.main(["pull", "tester/digits-m0", "--cache-dir", str(cache)]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["architecture"] == "vh_efficientvit_m0" and pulled["num_classes"] == 10
    folder = Path(pulled["path"])
    _same_outputs(vithub.load(run), vithub.load(folder), size=32)
    _same_outputs(vithub.load(run / summary["best_checkpoint"]), vithub.load(folder), size=32)
    for loaded in (vithub.load(run), vithub.load(folder)):
        resolved = timm.data.resolve_data_config({}, model=loaded)
        assert tuple(resolved["input_size"]) == (3, 32, 32) and tuple(resolved["mean"]) == (0.5, 0.5, 0.5)
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["label_names"] == [str(i) for i in
                                                                                                range(10)]
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.eval_results[0].metric_value == pytest.approx(
        summary["best_top1"])
    if importlib.util.find_spec("transformers") is not None:  # the pushed repo in transformers, with its labels
        from transformers import AutoModelForImageClassification

        hf_model = AutoModelForImageClassification.from_pretrained(folder).eval()
        assert hf_model.config.id2label == {i: str(i) for i in range(10)}
        images = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(hf_model(pixel_values=images).logits, vithub.load(folder).eval()(images),
                                       rtol=1e-5, atol=1e-5)

    assert cli.main(["push", str(run / "last.state.pt"), "tester/digits-last"]) == 0  # a checkpoint, not a run
    capsys.readouterr()
    _same_outputs(vithub.load(run / "last.safetensors"), vithub.load("tester/digits-last"), size=32)

    monkeypatch.delenv("HF_TOKEN")  # private: no token, no repo
    with pytest.raises(HubError, match="no such repo, or it is private"):
        vithub.pull("tester/digits-m0", cache_dir=tmp_path / "anonymous")
    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    with pytest.raises(HubError, match="no such repo, or it is private"):
        vithub.pull("tester/digits-m0", cache_dir=tmp_path / "someone-else")

    # HF_HUB_OFFLINE is read when huggingface_hub is imported: fresh processes.
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN=TOKEN)
    command = [sys.executable, "-m", "vithub", "pull", "tester/digits-m0", "--cache-dir"]
    served = subprocess.run(command + [str(cache)], env=environment, capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)["path"] == str(folder)
    missing = subprocess.run(command + [str(tmp_path / "empty-cache")], env=environment, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2
    assert "tester/digits-m0@main: not in the cache" in missing.stderr and "HF_HUB_OFFLINE is 1" in missing.stderr
    assert "Traceback" not in missing.stderr


class _CreatesAFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _repo_with_crafted_pickle(folder: Path, marker: Path) -> Path:
    model = _randomised("vh_efficientvit_m0", num_classes=2)
    vithub.save_pretrained(model, folder)
    (folder / "model.safetensors").unlink()
    state = dict(model.state_dict(), payload=_CreatesAFileWhenUnpickled(marker))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_a_crafted_pickle_is_refused_locally_and_from_the_hub(tmp_path, test_hub, token):
    marker = tmp_path / "pwned"
    folder = _repo_with_crafted_pickle(tmp_path / "evil", marker)
    with pytest.raises(HubError, match="refused to load: not a plain tensor file"):
        vithub.load(folder)
    assert not marker.exists()

    api = HfApi()
    api.create_repo("tester/evil", exist_ok=True)
    api.upload_folder(repo_id="tester/evil", folder_path=folder)
    with pytest.raises(HubError, match="refused to load"):
        vithub.load("hf-hub:tester/evil")
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match="weights_only"):  # plain timm is safe too
        timm.create_model("hf-hub:tester/evil", pretrained=True)
    with pytest.raises(TrainingError, match="initial_checkpoint .* refused to load"):  # nor does vithub train
        train(TrainConfig(initial_checkpoint=str(folder / "pytorch_model.bin"), output=str(tmp_path / "run"),
                          epochs=1, progress=False))
    assert not marker.exists(), "the crafted pickle ran"

    # Without the payload, the same legacy file loads (weights_only), safetensors being absent.
    clean = _randomised("vh_efficientvit_m0", num_classes=2)
    torch.save(clean.state_dict(), folder / "pytorch_model.bin")
    _same_outputs(clean, vithub.load(folder))


def test_a_bare_checkpoint_gets_its_class_count_from_the_classifier(tmp_path):
    model = _randomised("vh_levit_128s", num_classes=7)  # two heads (head.l, head_dist.l): the cfg names both
    save_weights(tmp_path / "weights.safetensors", model.state_dict(), {"model": "vh_levit_128s"})
    loaded = vithub.load(tmp_path / "weights.safetensors")  # no training state next to it
    assert loaded.num_classes == 7
    _same_outputs(model, loaded)


def test_weights_that_do_not_fit_are_listed(tmp_path):
    model = _randomised("vh_efficientvit_m0", num_classes=7)
    folder = vithub.save_pretrained(model, tmp_path / "saved")
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 5
    config["model_args"]["num_classes"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match=r"shape mismatches \(2\):\n  head.linear.bias: weights \(7,\), "
                                                   r"model \(5,\)"):
        vithub.load(folder)

    config["num_classes"] = config["model_args"]["num_classes"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    weights.pop("head.linear.weight")
    weights["extra.weight"] = torch.ones(1)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(WeightsMismatchError) as caught:
        vithub.load(folder)
    assert "missing keys (1):\n  head.linear.weight" in str(caught.value)
    assert "unexpected keys (1):\n  extra.weight" in str(caught.value)


def test_bad_input_is_named(tmp_path, test_hub, token):
    with pytest.raises(HubError, match="repo_id: expected 'namespace/name'"):
        vithub.push_to_hub(_randomised("vh_efficientvit_m0"), "a/b/c")
    with pytest.raises(HubError, match="model: expected a timm model"):
        vithub.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(HubError, match="label_names: 2 names for a classifier of 3 classes"):
        vithub.save_pretrained(_randomised("vh_efficientvit_m0", num_classes=3), tmp_path / "x", label_names=["a", "b"])
    with pytest.raises(HubError, match="source: .* is not a saved model folder"):
        vithub.load(tmp_path / "nothing-here")
    with pytest.raises(HubError, match=r"source 'runsx/typo' is neither a local path \(.*runsx/typo does not exist\) "
                                       r"nor a Hub repo that answers \(runsx/typo: no such repo"):
        vithub.load("runsx/typo")  # a mistyped run folder reads as a repo id too: both readings are named
    HfApi().create_repo("tester/public-one", exist_ok=True)
    with pytest.raises(HubError, match="exists and is public"):
        vithub.push_to_hub(_randomised("vh_efficientvit_m0"), "tester/public-one", private=True)
    with pytest.raises(HubError, match="push to someone-else/m0 failed"):
        vithub.push_to_hub(_randomised("vh_efficientvit_m0"), "someone-else/m0")
    with pytest.raises(HubError, match="tester/public-one@main: config.json, model.safetensors missing"):
        vithub.pull("tester/public-one")
    assert cli.main(["push", str(tmp_path / "missing-run"), "tester/x"]) == 2
