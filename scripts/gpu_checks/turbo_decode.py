"""End-to-end batch-1 decoding of a Llama-3-8B-shaped model with random weights: bf16 vs TurboQuant.

Part of the kernels section of scripts/device_check.py (see kernels.py). Weights are built
layer by layer on the GPU and quantized there, data-free; lm_head and embeddings stay bf16.
Each decoder layer is one function compiled with torch.compile(fullgraph=True) (one graph
serves all 32 layers: weights are arguments), and a whole decoding step (embedding, layers,
norm, lm_head, argmax, position update) is captured and replayed as one CUDA graph.
Projections that share an input share one rotation: their weights are quantized with one seed.
"""

from __future__ import annotations

import sys
import time
import traceback

from target import DEVICE, REHEARSAL, empty_cache, peak_memory_bytes, sized, synchronize

LLAMA3_8B = dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256)
TOY = dict(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, intermediate=384, vocab=512)
CONFIG = sized(LLAMA3_8B, TOY)  # the model's shape


def attempt(fn, *args, **kwargs):
    """fn's result, or {'error': ...}: one failed measurement must not lose the others."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # recorded in the report
        return {"error": f"{type(exc).__name__}: {exc}"[:400], "where": traceback.format_exc()[-800:]}


def rel_err(got, ref) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def _rms_norm(x, weight, eps=1e-5):
    import torch

    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _rope(x, cos, sin):
    """x: [heads, 1, head_dim]; cos, sin: [1, head_dim // 2] (rotate-half layout)."""
    import torch

    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def _layer(h, w, k_cache, v_cache, pos, cos_table, sin_table, project):
    """One decoder layer for one token. h: [1, hidden]; caches: [kv_heads, L, head_dim]."""
    import torch

    cfg = CONFIG
    heads, kv_heads, head_dim = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q, k, v = project(_rms_norm(h, w["attn_norm"]), w, ("q", "k", "v"))
    cos, sin = cos_table[pos], sin_table[pos]  # [1, head_dim // 2]
    q = _rope(q.view(heads, 1, head_dim), cos, sin)
    k = _rope(k.view(kv_heads, 1, head_dim), cos, sin)
    k_cache.index_copy_(1, pos, k)
    v_cache.index_copy_(1, pos, v.view(kv_heads, 1, head_dim))
    length = k_cache.shape[1]
    keys = k_cache[:, None].expand(kv_heads, heads // kv_heads, length, head_dim).reshape(heads, length, head_dim)
    values = v_cache[:, None].expand(kv_heads, heads // kv_heads, length, head_dim).reshape(heads, length, head_dim)
    scores = (q.float() @ keys.float().transpose(1, 2)) * head_dim ** -0.5  # [heads, 1, L]
    visible = torch.arange(length, device=h.device) <= pos
    attn = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).to(h.dtype) @ values
    (o,) = project(attn.reshape(1, heads * head_dim), w, ("o",))
    h = h + o
    gate, up = project(_rms_norm(h, w["mlp_norm"]), w, ("gate", "up"))
    (down,) = project(torch.nn.functional.silu(gate) * up, w, ("down",))
    return h + down


def _dense_project(x, w, names):
    return [x @ w[name].T for name in names]


def _turbo_project(x, w, names):
    """Projections that share an input share one rotation (one seed per input)."""
    from localai.kernels import ops

    x_rot = ops.hadamard_rotate(x, w[names[0] + ".signs"], w["block"])
    return [ops.turbo_matmul(x_rot, w[name + ".codes"], w[name + ".gains"], 64) for name in names]


def dense_layer(h, w, k_cache, v_cache, pos, cos_table, sin_table):
    return _layer(h, w, k_cache, v_cache, pos, cos_table, sin_table, _dense_project)


def turbo_layer(h, w, k_cache, v_cache, pos, cos_table, sin_table):
    return _layer(h, w, k_cache, v_cache, pos, cos_table, sin_table, _turbo_project)


def _random_layer(cfg, std=0.02):
    import torch

    hidden, inter, kv = cfg["hidden"], cfg["intermediate"], cfg["kv_heads"] * cfg["head_dim"]
    shapes = {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
              "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
    w = {name: (torch.randn(shape, device=DEVICE, dtype=torch.bfloat16) * std) for name, shape in shapes.items()}
    w["attn_norm"] = torch.ones(hidden, device=DEVICE, dtype=torch.bfloat16)
    w["mlp_norm"] = torch.ones(hidden, device=DEVICE, dtype=torch.bfloat16)
    return w


def _quantize_layer(dense, layer_index):
    """Data-free TurboQuant of one layer; projections of one input share a seed (one rotation)."""
    from localai.quant.hadamard import random_signs
    from localai.quant.turboquant import quantize_weight

    w = {"attn_norm": dense["attn_norm"], "mlp_norm": dense["mlp_norm"]}
    for names, offset in ((("q", "k", "v"), 0), (("o",), 1), (("gate", "up"), 2), (("down",), 3)):
        seed = layer_index * 4 + offset
        for name in names:
            packed = quantize_weight(dense[name], 64, seed=seed)
            w[name + ".codes"], w[name + ".gains"] = packed.codes, packed.gains
        w[names[0] + ".signs"] = random_signs(packed.layout.k_padded, seed, device=DEVICE)
    w["block"] = packed.layout.block  # 128 for every Llama-3-8B projection
    return w


class _Decoder:
    """Static-KV greedy decoding of a list of layers; one step = embed, layers, norm, lm_head, argmax."""

    def __init__(self, layers, layer_fn, embed, lm_head, final_norm, cfg, max_len):
        import torch

        self.layers, self.layer_fn, self.embed, self.lm_head, self.final_norm = layers, layer_fn, embed, lm_head, final_norm
        shape = (cfg["kv_heads"], max_len, cfg["head_dim"])
        self.caches = [(torch.zeros(shape, device=DEVICE, dtype=torch.bfloat16),
                        torch.zeros(shape, device=DEVICE, dtype=torch.bfloat16)) for _ in layers]
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, cfg["head_dim"], 2, device=DEVICE).float() / cfg["head_dim"]))
        angles = torch.arange(max_len, device=DEVICE).float()[:, None] * inv_freq[None, :]
        self.cos, self.sin = angles.cos(), angles.sin()
        self.token = torch.zeros(1, dtype=torch.long, device=DEVICE)
        self.pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
        self.graph = None

    def step(self):
        h = self.embed[self.token]  # [1, hidden]
        for w, (k_cache, v_cache) in zip(self.layers, self.caches):
            h = self.layer_fn(h, w, k_cache, v_cache, self.pos, self.cos, self.sin)
        logits = _rms_norm(h, self.final_norm) @ self.lm_head.T  # [1, vocab]
        self.token.copy_(logits.argmax(-1))
        self.pos.add_(1)

    def capture(self):
        import torch

        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def tokens_per_second(self, steps: int, start_pos: int) -> float:
        self.pos.fill_(start_pos)
        run = self.graph.replay if self.graph is not None else self.step
        run()
        synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            run()
        synchronize()
        return round(steps / (time.perf_counter() - started), 1)


