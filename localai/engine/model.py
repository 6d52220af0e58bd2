"""The engine's own forward for Llama/Mistral and Qwen2/Qwen3 over a static KV cache.

It reuses the loaded transformers modules: embeddings, rotary tables and bitsandbytes
layers are called as they are; RMSNorms run as one fused op with their own weights; and
each group of linears that reads the same input (q/k/v, gate/up) becomes one matmul when
its layers allow: plain nn.Linear weights are fused (on the CPU the engine takes them over,
so the transformers forward of that model instance no longer runs), TurboLinear layers
with one rotation share it and one kernel call (see Projection). The helpers are plain
Python objects, not nn.Modules, to keep the per-layer Python overhead of a decode step small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from localai.engine.kv_cache import KVCache
from localai.errors import LocalaiError
from localai.kernels import cpu as cpu_kernels
from localai.kernels import ops

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
EXACT_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
PACK_BATCH_HINT = 16  # oneDNN picks its weight blocking for this many rows; measured best from 4 rows up
MIN_PACKED_ROWS = 4  # fewer rows are padded up to this many (measured faster, 1 and 2 threads)


def rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"


def lean_support(model) -> str | None:
    """None when the lean forward can run `model`, else the reason it cannot."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r} has no lean forward"
    if rope_type(config) not in EXACT_ROPE_TYPES:
        return f"rope type {rope_type(config)!r} depends on the sequence length"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "unexpected module layout"
    attn = inner.layers[0].self_attn
    if not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "unexpected attention layout"
    return None


def fusable(linears: list[nn.Module]) -> bool:
    return all(type(m) is nn.Linear for m in linears)


def turbo_fusable(linears: list[nn.Module]) -> bool:
    """TurboLinear layers that rotate their input the same way (same size, block and seed) and
    share a group size: their codes stack into one weight behind one rotation."""
    from localai.quant.linear import TurboLinear

    first = linears[0]
    return all(type(m) is TurboLinear and (m.in_features, m.group_size, m.block, m.seed) ==
               (first.in_features, first.group_size, first.block, first.seed) for m in linears)


def pack_for_cpu(weight: torch.Tensor) -> torch.Tensor | None:
    """weight [out, in] in oneDNN's blocked layout for fp32 CPU matmuls, or None where oneDNN cannot take it."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)
    except (RuntimeError, AttributeError):  # a build without oneDNN's linear ops
        return None


def release(module: nn.Linear) -> None:
    """Hand a linear's weight over to the engine: a meta placeholder of the same shape stays behind."""
    module.weight = nn.Parameter(torch.empty(module.weight.shape, device="meta"), requires_grad=False)


