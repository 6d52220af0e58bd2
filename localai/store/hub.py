"""Hugging Face hub access: what a repo holds, which files to fetch, cache look-ups, downloads.

huggingface-hub reads HF_HOME and HF_HUB_OFFLINE when first imported, so it is imported inside
functions only, and the cache folder is computed from the environment at call time.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from localai.errors import LocalaiError
from localai.settings import hub_offline
from localai.store.home import hash_file
from localai.store.model_folder import PICKLE_PATTERNS, missing_part

HUB_TIMEOUT_S = 5.0  # first contact with the hub: an unreachable hub is reported after this long
DEFAULT_REVISION = "main"

# what it takes to run a model: weights, configs, tokenizer files
RUN_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken", "vocab.txt", "merges.txt")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")  # cache blobs of large (LFS) files are named by their SHA-256
GIT_SHA1_NAME = re.compile(r"^[0-9a-f]{40}$")  # ... of small files, by their git blob id


class HubUnavailable(Exception):
    """The hub cannot be used right now: `reason` is 'unreachable' or 'switched off (offline mode)'."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def looks_like_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and ".." not in text


def hub_cache_dir() -> Path:
    """The standard HF cache folder (HF_HUB_CACHE, else HF_HOME/hub), read from the environment now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    hf_home = os.environ.get("HF_HOME") or os.path.join(xdg_cache, "huggingface")
    return Path(hf_home).expanduser() / "hub"


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'no connection', across the HTTP clients huggingface-hub has used."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(found)


def is_unreachable_error(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled) or isinstance(exc, _connection_errors()):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, HfHubHTTPError) and response is not None and response.status_code >= 500


def remote_files(repo_id: str, revision: Optional[str]) -> dict[str, int]:
    """{file name: size} of a hub repo at `revision`; HubUnavailable when the hub cannot be reached."""
    if hub_offline():
        raise HubUnavailable("switched off (offline mode)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S, files_metadata=True)
    except GatedRepoError as exc:
        raise LocalaiError(f"{repo_id} is gated on the Hugging Face hub",
                           "Accept its license on huggingface.co, then log in with `hf auth login`") from exc
    except RevisionNotFoundError as exc:
        raise LocalaiError(f"{repo_id} has no revision {revision!r}", "Check --revision") from exc
    except RepositoryNotFoundError as exc:
        raise LocalaiError(f"{repo_id} was not found on the Hugging Face hub",
                           "Check the name (org/name), or log in with `hf auth login` if it is private") from exc
    except Exception as exc:
        if is_unreachable_error(exc):
            raise HubUnavailable("unreachable") from exc
        raise
    return {s.rfilename: int(s.size or 0) for s in info.siblings or []}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def select_files(repo_id: str, sizes: dict[str, int], include: Iterable[str] = (),
                 exclude: Iterable[str] = (), allow_pickle: bool = False) -> list[str]:
    """The files of a repo worth fetching: what runs the model (or `include`), no pickle unless allowed."""
    from localai.console import warn

    include, exclude = tuple(include), tuple(exclude)
    names = [n for n in sorted(sizes) if not _matches(n, exclude)]
    pickles = [n for n in names if _matches(n, PICKLE_PATTERNS)]
    if include:
        chosen = [n for n in names if _matches(n, include)]
    else:
        chosen = [n for n in names if _matches(n, RUN_PATTERNS)]
        if any(n.endswith(".safetensors") and not n.startswith("consolidated") for n in chosen):
            # transformers-format weights present: skip the duplicate native-format copies
            chosen = [n for n in chosen if not n.startswith(("consolidated", "original/"))]
        if not any(n.endswith(".safetensors") for n in chosen) and pickles:
            if not allow_pickle:
                raise LocalaiError(f"{repo_id} has only pickle weights ({pickles[0]}, ...)",
                                   "Pass --allow-pickle to fetch them (they are loaded with weights_only=True)")
            chosen += pickles
    blocked = [n for n in chosen if n in pickles and not allow_pickle]
    if blocked:
        warn(f"skipping {len(blocked)} pickle file(s) ({', '.join(blocked[:3])}); pass --allow-pickle to fetch them")
        chosen = [n for n in chosen if n not in blocked]
    if not chosen:
        ggufs = [n for n in names if n.endswith(".gguf")]
        if ggufs and not include:
            raise LocalaiError(f"{repo_id} holds GGUF files, not a transformers model",
                               f"Pick one with --gguf-file, e.g. --gguf-file {ggufs[0]}")
        raise LocalaiError(f"no files of {repo_id} match what was asked for",
                           "Check --include/--exclude against the repo's file list")
    return sorted(set(chosen))


def cached_snapshot(repo_id: str, revision: Optional[str] = None) -> Optional[Path]:
    """The cached snapshot folder of `repo_id` at `revision` if it can run the model, without
    touching the network; None when absent or incomplete."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, revision=revision or DEFAULT_REVISION,
                                 cache_dir=hub_cache_dir(), local_files_only=True)
    except (OSError, ValueError):
        return None
    return Path(path) if snapshot_complete(Path(path)) else None


