"""Tensor parallelism over N processes: column/row sharding of attention and MLP linears.

Every rank loads the whole model, then keeps its slice (Megatron layout):
  q/k/v, gate/up   column-parallel: a rank keeps some output rows (whole heads / MLP columns)
  o, down          row-parallel: a rank keeps the matching input columns; outputs are summed
                   across ranks with one all-reduce per linear (two per layer)
Embeddings, norms and lm_head stay replicated, so every rank computes the same logits and
picks the same token. Heads are split by key/value group, so a model whose head count does
not divide by N (SmolLM2-135M: 9 heads, 3 kv heads) still shards, unevenly.
torch.distributed runs gloo on CPU and NCCL on CUDA.
"""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
from torch import nn

from localai.errors import LocalaiError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_group(rank: int, world: int, init_method: str, device: str) -> None:
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=init_method,
                            rank=rank, world_size=world)


def even_ranges(total: int, parts: int) -> list[range]:
    """`total` items in `parts` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(total, parts)
    ranges, start = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def check_shardable(model_type: str, num_kv_heads: int, world: int, quantization: str) -> None:
    """One-line errors for models this sharding cannot split, before any process starts."""
    from localai.engine.model import SUPPORTED_TYPES

    if model_type not in SUPPORTED_TYPES:
        raise LocalaiError(f"--tp shards the engine's own forward ({', '.join(SUPPORTED_TYPES)}), not {model_type!r}",
                           "use --dp for this model")
    if world > num_kv_heads:
        raise LocalaiError(f"--tp {world} is more than the model's {num_kv_heads} key/value heads",
                           f"use --tp {num_kv_heads} or less, or --dp")
    if quantization != "none":
        raise LocalaiError(f"--tp shards unquantized weights only; this model is {quantization}",
                           "benchmark the 16-bit model with --tp, or use --dp")


def _keep_rows(linear, rows: range) -> None:
    """Column-parallel: keep output features `rows` of an nn.Linear."""
    linear.weight = nn.Parameter(linear.weight.data[rows.start:rows.stop].clone(), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[rows.start:rows.stop].clone(), requires_grad=False)
    linear.out_features = len(rows)


def _keep_columns(linear, columns: range, rank: int) -> None:
    """Row-parallel: keep input features `columns`; the partial outputs are summed by add_all_reduce."""
    linear.weight = nn.Parameter(linear.weight.data[:, columns.start:columns.stop].clone(), requires_grad=False)
    if linear.bias is not None and rank != 0:
        linear.bias.data.zero_()  # the bias is added once, by rank 0
    linear.in_features = len(columns)


def _scaled(heads: range, head_dim: int) -> range:
    return range(heads.start * head_dim, heads.stop * head_dim)


def shard_model(model, rank: int, world: int) -> None:
    """Keep this rank's slice of every decoder layer (Llama / Mistral / Qwen2 / Qwen3 layout).

    Call before building the engine (it fuses q/k/v and gate/up from these modules and reads
    the head counts from the config), then add_all_reduce(engine).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    group = heads // kv_heads
    kv = even_ranges(kv_heads, world)[rank]
    q = range(kv.start * group, kv.stop * group)
    mlp = even_ranges(config.intermediate_size, world)[rank]
    for layer in model.model.layers:
        attn, ffn = layer.self_attn, layer.mlp
        _keep_rows(attn.q_proj, _scaled(q, head_dim))
        _keep_rows(attn.k_proj, _scaled(kv, head_dim))
        _keep_rows(attn.v_proj, _scaled(kv, head_dim))
        _keep_columns(attn.o_proj, _scaled(q, head_dim), rank)
        _keep_rows(ffn.gate_proj, mlp)
        _keep_rows(ffn.up_proj, mlp)
        _keep_columns(ffn.down_proj, mlp, rank)
    config.head_dim = head_dim
    config.num_attention_heads, config.num_key_value_heads = len(q), len(kv)
    config.intermediate_size = len(mlp)


class SummedOverRanks:
    """Wraps the engine's row-parallel projection: its output is summed across ranks in place."""

    def __init__(self, projection):
        self.projection = projection

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.projection(x)
        dist.all_reduce(y)
        return y

    def __getattr__(self, name: str):  # fused, tensors(), ... as the wrapped projection has them
        return getattr(self.projection, name)


def add_all_reduce(engine) -> None:
    """One all-reduce after each row-parallel projection (attention output, MLP down) of the lean forward."""
    if engine.runner.kind != "lean":
        raise LocalaiError(f"--tp needs the engine's own forward, but this model runs on {engine.runner.kind}",
                           "use --dp for this model")
    for layer in engine.runner.model.layers:
        layer.out = SummedOverRanks(layer.out)
        layer.down = SummedOverRanks(layer.down)


def run_tp(model: str, workload, places, request_ids: list[int], **options):
    """One model sharded over all `places`; every rank runs every request in lockstep."""
    from localai.bench.launcher import launch
    from localai.bench.worker import WorkerSpec

    init = f"tcp://127.0.0.1:{free_port()}"
    world = len(places)
    specs = [WorkerSpec(model=model, device=place.device, workload=workload.to_dict(), request_ids=request_ids,
                        cores=place.cores, tp_rank=rank, tp_world=world, tp_init=init, **options)
             for rank, place in enumerate(places)]
    envs = [dict(place.env) for place in places]
    if places[0].device == "cuda":  # every rank sees all GPUs and picks its own
        every_gpu = ",".join(place.env["CUDA_VISIBLE_DEVICES"] for place in places)
        envs = [{"CUDA_VISIBLE_DEVICES": every_gpu} for _ in places]
    return launch(specs, envs)