class Projection:
    """Linear layers sharing one input, fused into one matmul where their kind allows.

    Plain nn.Linear layers: the fused weight [sum of outs, in] is one tensor and the original
    modules are re-pointed at row slices of it. On the CPU, steps of one to three rows stream
    it with the native kernel (kernels.cpu.dense_matmul, ~1.2x oneDNN and ~2x MKL's sgemv at
    batch 1 here); once the engine plans batches of MIN_PACKED_ROWS or more, `pack_for_batches`
    moves it into oneDNN's blocked layout, about twice as fast as a plain fp32 matmul at batch
    16, and the original modules hand their weights over (see release).
    TurboLinear layers with one rotation (turbo_fusable): their codes and gains are stacked
    the same way, so the input is rotated once and multiplied in one kernel call.
    Anything else (bitsandbytes, mixed kinds) is called module by module."""

    def __init__(self, linears: list[nn.Module]):
        self.sizes = [m.out_features for m in linears]
        self.parts = linears
        self.turbo = turbo_fusable(linears)
        self.fused = self.turbo or fusable(linears)
        self.weight = self.packed = self.bias = None
        if self.turbo:
            self._stack_turbo(linears)
        elif self.fused:
            self._fuse(linears)

    def _fuse(self, linears: list[nn.Linear]) -> None:
        if any(m.weight.is_meta for m in linears):
            raise LocalaiError("this model's weights were taken over by another engine",
                               "load the model again for a second engine")
        with torch.no_grad():
            weight = linears[0].weight if len(linears) == 1 else torch.cat([m.weight for m in linears])  # [out, in]
        self.weight = weight
        self._fuse_biases(linears)
        if len(linears) > 1:
            for module, rows in zip(linears, self._row_slices()):
                module.weight = nn.Parameter(weight[rows], requires_grad=False)

    def _stack_turbo(self, linears: list[nn.Module]) -> None:
        first = linears[0]
        self.signs, self.block, self.group_size = first.signs, first.block, first.group_size
        if len(linears) == 1:
            self.codes, self.gains = first.codes, first.gains
        else:
            self.codes = torch.cat([m.codes for m in linears])  # [sum of outs, Kp / 2]
            self.gains = torch.cat([m.gains for m in linears])  # [sum of outs, Kp / G]
            for module, rows in zip(linears, self._row_slices()):  # the modules share the stacked tensors
                module.codes, module.gains = self.codes[rows], self.gains[rows]
        self._fuse_biases(linears)

    def _row_slices(self) -> list[slice]:
        bounds = [0]
        for size in self.sizes:
            bounds.append(bounds[-1] + size)
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def _fuse_biases(self, linears: list[nn.Module]) -> None:
        present = [m.bias for m in linears if m.bias is not None]
        if not present:
            return
        with torch.no_grad():
            self.bias = torch.cat([m.bias if m.bias is not None else present[0].new_zeros(m.out_features)
                                   for m in linears])
        for module, rows in zip(linears, self._row_slices()):
            if module.bias is not None:
                module.bias = nn.Parameter(self.bias[rows], requires_grad=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        # x: [N, in] -> [N, out] (one layer) or one [N, out_i] per layer
        if not self.fused:
            outputs = [m(x) for m in self.parts]
            return outputs[0] if len(outputs) == 1 else outputs
        y = self.joined(x)
        return y if len(self.sizes) == 1 else y.split_with_sizes(self.sizes, dim=-1)

    def pack_for_batches(self) -> None:
        """Move a CPU fp32 weight into oneDNN's layout (for good: the plain copy is dropped)."""
        if not self.fused or self.turbo or self.packed is not None:
            return
        with torch.no_grad():
            self.packed = pack_for_cpu(self.weight)
        if self.packed is not None:
            for module in self.parts:
                release(module)
            self.weight = None

    def joined(self, x: torch.Tensor) -> torch.Tensor:
        """Fused layers only: x: [N, in] -> [N, sum of outs], the outputs side by side."""
        if self.turbo:
            y = ops.turbo_linear(x, self.signs, self.block, self.codes, self.gains, self.group_size)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        rows = x.shape[0]
        if self.packed is not None:
            if rows < MIN_PACKED_ROWS:  # oneDNN's few-row kernel is slower than its 4-row one: pad
                x = F.pad(x, (0, 0, 0, MIN_PACKED_ROWS - rows))
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")[:rows]
        if rows < MIN_PACKED_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 \
                and self.weight.dtype == torch.float32:
            y = cpu_kernels.dense_matmul(x, self.weight)  # None without the native library
            if y is not None:
                return y if self.bias is None else y.add_(self.bias)
        return F.linear(x, self.weight, self.bias)

    def tensors(self) -> list[torch.Tensor]:
        if self.turbo:
            return [t for t in (self.codes, self.gains, self.signs, self.bias) if t is not None]
        return [t for t in (self.weight, self.bias) if t is not None]

    def packed_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() if self.packed is not None else 0


def make_norm(norm: nn.Module):
    """A transformers RMSNorm (weight * x / rms(x)) as one op; any other norm module is called as it is."""
    weight, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", None)
    if type(norm).__name__.endswith("RMSNorm") and weight is not None and eps is not None:
        shape = [weight.shape[-1]]
        return lambda x: torch.rms_norm(x, shape, weight, eps)
    return norm


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half layout: x*cos + [-x2, x1]*sin, computed as x*cos + roll(x)*[-s1, s2]."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def linear_groups(layer: nn.Module) -> list[list[nn.Module]]:
    """The linears of a decoder layer grouped by shared input: q/k/v, o, gate/up, down."""
    attn, mlp = layer.self_attn, layer.mlp
    return [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]]


