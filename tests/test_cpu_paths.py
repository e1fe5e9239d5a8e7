"""CPU paths chosen by measurement (vithub.kernels.cpu_paths; the families' kinds in vithub.backbones._cpu_paths, the
torch backend's attention form in the kernel layer): the faster candidate wins (one made slow on purpose loses), the
baseline (the twin's path) keeps ties, choices are cached per key, outputs are equal whichever path runs, and
VITHUB_CPU_PATHS pins a path."""

from __future__ import annotations

import copy

import pytest
import torch

import vithub  # noqa: F401
from vithub.kernels import cpu_paths as _cpu_paths
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
        _cpu_paths.clear_choices()  # layers remember their choice until then
        outputs[path] = conv(x)
    monkeypatch.delenv(_cpu_paths.PIN_ENV)
    _cpu_paths.clear_choices()
    torch.testing.assert_close(outputs["conv"], outputs["linear"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x), outputs["conv"], rtol=1e-5, atol=1e-5)
    assert sum(_cpu_paths.chosen_paths()["pointwise"].values()) == 1


@pytest.mark.parametrize("name", ["vh_efficientvit_m0", "vh_levit_128s", "vh_efficientvit_b0",
                                  "vh_swin_tiny_patch4_window7_224", "vh_nat_mini", "vh_fastervit_0_224"])
def test_models_give_the_same_output_on_every_path(name, monkeypatch):
    model = contract.make_model(name).eval()
    images = contract.random_images(2, (64, 64))
    outputs = {}
    with torch.no_grad():
        for pin in ("twin", "vithub", ""):
            monkeypatch.setenv(_cpu_paths.PIN_ENV, pin)
            _cpu_paths.clear_choices()
            outputs[pin or "measured"] = model(images)
    for key in ("vithub", "measured"):
        torch.testing.assert_close(outputs[key], outputs["twin"], rtol=1e-5, atol=1e-5)
    chosen = _cpu_paths.chosen_paths()
    assert set(chosen.get("input_format", {})) <= {"contiguous", "channels_last"}
    assert set(chosen.get("attention", {})) <= {"matmul", "sdpa"}
    assert chosen.keys() & {"input_format", "attention"}  # the measured run chose something


def test_training_keeps_channels_last_without_timing():
    model = contract.make_model("vh_efficientvit_m0").train()
    model(contract.random_images(2, (64, 64))).sum().backward()
    assert "input_format" not in _cpu_paths.chosen_paths()


def _conv_norm():
    from vithub.backbones.efficientvit_msra import ConvNorm

    torch.manual_seed(0)
    layer = ConvNorm(12, 20, 3, 1, 1)
    with torch.no_grad():  # statistics unlike the defaults, so that folding them in changes the weights
        layer.bn.running_mean.uniform_(-1, 1)
        layer.bn.running_var.uniform_(0.5, 2)
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.uniform_(-1, 1)
    return layer


def test_eval_inference_runs_the_folded_layer_equal_to_the_pair(monkeypatch):
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "norm_fold=folded")
    layer = _conv_norm().eval()
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        folded = layer(x)
        separate = layer.separate(x)
    assert "_fold_cache" in layer.__dict__  # the fused conv ran
    torch.testing.assert_close(folded, separate, rtol=1e-5, atol=1e-5)
    assert not torch.equal(folded, layer.conv(x).detach())  # the norm is in it
    assert set(layer.state_dict()) == {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                       "bn.num_batches_tracked"}
    assert len(list(layer.parameters())) == 3
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), separate, rtol=1e-5, atol=1e-5)


def test_the_fused_layer_follows_new_weights_and_training_and_autograd_take_the_pair(monkeypatch):
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "norm_fold=folded")
    layer = _conv_norm().eval()
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        layer(x)
        other = _conv_norm()
        with torch.no_grad():
            other.conv.weight.mul_(-2.0)
            other.bn.running_var.mul_(3.0)
        layer.load_state_dict(other.state_dict())  # in place: the versions change, the cache is rebuilt
        torch.testing.assert_close(layer(x), layer.separate(x), rtol=1e-5, atol=1e-5)
        layer.bn.running_mean.add_(1.0)
        torch.testing.assert_close(layer(x), layer.separate(x), rtol=1e-5, atol=1e-5)
    out = layer(x)  # autograd through the norm's parameters: the pair
    out.sum().backward()
    assert layer.bn.weight.grad is not None and layer.bn.bias.grad is not None
    layer.train()
    reference = copy.deepcopy(layer)
    with torch.no_grad():  # training takes the pair (batch statistics), with or without autograd
        trained = layer(x)
        torch.testing.assert_close(trained, reference.separate(x), rtol=0, atol=0)
        assert not torch.allclose(trained, layer.eval()(x), atol=1e-3)


