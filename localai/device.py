"""Pick the torch device from --device (auto | cuda | cpu)."""

from __future__ import annotations

from localai.errors import LocalaiError
from localai.settings import settings


def resolve_device(choice: str | None = None) -> str:
    import torch

    choice = choice or settings.device
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise LocalaiError("--device cuda was asked for but no CUDA GPU is visible",
                           "check `localai doctor`, or use --device cpu")
    if choice not in ("cuda", "cpu"):
        raise LocalaiError(f"unknown device {choice!r}", "use auto, cuda or cpu")
    return choice
