"""The oracle for the engine's greedy decoding: transformers `generate`, one prompt at a time."""

from __future__ import annotations

import torch


def transformers_greedy(model, tokenizer, prompts, new_tokens):
    """The new token ids for each prompt: greedy, no padding, EOS masked so each has `new_tokens`."""
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            outputs.append(out[0, ids.shape[1]:].tolist())
    return outputs
