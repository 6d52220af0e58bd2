"""Import localai from this checkout on a machine where it was not pip-installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def import_localai() -> None:
    """Put the checkout on sys.path and, unless installed, map the top-level kernels/ folder
    to `localai.kernels` (the package-dir mapping pip would have made)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import localai

    if importlib.util.find_spec("localai.kernels") is not None:
        return
    spec = importlib.util.spec_from_file_location("localai.kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["localai.kernels"] = module
    spec.loader.exec_module(module)
    localai.kernels = module
