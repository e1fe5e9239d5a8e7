"""CPU paths chosen by measurement (vithub.backbones._cpu_paths): the faster candidate wins (one made slow on
purpose loses), the baseline (the twin's path) keeps ties, choices are cached per key, outputs are equal whichever
path runs, and VITHUB_CPU_PATHS pins a path."""

from __future__ import annotations


import pytest
import torch

import vithub  # noqa: F401
from vithub.backbones import _cpu_paths
from vithub.backbones._common import PointwiseConv2d

import contract


@pytest.fixture(autouse=True)
def _fresh_choices(monkeypatch):
    monkeypatch.delenv(_cpu_paths.PIN_ENV, raising=False)
    _cpu_paths.clear_choices()
    yield
    _cpu_paths.clear_choices()


class _FakeClock:
    """A clock that only the candidates advance, so a timed decision does not depend on the host's load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _clock(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(_cpu_paths, "_clock", clock)
    return clock


def _counted(clock, cost):
    """A candidate that takes ``cost`` seconds on ``clock`` per call, and the list of its calls."""
    calls = []

    def run():
        calls.append(1)
        clock.now += cost

    return run, calls


def test_the_slower_candidate_loses_either_way(_clock):
    fast, _ = _counted(_clock, 0.0)
    slow, _ = _counted(_clock, 0.003)
    assert _cpu_paths.choose_path("kind_a", 1, {"conv": slow, "linear": fast}, baseline="conv", ours="linear") == "linear"
    fast, _ = _counted(_clock, 0.0)
    slow, _ = _counted(_clock, 0.003)
    assert _cpu_paths.choose_path("kind_a", 2, {"conv": fast, "linear": slow}, baseline="conv", ours="linear") == "conv"


def test_the_baseline_keeps_a_tie_and_ours_must_beat_the_margin(_clock):
    first, _ = _counted(_clock, 0.001)
    second, _ = _counted(_clock, 0.001)
    assert _cpu_paths.choose_path("kind_b", 1, {"conv": first, "linear": second}, baseline="conv",
                                  ours="linear") == "conv"
    baseline, _ = _counted(_clock, 0.001)
    within, _ = _counted(_clock, 0.001 * (1.0 - _cpu_paths.MARGIN / 2))
    assert _cpu_paths.choose_path("kind_b", 2, {"conv": baseline, "linear": within}, baseline="conv",
                                  ours="linear") == "conv"
    beyond, _ = _counted(_clock, 0.001 * (1.0 - 2 * _cpu_paths.MARGIN))
    assert _cpu_paths.choose_path("kind_b", 3, {"conv": baseline, "linear": beyond}, baseline="conv",
                                  ours="linear") == "linear"


def test_choices_are_cached_per_key_and_thread_count(_clock):
    fast, fast_calls = _counted(_clock, 0.0)
    slow, slow_calls = _counted(_clock, 0.002)
    candidates = {"conv": slow, "linear": fast}
    assert _cpu_paths.choose_path("kind_c", (1, 2), candidates, baseline="conv", ours="linear") == "linear"
    timed = len(fast_calls) + len(slow_calls)
    assert timed == 2 * (1 + _cpu_paths.ROUNDS)  # one warm-up and the rounds, per candidate
    assert _cpu_paths.choose_path("kind_c", (1, 2), candidates, baseline="conv", ours="linear") == "linear"
    assert len(fast_calls) + len(slow_calls) == timed  # cached: not timed again
    _cpu_paths.choose_path("kind_c", (3, 4), candidates, baseline="conv", ours="linear")
    assert len(fast_calls) + len(slow_calls) == 2 * timed  # another shape is timed on its own
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        _cpu_paths.choose_path("kind_c", (1, 2), candidates, baseline="conv", ours="linear")
        assert len(fast_calls) + len(slow_calls) == 3 * timed  # and another thread count
    finally:
        torch.set_num_threads(threads)
    assert _cpu_paths.chosen_paths()["kind_c"] == {"linear": 3}


def test_the_pin_forces_a_path_without_timing(monkeypatch, _clock):
    fast, fast_calls = _counted(_clock, 0.0)
    slow, slow_calls = _counted(_clock, 0.002)
    candidates = {"conv": fast, "linear": slow}
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "kind_d=linear")
    assert _cpu_paths.choose_path("kind_d", 1, candidates, baseline="conv", ours="linear") == "linear"
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "vithub")
    assert _cpu_paths.choose_path("kind_d", 1, candidates, baseline="conv", ours="linear") == "linear"
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "twin")
    assert _cpu_paths.choose_path("kind_d", 1, {"conv": slow, "linear": fast}, baseline="conv",
                                  ours="linear") == "conv"
    assert not fast_calls and not slow_calls
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "kind_d=dense")
    with pytest.raises(ValueError, match="VITHUB_CPU_PATHS: kind_d takes one of \\['conv', 'linear'\\]"):
        _cpu_paths.choose_path("kind_d", 1, candidates, baseline="conv", ours="linear")


def test_pointwise_conv_gives_the_same_output_on_either_path(monkeypatch):
    torch.manual_seed(0)
    conv = PointwiseConv2d(24, 40)
    x = torch.randn(2, 24, 9, 7).contiguous(memory_format=torch.channels_last)
    outputs = {}
    for path in ("conv", "linear"):
        monkeypatch.setenv(_cpu_paths.PIN_ENV, f"pointwise={path}")
        outputs[path] = conv(x)
    monkeypatch.delenv(_cpu_paths.PIN_ENV)
    torch.testing.assert_close(outputs["conv"], outputs["linear"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x), outputs["conv"], rtol=1e-5, atol=1e-5)
    assert sum(_cpu_paths.chosen_paths()["pointwise"].values()) == 1


@pytest.mark.parametrize("name", ["vh_efficientvit_m0", "vh_levit_128s", "vh_efficientvit_b0"])
def test_models_give_the_same_output_on_every_path(name, monkeypatch):
    model = contract.make_model(name).eval()
    images = contract.random_images(2, (64, 64))
    outputs = {}
    with torch.no_grad():
        for pin in ("twin", "vithub", ""):
            monkeypatch.setenv(_cpu_paths.PIN_ENV, pin)
            outputs[pin or "measured"] = model(images)
    for key in ("vithub", "measured"):
        torch.testing.assert_close(outputs[key], outputs["twin"], rtol=1e-5, atol=1e-5)
    assert set(_cpu_paths.chosen_paths()["input_format"]) <= {"contiguous", "channels_last"}


def test_training_keeps_channels_last_without_timing():
    model = contract.make_model("vh_efficientvit_m0").train()
    model(contract.random_images(2, (64, 64))).sum().backward()
    assert "input_format" not in _cpu_paths.chosen_paths()
