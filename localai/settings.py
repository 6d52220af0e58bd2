"""Global options, set once by the CLI callback and read by the library."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    debug: bool = False
    offline: bool = False
    device: str = "auto"  # auto | cuda | cpu


def env_flag(name: str) -> bool:
    """True for 1/on/yes/true in any case, as huggingface-hub reads its own switches."""
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


settings = Settings(debug=env_flag("LOCALAI_DEBUG"))


def localai_home() -> Path:
    """The toolkit's own files: converted models, quantized checkpoints (LOCALAI_HOME)."""
    return Path(os.environ.get("LOCALAI_HOME") or Path.home() / ".cache" / "localai").expanduser()


def hub_offline() -> bool:
    return settings.offline or env_flag("HF_HUB_OFFLINE")
