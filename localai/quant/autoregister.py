"""Register TurboQuant (and the int4 baseline) with transformers the moment its quantizer table loads.

`import localai` must not import torch or transformers, so the registration waits:
a small import hook notices when `transformers.quantizers.auto` has finished
executing and registers right then (immediately, if it is already imported).
Standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TARGET = "transformers.quantizers.auto"


def _register() -> None:
    from localai.quant import hf

    hf.register()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of TARGET so _register runs after it executes."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # let the normal finders locate the module
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            uninstall()
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


_finder = _AfterImport()


def install() -> None:
    """Register now if transformers' quantizer table is loaded, else when it loads."""
    if TARGET in sys.modules:
        _register()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
