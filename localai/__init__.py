"""localai: local AI on one consumer GPU.

Importing this package must stay cheap (no torch, no transformers): the CLI
imports it on every start.
"""

__version__ = "0.1.0"

# transformers learns the turboquant / int4_rtn checkpoint formats when its quantizer table loads
from localai.quant import autoregister as _autoregister  # noqa: E402  (standard library only)

_autoregister.install()