def _prepare(decoder, warmup_steps: int) -> dict:
    """Compile + autotune through warm-up steps, then capture the step as a CUDA graph."""
    started = time.perf_counter()
    for _ in range(warmup_steps):
        decoder.step()
    synchronize()
    info = {"warmup_s": round(time.perf_counter() - started, 1)}
    if REHEARSAL:
        info["cuda_graph"] = "not in a rehearsal"
        return info
    captured = attempt(decoder.capture)
    info["cuda_graph"] = captured if isinstance(captured, dict) else True
    if isinstance(captured, dict):
        decoder.graph = None
    return info


def bench_decode(layers: int | None = None, steps: int = 48, max_len: int = 128) -> dict:
    import torch

    cfg = dict(CONFIG)
    layers = layers or cfg["layers"]
    torch.manual_seed(0)
    started = time.perf_counter()
    dense_layers = [_random_layer(cfg) for _ in range(layers)]
    embed = torch.randn(cfg["vocab"], cfg["hidden"], device=DEVICE, dtype=torch.bfloat16) * 0.02
    lm_head = torch.randn(cfg["vocab"], cfg["hidden"], device=DEVICE, dtype=torch.bfloat16) * 0.02
    final_norm = torch.ones(cfg["hidden"], device=DEVICE, dtype=torch.bfloat16)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    turbo_layers = [_quantize_layer(w, i) for i, w in enumerate(dense_layers)]
    synchronize()
    report = {"layers": layers, "build_s": round(build_s, 1), "quantize_s": round(time.perf_counter() - started, 1),
              "compile": "torch.compile(fullgraph=True) per layer, CUDA graph per step"}

    compiled_turbo = torch.compile(turbo_layer, fullgraph=True)
    report["compile_check_rel_err"] = attempt(_compile_check, compiled_turbo, turbo_layers[0], cfg, max_len)
    for name, layer_list, fn in (("bf16", dense_layers, dense_layer), ("turbo", turbo_layers, turbo_layer)):
        compiled = compiled_turbo if name == "turbo" else torch.compile(fn, fullgraph=True)
        decoder = _Decoder(layer_list, compiled, embed, lm_head, final_norm, cfg, max_len)
        report[name] = attempt(_prepare, decoder, 3)
        report[name + "_tokens_per_s"] = attempt(decoder.tokens_per_second, steps, 4)
        print(name, report[name], report[name + "_tokens_per_s"], file=sys.stderr, flush=True)
        del decoder
        empty_cache()
    if isinstance(report.get("bf16_tokens_per_s"), float) and isinstance(report.get("turbo_tokens_per_s"), float):
        report["speedup_vs_bf16"] = round(report["turbo_tokens_per_s"] / report["bf16_tokens_per_s"], 2)
    report["gpu_memory_peak_gb"] = round(peak_memory_bytes() / 2**30, 1)
    return report


def _compile_check(compiled, w, cfg, max_len) -> str:
    """The compiled TurboQuant layer against the same layer run eagerly."""
    import torch

    def inputs():
        shape = (cfg["kv_heads"], max_len, cfg["head_dim"])
        caches = [torch.zeros(shape, device=DEVICE, dtype=torch.bfloat16) for _ in range(2)]
        table = torch.randn(max_len, cfg["head_dim"] // 2, device=DEVICE)
        return caches, table

    h = torch.randn(1, cfg["hidden"], device=DEVICE, dtype=torch.bfloat16)
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
    (kc, vc), table = inputs()
    eager = turbo_layer(h, w, kc, vc, pos, table.cos(), table.sin())
    (kc, vc), _ = inputs()
    got = compiled(h, w, kc, vc, pos, table.cos(), table.sin())
    return f"{rel_err(got, eager):.2e}"
