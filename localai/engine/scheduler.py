"""Continuous batching over a fixed number of cache slots.

Active sequences always occupy slots 0..n-1: when one finishes, the last one moves
into its slot, and a waiting request takes the next free slot at the next step, so one
long answer never holds up the batch. On out-of-memory the batch is halved: the
sequences beyond the new limit go back to the front of the queue with what they have
generated so far, and are prefilled again later, so nothing is lost or repeated.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from localai.engine.detokenize import TextStream
from localai.engine.events import GenerationEvent
from localai.engine.oom import is_out_of_memory
from localai.engine.request import Request
from localai.engine.sampling import new_generator, pick_tokens
from localai.errors import LocalaiError


@dataclass
class Sequence:
    request: Request
    index: int
    ids: list[int]  # prompt + generated; all but the last are in the cache once it runs
    stream: TextStream
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    slot: int = -1
    cached: bool = False  # the cache holds ids[:-1] (set by prefill, cleared when preempted)
    done: bool = False  # finished; in a static batch it keeps its row (decoded, ignored) until the batch ends
    admitted_at: float | None = None
    first_token_at: float | None = None

    @property
    def params(self):
        return self.request.params


class Scheduler:
    """continuous=False gives classic static batching for comparison: a batch is admitted whole,
    and finished requests keep their rows (computed, ignored) until its longest request ends."""

    def __init__(self, runner, tokenizer, eos_ids: Iterable[int], slots: int, prefill_tokens: int,
                 continuous: bool = True, device: str | torch.device = "cpu",
                 notice: Callable[[str], None] = lambda message: None,
                 peak_memory: Callable[[], int] = lambda: 0, clock: Callable[[], float] = time.perf_counter):
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.slots = slots
        self.prefill_tokens = prefill_tokens
        self.continuous = continuous
        self.device = device
        self.notice = notice
        self.peak_memory = peak_memory
        self.clock = clock

    # --- the loop ----------------------------------------------------------------------
    def run(self, requests: Iterable[Request]) -> Iterator[GenerationEvent]:
        self.started = self.clock()
        self.total_generated = 0
        waiting = deque(self._sequence(index, request) for index, request in enumerate(requests))
        active: list[Sequence] = []
        while waiting or active:
            self._admit(waiting, active)
            newcomers = [seq for seq in active if not seq.cached]
            if newcomers:
                logits = self._guarded(lambda: self._prefill_logits(newcomers), waiting, active)
                if logits is None:
                    continue
                for seq in newcomers:
                    seq.cached = True
                yield from self._advance(newcomers, logits, active)
            if active:
                batch = list(active)
                logits = self._guarded(lambda: self._decode_logits(batch), waiting, active)
                if logits is None:
                    continue
                yield from self._advance(batch, logits, active)

    def _sequence(self, index: int, request: Request) -> Sequence:
        params = request.params
        generator = None if params.greedy else new_generator(params.seed, self.device)
        if request.id is None:
            request.id = index
        return Sequence(request, index, list(request.prompt_ids), TextStream(self.tokenizer, params.stop), generator)

    def _admit(self, waiting: deque, active: list) -> None:
        if not self.continuous and active:
            return  # static batching: a new batch starts only when the whole batch is done (see _advance)
        while waiting and len(active) < self.slots:
            seq = waiting.popleft()
            seq.slot = len(active)
            if seq.admitted_at is None:
                seq.admitted_at = self.clock()
            active.append(seq)

    # --- model calls -------------------------------------------------------------------
    def _prefill_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([self._prefill_group(group) for group in self._groups(seqs)])

    def _groups(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        """Runs of sequences in consecutive slots whose padded prompts fit the prefill token budget together."""
        group, longest = [], 0
        for seq in seqs:
            too_long = (len(group) + 1) * max(longest, len(seq.ids)) > self.prefill_tokens
            if group and (too_long or seq.slot != group[-1].slot + 1):
                yield group
                group, longest = [], 0
            group.append(seq)
            longest = max(longest, len(seq.ids))
        yield group

    def _prefill_group(self, group: list[Sequence]) -> torch.Tensor:
        """Right-padded prompts of consecutive slots, in chunks along time -> logits [n, vocab] at each last token."""
        lengths = torch.tensor([len(seq.ids) for seq in group])
        longest = int(lengths.max())
        tokens = torch.zeros(len(group), longest, dtype=torch.long)
        for row, seq in enumerate(group):
            tokens[row, :len(seq.ids)] = torch.tensor(seq.ids)
        chunk = max(1, self.prefill_tokens // len(group))
        final: list = [None] * len(group)
        for begin in range(0, longest, chunk):
            end = min(longest, begin + chunk)
            last = (lengths - 1 - begin).clamp(0, end - begin - 1)
            valid = (lengths - begin).clamp(0, end - begin)
            start = torch.full((len(group),), begin, dtype=torch.long)
            logits = self.runner.prefill(tokens[:, begin:end].to(self.device), start.to(self.device),
                                         group[0].slot, end, last.to(self.device), valid)
            for row, length in enumerate(lengths.tolist()):
                if begin <= length - 1 < end:
                    final[row] = logits[row]
        return torch.stack(final)

    def _decode_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        tokens = torch.tensor([[seq.ids[-1]] for seq in seqs], device=self.device)  # [B, 1]
        positions = [len(seq.ids) - 1 for seq in seqs]
        with torch.inference_mode():
            return self.runner.decode(tokens, torch.tensor(positions, device=self.device), max(positions) + 1)

    def _guarded(self, compute: Callable[[], torch.Tensor], waiting: deque, active: list) -> torch.Tensor | None:
        """compute(), or None after backing off from an out-of-memory error (the caller retries)."""
        try:
            return compute()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(active) > 1:
            keep = len(active) // 2
            self.notice(f"out of memory with {len(active)} sequences in the batch: continuing with {keep}")
            self.slots = keep
            for seq in reversed(active[keep:]):
                self.runner.free(seq.slot)
                seq.slot, seq.cached = -1, False
                if not seq.done:  # a finished row of a static batch has nothing left to do
                    waiting.appendleft(seq)
            del active[keep:]
            return None
        if self.prefill_tokens > 16:
            self.prefill_tokens //= 2
            self.notice(f"out of memory with one sequence: prefilling {self.prefill_tokens} tokens at a time")
            for seq in reversed(active):
                self.runner.free(seq.slot)
                seq.slot, seq.cached = -1, False
                if not seq.done:
                    waiting.appendleft(seq)
            active.clear()
            return None
        raise LocalaiError("out of memory with a single sequence",
                           "use a shorter prompt or context, a 4-bit model, or --device cpu")

    # --- bookkeeping -------------------------------------------------------------------
    def _advance(self, seqs: list[Sequence], logits: torch.Tensor, active: list) -> Iterator[GenerationEvent]:
        running = [(row, seq) for row, seq in enumerate(seqs) if not seq.done]
        if len(running) < len(seqs):
            logits = logits[[row for row, _ in running]]
        with torch.inference_mode():
            tokens = pick_tokens(logits, [seq for _, seq in running], self.eos_ids)
        now, peak = self.clock(), self.peak_memory()
        events = [self._append(seq, token, now, peak) for (_, seq), token in zip(running, tokens)]
        for (_, seq), event in zip(running, events):
            seq.done = event.finished
            if seq.done and self.continuous:
                self._release(seq, active)
        if not self.continuous and all(seq.done for seq in active):
            active.clear()  # a static batch ends only when its longest request does
        yield from events

    def _append(self, seq: Sequence, token: int, now: float, peak: int) -> GenerationEvent:
        seq.ids.append(token)
        seq.generated.append(token)
        self.total_generated += 1
        if seq.first_token_at is None:
            seq.first_token_at = now
        reason = None
        if token in self.eos_ids:
            text, reason = seq.stream.finish(), "stop"
        else:
            text = seq.stream.add(token)
            if seq.stream.stopped:
                reason = "stop"
            elif len(seq.generated) >= seq.params.max_new_tokens or len(seq.ids) >= self.runner.max_ctx:
                text, reason = text + seq.stream.finish(), "length"
        return GenerationEvent(
            request_id=seq.request.id, index=seq.index, text=text, token_ids=[token], finish_reason=reason,
            prompt_tokens=len(seq.request.prompt_ids), generated_tokens=len(seq.generated),
            time_to_first_token=seq.first_token_at - self.started, elapsed=now - self.started,
            tokens_per_second=len(seq.generated) / max(now - seq.admitted_at, 1e-9),
            throughput=self.total_generated / max(now - self.started, 1e-9), peak_memory=peak)

    def _release(self, seq: Sequence, active: list) -> None:
        """Free seq's slot; the last active sequence moves into it so slots stay 0..n-1."""
        last = active[-1]
        if last is not seq:
            self.runner.move(last.slot, seq.slot, len(last.ids) - 1)  # the last slot is free after the move
            last.slot = seq.slot
            active[seq.slot] = last
        else:
            self.runner.free(seq.slot)
        active.pop()
        seq.slot = -1
