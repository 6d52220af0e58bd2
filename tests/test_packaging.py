"""What a built wheel holds, checked against pyproject.toml without building one: an editable install
finds every file in the checkout, so a package or a data file missing from the build config goes unseen
until a user installs the wheel."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCS = {"README.md"}  # notes for developers, never opened at runtime


@pytest.fixture(scope="module")
def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages(config: dict) -> dict[str, Path]:
    """Package name -> folder, for every folder with an __init__.py under the package-dir roots."""
    found = {}
    for root_name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found[".".join((root_name, *init.parent.relative_to(ROOT / folder).parts))] = init.parent
    return found


def test_every_package_in_the_source_is_built_and_nothing_else(setuptools_config):
    listed = set(setuptools_config["packages"])
    assert listed == set(_source_packages(setuptools_config))
    assert all(name == "localai" or name.startswith("localai.") for name in listed)  # no top-level commands


def test_package_data_covers_every_file_the_code_may_open(setuptools_config):
    """Each non-Python file in a package folder (aliases.json, the kernel's .cpp) is matched by a
    package-data glob of the package that holds it."""
    packages = _source_packages(setuptools_config)
    owner = {folder: name for name, folder in packages.items()}
    globs = setuptools_config.get("package-data", {})
    missing = []
    for name, folder in packages.items():
        covered = {path for pattern in globs.get(name, []) + globs.get("*", []) for path in folder.glob(pattern)}
        for path in folder.rglob("*"):
            if (not path.is_file() or path.suffix in (".py", ".pyc") or path.name in DOCS
                    or "__pycache__" in path.parts):
                continue
            if owner[next(parent for parent in path.parents if parent in owner)] == name and path not in covered:
                missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, f"not in the wheel: {missing}"


def test_the_version_and_the_entry_point_match_the_package():
    import localai
    from localai import cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == localai.__version__
    assert project["scripts"] == {"localai": "localai.cli:main"} and callable(cli.main)


def test_the_transformers_floor_loads_packed_checkpoints():
    """transformers 4.x casts every floating tensor of a quantized checkpoint to the load dtype before
    the module sees it, so the float16 gains (int4: scales, zeros) arrive as float32 or bfloat16 and
    TurboLinear refuses them: no turboquant or int4_rtn checkpoint loads there. 5.0 keeps them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(dep for dep in project["dependencies"] if re.match(r"transformers\b", dep))
    floor = re.search(r">=\s*(\d+)", spec)
    assert floor and int(floor.group(1)) >= 5, spec
