"""Recognizing out-of-memory errors, from the CUDA allocator or the host's."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from localai.errors import LocalaiError


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


@contextmanager
def out_of_memory_as(message: str, hint: str):
    """Inside, running out of memory ends in LocalaiError(message, hint); any other error passes."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(exc):
            raise
        raise LocalaiError(message, hint) from exc
