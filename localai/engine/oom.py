"""Recognizing out-of-memory errors, from the CUDA allocator or the host's."""

from __future__ import annotations

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))
