"""Packaging: one ``vithub`` namespace over the fixed folders, nothing installed at top level but ``vithub``."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

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


FOLDERS = {"kernels": "vithub.kernels", "train": "vithub.train", "hub": "vithub", "backbones": "vithub.backbones",
           "detection": "vithub.detection"}


def _foreign_top_level_names(paths: list[str]) -> set[str]:
    """The top-level importable names among an installation's file paths (relative to site-packages) that are not
    vithub's own: only ``vithub`` itself, its dist-info, setuptools' editable-install hooks and scripts may appear."""
    names = set()
    for path in paths:
        parts = PurePosixPath(path).parts
        top = parts[0]
        if top == ".." or top.endswith(".dist-info") or top.startswith("__editable__") or top == "vithub":
            continue
        if top == "__pycache__" and parts[-1].startswith("__editable__"):
            continue
        names.add(top.removesuffix(".py"))
    return names


def test_installed_distribution_holds_only_the_vithub_package():
    """What the installed distribution puts on sys.path: its top-level names, its files and (editable install) the
    finder's mapping and .pth lines name nothing but ``vithub``, whatever other packages are installed (Hugging
    Face's ``kernels`` is a real top-level package, and that is not ours to test)."""
    from importlib.metadata import distribution

    dist = distribution("vithub")
    assert Path(dist.locate_file("")).resolve() != REPO_ROOT, "found the source tree's egg-info, not the install"
    assert dist.read_text("top_level.txt").split() == ["vithub"]
    files = [str(path) for path in dist.files]
    assert _foreign_top_level_names(files) == set(), files
    for name in files:
        if name.endswith(".pth"):  # a path line would put a folder on sys.path; an editable install's must not
            for line in Path(dist.locate_file(name)).read_text().splitlines():
                if line.strip() and not line.startswith(("import ", "#")):
                    assert not any((Path(line.strip()) / folder).is_dir() for folder in FOLDERS), line
        if name.startswith("__editable__") and name.endswith("_finder.py"):
            finder = importlib.import_module(PurePosixPath(name).stem)
            assert finder.MAPPING and all(key.split(".")[0] == "vithub" for key in finder.MAPPING), finder.MAPPING
            assert set(finder.MAPPING.values()) >= {str(REPO_ROOT / folder) for folder in FOLDERS}


def test_wheel_holds_only_the_vithub_package(tmp_path):
    """A regular (non-editable) install: the wheel built from the tree has ``vithub/`` and its dist-info only."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *FOLDERS):
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy
        copy(REPO_ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("vithub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert _foreign_top_level_names(names) == set(), names
    assert "vithub/kernels/_shadowing.py" in names and "vithub/train/__init__.py" in names
    # every source folder with Python files ships (a subpackage left out of pyproject's list would not)
    for package in sorted({path.parent for folder in FOLDERS for path in (REPO_ROOT / folder).rglob("*.py")}):
        relative = package.relative_to(REPO_ROOT)
        installed = "/".join(["vithub", *relative.parts[1:]]) if relative.parts[0] == "hub" else \
            "/".join(["vithub", *relative.parts])
        assert f"{installed}/__init__.py" in names, relative


def test_the_test_runner_keeps_the_repository_root_off_sys_path():
    import sys

    assert all(Path(entry or ".").resolve() != REPO_ROOT for entry in sys.path), sys.path


def _python_in_the_root(code: str, *flags: str) -> subprocess.CompletedProcess:
    """``python -c code`` started in the repository root, which (like any script run there) puts the root first on
    sys.path; offline, with no PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _installed_elsewhere(name: str) -> bool:
    return importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if p]) is not None