def test_the_pin_and_the_measurement_choose_the_fold(monkeypatch, _clock):
    layer = _conv_norm().eval()
    x = torch.randn(2, 12, 9, 9)
    monkeypatch.setenv(_cpu_paths.PIN_ENV, "norm_fold=separate")
    with torch.no_grad():
        layer(x)
    assert "_fold_cache" not in layer.__dict__
    monkeypatch.delenv(_cpu_paths.PIN_ENV)
    _cpu_paths.clear_choices()
    calls = {"separate": 0, "folded": 0}
    original = _cpu_paths.choose_path

    def spy(kind, key, candidates, baseline, ours):  # time the real candidates on the fake clock: the pair slower
        def timed(name, run):
            def call():
                calls[name] += 1
                _clock.now += 0.002 if name == "separate" else 0.001
                return run()
            return call
        made = candidates() if callable(candidates) else candidates
        return original(kind, key, {name: timed(name, run) for name, run in made.items()}, baseline, ours)

    monkeypatch.setattr(_cpu_paths, "choose_path", spy)
    with torch.no_grad():
        layer(x)
        layer(x)  # remembered: not timed again
    assert calls == {"separate": 1 + _cpu_paths.ROUNDS, "folded": 1 + _cpu_paths.ROUNDS}
    assert _cpu_paths.chosen_paths()["norm_fold"] == {"folded": 1}
    assert "_fold_cache" in layer.__dict__


def test_scripted_and_traced_layers_take_the_pair():
    layer = _conv_norm().eval()
    x = torch.randn(2, 12, 9, 9)
    scripted = torch.jit.script(layer)
    traced = torch.fx.symbolic_trace(layer)
    with torch.no_grad():
        expected = layer.separate(x)
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(traced(x), expected, rtol=1e-6, atol=1e-6)
    assert [node.target for node in traced.graph.nodes if node.op == "call_module"] == ["conv", "bn"]


def _attention_calls(kind_counts):
    return sum(kind_counts.get("attention", {}).values())


@pytest.mark.parametrize("op", ["window", "shifted_window", "neighborhood", "carrier_window"])
def test_attention_gives_the_same_output_on_either_path(op, monkeypatch):
    """Inference on CPU runs window, neighbourhood and carrier-window tiles through SDPA or explicit matrix products
    (the twin's form); both equal the float64 reference. Training never takes the matmul path."""
    from vithub import kernels

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 14, 14, 3, 16) for _ in range(3))
    rpb = torch.randn(3, 13, 13) * 0.5
    carriers = [torch.randn(2, 2, 2, 4, 3, 16) for _ in range(3)]

    def run(backend=None, dtype=torch.float32):
        args = [t.to(dtype) for t in (q, k, v)]
        table = rpb.to(dtype)
        if op == "window":
            return kernels.window_attention(*args, 7, 0, table, backend=backend)
        if op == "shifted_window":
            return kernels.window_attention(*args, 7, 3, table, backend=backend)
        if op == "neighborhood":
            return kernels.neighborhood_attention(*args, 7, dilation=2, rpb=table, backend=backend)
        out, _ = kernels.carrier_window_attention(*args, *(c.to(dtype) for c in carriers), 7, rpb=table,
                                                  backend=backend)
        return out

    expected = run("reference", torch.float64).float()
    outputs = {}
    with torch.no_grad():
        for path in ("matmul", "sdpa"):
            monkeypatch.setenv(_cpu_paths.PIN_ENV, f"attention={path}")
            _cpu_paths.clear_choices()
            outputs[path] = run("torch")
            assert _attention_calls(_cpu_paths.chosen_paths()) == 0  # pinned: nothing timed
    for path, out in outputs.items():
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{path}: {m}")
    monkeypatch.delenv(_cpu_paths.PIN_ENV)
    _cpu_paths.clear_choices()
    q.requires_grad_(True)
    run("torch").sum().backward()  # with a graph: SDPA (or the masked-attention function), never timed
    assert _attention_calls(_cpu_paths.chosen_paths()) == 0
    with torch.no_grad():
        torch.testing.assert_close(run("torch"), expected, rtol=1e-5, atol=1e-5)
    assert _attention_calls(_cpu_paths.chosen_paths()) >= 1


def test_attention_takes_the_measured_faster_path(monkeypatch, _clock):
    """The matmul form is the baseline: SDPA is taken only where it timed faster, per shape."""
    from vithub import kernels
    from vithub.kernels.backends import torch_tiled

    q, k, v = (torch.randn(1, 14, 14, 2, 8) for _ in range(3))
    slow = {"name": "sdpa"}
    real_sdpa, real_matmul = torch_tiled.F.scaled_dot_product_attention, torch_tiled._matmul_attention

    def sdpa(*args, **kwargs):
        _clock.now += 0.002 if slow["name"] == "sdpa" else 0.001
        return real_sdpa(*args, **kwargs)

    def matmul(*args, **kwargs):
        _clock.now += 0.002 if slow["name"] == "matmul" else 0.001
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(torch_tiled.F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(torch_tiled, "_matmul_attention", matmul)
    with torch.no_grad():
        kernels.window_attention(q, k, v, 7, 3, backend="torch")
        assert _cpu_paths.chosen_paths()["attention"] == {"matmul": 1}
        slow["name"] = "matmul"
        _cpu_paths.clear_choices()
        kernels.window_attention(q, k, v, 7, 3, backend="torch")
        assert _cpu_paths.chosen_paths()["attention"] == {"sdpa": 1}
        kernels.window_attention(q[:, :7, :7], k[:, :7, :7], v[:, :7, :7], 7, 0, backend="torch")  # a new shape
        assert _cpu_paths.chosen_paths()["attention"] == {"sdpa": 2}
