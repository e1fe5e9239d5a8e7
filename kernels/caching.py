"""Building tensors that outlive the call that made them (cached index plans, coordinates, eval-mode biases).

A tensor made under ``torch.inference_mode()`` is an inference tensor, which autograd may never save: cached once
inside an inference-mode evaluation, it would break every later training step that reads it ("Inference tensors
cannot be saved for backward"). What is cached is therefore always built as a normal tensor, without a graph.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


@contextlib.contextmanager
def constant_tensors() -> Iterator[None]:
    """Tensors made inside are normal (not inference) tensors with no autograd history, whatever mode the caller
    is in."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def built_as_constants(function: Callable[..., T]) -> Callable[..., T]:
    """``function`` run inside :func:`constant_tensors` (put it under a cache decorator)."""

    @functools.wraps(function)
    def build(*args, **kwargs):
        with constant_tensors():
            return function(*args, **kwargs)

    return build
