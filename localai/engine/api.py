"""The engine every caller uses: `Engine`, `stream_generate(...)` and `generate_batch(...)`.

    engine = Engine.load("smollm2-135m")
    for event in stream_generate(engine, [engine.request("Hello")]):
        print(event.text, end="")
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from localai.engine.events import GenerationEvent, RequestResult
from localai.engine.model import lean_support
from localai.engine.prompts import encode_prompt
from localai.engine.request import Request, SamplingParams
from localai.engine.runners import FallbackRunner, LeanRunner
from localai.engine.scheduler import Scheduler
from localai.engine.sizing import MemoryPlan, ModelShape, memory_info, peak_memory, plan_memory, tensor_bytes
from localai.errors import LocalaiError

BATCH_CAP = {"cuda": 64, "cpu": 32}
PREFILL_TOKENS = {"cuda": 4096, "cpu": 512}
DECODE_MODE = {"cuda": "graphs", "cpu": "eager"}


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple, set)) else [eos])
    return ids


class Engine:
    """A loaded model, its tokenizer and a runner (lean forward, or transformers for other architectures)."""

    def __init__(self, model, tokenizer, *, decode_mode: str | None = None, lean: bool = True,
                 notice=lambda message: None):
        """decode_mode: "eager", "graphs" (CUDA graphs) or "compile" (torch.compile); None = the
        fastest measured for the device: graphs on CUDA, eager on the CPU."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = str(next(model.parameters()).device)
        self.kind = "cuda" if self.device.startswith("cuda") else "cpu"
        self.fallback_reason = lean_support(model) if lean else "the lean forward was turned off"
        decode_mode = decode_mode or DECODE_MODE[self.kind]
        if decode_mode not in ("eager", "graphs", "compile"):
            raise LocalaiError(f"unknown decode mode {decode_mode!r}", "use eager, graphs or compile")
        if decode_mode != "eager" and self.kind != "cuda":
            raise LocalaiError(f"decode mode {decode_mode} needs a CUDA GPU", "drop --compile on the CPU")
        self.decode_mode = decode_mode if self.fallback_reason is None else "eager"
        if self.fallback_reason is None:
            self.runner = LeanRunner(model, decode_mode=decode_mode, notice=notice)
        else:
            self.runner = FallbackRunner(model)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.shape = ModelShape.from_config(model.config, torch.finfo(self.runner.dtype).bits // 8)
        self.model_bytes = tensor_bytes(model) + self.runner.weight_bytes()
        self.prefill_tokens = PREFILL_TOKENS[self.kind]
        self.notice = notice
        self.plan: MemoryPlan | None = None
        self._streaming = False  # one stream at a time: they share the cache

    @classmethod
    def load(cls, model_ref: str, *, device: str | None = None, dtype=None, decode_mode: str | None = None,
             notice=lambda message: None) -> "Engine":
        """Resolve an alias / folder / hub id, load model and tokenizer, build the engine."""
        from localai.loading import load_model, load_tokenizer
        from localai.store import resolve_model

        path = resolve_model(model_ref)
        tokenizer = load_tokenizer(path)
        return cls(load_model(path, device=device, dtype=dtype), tokenizer, decode_mode=decode_mode, notice=notice)

    # --- requests ----------------------------------------------------------------------
    def request(self, prompt: str | None = None, *, messages: list[dict] | None = None, system: str | None = None,
                params: SamplingParams | None = None, id=None, chat: bool | None = None) -> Request:
        """A Request from prompt text or chat messages (chat template applied when the model has one)."""
        ids = encode_prompt(self.tokenizer, prompt, messages, system, chat)
        return Request(prompt_ids=ids, params=(params or SamplingParams()).validate(), id=id,
                       prompt=messages if messages is not None else prompt)

    # --- memory ------------------------------------------------------------------------
    def plan_for(self, requests: list[Request], batch_size: int | None = None,
                 max_ctx: int | None = None) -> MemoryPlan:
        """Batch and context for these requests in the memory left on the device."""
        for request in requests:  # named here: in a batch, the model's limit alone does not say which one
            if len(request.prompt_ids) >= self.shape.max_positions:
                raise LocalaiError(f"request {request.id}: its prompt has {len(request.prompt_ids)} tokens, more "
                                   f"than the model's {self.shape.max_positions}-token context leaves room for",
                                   "shorten the prompt")
        longest = max(len(r.prompt_ids) for r in requests)
        wanted = max_ctx or max(len(r.prompt_ids) + r.params.max_new_tokens for r in requests)
        available, total = memory_info(self.device)
        available += self.runner.cache_bytes()  # the current cache is replaced, so it counts as free
        packing = self.runner.packing_bytes()  # a batched plan packs weights; a tied head's copy is extra
        return plan_memory(self.shape, device=self.kind, available_bytes=available - packing, total_bytes=total,
                           model_bytes=self.model_bytes + packing, wanted_ctx=wanted, min_ctx=longest + 1,
                           requests=len(requests), batch_cap=BATCH_CAP[self.kind],
                           prefill_tokens=self.prefill_tokens, requested_batch=batch_size)

    def prepare(self, plan: MemoryPlan) -> None:
        """Allocate the cache for `plan` unless the current one already has that shape."""
        if (self.runner.slots, self.runner.max_ctx) != (plan.batch, plan.max_ctx):
            self.runner.allocate(plan.batch, plan.max_ctx)
        self.plan = plan

    # --- generation --------------------------------------------------------------------
    def stream(self, requests: Iterable[Request], *, batch_size: int | None = None, max_ctx: int | None = None,
               continuous: bool = True, plan: MemoryPlan | None = None) -> Iterator[GenerationEvent]:
        """Events for all requests as they are produced (interleaved across requests)."""
        requests = list(requests)
        for request in requests:
            check_request(request)
        if not requests:
            return
        if self._streaming:
            raise LocalaiError("this engine is already generating", "finish or close the first stream before starting "
                               "another, or put all the requests into one stream")
        plan = plan or self.plan_for(requests, batch_size, max_ctx)
        longest = max(len(r.prompt_ids) for r in requests)
        if longest >= plan.max_ctx:
            raise LocalaiError(f"a {longest}-token prompt does not fit the plan's {plan.max_ctx}-token context",
                               "plan for these requests, or shorten the prompt")
        self._streaming = True
        try:
            self.prepare(plan)
            scheduler = Scheduler(self.runner, self.tokenizer, self.eos_ids, slots=self.runner.slots,
                                  prefill_tokens=self.prefill_tokens, continuous=continuous, device=self.device,
                                  notice=self.notice, peak_memory=lambda: peak_memory(self.device))
            yield from scheduler.run(requests)
        finally:
            self._streaming = False


def check_request(request: Request) -> None:
    if not request.prompt_ids:
        raise LocalaiError(f"request {request.id}: the prompt is empty", "give every request some text")
    request.params.validate()


def stream_generate(engine: Engine, requests: Iterable[Request], **options) -> Iterator[GenerationEvent]:
    """The streaming API: one GenerationEvent per request per step. Options as for Engine.stream."""
    return engine.stream(requests, **options)


def generate_batch(engine: Engine, requests: Iterable[Request], **options) -> list[RequestResult]:
    """All requests to completion; results in input order."""
    requests = list(requests)
    results = [RequestResult(request_id=r.id if r.id is not None else i, index=i, prompt=r.prompt)
               for i, r in enumerate(requests)]
    for event in engine.stream(requests, **options):
        results[event.index].add(event)
    return results
