"""The flow-matching acoustic head: one backbone hidden state in, one frame of 37 audio codes out.

Semantic code: argmax of a linear head over the hidden state (the "empty" id and the
padding past the codebook are masked; id 1 means end of audio).
Acoustic codes: 36 values integrated from Gaussian noise with Euler steps; each step runs
a 3-token bidirectional transformer on [input_proj(x), time_proj(t), llm_proj(h)] for h
and for a zero hidden state and mixes the two velocities (classifier-free guidance).
The values are clamped to [-1, 1] and rounded to the codebook's 21 levels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from localai.tts.voxtral.config import CFG_ALPHA, EMPTY_AUDIO, END_AUDIO, N_AUDIO_SPECIAL, VoxtralConfig
from localai.tts.voxtral.layers import AttentionProjections, FeedForward, attend


class BidirectionalAttention(AttentionProjections):
    """Every token sees every token; no positional encoding (the 3 slots have fixed roles)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.split_heads(self.wq(x), self.n_heads)
        k = self.split_heads(self.wk(x), self.n_kv_heads)
        v = self.split_heads(self.wv(x), self.n_kv_heads)
        return self.wo(self.merge_heads(attend(q, k, v)))


class AcousticBlock(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.attention = BidirectionalAttention(dim, n_heads, n_kv_heads, head_dim)
        self.feed_forward = FeedForward(dim, hidden_dim)
        self.attention_norm = nn.RMSNorm(dim, eps=eps)
        self.ffn_norm = nn.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class AcousticHead(nn.Module):
    def __init__(self, config: VoxtralConfig):
        super().__init__()
        args = config.acoustic
        self.semantic_size = config.semantic_codebook_size
        self.levels = config.acoustic_levels
        self.n_acoustic = config.n_acoustic_codebook
        self.n_steps = args.n_decoding_steps
        self.input_projection = nn.Linear(self.n_acoustic, args.dim, bias=False)
        self.time_projection = nn.Linear(args.dim, args.dim, bias=False)
        self.llm_projection = nn.Linear(args.input_dim, args.dim, bias=False)
        self.semantic_codebook_output = nn.Linear(args.input_dim, config.semantic_output_size, bias=False)
        self.acoustic_codebook_output = nn.Linear(args.dim, self.n_acoustic, bias=False)
        self.layers = nn.ModuleList(
            AcousticBlock(args.dim, args.hidden_dim, args.n_heads, args.n_kv_heads, args.head_dim, args.norm_eps)
            for _ in range(args.n_layers)
        )
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self._time_table: dict[tuple, torch.Tensor] = {}

    def semantic_code(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, C] -> [B] long; the empty id and the padded tail can never win."""
        logits = self.semantic_codebook_output(hidden).float()
        logits[:, EMPTY_AUDIO] = -float("inf")
        logits[:, N_AUDIO_SPECIAL + self.semantic_size:] = -float("inf")
        return logits.argmax(dim=-1)

    def projected_times(self, device, dtype) -> torch.Tensor:
        """time_projection(sinusoid(t)) for the Euler start times t = 0, 1/n, ..., (n-1)/n: [n, dim]."""
        key = (device, dtype)
        if key not in self._time_table:
            half = self.time_projection.in_features // 2
            inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
            t = torch.linspace(0, 1, self.n_steps + 1, device=device)[:-1]
            angles = t[:, None] * inv_freq[None, :]
            sinusoid = torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)
            self._time_table[key] = self.time_projection(sinusoid)
        return self._time_table[key]

    def velocity(self, x: torch.Tensor, time: torch.Tensor, llm: torch.Tensor) -> torch.Tensor:
        """x: [N, 36]; time, llm: [N, dim] (already projected) -> velocity [N, 36]."""
        tokens = torch.stack((self.input_projection(x.to(llm.dtype)), time, llm), dim=1)  # [N, 3, dim]
        for layer in self.layers:
            tokens = layer(tokens)
        return self.acoustic_codebook_output(self.norm(tokens)[:, 0]).float()

    def acoustic_codes(self, hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """hidden: [B, C], noise: [B, 36] -> codes [B, 36] in 2..levels+1 (the 2 special ids come first)."""
        b = hidden.shape[0]
        llm = self.llm_projection(torch.cat((hidden, torch.zeros_like(hidden)), dim=0))  # [2B, dim]: cond, uncond
        times = self.projected_times(hidden.device, hidden.dtype)
        x = noise.float()
        dt = 1.0 / self.n_steps
        for step in range(self.n_steps):
            v = self.velocity(torch.cat((x, x)), times[step].expand(2 * b, -1), llm)
            x = x + (CFG_ALPHA * v[:b] + (1 - CFG_ALPHA) * v[b:]) * dt
        levels = ((x.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round().long()
        return levels + N_AUDIO_SPECIAL

    def forward(self, hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """hidden: [B, C], noise: [B, 36] -> frame codes [B, 37]; semantic id 1 (END_AUDIO) ends the audio."""
        semantic = self.semantic_code(hidden)
        acoustic = self.acoustic_codes(hidden, noise)
        # torch.where, not a masked assignment: that would read the mask back to the host (no CUDA graph)
        acoustic = torch.where((semantic == END_AUDIO)[:, None], EMPTY_AUDIO + N_AUDIO_SPECIAL, acoustic)
        return torch.cat((semantic[:, None], acoustic), dim=1)
