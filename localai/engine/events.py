"""The one streaming event every caller consumes, and the finished result built from them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationEvent:
    """One step of one request: the text and tokens it added, and where it stands.

    finish_reason is None while the request runs, then "stop" (end-of-sequence token or a
    stop string) or "length" (max_new_tokens or the context filled up).
    """

    request_id: str | int
    index: int  # position of the request in the input
    text: str  # the new text since the previous event of this request
    token_ids: list[int]  # the new tokens since the previous event
    finish_reason: str | None
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token: float | None  # seconds from the start of the run
    elapsed: float  # seconds from the start of the run
    tokens_per_second: float  # this request: generated tokens / seconds since it entered the batch
    throughput: float  # the whole run: generated tokens of all requests / seconds since the start
    peak_memory: int  # bytes: the accelerator's peak allocation, or the process's peak RSS on CPU

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestResult:
    """A finished request, assembled from its events."""

    request_id: str | int
    index: int
    prompt: object
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    time_to_first_token: float | None = None
    elapsed: float = 0.0
    tokens_per_second: float = 0.0

    def add(self, event: GenerationEvent) -> None:
        self.text += event.text
        self.token_ids.extend(event.token_ids)
        self.finish_reason = event.finish_reason
        self.prompt_tokens = event.prompt_tokens
        self.time_to_first_token = event.time_to_first_token
        self.elapsed = event.elapsed
        self.tokens_per_second = event.tokens_per_second

    def to_json(self) -> dict:
        return {
            "id": self.request_id,
            "prompt": self.prompt,
            "text": self.text,
            "tokens": {"prompt": self.prompt_tokens, "generated": len(self.token_ids)},
            "finish_reason": self.finish_reason,
            "timings": {
                "time_to_first_token_s": _round(self.time_to_first_token),
                "total_s": _round(self.elapsed),
                "tokens_per_second": _round(self.tokens_per_second),
            },
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
