"""Decode steps replayed from CUDA graphs: one graph per batch bucket, captured on first use.

A decode step launches hundreds of small kernels; replaying them as one graph removes the
launch and Python overhead. Shapes must be fixed, so the batch is padded up to a bucket
(1, 2, 4, ... slots) and attention spans the whole cache with a mask. Padding rows and the
warm-up runs write only to the last cache position, which no live sequence ever reaches
(the scheduler ends a sequence when its ids fill the context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def buckets(slots: int) -> list[int]:
    """Batch sizes that get their own graph: powers of two below `slots`, then `slots`."""
    return [1 << i for i in range(slots.bit_length()) if 1 << i < slots] + [slots]


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # [bucket, 1], static input
    start: torch.Tensor  # [bucket], static input
    logits: torch.Tensor  # [bucket, vocab], static output


class GraphDecoder:
    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], slots: int, max_ctx: int,
                 device: torch.device | str):
        """step(tokens [B, 1], start [B]) -> logits [B, vocab] with fixed shapes (full-cache attention)."""
        self.step = step
        self.sizes = buckets(slots)
        self.scratch = max_ctx - 1
        self.device = device
        self.captured: dict[int, Captured] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        bucket = next(size for size in self.sizes if size >= batch)
        entry = self.captured.get(bucket) or self._capture(bucket)
        entry.tokens[:batch].copy_(tokens)
        entry.tokens[batch:].zero_()
        entry.start[:batch].copy_(start)
        entry.start[batch:].fill_(self.scratch)
        entry.graph.replay()
        return entry.logits[:batch].clone()

    def _capture(self, bucket: int) -> Captured:
        tokens = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
        start = torch.full((bucket,), self.scratch, dtype=torch.long, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy initialization and kernel autotuning happen here
            for _ in range(2):
                self.step(tokens, start)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a speech thread may be using the GPU meanwhile (`chat --speak`)
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self.step(tokens, start)
        self.captured[bucket] = Captured(graph, tokens, start, logits)
        return self.captured[bucket]
