"""The toolkit's own model folders under LOCALAI_HOME/models, their metadata, and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from localai.errors import LocalaiError
from localai.settings import localai_home

METADATA_FILE = "localai.json"  # written into every model folder the store creates
STAGING_PREFIX = ".partial-"  # temporary folders (.partial-<pid>@<host>-<purpose>-<random>); never listed,
# removed on failure and, when their process was killed, by the next command that writes to the store
ABANDONED_AFTER_S = 7 * 24 * 3600  # staging untouched this long is abandoned, whoever made it


def models_dir() -> Path:
    return localai_home() / "models"


def safe_name(text: str) -> str:
    """A folder name for a model: lower case, letters, digits, '.', '_' and '-' only."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    if not name:
        raise LocalaiError(f"cannot make a model name out of {text!r}", "Rename the file")
    return name


def model_dir(name: str) -> Path:
    return models_dir() / safe_name(name)


def read_metadata(folder: Path) -> dict:
    """The store's metadata for a model folder; {} when absent or unreadable."""
    try:
        data = json.loads((Path(folder) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_metadata(folder: Path, **fields) -> dict:
    """Write the store's metadata (source, original format, quantization, ...) into `folder`."""
    data = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
    (Path(folder) / METADATA_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return data


def folder_size(path: Path) -> int:
    """Bytes under `path`; linked files (HF cache snapshots link to blobs) count once, at their target's size."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                stat = os.stat(os.path.join(root, name))
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size
    return total


def hash_file(path: Path, digest) -> str:
    """The hex digest of a file's bytes fed to `digest` (a hashlib object, possibly already primed)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writable_models_dir() -> Path:
    """Create LOCALAI_HOME/models if needed; a one-line error when that is not possible."""
    folder = models_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=_staging_prefix("probe"))
        probe.close()
    except OSError as exc:
        raise LocalaiError(
            f"cannot write to {folder} ({exc.strerror or exc})",
            "Set LOCALAI_HOME to a writable folder, or fix the folder's permissions",
        ) from exc
    remove_abandoned_staging(folder)
    return folder


def _host_tag() -> str:
    """A short tag of this machine's name: process ids mean something only on the machine that
    made a staging folder (LOCALAI_HOME may be a network folder shared by several)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _staging_prefix(purpose: str) -> str:
    """Staging names carry their owner (process id and machine), so folders of a killed process can be
    found; a random part follows (mkdtemp's, or staging_name's), so no two names are ever the same."""
    return f"{STAGING_PREFIX}{os.getpid()}@{_host_tag()}-{purpose}-"


def staging_name(purpose: str) -> str:
    return f"{_staging_prefix(purpose)}{secrets.token_hex(4)}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _abandoned(entry: Path) -> bool:
    """A staging folder whose process (on this machine) is gone, or that nobody touched for a week."""
    if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir():
        return False
    owner = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
    pid, _, host = owner.partition("@")  # no host part: a name from before hosts were recorded
    with contextlib.suppress(OSError):
        if time.time() - entry.stat().st_mtime > ABANDONED_AFTER_S:
            return True
    return pid.isdigit() and host in ("", _host_tag()) and not _process_alive(int(pid))


def remove_abandoned_staging(folder: Path) -> list[Path]:
    """Delete staging folders of processes that were killed mid-download or mid-conversion; returns them."""
    removed = []
    for entry in Path(folder).iterdir():
        if _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def scratch_dir(purpose: str) -> tempfile.TemporaryDirectory:
    """A temporary folder inside LOCALAI_HOME/models (same disk as the final folders), removed on exit."""
    return tempfile.TemporaryDirectory(dir=writable_models_dir(), prefix=_staging_prefix(purpose))


@contextlib.contextmanager
def staged_model_dir(name: str) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes LOCALAI_HOME/models/<name>, on failure it is removed.

    When another process finished the same model first, its folder is kept and ours discarded.
    """
    final = model_dir(name)
    staging = Path(tempfile.mkdtemp(dir=writable_models_dir(), prefix=_staging_prefix(final.name)))
    try:
        yield staging
        share_like_umask(staging)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / METADATA_FILE).exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def share_like_umask(folder: Path) -> None:
    """mkdtemp and some writers (safetensors) create owner-only files; give the finished folder
    the modes a new file or folder gets."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.rglob("*"):
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def remove_tree(path: Path) -> None:
    """Delete a folder so that no half-deleted copy stays visible: rename it aside first."""
    path = Path(path)
    if path.is_symlink():  # a linked folder: remove the link, not what it points to
        path.unlink()
        return
    doomed = path.with_name(f"{staging_name('removing')}-{path.name}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def store_folders() -> list[Path]:
    """Every folder under LOCALAI_HOME/models, the store's and any other (staging folders excluded)."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_store_model(folder: Path) -> bool:
    """A folder the store wrote (it holds the store's metadata); only these are found, listed, removed."""
    return (Path(folder) / METADATA_FILE).is_file()


def find_imported(name: str) -> Optional[Path]:
    """The store folder named exactly `name` (any case); a name that safe_name would change is
    no store name ('my-model?' must not find, or remove, 'my-model')."""
    try:
        folder = model_dir(name)
    except LocalaiError:
        return None
    if folder.name != name.lower():
        return None
    return folder if is_store_model(folder) else None
