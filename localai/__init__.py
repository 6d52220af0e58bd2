"""localai: local AI on one consumer GPU.

Importing this package must stay cheap (no torch, no transformers): the CLI
imports it on every start.
"""

__version__ = "0.1.0"
