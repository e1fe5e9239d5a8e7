"""Run-level checks the trainer tests of every task share. The kill-and-resume check: train once unbroken, train again, SIGKILL the second run
after its first step checkpoint (mid-epoch, possibly mid-write), resume it with ``--resume auto``, and compare. And a run under torchrun with two CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from safetensors.torch import load_file

from vithub.train.checkpoint import load_state


def kill_and_resume(command: Callable[..., List[str]], unbroken: Path, broken: Path, total_updates: int
                    ) -> Dict[str, dict]:
    """Run ``command(output, *extra)`` unbroken into ``unbroken`` and killed-then-resumed into ``broken``; assert the
    kill came before the last of ``total_updates`` updates and that both end with the same weights, bit for bit.
    Returns both ``summary.json`` contents (``"unbroken"``, ``"broken"``)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command(unbroken), check=True, env=environment, capture_output=True, timeout=600)
    process = subprocess.Popen(command(broken), env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (broken / "step.state.pt").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first step checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_state(sorted(broken.glob("*.state.pt"), key=lambda p: p.stat().st_mtime)[-1])
    assert state["num_updates"] < total_updates, "the kill came too late to test a resume"
    subprocess.run(command(broken, "--resume", "auto"), check=True, env=environment, capture_output=True,
                   timeout=600)
    expected, actual = load_file(unbroken / "last.safetensors"), load_file(broken / "last.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    summaries = {name: json.loads((run / "summary.json").read_text())
                 for name, run in (("unbroken", unbroken), ("broken", broken))}
    assert summaries["broken"]["resumed_from"]
    return summaries


def torchrun_two_cpu_processes(train_args: List[str], output: Path) -> dict:
    """Run ``python -m vithub.train *train_args`` as two CPU processes (gloo) under torchrun; assert it succeeded and
    that both ranks ended with the same weights; return ``summary.json``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "vithub.train", *train_args]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    return summary
