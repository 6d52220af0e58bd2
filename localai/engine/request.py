"""What one generation asks for: the prompt's token ids and its sampling parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from localai.errors import LocalaiError


GREEDY_BELOW = 1e-5  # a lower temperature is greedy in effect, and logits divided by it overflow float32


@dataclass
class SamplingParams:
    """Per-request decoding settings. temperature 0 means greedy; seed makes sampling reproducible."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0  # end-of-sequence tokens are masked until this many were generated

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def __post_init__(self):
        if isinstance(self.stop, str):  # one stop string, not one per character
            self.stop = (self.stop,)
        self.stop = tuple(self.stop or ())

    def validate(self, error: type[LocalaiError] = LocalaiError) -> "SamplingParams":
        """Raise `error` naming the first out-of-range setting; return self. Commands pass
        UsageError for values from their flags (exit 2); a request's own options are data (exit 1)."""
        floats = (self.temperature, self.top_p, self.min_p, self.repetition_penalty)
        checks = [
            (all(math.isfinite(value) for value in floats), "sampling options must be finite numbers, not inf or nan"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature >= 0, "temperature must be 0 (greedy) or more"),
            (self.top_k >= 0, "top_k must be 0 (off) or more"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be above 0"),
            (self.min_new_tokens >= 0, "min_new_tokens must be 0 or more"),
            (self.seed is None or -2**63 <= self.seed < 2**64, "seed must fit in 64 bits"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty text"),
        ]
        for ok, message in checks:
            if not ok:
                raise error(message, "fix the sampling option")
        return self


@dataclass
class Request:
    """One prompt to answer. `prompt` (text or chat messages) is kept only for reporting."""

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    id: str | int | None = None
    prompt: object = None
