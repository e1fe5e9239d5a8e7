"""Shared fixtures. ``shared_dir`` is the project's ``../shared`` folder (golden outputs, design notes)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (a user's clone has no ../shared); golden-output tests need it")
    return SHARED_DIR
