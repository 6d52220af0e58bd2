"""The model store: names and aliases, the HF cache, downloads, GGUF import, the offline fallback.

Every command that takes a MODEL calls `resolve_model(MODEL)` and gets a local folder back.
Only the standard library is imported here; huggingface-hub, torch and transformers load
inside the functions that need them.
"""

from localai.store.resolve import find_local, parse_model_ref, resolve_model

__all__ = ["find_local", "parse_model_ref", "resolve_model"]
