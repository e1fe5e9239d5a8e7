"""What this folder does when it is imported as a top-level ``kernels`` instead of ``vithub.kernels``.

The folder is installed only as ``vithub.kernels``. It becomes importable as plain ``kernels`` when the repository
root is on ``sys.path`` (a script, ``python -c`` or a notebook started in a clone), and then it shadows Hugging Face's
``kernels`` package, which transformers imports: transformers would get our package under the wrong name, and our
``torch.library`` ops would be registered a second time. So the import is handed over to the package of that name
installed elsewhere on ``sys.path``, or fails at once with a message that says what to do. Standard library only: this
runs before anything else of the folder.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def shadowed_import_message(name: str, folder: str, vithub_name: str) -> str:
    """The error for a vithub source folder imported under its top-level folder name ``name``."""
    return (f"'{name}' was imported from {folder}, which is vithub's source folder for '{vithub_name}', because the "
            f"repository root {Path(folder).parent} is on sys.path (a script, `python -c` or a notebook started "
            f"there). That folder is not a top-level package and shadows any installed package named '{name}'"
            + (" (Hugging Face's `kernels`, which transformers imports)" if name == "kernels" else "")
            + f". Run from another folder, or install vithub (`pip install -e .` in the clone) and import "
            f"'{vithub_name}'.")


def hand_over(name: str, folder: str) -> None:
    """Make ``sys.modules[name]`` the package ``name`` installed outside the repository root, or raise ImportError.

    Called from the folder's ``__init__`` while Python imports it under ``name``; after it returns, the import
    statement that started it gets the other package, and nothing of this folder has run but this module.
    """
    sys.modules.pop(__name__, None)  # this helper, loaded as `kernels._shadowing`, is not part of the other package
    root = Path(folder).resolve().parent
    elsewhere = [entry for entry in sys.path if isinstance(entry, str) and Path(entry or ".").resolve() != root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        raise ImportError(shadowed_import_message(name, folder, f"vithub.{Path(folder).name}"), name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
