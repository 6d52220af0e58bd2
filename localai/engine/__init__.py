"""Batched text generation: static KV cache, lean forward, continuous batching, streaming events.

Callers use `localai.engine.api` (`Engine`, `stream_generate`, `generate_batch`); every one of
them consumes the same `GenerationEvent` stream.
"""