def snapshot_complete(folder: Path) -> bool:
    """A config and weights, every shard its index names included. Files arrive one by one (each
    renamed into place when whole), so an interrupted download leaves a snapshot with only some."""
    return missing_part(folder) is None


def cached_file(repo_id: str, filename: str, revision: Optional[str] = None) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(),
                                   revision=revision or DEFAULT_REVISION)
    return Path(found) if isinstance(found, str) else None


def damaged_blob(path: Path) -> Optional[Path]:
    """The cache blob behind `path` when its bytes do not match the hash it is named by (truncated or
    corrupted on disk), else None. Blobs named otherwise cannot be checked and count as whole."""
    import hashlib

    blob = Path(path).resolve()
    if SHA256_NAME.match(blob.name):
        digest = hashlib.sha256()
    elif GIT_SHA1_NAME.match(blob.name):
        digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
    else:
        return None
    return blob if hash_file(blob, digest) != blob.name else None


def _download(repo_id: str, files: list[str], sizes: dict[str, int], revision: Optional[str],
              force: bool = False) -> list[Path]:
    """Fetch `files` into the HF cache (complete files are skipped unless `force`) with one progress bar
    on stderr."""
    from huggingface_hub import hf_hub_download

    from localai.console import progress
    from localai.store.hub_progress import DownloadBar, bar_class_for

    paths = []
    with progress() as bars:
        bar = DownloadBar(bars, repo_id, sum(sizes.get(name, 0) for name in files))
        file_bar = bar_class_for(bar)
        for name in files:
            bar.start_file()
            try:
                local = hf_hub_download(repo_id, name, revision=revision or DEFAULT_REVISION,
                                        cache_dir=hub_cache_dir(), tqdm_class=file_bar,
                                        etag_timeout=HUB_TIMEOUT_S, force_download=force)
            except Exception as exc:
                if is_unreachable_error(exc):
                    raise LocalaiError(f"the download of {repo_id} ({name}) was cut off: {exc}",
                                       "Run the same command again; complete files are kept") from exc
                raise
            bar.finish_file(sizes.get(name, 0))
            paths.append(Path(local))
    return paths


def download_snapshot(repo_id: str, revision: Optional[str] = None, include: Iterable[str] = (),
                      exclude: Iterable[str] = (), allow_pickle: bool = False) -> Path:
    """Fetch what it takes to run `repo_id` into the HF cache; return the snapshot folder."""
    sizes = remote_files(repo_id, revision)
    files = select_files(repo_id, sizes, include, exclude, allow_pickle)
    first, *_ = _download(repo_id, files, sizes, revision)
    return first.parents[len(Path(files[0]).parts) - 1]


def download_file(repo_id: str, filename: str, revision: Optional[str] = None, force: bool = False) -> Path:
    """Fetch one file (e.g. a .gguf) into the HF cache, again when `force`; return its local path."""
    sizes = remote_files(repo_id, revision)
    if filename not in sizes:
        ggufs = [n for n in sizes if n.endswith(".gguf")]
        raise LocalaiError(f"{repo_id} has no file {filename!r}",
                           f"Choose one of: {', '.join(ggufs[:8])}" if ggufs else "Check the file name")
    return _download(repo_id, [filename], sizes, revision, force)[0]
