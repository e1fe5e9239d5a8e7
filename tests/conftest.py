"""Test-session setup that must happen before torch, timm or triton are imported."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _has_nvidia_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


# Triton fixes compiled-or-interpreted for the whole process when it is first imported (torch and timm import it),
# so the choice is made here, before any test module is collected: without a GPU, the Triton kernels are tested in
# Triton's CPU interpreter. An explicit TRITON_INTERPRET in the environment wins.
if "TRITON_INTERPRET" not in os.environ and not _has_nvidia_device():
    os.environ["TRITON_INTERPRET"] = "1"

# huggingface_hub reads its endpoint, cache and token settings once, when first imported (timm imports it). Every
# Hub request of the suite goes to the stand-in Hub the tests start on 127.0.0.1 (tests/hub_server.py), with a
# fresh cache and no token of the user's, so nothing leaves the machine and nothing of the user's is touched.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import free_port  # noqa: E402

TEST_HUB_PORT = free_port()
# vithub's CPU paths (vithub.kernels.cpu_paths) without timing: reproducible runs and no timing per new shape;
# tests/test_cpu_paths.py lifts the pin and tests the measuring itself. An explicit VITHUB_CPU_PATHS wins.
os.environ.setdefault("VITHUB_CPU_PATHS", "vithub")
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{TEST_HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vithub-test-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)


import pytest  # noqa: E402  (after the environment setup above, on purpose)

REPO_ROOT = Path(__file__).resolve().parent.parent

# `python -m pytest` from the repository root puts the root on sys.path, which makes its folders importable as
# top-level `kernels`, `train`, `hub`, `detection`. vithub's code is only ever `vithub.*`, but third-party code
# probes such names (transformers looks for the Hugging Face `kernels` package and would import our folder under
# that name, registering our torch.library ops a second time). Tests see what a user's install sees.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != REPO_ROOT]


# The slow groups, by test file and a pattern of the test's name (with its parameters): `pytest -m "not slow"` is the
# fast tier (every test file keeps tests in it), the whole suite is what CI runs. Each group says why it is slow.
SLOW_GROUPS = {
    "per-model ONNX export sweep (one model stays fast: vh_efficientvit_b0)": (
        "test_export.py", r"test_every_registered_model_exports\w*\[(?!vh_efficientvit_b0\])"),
    "ONNX export benchmark, CLI and graph-shape checks (full-size models, ONNX Runtime sessions)": (
        "test_export.py", r"test_export_bench|test_vithub_export_command|transposes|test_fastervit_export_has"),
    "per-model torch.compile sweep": ("test_contract.py", r"test_torch_compile"),
    "custom-op opcheck and fullgraph compiles": (
        "test_kernels_(backends|carriers|triton).py", r"opcheck_and_gradcheck|fullgraph"),
    "Triton interpreter sweeps and the sm_90 build": (
        "test_kernels_triton.py", r"hopper|model_like|test_neighborhood_kernels_match|test_window_kernels_match"),
    "NATTEN cross-check at the benchmark shape": ("test_kernels_natten.py", r"test_forward_equals_natten"),
    "embedded trainings, kill-and-resume and torchrun": (
        "test_(train|train_tasks|train_distillation|train_loader|train_shards|detection|segmentation).py",
        r"embedded_default|kill_and_resume|killed_and_resumed|torchrun|resume_at_an_epoch|pushes_and_loads"),
    "torchrun, W&B offline run and curves (full trainings)": (
        "test_train_data_logging.py", r"torchrun|wandb_offline|curves_png"),
    "detection and segmentation benchmarks run end to end": ("test_(detection|segmentation).py", r"bench_writes"),
    "console scripts and benchmarks in fresh processes": ("test_cli.py", r"console_script|separate_processes"),
    "AOTInductor compiles (a C++ build per model) and strict torch.export traces (one model of each stays fast)": (
        "test_torch_export.py", r"aoti_package|(?<!vh_nat_mini)-strict\]"),
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`SLOW_GROUPS` ``slow``."""
    import re

    for item in items:
        file_name = Path(str(item.fspath)).name
        if any(re.fullmatch(files, file_name) and re.search(names, item.name)
               for files, names in SLOW_GROUPS.values()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def test_hub():
    """The stand-in Hugging Face Hub (tests/hub_server.py) at ``HF_ENDPOINT``, for the whole session."""
    from hub_server import HubServer

    with HubServer(TEST_HUB_PORT) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _share_the_cores_between_workers():
    """With pytest-xdist (``-n N``) the workers share the machine: each one's torch gets its share of the cores
    instead of all of them, so N workers do not run N times the threads the machine has."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