class LeanLayer:
    def __init__(self, layer: nn.Module, window: int | None):
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm = make_norm(layer.input_layernorm)
        self.post_norm = make_norm(layer.post_attention_layernorm)
        self.qkv, self.out, self.gate_up, self.down = (Projection(group) for group in linear_groups(layer))
        self.q_norm = make_norm(attn.q_norm) if hasattr(attn, "q_norm") else None
        self.k_norm = make_norm(attn.k_norm) if hasattr(attn, "k_norm") else None
        self.act = F.silu if type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") else mlp.act_fn
        self.window = window


def layer_windows(config) -> list[int | None]:
    """Sliding-window size per layer (None = full attention)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return [window if kind == "sliding_attention" else None for kind in types]
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        window = None
    return [window] * config.num_hidden_layers


@dataclass
class Step:
    """What every layer of one forward shares."""

    batch: int
    steps: int
    slot0: int
    kv_len: int
    cos: torch.Tensor  # [B, 1, T, D]
    sin: torch.Tensor  # [B, 1, T, D]
    masks: dict  # window (None = full) -> bool mask [B, 1, T, kv_len]; empty when every key is visible
    write_index: torch.Tensor  # [B * kv_heads * T] rows of the flattened per-layer cache


class LeanModel:
    """Forward over the static cache: tokens [B, T] at per-row start positions -> logits [B, vocab]."""

    def __init__(self, model: nn.Module):
        config = model.config
        inner = model.model
        self.config = config
        self.embed = model.get_input_embeddings()
        windows = layer_windows(config)
        self.layers = [LeanLayer(layer, windows[i]) for i, layer in enumerate(inner.layers)]
        self.windows = set(windows) - {None}
        self.norm = make_norm(inner.norm)
        output = model.get_output_embeddings()
        self.head = Projection([output])  # a tied embedding keeps its own weight
        head = self.head  # a tied head packed for batches is a copy beside the embedding's weight
        # a quantized head (quantize --quantize-head) has no `weight`: it is tied to nothing
        self.tied_head_packs = (getattr(output, "weight", None) is self.embed.weight and head.fused
                                and not head.turbo and pack_for_cpu(head.weight[:1]) is not None)
        self.rotary = inner.rotary_emb
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.cache: KVCache | None = None

    def projections(self) -> list[Projection]:
        return [p for layer in self.layers for p in (layer.qkv, layer.out, layer.gate_up, layer.down)] + [self.head]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a forward reads that the engine owns (for marking static addresses)."""
        owned = [t for p in self.projections() for t in p.tensors()]
        if self.cache is not None:
            owned += self.cache.tensors() + [self.cos, self.sin_signed]
        return owned

    def packed_bytes(self) -> int:
        """Bytes of the weights the engine holds in oneDNN's layout (outside the model's parameters)."""
        return sum(p.packed_bytes() for p in self.projections())

    def packing_bytes(self) -> int:
        """Bytes that packing for batches would add: a packed copy replaces each weight it is made
        from, except a head tied to the embedding, whose weight the embedding still holds."""
        head = self.head
        if not self.tied_head_packs or head.packed is not None:
            return 0
        return head.weight.numel() * head.weight.element_size()

    # --- cache -------------------------------------------------------------------------
    def allocate(self, slots: int, max_ctx: int) -> KVCache:
        """(Re)create the cache for `slots` sequences of up to `max_ctx` tokens, and the rotary tables."""
        if slots >= MIN_PACKED_ROWS:  # batched steps: oneDNN's packed layout (a no-op off the CPU)
            for projection in self.projections():
                projection.pack_for_batches()
        self.cache = None  # free the old one first
        self.cache = KVCache(len(self.layers), slots, self.kv_heads, max_ctx, self.head_dim,
                             self.dtype, self.device)
        positions = torch.arange(max_ctx, device=self.device)[None]  # [1, max_ctx]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions)
        half = self.head_dim // 2
        self.cos = cos[0]  # [max_ctx, D]
        self.sin_signed = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # [max_ctx, D]
        return self.cache

    # --- forward -----------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor, start: torch.Tensor, slot0: int, kv_len: int,
                 last: torch.Tensor, full_view: bool = False) -> torch.Tensor:
        """tokens: [B, T] for slots slot0..slot0+B-1, row b at positions start[b]..start[b]+T-1.

        Attends to the first kv_len cached positions and returns logits [B, vocab] at index
        last[b] of each row. full_view: always build masks (fixed shapes for CUDA graphs).
        """
        step = self.prepare(tokens, start, slot0, kv_len, full_view)
        x = self.embed(tokens).view(step.batch * step.steps, -1)  # x: [B*T, C]
        for index, layer in enumerate(self.layers):
            x = x + self.attention(index, layer, layer.input_norm(x), step)
            gate, up = layer.gate_up(layer.post_norm(x))
            x = x + layer.down(layer.act(gate) * up)
        if step.steps > 1:
            x = x[torch.arange(step.batch, device=x.device) * step.steps + last]  # [B, C]
        return self.head(self.norm(x))

    def prepare(self, tokens: torch.Tensor, start: torch.Tensor, slot0: int, kv_len: int,
                full_view: bool) -> Step:
        batch, steps = tokens.shape
        positions = start[:, None] + torch.arange(steps, device=tokens.device)  # [B, T]
        cache = self.cache
        rows = (slot0 + torch.arange(batch, device=tokens.device))[:, None, None] * self.kv_heads
        heads = torch.arange(self.kv_heads, device=tokens.device)[None, :, None]
        write_index = ((rows + heads) * cache.max_ctx + positions[:, None, :]).reshape(-1)  # [B*kvh*T]
        # one decoding sequence sees its whole prefix: no mask needed
        single = batch == 1 and steps == 1 and not full_view and not self.windows
        return Step(batch, steps, slot0, kv_len, self.cos[positions].unsqueeze(1),
                    self.sin_signed[positions].unsqueeze(1),
                    {} if single else self.masks(positions, kv_len), write_index)

    def masks(self, positions: torch.Tensor, kv_len: int) -> dict:
        """Boolean masks [B, 1, T, kv_len] per window size in use: key <= query (and within the window)."""
        # comparisons only: an int64 query-key distance would be 8x the bytes of the masks
        # (1 GiB for a 4096-token chunk at a 32k context)
        keys = torch.arange(kv_len, device=positions.device)
        queries = positions[:, :, None]  # [B, T, 1]
        causal = keys <= queries  # [B, T, kv_len]
        masks = {None: causal.unsqueeze(1)}
        for window in self.windows:
            masks[window] = (causal & (keys > queries - window)).unsqueeze(1)
        return masks

    def attention(self, index: int, layer: LeanLayer, h: torch.Tensor, step: Step) -> torch.Tensor:
        batch, steps, heads, kv_heads, dim = step.batch, step.steps, self.heads, self.kv_heads, self.head_dim
        if layer.qkv.fused and layer.q_norm is None:
            # one rotary pass over q and k side by side: y = [q | k | v] per token
            y = layer.qkv.joined(h)  # [B*T, (heads + 2 kv_heads) * D]
            qk = y[:, :(heads + kv_heads) * dim].view(batch, steps, heads + kv_heads, dim)
            qk = rope(qk.transpose(1, 2), step.cos, step.sin)  # [B, heads + kv_heads, T, D]
            q, k = qk[:, :heads], qk[:, heads:]
            v = y[:, (heads + kv_heads) * dim:]
        else:
            q, k, v = layer.qkv(h)  # [B*T, heads*D], [B*T, kv_heads*D] x2
            q = q.view(batch, steps, heads, dim)
            k = k.view(batch, steps, kv_heads, dim)
            if layer.q_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            q = rope(q.transpose(1, 2), step.cos, step.sin)  # [B, heads, T, D]
            k = rope(k.transpose(1, 2), step.cos, step.sin)  # [B, kv_heads, T, D]
        v = v.reshape(batch, steps, kv_heads, dim).transpose(1, 2)
        keys, values = self.cache.write_read(index, step.write_index, k, v, step.slot0, batch, step.kv_len)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.masks.get(layer.window),
                                             scale=self.scale, enable_gqa=heads != kv_heads)
        return layer.out(out.transpose(1, 2).reshape(batch * steps, heads * dim))
