"""What a benchmark asks of the model: prompts as token ids and a fixed output length.

Synthetic prompts are random token ids drawn with a seed (special tokens excluded), the
same idea as `vllm bench serve --dataset-name random`. EOS is ignored while benchmarking,
so every request produces exactly `output_len` tokens.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from localai.errors import LocalaiError, UsageError
from localai.infile import read_text_file


@dataclass
class Workload:
    prompts: list[list[int]]  # token ids, one list per request
    output_len: int
    seed: int
    source: str  # "random" or the prompts file

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def max_input_len(self) -> int:
        return max(len(p) for p in self.prompts)

    def describe(self) -> dict:
        lengths = [len(p) for p in self.prompts]
        return {"source": self.source, "num_requests": self.num_requests, "input_len": max(lengths),
                "min_input_len": min(lengths), "output_len": self.output_len, "seed": self.seed}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Workload":
        return cls(**data)


def random_workload(vocab_size: int, special_ids: set[int], num_requests: int, input_len: int,
                    output_len: int, seed: int) -> Workload:
    """`num_requests` prompts of `input_len` random ordinary token ids."""
    check_lengths(num_requests, input_len, output_len)
    ordinary = [i for i in range(vocab_size) if i not in special_ids]
    rng = random.Random(seed)
    prompts = [[rng.choice(ordinary) for _ in range(input_len)] for _ in range(num_requests)]
    return Workload(prompts, output_len, seed, "random")


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line; a line that starts with `{` is JSON with a "prompt" field, except in a .txt
    file, whose lines are all plain text."""
    plain = Path(path).suffix.lower() == ".txt"
    text = read_text_file(path, "--prompts").removeprefix("\ufeff")  # a byte-order mark is no prompt
    prompts = []
    # lines end at "\n", "\r\n" or "\r" only: str.splitlines() also cuts at U+2028, U+0085 and form
    # feeds, which JSON strings may hold as they are
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{") and not plain:
            line = _json_prompt(path, number, line)
        prompts.append(line)
    if not prompts:
        raise LocalaiError(f"prompts file {path} has no prompts", "write one prompt per line")
    return prompts


def _json_prompt(path: Path, number: int, line: str) -> str:
    try:
        prompt = json.loads(line).get("prompt")
    except json.JSONDecodeError:  # a line that starts with "{" and parses is an object
        prompt = None
    if not isinstance(prompt, str):  # null or a number would be benchmarked as the text "None" or "5"
        raise LocalaiError(f"{path}:{number}: not a JSON object with a \"prompt\" string",
                           "write one prompt per line, or {\"prompt\": \"...\"} per line")
    return prompt


def file_workload(path: Path, encode, num_requests: int | None, output_len: int, seed: int) -> Workload:
    """Prompts from a file, tokenized with `encode(text) -> ids`; cycled to `num_requests`."""
    texts = read_prompts_file(path)
    count = len(texts) if num_requests is None else num_requests
    check_lengths(count, 1, output_len)
    prompts = [list(encode(texts[i % len(texts)])) for i in range(count)]
    if any(len(p) == 0 for p in prompts):
        raise LocalaiError(f"a prompt in {path} encodes to no tokens", "remove empty prompts")
    return Workload(prompts, output_len, seed, str(path))


def check_lengths(num_requests: int, input_len: int, output_len: int) -> None:
    if num_requests < 1:
        raise UsageError(f"--num-requests {num_requests} is not a positive number", "use 1 or more")
    if input_len < 1:
        raise UsageError(f"--input-len {input_len} is not a positive number", "use 1 or more")
    if output_len < 1:
        raise UsageError(f"--output-len {output_len} is not a positive number", "use 1 or more")


def check_context(workload: Workload, max_positions: int | None) -> None:
    """Every request must fit the model's context: input + output <= max positions."""
    if max_positions is None:
        return
    check_fits(workload.max_input_len, workload.output_len, max_positions)


def check_fits(input_len: int, output_len: int, max_positions: int | None) -> None:
    """input + output <= max positions; asked before random prompts are drawn, which a huge
    --input-len would keep busy for minutes."""
    needed = input_len + output_len
    if max_positions is not None and needed > max_positions:
        raise LocalaiError(
            f"input {input_len} + output {output_len} = {needed} tokens is beyond "
            f"the model's context of {max_positions}",
            "use a smaller --input-len or --output-len")


def split(prompts_count: int, parts: int) -> list[list[int]]:
    """Request indices for each of `parts` replicas, as even as possible, in order."""
    base, extra = divmod(prompts_count, parts)
    shares, start = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        shares.append(list(range(start, start + size)))
        start += size
    return shares
