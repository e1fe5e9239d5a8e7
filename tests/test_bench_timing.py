"""The one timing helper: CUDA rows are timed on the device (events read after a synchronisation), CPU rows on the
host clock. A fake CUDA device with a work queue stands in for a GPU, so this runs everywhere."""

from __future__ import annotations

import time

import pytest
import torch

from vithub.bench import measure


class FakeDevice:
    """A device that runs queued work later: a call returns at once, the device clock advances by its cost."""

    def __init__(self) -> None:
        self.busy_until_ms = 0.0
        self.pending = []  # events recorded but not yet known to be complete
        self.synchronisations = 0

    def launch(self, cost_ms: float) -> None:
        self.busy_until_ms += cost_ms

    def synchronize(self) -> None:
        self.synchronisations += 1
        for event in self.pending:
            event.complete = True
        self.pending.clear()

    def event_class(self):
        device = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing, "timing events must be created with enable_timing=True"
                self.device_ms = None
                self.complete = False

            def record(self) -> None:
                self.device_ms = device.busy_until_ms  # the event fires when the queue reaches it
                device.pending.append(self)

            def elapsed_time(self, end: "Event") -> float:
                if not (self.complete and end.complete):
                    raise RuntimeError("elapsed_time read before the events completed (no synchronisation)")
                return end.device_ms - self.device_ms

        return Event


@pytest.fixture
def fake_cuda(monkeypatch):
    device = FakeDevice()
    monkeypatch.setattr(torch.cuda, "Event", device.event_class())
    monkeypatch.setattr(torch.cuda, "synchronize", device.synchronize)
    return device


def test_cuda_rows_are_timed_on_the_device_after_a_synchronisation(fake_cuda):
    candidates = {"slow": lambda: fake_cuda.launch(5.0), "fast": lambda: fake_cuda.launch(1.25)}
    ms = measure(candidates, repeats=4, warmup=1, device="cuda")
    assert ms == {"slow": 5.0, "fast": 1.25}
    assert fake_cuda.synchronisations >= 1 + 4 * 2  # after the warm-up, and before every read


def test_host_clock_cannot_see_queued_device_work(fake_cuda):
    """The same queued work timed on the host clock measures only the launch: this is what the helper avoids."""
    ms = measure({"slow": lambda: fake_cuda.launch(5.0)}, repeats=3, warmup=0, device="cpu")
    assert ms["slow"] < 1.0
    assert fake_cuda.synchronisations == 0


def test_cpu_rows_use_the_host_clock_round_robin():
    order = []

    def sleeper(name: str, seconds: float):
        def run() -> None:
            order.append(name)
            time.sleep(seconds)
        return run

    ms = measure({"a": sleeper("a", 0.02), "b": sleeper("b", 0.005)}, repeats=3, warmup=1)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up per candidate, then interleaved
    assert ms["a"] >= 20.0 and 5.0 <= ms["b"] < ms["a"]


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure({"a": lambda: None}, repeats=0)


def test_settling_waits_and_warms_each_candidate_before_its_timed_call(monkeypatch):
    """With ``settle_s``, each timed call follows a pause and one untimed call of the same candidate; that untimed
    call's time (here the slow first call after a pause, as when a thread pool wakes) stays out of the median."""
    from vithub.bench import timing

    order, pauses = [], []
    real_sleep = time.sleep
    awake = {"a": False, "b": False}

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        awake.update(a=False, b=False)

    def candidate(name: str):
        def run() -> None:
            order.append(name)
            real_sleep(0.002 if awake[name] else 0.03)  # slow when called first after a pause
            awake[name] = True
        return run

    monkeypatch.setattr(timing.time, "sleep", pause)
    ms = measure({"a": candidate("a"), "b": candidate("b")}, repeats=3, warmup=0, settle_s=0.05)
    assert order == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert pauses == [0.05] * 6
    assert ms["a"] < 20.0 and ms["b"] < 20.0

    pause(0.0)
    unsettled = measure({"a": candidate("a")}, repeats=1, warmup=0)
    assert unsettled["a"] >= 30.0  # without settling, the slow call after the pause is the one timed


def test_settle_must_not_be_negative():
    with pytest.raises(ValueError, match="settle_s must be >= 0 seconds"):
        measure({"a": lambda: None}, repeats=1, settle_s=-1.0)


def test_cpu_results_name_the_processor_model(monkeypatch, tmp_path):
    """Every CPU results file's ``device`` names the processor model (a ratio holds for one CPU only), read from
    /proc/cpuinfo where there is one."""
    from vithub.bench import timing

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9999 Test Part\n")
    real_path = timing.Path
    monkeypatch.setattr(timing, "Path", lambda p: cpuinfo if str(p) == "/proc/cpuinfo" else real_path(p))
    name = timing.device_name("cpu")
    assert name.startswith("AMD EPYC 9999 Test Part (") and name.endswith(f"{torch.get_num_threads()} threads")
