"""The causal codec decoder: 37 codes per 80 ms frame in, 1920 samples at 24 kHz out.

codes -> latent (256 semantic dims from a Euclidean codebook + 36 acoustic values)
      -> causal conv (k3) -> transformer -> [causal transposed conv (2x) -> transformer] x 3
      -> causal output conv (k7, 240 outputs) -> 240 samples per codec step.
Transformer layers use ALiBi with causal sliding windows, q/k RMSNorm and LayerScale;
every conv is weight-normalized (`parametrizations.weight.original0/1` in the checkpoint).
Each output sample depends only on current and past frames, which makes chunked
(streaming) decoding with enough left context identical to decoding everything at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from localai.tts.voxtral.config import CodecArgs
from localai.tts.voxtral.layers import AttentionProjections, FeedForward, attend


def pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """F.pad that also reflect-pads inputs shorter than the padding (zero-extends them first)."""
    if mode != "reflect" or x.shape[-1] > max(left, right):
        return F.pad(x, (left, right), mode=mode)
    extra = max(left, right) - x.shape[-1] + 1
    padded = F.pad(F.pad(x, (0, extra)), (left, right), mode=mode)
    return padded[..., :padded.shape[-1] - extra]


class CausalConv1d(nn.Module):
    """Conv1d padded on the left only, so output t sees inputs up to t. x: [B, C_in, T] -> [B, C_out, T / stride]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, pad_mode: str = "reflect"):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=False))
        self.kernel, self.stride, self.pad_mode = kernel, stride, pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.kernel - self.stride
        n_out = math.ceil((x.shape[-1] - self.kernel + left) / self.stride + 1)
        right = (n_out - 1) * self.stride + self.kernel - left - x.shape[-1]
        return self.conv(pad1d(x, left, right, self.pad_mode))


class CausalConvTranspose1d(nn.Module):
    """Upsampling conv whose overhang is trimmed on the right. x: [B, C, T] -> [B, C, T * stride]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(c_in, c_out, kernel, stride=stride, bias=False))
        self.trim = kernel - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out[..., :out.shape[-1] - self.trim]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric slopes 2^(-8/n)^i, with the usual interleave when n is not a power of two: [n_heads]."""
    def powers(n: int) -> list[float]:
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(powers(n_heads))
    base = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(powers(base) + powers(2 * base)[::2][:n_heads - base])


class WindowedAlibiAttention(AttentionProjections):
    """Causal attention over the last `window` steps (plus the current one), ALiBi position bias, q/k RMSNorm."""

    def __init__(self, args: CodecArgs, window: int):
        super().__init__(args.dim, args.n_heads, args.n_kv_heads, args.head_dim)
        self.window = window
        self.q_norm = nn.RMSNorm(args.n_heads * args.head_dim, eps=args.qk_norm_eps)
        self.k_norm = nn.RMSNorm(args.n_kv_heads * args.head_dim, eps=args.qk_norm_eps)
        self._bias_cache: dict[tuple, torch.Tensor] = {}

    def bias(self, t: int, device, dtype) -> torch.Tensor:
        """[H, T, T]: slope * (j - i) where key j is visible from query i, -inf elsewhere (cached per length)."""
        key = (t, device, dtype)
        if key not in self._bias_cache:
            pos = torch.arange(t, device=device)
            distance = pos[None, :] - pos[:, None]  # j - i
            bias = alibi_slopes(self.n_heads).to(device)[:, None, None] * distance[None].float()
            hidden = (distance > 0) | (distance < -self.window)
            if len(self._bias_cache) > 8:
                self._bias_cache.clear()
            self._bias_cache[key] = bias.masked_fill(hidden[None], float("-inf")).to(dtype)
        return self._bias_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, C]
        q = self.split_heads(self.q_norm(self.wq(x)), self.n_heads)
        k = self.split_heads(self.k_norm(self.wk(x)), self.n_kv_heads)
        v = self.split_heads(self.wv(x), self.n_kv_heads)
        return self.wo(self.merge_heads(attend(q, k, v, self.bias(x.shape[1], x.device, q.dtype))))


class CodecBlock(nn.Module):
    def __init__(self, args: CodecArgs, window: int):
        super().__init__()
        self.attention = WindowedAlibiAttention(args, window)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attention_scale = nn.Parameter(torch.full((args.dim,), 0.01))
        self.ffn_scale = nn.Parameter(torch.full((args.dim,), 0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention_scale * self.attention(self.attention_norm(x))
        return h + self.ffn_scale * self.feed_forward(self.ffn_norm(h))


class CodecTransformer(nn.Module):
    def __init__(self, args: CodecArgs, n_layers: int, window: int):
        super().__init__()
        self.layers = nn.ModuleList(CodecBlock(args, window) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SemanticCodebook(nn.Module):
    """Euclidean codebook stored as running sums: entry = embedding_sum / max(cluster_usage, 1e-5)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embedding_sum", torch.zeros(size, dim))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, T] in 0..size-1 -> [B, T, dim]"""
        table = self.embedding_sum / self.cluster_usage.clamp(min=1e-5)[:, None]
        return F.embedding(codes, table)


class Quantizer(nn.Module):
    def __init__(self, args: CodecArgs):
        super().__init__()
        self.semantic_codebook = SemanticCodebook(args.semantic_codebook_size, args.semantic_dim)
        self.levels = args.acoustic_levels

    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, 37, T] zero-based -> latent [B, T, 256 + 36] (float32)."""
        semantic = self.semantic_codebook.lookup(codes[:, 0]).float()
        acoustic = codes[:, 1:].transpose(1, 2).float() * 2 / (self.levels - 1) - 1
        return torch.cat((semantic, acoustic), dim=-1)


class CodecDecoder(nn.Module):
    def __init__(self, args: CodecArgs):
        super().__init__()
        self.args = args
        blocks: list[nn.Module] = []
        for stage, (layers, kernel, stride, window) in enumerate(
                zip(args.stage_layers, args.stage_kernels, args.stage_strides, args.stage_windows)):
            if stage == 0:
                blocks.append(CausalConv1d(args.latent_dim, args.dim, kernel, stride, pad_mode="replicate"))
            elif kernel != 1 or stride != 1:
                blocks.append(CausalConvTranspose1d(args.dim, args.dim, kernel, stride))
            blocks.append(CodecTransformer(args, layers, window))
        self.decoder_blocks = nn.ModuleList(blocks)
        self.quantizer = Quantizer(args)
        self.output_proj = CausalConv1d(args.dim, args.patch_size, args.output_kernel, pad_mode="reflect")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, 37, T] zero-based (model ids minus the 2 special ids) -> audio [B, T * samples_per_frame]."""
        dtype = self.output_proj.conv.weight.dtype
        x = self.quantizer.latent(codes).to(dtype)  # [B, T, C]
        for block in self.decoder_blocks:
            if isinstance(block, CodecTransformer):
                x = block(x)
            else:
                x = block(x.transpose(1, 2)).transpose(1, 2)
        patches = self.output_proj(x.transpose(1, 2))  # [B, 240, T']
        return patches.transpose(1, 2).reshape(patches.shape[0], -1).float()

    def fold_weight_norm(self) -> None:
        """Replace every weight-norm parametrization by its plain weight (faster inference)."""
        from torch.nn.utils import parametrize

        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
