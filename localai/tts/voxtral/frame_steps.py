"""One Voxtral frame step, run eagerly or replayed from a CUDA graph.

A frame step turns the backbone's hidden state into the frame's 37 codes (the acoustic
head: a semantic argmax and 7 guided Euler steps of a small transformer) and feeds those
codes back through the backbone at the next position for the next hidden state. That is
about a thousand small kernels per 80 ms frame; on a GPU their launches, not their
arithmetic, set the pace, so there the step is captured once and replayed.

    EagerFrames       plain calls; attention reads only the positions written so far
    FixedShapeFrames  the same arithmetic with fixed shapes: the position is a tensor and
                      attention spans a persistent cache under a mask (what a graph records)
    GraphFrames       FixedShapeFrames captured in one CUDA graph, replayed for every frame

Each object keeps one KV cache and so serves one stream at a time: `cache_for(length)`
before the prompt's prefill, then `step(hidden, noise, position)` per frame.
"""

from __future__ import annotations

import torch

CACHE_ROUNDING = 1024  # persistent caches grow in these steps, so most sentences reuse the captured graph


class EagerFrames:
    def __init__(self, model):
        self.model = model
        self.cache = None

    def cache_for(self, length: int):
        """A KV cache of at least `length` positions for the next stream."""
        self.cache = self.model.backbone.new_cache(length)
        return self.cache

    def frame(self, hidden: torch.Tensor, noise: torch.Tensor, position) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [1, C], noise [1, 36] -> (codes [1, 37], the backbone's hidden state [1, C] after
        reading those codes at `position`, an int or a [1] long tensor)."""
        model = self.model
        codes = model.acoustic(hidden, noise)
        return codes, model.backbone(model.audio_embeddings(codes)[:, None], self.cache, position)[:, -1]

    def step(self, hidden: torch.Tensor, noise: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frame(hidden, noise, position)


class FixedShapeFrames(EagerFrames):
    def cache_for(self, length: int):
        """The persistent cache, replaced by a larger one when `length` does not fit. Stale entries
        of earlier streams stay masked: a step attends only up to its own position."""
        if self.cache is None or self.cache.max_len < length:
            self.cache = None  # free the old one before allocating its successor
            size = -(-length // CACHE_ROUNDING) * CACHE_ROUNDING
            backbone = self.model.backbone
            self.cache = backbone.new_cache(size)
            backbone.rope_for(0, size, self.model.device)  # the rotary table covers the cache before any capture
        return self.cache

    def step(self, hidden, noise, position: int):
        return self.frame(hidden, noise, torch.tensor([position], device=hidden.device))


class GraphFrames(FixedShapeFrames):
    def __init__(self, model):
        super().__init__(model)
        self.graph: torch.cuda.CUDAGraph | None = None

    def cache_for(self, length: int):
        old = self.cache
        cache = super().cache_for(length)
        if cache is not old:
            self.graph = None  # it points into the old cache
        return cache

    def step(self, hidden, noise, position: int):
        if self.graph is None:
            self.capture()
        self.hidden.copy_(hidden)
        self.noise.copy_(noise)
        self.position.fill_(position)
        self.graph.replay()
        return self.codes.clone(), self.next_hidden

    def capture(self) -> None:
        """Record the step for the current cache (cache_for first)."""
        model = self.model
        self.hidden = torch.zeros(1, model.config.backbone.dim, device=model.device, dtype=model.dtype)
        self.noise = torch.zeros(1, model.config.n_acoustic_codebook, device=model.device)
        # warm-up and capture write the cache's last position, which no stream reaches (streams
        # ask for one position more than they use)
        self.position = torch.full((1,), self.cache.max_len - 1, device=model.device, dtype=torch.long)
        self.rope = model.backbone.rope_for(0, self.cache.max_len, model.device)  # the graph reads it: keep it alive
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy tables, kernel compilation and autotuning happen here
            for _ in range(2):
                self.frame(self.hidden, self.noise, self.position)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: `chat --speak` keeps generating text on the main thread meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.codes, self.next_hidden = self.frame(self.hidden, self.noise, self.position)
        self.graph = graph


FRAME_STEPS = {"eager": EagerFrames, "fixed-shape": FixedShapeFrames, "graphs": GraphFrames}
