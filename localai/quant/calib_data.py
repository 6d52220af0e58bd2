"""Calibration sequences: from a text file the user names, or sampled from the model itself.

Self-generated calibration (as in LLM-QAT, Liu et al., 2023) needs no data set: each
sequence starts from a random vocabulary token and continues with plain sampling
(temperature 1) from the full-precision model, so the Hessians see the inputs the
model produces on its own text. It can never overlap an evaluation corpus.
"""

from __future__ import annotations

from pathlib import Path

import torch

from localai.errors import LocalaiError
from localai.infile import read_text_file

DEFAULT_CALIB_TOKENS = 16_384
SEQ_LEN = 512
GENERATE_BATCH = 16
CHARS_PER_TOKEN_BOUND = 16  # read at most this many characters per wanted token from a file


def _count(tokens: int, seq_len: int) -> int:
    if tokens < seq_len:
        raise LocalaiError(f"--calib-tokens {tokens} is less than one calibration sequence ({seq_len} tokens)",
                           f"use --calib-tokens {seq_len} or more")
    return tokens // seq_len


def from_text_file(path: Path, tokenizer, tokens: int = DEFAULT_CALIB_TOKENS, seq_len: int = SEQ_LEN):
    """The first `tokens` tokens of a text file as [S, seq_len] ids (fewer if the file is short)."""
    wanted = _count(tokens, seq_len)
    text = read_text_file(path, "--calib", max_chars=tokens * CHARS_PER_TOKEN_BOUND)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    count = min(wanted, ids.numel() // seq_len)
    if count == 0:
        raise LocalaiError(f"{path} holds fewer than {seq_len} tokens, too little to calibrate on",
                           "pass a longer text to --calib, or use --no-calib")
    return ids[: count * seq_len].reshape(count, seq_len)


def _first_tokens(tokenizer, count: int, generator: torch.Generator) -> torch.Tensor:
    """Random ordinary (non-special) token ids: [count, 1]."""
    special = set(tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    pick = torch.randint(0, vocab.numel(), (count, 1), generator=generator)
    return vocab[pick]


def self_generated(model, tokenizer, tokens: int = DEFAULT_CALIB_TOKENS, seq_len: int = SEQ_LEN,
                   seed: int = 0, on_batch=None, device=None):
    """Sequences sampled from the model itself: [S, seq_len] ids; `on_batch(done, total)` reports progress.
    `device` takes the prompts (default: where the model's first parameter is)."""
    count = _count(tokens, seq_len)
    generator = torch.Generator().manual_seed(seed)
    starts = _first_tokens(tokenizer, count, generator)
    device = device or next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    batches = []
    for first in range(0, count, GENERATE_BATCH):
        prompt = starts[first: first + GENERATE_BATCH].to(device)  # [B, 1]
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1, do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, pad_token_id=pad)
        batches.append(out[:, :seq_len].cpu())
        if on_batch:
            on_batch(min(first + GENERATE_BATCH, count), count)
    return torch.cat(batches)
