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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data (golden outputs of official code) next to the repository; a user's clone has none."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (golden files ship with the project workspace, not with the repository)")
    return path


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
