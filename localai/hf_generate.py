"""Streaming text generation through transformers' `generate` (one prompt at a time).

The chat template is applied when the tokenizer has one; temperature 0 means greedy.
`stream_generate` yields one small `GenerationStep` per decoded piece of text.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass
class GenerationStep:
    text: str  # new text since the previous step
    tokens: int  # tokens generated so far
    finish_reason: Optional[str] = None  # "stop" (end-of-sequence) | "length"; set on the last step
    seconds: float = 0.0  # since the call started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def encode_prompt(tokenizer, prompt: str, system: Optional[str] = None):
    """input_ids [1, T] for `prompt`, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    text = f"{system}\n\n{prompt}" if system else prompt
    return tokenizer(text, return_tensors="pt")["input_ids"]


def _generation_config(model, max_new_tokens: int, temperature: float):
    """The model's special tokens, our length and sampling; none of its own sampling defaults."""
    from transformers import GenerationConfig

    base = model.generation_config.to_dict() if model.generation_config is not None else {}
    keep = {k: base[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id") if base.get(k) is not None}
    config = GenerationConfig(**keep, max_new_tokens=max_new_tokens)
    if temperature > 0:
        config.do_sample, config.temperature = True, temperature
        config.top_k, config.top_p = None, None
    else:
        config.do_sample = False
    return config


def stream_generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
                    seed: Optional[int] = None, system: Optional[str] = None) -> Iterator[GenerationStep]:
    """Generate an answer to `prompt`, yielding text as it is decoded."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    input_ids = encode_prompt(tokenizer, prompt, system).to(model.device)  # [1, T]
    if seed is not None:
        torch.manual_seed(seed)
    streamer = _counting_streamer(tokenizer)
    stop = threading.Event()

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return stop.is_set()

    result: dict = {}

    def run() -> None:
        try:
            with torch.inference_mode():
                result["ids"] = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                    generation_config=_generation_config(model, max_new_tokens, temperature),
                    stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
        except BaseException as exc:  # handed to the caller's thread below
            result["error"] = exc
            streamer.end()

    started = time.perf_counter()
    worker = threading.Thread(target=run, daemon=True, name="generate")
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield GenerationStep(piece, streamer.generated, seconds=time.perf_counter() - started)
    finally:
        stop.set()
        worker.join()
    if "error" in result:
        raise result["error"]
    new_tokens = result["ids"][0, input_ids.shape[1]:]
    yield GenerationStep("", len(new_tokens), _finish_reason(model, new_tokens, max_new_tokens),
                         time.perf_counter() - started)


def _counting_streamer(tokenizer):
    """transformers' TextIteratorStreamer that also counts the generated tokens."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        generated = 0

        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.generated += value.numel()
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _finish_reason(model, new_tokens, max_new_tokens: int) -> str:
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    if len(new_tokens) and int(new_tokens[-1]) in eos_ids:
        return "stop"
    return "length" if len(new_tokens) >= max_new_tokens else "stop"
