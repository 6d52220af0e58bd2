"""How many sequences, and how long a context, fit in the memory that is left after the model.

KV bytes per token = 2 (keys, values) x layers x kv_heads x head_dim x dtype bytes.
batch = (available - margin - workspace) // (context x KV bytes per token + per-sequence logits),
capped by the number of requests and a per-device maximum. When not even one sequence
fits, the context shrinks until one does.
"""

from __future__ import annotations

from dataclasses import dataclass

from localai import host
from localai.engine.kv_cache import kv_bytes_per_token
from localai.errors import LocalaiError

MIB = 1 << 20
GIB = 1 << 30


@dataclass
class ModelShape:
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    max_positions: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, config, dtype_bytes: int) -> "ModelShape":
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            hidden=config.hidden_size,
            intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
            vocab=config.vocab_size,
            max_positions=getattr(config, "max_position_embeddings", None) or 2048,
            dtype_bytes=dtype_bytes,
        )

    @property
    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.layers, self.kv_heads, self.head_dim, self.dtype_bytes)

    def workspace_bytes(self, prefill_tokens: int) -> int:
        """Activations of one prefill chunk: residual, norms, q/k/v/o, gate/up/act/down, in the model dtype."""
        per_token = 6 * self.hidden + 3 * self.intermediate + 4 * self.kv_heads * self.head_dim
        return prefill_tokens * per_token * self.dtype_bytes

    def logits_bytes_per_sequence(self) -> int:
        """fp32 logits, their sampling copy and probabilities for one row."""
        return 3 * 4 * self.vocab


@dataclass
class MemoryPlan:
    device: str
    available_bytes: int
    total_bytes: int
    model_bytes: int
    margin_bytes: int
    workspace_bytes: int
    per_sequence_bytes: int
    kv_bytes_per_token: int
    max_ctx: int
    batch: int
    reason: str

    @property
    def kv_cache_bytes(self) -> int:
        return self.batch * self.max_ctx * self.kv_bytes_per_token

    @property
    def predicted_peak_bytes(self) -> int:
        return self.model_bytes + self.workspace_bytes + self.batch * self.per_sequence_bytes

    def lines(self) -> list[str]:
        """The arithmetic, one line each, for --verbose."""
        budget = self.available_bytes - self.margin_bytes - self.workspace_bytes
        return [
            f"memory ({self.device}): {mib(self.available_bytes)} available of {mib(self.total_bytes)}, "
            f"model {mib(self.model_bytes)}",
            f"KV bytes per token: 2 x layers x kv_heads x head_dim x dtype bytes = {self.kv_bytes_per_token}",
            f"per sequence: {self.max_ctx} tokens x {self.kv_bytes_per_token} B + logits "
            f"= {mib(self.per_sequence_bytes)}",
            f"budget: {mib(self.available_bytes)} - margin {mib(self.margin_bytes)} - workspace "
            f"{mib(self.workspace_bytes)} = {mib(budget)} -> fits {max(budget, 0) // self.per_sequence_bytes}",
            f"batch {self.batch} ({self.reason}), context {self.max_ctx}: KV cache {mib(self.kv_cache_bytes)}, "
            f"predicted peak {mib(self.predicted_peak_bytes)}",
        ]

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data.update(kv_cache_bytes=self.kv_cache_bytes, predicted_peak_bytes=self.predicted_peak_bytes)
        return data


def mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def safety_margin(total_bytes: int, fraction: float = 0.10, minimum: int = 256 * MIB) -> int:
    """Memory left free on a device for the allocator's fragmentation and what the estimates leave out."""
    return max(minimum, int(fraction * total_bytes))


def plan_memory(shape: ModelShape, *, device: str, available_bytes: int, total_bytes: int, model_bytes: int,
                wanted_ctx: int, min_ctx: int, requests: int, batch_cap: int, prefill_tokens: int,
                requested_batch: int | None = None, margin_fraction: float = 0.10,
                min_margin_bytes: int = 256 * MIB) -> MemoryPlan:
    """Choose batch and context. wanted_ctx: longest prompt + max_new_tokens; min_ctx: longest prompt + 1."""
    ctx = min(wanted_ctx, shape.max_positions)
    if min_ctx > shape.max_positions:
        raise LocalaiError(f"a prompt needs {min_ctx} positions but the model's context is {shape.max_positions}",
                           "shorten the prompt")
    if ctx < min_ctx:
        raise LocalaiError(f"a context of {ctx} tokens cannot hold a {min_ctx - 1}-token prompt and its answer",
                           "allow a longer context or shorten the prompt")
    margin = safety_margin(total_bytes, margin_fraction, min_margin_bytes)
    workspace = shape.workspace_bytes(prefill_tokens)
    budget = available_bytes - margin - workspace
    per_sequence = ctx * shape.kv_bytes_per_token + shape.logits_bytes_per_sequence()
    fits = max(budget, 0) // per_sequence
    # an asked-for batch replaces the device's cap, but not the number of requests or the memory
    limit = min(requested_batch or batch_cap, max(requests, 1))
    if fits >= 1:
        batch = min(fits, limit)
        if batch < limit:
            reason = "memory"
        elif requested_batch and batch == requested_batch:
            reason = "asked for"
        elif batch == max(requests, 1):
            reason = "number of requests"
        else:
            reason = f"cap for {device}"
    else:
        ctx = (max(budget, 0) - shape.logits_bytes_per_sequence()) // shape.kv_bytes_per_token
        if ctx < min_ctx:
            raise LocalaiError(
                f"not enough memory for the KV cache: {mib(max(budget, 0))} left after the model and a "
                f"{mib(margin)} margin; one {min_ctx}-token sequence needs {mib(min_ctx * shape.kv_bytes_per_token)}",
                "use a shorter prompt, a 4-bit model, or free memory")
        batch, reason = 1, "memory (context shortened)"
        per_sequence = ctx * shape.kv_bytes_per_token + shape.logits_bytes_per_sequence()
    return MemoryPlan(device=device, available_bytes=available_bytes, total_bytes=total_bytes,
                      model_bytes=model_bytes, margin_bytes=margin, workspace_bytes=workspace,
                      per_sequence_bytes=per_sequence, kv_bytes_per_token=shape.kv_bytes_per_token,
                      max_ctx=int(ctx), batch=int(batch), reason=reason)


# --- what the machine has ------------------------------------------------------------------
def memory_info(device: str) -> tuple[int, int]:
    """(available, total) bytes on the device: free GPU memory, or the host's available memory."""
    if device.startswith("cuda"):
        import torch

        # the engine's own GPU, which is not the current one for a model placed on cuda:1 by hand
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, total
    return host.memory()


def tensor_bytes(module) -> int:
    """Bytes of a module's parameters and buffers, counting shared storage once."""
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_meta:  # a placeholder for a weight the engine holds itself
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def peak_memory(device: str) -> int:
    """Peak bytes so far: the CUDA allocator's peak, or the process's peak resident set on CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated(device)
    return host.peak_rss()
