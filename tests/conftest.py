"""Test-session setup that must happen before torch, timm or triton are imported."""

from __future__ import annotations

import os
from pathlib import Path


def _has_nvidia_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


# Triton fixes compiled-or-interpreted for the whole process when it is first imported (torch and timm import it),
# so the choice is made here, before any test module is collected: without a GPU, the Triton kernels are tested in
# Triton's CPU interpreter. An explicit TRITON_INTERPRET in the environment wins.
if "TRITON_INTERPRET" not in os.environ and not _has_nvidia_device():
    os.environ["TRITON_INTERPRET"] = "1"


import pytest  # noqa: E402  (after the environment setup above, on purpose)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data (golden outputs of official code) next to the repository; a user's clone has none."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (golden files ship with the project workspace, not with the repository)")
    return path
