"""Packaging: one ``vithub`` namespace over the fixed folders, nothing installed at top level but ``vithub``."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module, folder",
    [("vithub", "hub"), ("vithub.backbones", "backbones"), ("vithub.kernels", "kernels"),
     ("vithub.train", "train"), ("vithub.bench", "hub/bench"), ("vithub.detection", "detection")],
)
def test_namespace_maps_the_folders(module, folder):
    imported = importlib.import_module(module)
    assert Path(imported.__file__).resolve().parent == (REPO_ROOT / folder).resolve()


@pytest.mark.parametrize("name", ["kernels", "train", "hub", "backbones", "detection"])
def test_no_top_level_modules_leak(name, monkeypatch):
    # pytest puts tests/ and the rootdir on sys.path; look only at installed locations.
    import sys

    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT])
    importlib.invalidate_caches()
    assert importlib.util.find_spec(name) is None


def test_kernels_import_nothing_else_from_vithub():
    import re

    for path in (REPO_ROOT / "kernels").rglob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(vithub\S*)", path.read_text(), flags=re.M)
        assert not imports, f"{path.name} imports {imports}"


def test_version_is_exposed():
    import vithub

    assert vithub.__version__ != "0.0.0"


def test_dependencies_point_one_way():
    """backbones import only vithub.kernels and their own _common (no family imports another's file); train imports
    no other vithub package (it reaches models through timm, and token reduction through an entry point); detection
    and its segmentation package import only vithub.train (models come through timm, so they work for any timm
    model)."""
    import re

    for path in (REPO_ROOT / "backbones").glob("*.py"):
        text = path.read_text()
        absolute = set(re.findall(r"^\s*(?:from|import)\s+(vithub[\w.]*)", text, flags=re.M))
        relative = set(re.findall(r"^\s*from\s+\.(\w*)\s+import", text, flags=re.M))
        assert absolute <= {"vithub.kernels"}, f"{path.name} imports {absolute}"
        allowed = {"_common"} | ({"efficientvit_mit", "efficientvit_msra", "fastervit", "levit", "nat", "swin",
                                  "token_reduction", ""} if path.name == "__init__.py" else set())
        assert relative <= allowed, f"{path.name} imports .{relative - allowed}"
    for path in (REPO_ROOT / "train").glob("*.py"):
        imports = set(re.findall(r"^\s*(?:from|import)\s+(vithub[\w.]*)", path.read_text(), flags=re.M))
        assert all(name.startswith("vithub.train") for name in imports), f"{path.name} imports {imports}"
    for path in (REPO_ROOT / "detection").rglob("*.py"):  # segmentation/ included
        imports = set(re.findall(r"^\s*(?:from|import)\s+(vithub[\w.]*)", path.read_text(), flags=re.M))
        assert all(name.startswith(("vithub.train", "vithub.detection")) for name in imports), \
            f"{path.name} imports {imports}"


def test_detection_task_is_found_through_its_entry_point():
    """The trainer does not import vithub.detection; the installed entry point makes --task detection available."""
    from importlib.metadata import entry_points

    from vithub.train.tasks import get_task, task_names

    assert "detection" in {entry.name for entry in entry_points(group="vithub.tasks")}
    assert "detection" in task_names() and type(get_task("detection")).__module__ == "vithub.detection.task"