def test_transformers_in_the_root_gets_hugging_faces_kernels_or_our_message():
    """transformers imports a top-level ``kernels`` (Hugging Face's). Run in the root, our folder of that name hands
    the import over to the installed package, so transformers' kernel hub integration imports, and no file of ours
    is ever loaded under a name other than ``vithub.*`` (our ops are not registered twice). Without the package,
    the import fails with our message instead."""
    code = (
        "import json, sys, vithub\n"
        "outcome = {}\n"
        "try:\n"
        "    import transformers.integrations.hub_kernels\n"
        "    import kernels\n"
        "    outcome['kernels'] = kernels.__file__\n"
        "except ImportError as error:\n"
        "    outcome['error'] = str(error)\n"
        f"root = {str(REPO_ROOT)!r}\n"
        "outcome['ours'] = sorted(name for name, module in list(sys.modules.items())\n"
        "                         if (getattr(module, '__file__', None) or '').startswith(root + '/'))\n"
        "print(json.dumps(outcome))\n"
    )
    result = _python_in_the_root(code)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["ours"] and all(name.split(".")[0] == "vithub" for name in outcome["ours"]), outcome["ours"]
    if _installed_elsewhere("kernels"):
        assert "error" not in outcome, outcome.get("error")
        assert not Path(outcome["kernels"]).resolve().is_relative_to(REPO_ROOT), outcome["kernels"]
    else:
        assert "shadows any installed package named 'kernels'" in outcome["error"]


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_a_source_folder_imported_by_its_folder_name_fails_with_a_clear_message(folder):
    """With nothing installed of that name (no site-packages), importing a folder under its own name fails at once,
    before any of its code runs, and says why and what to do."""
    result = _python_in_the_root(f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import {folder}", "-I", "-S")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError:") and f"'{FOLDERS[folder]}'" in message, message
    assert "repository root" in message and "sys.path" in message and "pip install -e ." in message, message


def test_kernels_import_nothing_else_from_vithub():
    import re

    for path in (REPO_ROOT / "kernels").rglob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(vithub\S*)", path.read_text(), flags=re.M)
        assert not imports, f"{path.name} imports {imports}"


def test_version_is_exposed():
    import vithub

    assert vithub.__version__ != "0.0.0"


def test_dependencies_point_one_way():
    """backbones import only vithub.kernels and their own shared modules (_common, _cpu_paths; no family imports
    another's file); train imports no other vithub package (it reaches models through timm, and token reduction
    through an entry point); detection and its segmentation package import only vithub.train (models come through
    timm, so they work for any timm model)."""
    import re

    for path in (REPO_ROOT / "backbones").rglob("*.py"):
        text = path.read_text()
        absolute = set(re.findall(r"^\s*(?:from|import)\s+(vithub[\w.]*)", text, flags=re.M))
        relative = set(re.findall(r"^\s*from\s+(\.+\w*)\s+import", text, flags=re.M))
        assert absolute <= {"vithub.kernels"}, f"{path.name} imports {absolute}"
        if path.parent.name == "token_reduction":  # the token-reduction package: its own modules and _common
            allowed = {"..", ".._common"} | {f".{module.stem}" for module in path.parent.glob("*.py")} | {"."}
        else:
            families = {".efficientvit_mit", ".efficientvit_msra", ".fastervit", ".levit", ".nat", ".swin",
                        ".token_reduction", "."}
            allowed = {"._common", "._cpu_paths"} | (families if path.name == "__init__.py" else set())
        assert relative <= allowed, f"{path.name} imports {relative - allowed}"
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


def test_the_fast_tier_keeps_tests_of_every_test_file():
    """`pytest -m "not slow"` (tests/conftest.py's SLOW_GROUPS) leaves every test file some tests, so the fast tier
    touches every module."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "not slow", "-p",
                             "no:cacheprovider", str(REPO_ROOT / "tests")], cwd=REPO_ROOT / "tests",
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    fast_files = {line.split("::")[0].rsplit("/", 1)[-1] for line in result.stdout.splitlines() if "::" in line}
    all_files = {path.name for path in (REPO_ROOT / "tests").glob("test_*.py")}
    assert all_files and all_files <= fast_files, sorted(all_files - fast_files)
