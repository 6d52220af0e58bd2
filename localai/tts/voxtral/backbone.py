"""The Mistral decoder that runs once per 80 ms audio frame: GQA attention with a KV cache,
interleaved (complex, adjacent-pair) rotary embeddings as in mistral-inference, SwiGLU, RMSNorm.

The checkpoint's wq/wk rows are laid out for the interleaved convention; the
Hugging Face "rotate_half" layout would need the rows permuted first.
"""

from __future__ import annotations

import torch
from torch import nn

from localai.tts.voxtral.config import BackboneArgs
from localai.tts.voxtral.layers import AttentionProjections, FeedForward, attend


def rope_table(head_dim: int, max_len: int, theta: float, device=None) -> torch.Tensor:
    """e^(i * position * theta^(-2j/d)) for each adjacent pair j: [max_len, head_dim // 2] complex64."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_len, device=device, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair (x[2j], x[2j+1]) as the complex number x[2j] + i x[2j+1].

    x: [B, H, T, D]; rotation: [T, D // 2] complex. Returns x's shape and dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, H, T, D/2]
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


class KVCache:
    """Keys and values of every layer for one sequence: [layers, 1, Hkv, max_len, D] each."""

    def __init__(self, args: BackboneArgs, max_len: int, device, dtype):
        shape = (args.n_layers, 1, args.n_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.positions = torch.arange(max_len, device=device)

    def update(self, layer: int, start: int | torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([1, Hkv, T, D]) at positions start..start+T; return the keys and values to attend to.

        With `start` an int: those up to start+T. With `start` a [1] tensor (one position, fixed
        shapes for CUDA graphs): the whole cache, which the caller masks past `start`."""
        if isinstance(start, torch.Tensor):
            self.k[layer].index_copy_(2, start, k)
            self.v[layer].index_copy_(2, start, v)
            return self.k[layer], self.v[layer]
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(AttentionProjections):
    def forward(self, x, rotation, mask, cache: KVCache, layer: int, start: int | torch.Tensor) -> torch.Tensor:
        # x: [1, T, C]; mask: None (one query seeing the whole prefix) or [T, S] bool
        q = apply_rope(self.split_heads(self.wq(x), self.n_heads), rotation)
        k = apply_rope(self.split_heads(self.wk(x), self.n_kv_heads), rotation)
        v = self.split_heads(self.wv(x), self.n_kv_heads)
        keys, values = cache.update(layer, start, k, v)
        return self.wo(self.merge_heads(attend(q, keys, values, mask)))


class DecoderLayer(nn.Module):
    def __init__(self, args: BackboneArgs):
        super().__init__()
        self.attention = CausalSelfAttention(args.dim, args.n_heads, args.n_kv_heads, args.head_dim)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, rotation, mask, cache: KVCache, layer: int, start: int | torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rotation, mask, cache, layer, start)
        return h + self.feed_forward(self.ffn_norm(h))


class Backbone(nn.Module):
    """Embeddings in, final-norm hidden states out (the text logits are never needed)."""

    def __init__(self, args: BackboneArgs):
        super().__init__()
        self.args = args
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.n_layers))
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self._rope: torch.Tensor | None = None

    def new_cache(self, max_len: int) -> KVCache:
        weight = self.norm.weight
        return KVCache(self.args, max_len, weight.device, weight.dtype)

    def rope_for(self, start: int, length: int, device) -> torch.Tensor:
        """Rotations for positions start..start+length (a view of a table grown on demand)."""
        if self._rope is None or self._rope.shape[0] < start + length or self._rope.device != device:
            size = max(4096, 2 * (start + length))
            self._rope = rope_table(self.args.head_dim, size, self.args.rope_theta, device)
        return self._rope[start:start + length]

    def forward(self, embeds: torch.Tensor, cache: KVCache, start: int | torch.Tensor) -> torch.Tensor:
        """embeds: [1, T, C] for positions start..start+T -> hidden: [1, T, C].

        `start` may be a [1] long tensor for one position (T = 1): every shape is then fixed
        and nothing is read back to the host, so the step can be captured in a CUDA graph
        and replayed at any position (the rotary table must already cover the cache)."""
        if isinstance(start, torch.Tensor):
            rotation = self.rope_for(0, cache.max_len, embeds.device).index_select(0, start)
            mask = (cache.positions <= start)[None]  # [1, S]: the positions written so far
        else:
            if start + embeds.shape[1] > cache.max_len:
                raise ValueError(f"sequence of {start + embeds.shape[1]} positions exceeds the cache ({cache.max_len})")
            t = embeds.shape[1]
            rotation = self.rope_for(start, t, embeds.device)
            mask = None
            if t > 1:  # query i sits at position start + i and sees keys up to there
                mask = cache.positions[:start + t][None, :] <= cache.positions[start:start + t, None]
        h = embeds
        for index, layer in enumerate(self.layers):
            h = layer(h, rotation, mask, cache, index, start)
        return self.norm(h)
