"""What makes a folder a model: a config, weights, and every shard its index names."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Optional

from localai.errors import LocalaiError

CONFIG_FILES = ("config.json", "params.json")  # transformers layout | Mistral's native layout
# pickle files: fetched only with allow_pickle (they can run code when unpickled carelessly)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
WEIGHT_PATTERNS = ("*.safetensors",) + PICKLE_PATTERNS
NO_CONFIG = "it has no config.json"


def missing_part(folder: Path) -> Optional[str]:
    """What keeps `folder` from being a model folder, in a few words; None when nothing does."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in CONFIG_FILES):
        return NO_CONFIG
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return f"its {index.name} is not a readable weight index"
        absent = sorted(shard for shard in shards if not (folder / shard).is_file())
        if absent:
            return f"it lacks {absent[0]}, which {index.name} names"
    if not any(p.is_file() and any(fnmatch.fnmatch(p.name, w) for w in WEIGHT_PATTERNS) for p in folder.iterdir()):
        return "it has no weights (*.safetensors)"
    return None


def check_model_folder(folder: Path) -> Path:
    """`folder` when it holds a model; a one-line error saying what is missing otherwise."""
    reason = missing_part(folder)
    if reason is not None:
        hint = ("Pass the folder that holds config.json and the weights, or a .gguf file" if reason == NO_CONFIG
                else "The folder is incomplete: download or copy the model again")
        raise LocalaiError(f"{folder} is not a model folder: {reason}", hint)
    return Path(folder)
