"""Next-token choice per row: greedy, temperature, top-k, top-p, min-p, repetition penalty.

Each sampled request draws from its own seeded torch.Generator, exactly one draw per
token, so its random draws do not depend on which other requests share the batch. The logits
they are drawn from can: matmul kernels pick their tiling (and, on a GPU, split-K sums added
in any order) by the number of rows, so the last bits of a row's logits follow the batch size.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import torch

from localai.engine.request import SamplingParams


def new_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def apply_repetition_penalty(row: torch.Tensor, history: Sequence[int], penalty: float) -> None:
    """Make tokens already seen less likely, in place: divide positive logits, multiply negative ones."""
    seen = torch.tensor(sorted(set(history)), dtype=torch.long, device=row.device)
    scores = row[seen]
    row[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)


def warp(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [V] -> probabilities [V] after temperature, top-k, top-p and min-p."""
    row = row / params.temperature
    if 0 < params.top_k < row.shape[-1]:
        kth = torch.topk(row, params.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the first token past top_p
        row = row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = row.softmax(-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    return probs


def pick_tokens(logits: torch.Tensor, rows: Sequence, eos_ids: Sequence[int]) -> list[int]:
    """logits: [B, V]; rows[b] has .params, .ids (prompt + generated so far), .generated, .generator."""
    early = [b for b, row in enumerate(rows) if len(row.generated) < row.params.min_new_tokens] if eos_ids else []
    penalized = [b for b, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
    floats = logits.float()  # a copy already, unless the logits are float32
    if (early or penalized) and floats is logits:
        floats = floats.clone()  # never change the caller's tensor
    logits = floats
    if early:  # one write for all rows: on a GPU each indexed write waits for its indices to be copied there
        logits[torch.tensor(early)[:, None], torch.tensor(sorted(set(eos_ids)))] = float("-inf")
    for b in penalized:
        apply_repetition_penalty(logits[b], rows[b].ids, rows[b].params.repetition_penalty)
    tokens = logits.argmax(-1).tolist()  # greedy for every row, replaced below where sampling
    for b, row in enumerate(rows):
        if not row.params.greedy:
            probs = warp(logits[b], row.params)
            tokens[b] = int(torch.multinomial(probs, 1, generator=row.generator).item())
    return tokens
