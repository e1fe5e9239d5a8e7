"""Checkpoints that survive a kill: weights as safetensors, training state as a weights-only-loadable file, every
write atomic (temp file in the same folder, fsync, ``os.replace``, fsync of the folder)."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_SUFFIX = ".state.pt"


class UnsafeWeightsError(ValueError):
    """A weights file that is not plain tensors: ``torch.load(weights_only=True)`` refused it, and it is never
    unpickled any other way."""


def replace_durably(source: Path, destination: Path) -> None:
    """Move the finished file ``source`` over ``destination`` (same file system): its bytes are flushed first and
    the rename after, so a crash leaves the old file or the new one."""
    with open(source, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(source, destination)
    directory = os.open(Path(destination).parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, then move the finished file over ``path``: a reader (or a resume after a kill) sees
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        replace_durably(Path(tmp), path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(path: Path, state_dict: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_state(path: Path, state: Dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> Dict[str, Any]:
    """Training state, loaded with ``weights_only=True`` (a state file never runs code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    return load_file(str(path))


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """A state dict from ``*.safetensors``, or from a torch file through ``torch.load(weights_only=True)`` (a
    ``{"state_dict": ...}`` wrapper is unwrapped). A pickle that would build other objects, or run code, raises
    :class:`UnsafeWeightsError`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as error:
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeWeightsError(f"{path}: refused to load: not a plain tensor file (torch.load weights_only=True "
                                 f"said: {said}). vithub never unpickles arbitrary objects; convert the weights to "
                                 "safetensors") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UnsafeWeightsError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def state_dict_mismatch(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> str:
    """``""`` when ``state_dict`` fits ``model`` exactly; otherwise every missing key, unexpected key and shape
    mismatch, one per line under a counted heading."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [f"{key}: weights {tuple(state_dict[key].shape)}, model {tuple(own[key].shape)}"
                  for key in sorted(set(own) & set(state_dict)) if state_dict[key].shape != own[key].shape]
    return "\n".join(f"{title} ({len(items)}):\n  " + "\n  ".join(items)
                     for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                          ("shape mismatches", mismatched)) if items)


def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch generator states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
    *internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(output: Path) -> List[Tuple[int, Path]]:
    """``(num_updates, state_path)`` of every checkpoint in ``output`` whose state file loads and whose weights file
    exists, newest first. The state is written after its weights, so a loadable state means complete weights."""
    found = []
    for state_path in Path(output).glob(f"*{STATE_SUFFIX}"):
        try:
            state = load_state(state_path)
        except Exception:  # a damaged file is skipped: an older complete checkpoint wins
            continue
        weights = Path(output) / state.get("weights", "")
        if weights.is_file():
            found.append((int(state["num_updates"]), state_path))
    return sorted(found, key=lambda item: -item[0])
