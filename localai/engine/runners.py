"""What the scheduler drives: a model behind one small interface, with its cache.

`prefill(tokens, start, slot0, kv_len, last, lengths)` and `decode(tokens, start, kv_len)`
both return logits [B, vocab]; `move(src, dst, length)` relocates a sequence's cache.
LeanRunner uses the engine's own forward (on CUDA replayed as CUDA graphs, or torch.compile'd);
FallbackRunner runs any causal LM through transformers with one cache per sequence.
"""

from __future__ import annotations

import torch

from localai.engine.graphs import GraphDecoder, buckets
from localai.engine.model import LeanModel
from localai.engine.oom import is_out_of_memory
from localai.errors import first_line


def allow_recompiles(count: int) -> None:
    """Let torch.compile keep `count` graphs of one function (one per batch bucket): past dynamo's
    limit (8) the largest batches would run uncompiled."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # its older name
    setattr(config, name, max(getattr(config, name), count))


class LeanRunner:
    """The lean forward. decode_mode: "eager", "graphs" (CUDA graphs of the eager step) or "compile"
    (torch.compile with mode="reduce-overhead": fused kernels, replayed as CUDA graphs)."""

    kind = "lean"

    def __init__(self, model, decode_mode: str = "eager", notice=lambda message: None):
        self.model = LeanModel(model)
        self.notice = notice
        self.hf_tensors = list(model.parameters()) + list(model.buffers())
        self.decode_mode = decode_mode
        self.slots = 0
        self.max_ctx = 0
        self._fixed_step = None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def allocate(self, slots: int, max_ctx: int) -> None:
        self._fixed_step = None  # graphs point into the old cache
        self.model.allocate(slots, max_ctx)
        self.slots, self.max_ctx = slots, max_ctx
        if self.decode_mode == "graphs":
            self._fixed_step = GraphDecoder(self._full_view_step, slots, max_ctx, self.model.device)
        elif self.decode_mode == "compile":
            # views too: a static address belongs to a tensor, not to its storage, and every input
            # that is not static is copied into the CUDA graph's own buffer before each replay
            for tensor in self.model.tensors() + self.hf_tensors:
                torch._dynamo.mark_static_address(tensor)
            torch._dynamo.reset()
            allow_recompiles(len(buckets(slots)))
            compiled = torch.compile(self._full_view_step, mode="reduce-overhead", dynamic=False)
            self._fixed_step = PaddedStep(compiled, slots, max_ctx)

    def _full_view_step(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        last = torch.zeros_like(start)
        return self.model(tokens, start, 0, self.max_ctx, last, full_view=True)

    def cache_bytes(self) -> int:
        return self.model.cache.nbytes if self.model.cache is not None else 0

    def weight_bytes(self) -> int:
        """Weights held outside the model's parameters (packed for oneDNN on the CPU)."""
        return self.model.packed_bytes()

    def packing_bytes(self) -> int:
        """What packing for batched steps would add to weight_bytes (see LeanModel.packing_bytes)."""
        return self.model.packing_bytes()

    def prefill(self, tokens, start, slot0, kv_len, last, lengths=None) -> torch.Tensor:
        return self.model(tokens, start, slot0, kv_len, last)

    def decode(self, tokens: torch.Tensor, start: torch.Tensor, kv_len: int) -> torch.Tensor:
        """tokens: [B, 1] for slots 0..B-1 at positions start: [B] -> logits [B, vocab]."""
        if self._fixed_step is not None:
            try:
                return self._fixed_step(tokens, start)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                # a step that cannot be captured or compiled still runs eagerly
                self.notice(f"{self.decode_mode} decoding failed ({type(exc).__name__}: "
                            f"{first_line(exc)}); decoding eagerly")
                self._fixed_step, self.decode_mode = None, "eager"
        return self.model(tokens, start, 0, kv_len, torch.zeros_like(start))

    def move(self, src: int, dst: int, length: int) -> None:
        self.model.cache.move(src, dst, length)

    def free(self, slot: int) -> None:
        """Nothing to do: the static cache keeps its slots; the next sequence overwrites them."""


class PaddedStep:
    """A compiled fixed-shape step: the batch padded up to a bucket; padding rows write only the scratch position."""

    def __init__(self, step, slots: int, max_ctx: int):
        self.step, self.sizes, self.scratch = step, buckets(slots), max_ctx - 1

    def __call__(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        pad = next(size for size in self.sizes if size >= batch) - batch
        tokens = torch.cat([tokens, tokens.new_zeros(pad, 1)])
        start = torch.cat([start, start.new_full((pad,), self.scratch)])
        return self.step(tokens, start)[:batch].clone()


class FallbackRunner:
    """Any causal LM through its transformers forward; one DynamicCache per slot, rows run one by one."""

    kind = "transformers"

    def __init__(self, model):
        import inspect

        self.model = model
        self.slots = 0
        self.max_ctx = 0
        self.caches: list = []
        # newer transformers call the cache argument `cache`, older ones `past_key_values`
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def allocate(self, slots: int, max_ctx: int) -> None:
        self.slots, self.max_ctx = slots, max_ctx
        self.caches = [None] * slots

    def cache_bytes(self) -> int:
        return 0  # grows with use; accounted for by the sizing estimate

    def weight_bytes(self) -> int:
        return 0

    def packing_bytes(self) -> int:
        return 0

    def _step(self, slot: int, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens: [T] for one slot whose cache holds `start` tokens -> logits [T, vocab]."""
        from transformers import DynamicCache

        if start == 0 or self.caches[slot] is None:
            self.caches[slot] = DynamicCache(config=self.model.config)
        out = self.model(input_ids=tokens[None], use_cache=True, **{self.cache_argument: self.caches[slot]})
        return out.logits[0]

    def prefill(self, tokens, start, slot0, kv_len, last, lengths=None) -> torch.Tensor:
        rows = []
        for b in range(tokens.shape[0]):
            valid = int(lengths[b]) if lengths is not None else tokens.shape[1]
            if valid <= 0:
                rows.append(None)
                continue
            logits = self._step(slot0 + b, tokens[b, :valid], int(start[b]))
            rows.append(logits[min(int(last[b]), valid - 1)])
        filler = next(r for r in rows if r is not None)
        return torch.stack([r if r is not None else torch.zeros_like(filler) for r in rows])

    def decode(self, tokens: torch.Tensor, start: torch.Tensor, kv_len: int) -> torch.Tensor:
        return torch.stack([self._step(b, tokens[b], int(start[b]))[-1] for b in range(tokens.shape[0])])

    def move(self, src: int, dst: int, length: int) -> None:
        self.caches[dst], self.caches[src] = self.caches[src], None

    def free(self, slot: int) -> None:
        """Drop the slot's cache (its sequence finished or was set aside)."""
        self.caches[slot] = None
