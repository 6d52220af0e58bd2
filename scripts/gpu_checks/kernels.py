"""GPU checks for the TurboQuant kernels, as one section of scripts/device_check.py.

run() -> dict, in this order, each part in its own try/except so one failure keeps the rest:
- matmul: weights 4096x4096, 14336x4096, 4096x14336 at batch 1/16/64: TurboQuant vs fp16
  torch.matmul vs bitsandbytes NF4, plus each Triton result's error against the reference.
  GPU time per call: each contender is captured in a CUDA graph that cycles through enough
  weight copies to overflow L2, replayed 20 times, median taken.
- decode: batch-1 greedy decoding of a Llama-3-8B-shaped model (hidden 4096, 32 layers, GQA 32/8,
  intermediate 14336, vocab 128256) with random weights, bf16 vs TurboQuant (data-free, quantized on
  the GPU layer by layer; lm_head and embeddings stay bf16). Each layer is torch.compile'd with
  fullgraph=True and the whole step is replayed as one CUDA graph, for both models
  (scripts/gpu_checks/turbo_decode.py).
- correctness_quick: Triton kernels vs the plain-torch reference on odd shapes (576 and 100
  inputs, 97 and 33 outputs, batch 1..64, bf16/fp16/fp32), the rotation kernel, TurboLinear vs
  its dequantized dense weight, eager and under torch.compile(fullgraph=True).
- every_tile: each tile that looks levels up by warp shuffle, pinned in turn, against the
  reference (while time is left).
- correctness: the checks of correctness_quick over more shapes (4096, 1536, group 32/128), if time
  is left.
Needs CUDA. Parts that would not fit in the time budget are reported as skipped.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import import_localai  # noqa: E402
from target import DEVICE, REHEARSAL, device_name, empty_cache, missing_device, sized  # noqa: E402
from turbo_decode import attempt, bench_decode, rel_err  # noqa: E402

BUDGET_S = 85.0
SHAPES = sized(((4096, 4096), (14336, 4096), (4096, 14336)), ((96, 128), (160, 128), (128, 192)))  # weight [out, in]
BATCHES = (1, 16, 64)
QUICK_CASES = ((97, 576, 64), (33, 100, 32))  # (N, K, group): odd shapes
FULL_CASES = sized(((4096, 4096, 64), (97, 576, 64), (1536, 576, 64), (576, 1536, 64), (33, 100, 32), (256, 4096, 128)),
                   ((33, 100, 32), (40, 256, 128)))
TOLERANCE = {"torch.float32": 1e-4, "torch.float16": 5e-3, "torch.bfloat16": 2e-2}
_deadline = float("inf")


def _time_left() -> float:
    return _deadline - time.perf_counter()


def _graph_time_us(calls, replays: int = 20) -> float:
    """Median GPU time per call: all `calls` captured in one CUDA graph (no launch overhead),
    replayed `replays` times. Callers cycle through weight copies larger than L2 together."""
    import torch

    for call in calls:  # warm-up: compilation and autotuning stay outside the capture
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(calls))
    return round(sorted(times)[len(times) // 2], 2)


def _time_calls_us(calls) -> tuple[float, str]:
    """GPU microseconds per call, from a CUDA graph; falls back to timing eager launches
    (L2 flushed by triton's do_bench) when a contender cannot be captured. A rehearsal times
    eager calls on the CPU."""
    if REHEARSAL:
        started = time.perf_counter()
        for call in calls:
            call()
        return round((time.perf_counter() - started) * 1e6 / len(calls), 2), "cpu-rehearsal"
    try:
        return _graph_time_us(calls), "cuda-graph"
    except Exception:
        import torch
        from triton.testing import do_bench

        torch.cuda.synchronize()

        def run_all():
            for call in calls:
                call()

        return round(do_bench(run_all, warmup=10, rep=50, quantiles=[0.5]) * 1000 / len(calls), 2), "eager"


def _copies(nbytes: int) -> int:
    """Weight copies that together overflow the L2 cache (50 MB on an H100) twice over."""
    return sized(max(2, min(32, -(-128 * 2**20 // nbytes))), 2)


# ---- correctness --------------------------------------------------------------------------------


@contextmanager
def _pinned(configs: dict):
    """The autotuned kernels named in `configs` ({name: [triton.Config]}) time only those configs
    inside, their own list again after."""
    from localai.kernels import triton_matmul

    saved = {name: triton_matmul.AUTOTUNED[name].configs for name in configs}
    for name, pinned in configs.items():
        triton_matmul.AUTOTUNED[name].configs = pinned
    try:
        yield
    finally:
        for name, kept in saved.items():
            triton_matmul.AUTOTUNED[name].configs = kept


def check_correctness(cases=FULL_CASES, with_module: bool = False) -> dict:
    import torch

    from localai.kernels import triton_matmul

    worst: dict[str, float] = {}
    torch.manual_seed(0)
    # one config per kernel: this checks the code over many shapes; the benchmarked shapes are
    # checked with their tuned configs in bench_matmul
    with _pinned({name: kernel.configs[:1] for name, kernel in triton_matmul.AUTOTUNED.items()}):
        checked = sum(1 for _ in _correctness_cases(worst, cases) if _time_left() > 0)
    ok = all(worst[key] < TOLERANCE.get(key, 1e-5) for key in worst)
    report = {"ok": ok, "cases": checked, "max_rel_err": {key: f"{v:.2e}" for key, v in worst.items()}}
    if with_module:
        report["turbolinear"] = attempt(check_turbolinear)
    return report


def check_every_tile() -> dict:
    """Each tile the autotuners may pick where levels are looked up by warp shuffle, pinned in turn:
    the shuffle's lanes depend on how the tile lays codes out over a warp, so every layout is checked
    (the GEMV at 1 and 2 rows, bf16 and float32; the tiled kernel at 17, bf16, which stands for
    fp16). Each tile compiles, so it stops at the time budget and says how many it checked."""
    import torch

    from localai.kernels import reference, triton_matmul
    from localai.quant.turboquant import quantize_weight

    packed = quantize_weight(torch.randn(97, 576, device=DEVICE), 64, seed=5)
    uses = (("gemv", triton_matmul.GEMV_TILES, triton_matmul.gemv_config, ((1, torch.bfloat16), (2, torch.float32))),
            ("dot", triton_matmul.DOT_TILES, triton_matmul.dot_config, ((17, torch.bfloat16),)))
    worst: dict[str, float] = {}
    checked = 0
    for name, tiles, config, cases in uses:
        for tile in tiles:
            if _time_left() <= 0:  # each tile compiles: stop at the budget, say how far it got
                break
            checked += 1
            with _pinned({name: [config(*tile)]}):
                for m, dtype in cases:
                    x = torch.randn(m, packed.layout.k_padded, device=DEVICE).to(dtype)
                    got = triton_matmul.turbo_matmul(x, packed.codes, packed.gains, 64)
                    ref = reference.turbo_matmul(x.float(), packed.codes, packed.gains, 64)
                    key = f"{name} {dtype}"
                    worst[key] = max(worst.get(key, 0.0), rel_err(got, ref))
    return {"ok": all(worst[key] < TOLERANCE[key.split()[1]] for key in worst), "tiles_checked": checked,
            "tiles": len(triton_matmul.GEMV_TILES) + len(triton_matmul.DOT_TILES),
            "max_rel_err": {key: f"{value:.2e}" for key, value in worst.items()}}


def _correctness_cases(worst: dict, cases):
    import torch

    from localai.kernels import reference, triton_matmul
    from localai.quant.hadamard import random_signs, rotate
    from localai.quant.turboquant import quantize_weight

    for n, k, group in cases:
        if _time_left() <= 0:
            return
        packed = quantize_weight(torch.randn(n, k, device=DEVICE), group, seed=7)
        k_padded = packed.layout.k_padded
        for m in (1, 3, 17, 64):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                x = torch.randn(m, k_padded, device=DEVICE).to(dtype)
                ref = reference.turbo_matmul(x.float(), packed.codes, packed.gains, group)
                got = triton_matmul.turbo_matmul(x, packed.codes, packed.gains, group)
                assert got.dtype == dtype and got.shape == ref.shape
                worst[str(dtype)] = max(worst.get(str(dtype), 0.0), rel_err(got, ref))
                yield
        signs = random_signs(k_padded, 3, device=DEVICE)
        x = torch.randn(5, k, device=DEVICE)
        worst["rotate"] = max(worst.get("rotate", 0.0),
                              rel_err(triton_matmul.rotate(x, signs, packed.layout.block), rotate(x, signs, packed.layout.block)))


def check_turbolinear() -> dict:
    import torch

    from localai.quant.linear import TurboLinear
    from localai.quant.turboquant import dequantize_weight, quantize_weight

    dense = torch.nn.Linear(1536, 576, device=DEVICE)
    packed = quantize_weight(dense.weight.data, 64, seed=11)
    layer = TurboLinear.from_packed(packed.codes, packed.gains, 1536, 64, 11, bias=dense.bias.data)
    x = torch.randn(2, 9, 1536, device=DEVICE, dtype=torch.bfloat16)
    ref = x.float() @ dequantize_weight(packed, 11).T + dense.bias.float()
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)(x)
    return {"eager_rel_err": f"{rel_err(eager, ref):.2e}", "compiled_rel_err": f"{rel_err(compiled, ref):.2e}",
            "ok": rel_err(eager, ref) < 2e-2 and rel_err(compiled, ref) < 2e-2}


# ---- matmul speed -------------------------------------------------------------------------------


def _nf4(weight):
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    qweight, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    return lambda x: bnb.matmul_4bit(x, qweight.t(), quant_state=state)


def bench_matmul(splits: tuple[int, ...] = ()) -> list[dict]:
    """One row per (weight, batch): GPU microseconds per call and speedups, plus the Triton
    result's error against the reference; `splits` adds forced split-K timings."""
    import torch

    from localai.kernels import reference, triton_matmul
    from localai.quant.turboquant import quantize_weight

    rows = []
    for n, k in SHAPES:
        if _time_left() < 12:
            rows.append({"weight": f"{n}x{k}", "skipped": "time budget spent"})
            continue
        torch.manual_seed(0)
        w16 = (torch.randn(n, k, device=DEVICE) * 0.02).half()
        packed = quantize_weight(w16.float(), 64, seed=1)
        turbo = [(packed.codes.clone(), packed.gains.clone()) for _ in range(_copies(packed.codes.numel()))]
        dense = [w16.clone() for _ in range(_copies(w16.numel() * 2))]
        nf4 = attempt(lambda: [_nf4(w16) for _ in range(_copies(packed.codes.numel()))])
        signs = torch.ones(k, device=DEVICE)
        for m in BATCHES:
            x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
            row = {"weight": f"{n}x{k}", "batch": m}
            row["rel_err_vs_reference"] = attempt(lambda: f"{rel_err(triton_matmul.turbo_matmul(x, packed.codes, packed.gains, 64), reference.turbo_matmul(x.float(), packed.codes, packed.gains, 64)):.2e}")
            contenders = {"fp16": [lambda w=w: torch.matmul(x, w.T) for w in dense],
                          "turbo": [lambda c=c, g=g: triton_matmul.turbo_matmul(x, c, g, 64) for c, g in turbo]}
            if m == 1:
                contenders["rotate"] = [lambda: triton_matmul.rotate(x, signs, 128)] * 8
            if isinstance(nf4, list):
                contenders["nf4"] = [lambda f=f: f(x) for f in nf4]
            else:
                row["nf4_us"] = nf4
            for split in splits:  # forced split-K, beside the tuned choice
                contenders[f"turbo_split{split}"] = [
                    lambda c=c, g=g, split=split: triton_matmul.turbo_matmul(x, c, g, 64, split_k=split) for c, g in turbo]
            for name, calls in contenders.items():
                timed = attempt(_time_calls_us, calls)
                row[f"{name}_us"], method = timed if isinstance(timed, tuple) else (timed, "failed")
                if method != "cuda-graph" and not REHEARSAL:
                    row[f"{name}_timing"] = method
            if isinstance(row["turbo_us"], float):
                for base in ("fp16", "nf4"):
                    if isinstance(row[f"{base}_us"], float):
                        row[f"speedup_vs_{base}"] = round(row[f"{base}_us"] / row["turbo_us"], 2)
                row["turbo_weight_GB_per_s"] = round((packed.codes.numel() + packed.gains.numel() * 2) / row["turbo_us"] / 1e3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del turbo, dense, nf4
        empty_cache()
    return rows


def run(sweep_splits: tuple[int, ...] = (), budget_s: float = BUDGET_S) -> dict:
    """All checks within `budget_s` seconds; parts that would not fit are reported as skipped."""
    global _deadline
    if why := missing_device():
        return {"error": why}
    import_localai()
    _deadline = time.perf_counter() + budget_s
    report = {"device": device_name()}
    parts = (("matmul", lambda: bench_matmul(sweep_splits), 0),
             ("decode", bench_decode, 30),
             ("correctness_quick", lambda: check_correctness(QUICK_CASES, with_module=True), 8),
             ("every_tile", check_every_tile, 8),
             ("correctness", check_correctness, 5))
    for name, fn, needs_s in parts:
        if _time_left() < needs_s:
            report[name] = {"skipped": "time budget spent"}
            continue
        started = time.perf_counter()
        report[name] = attempt(fn)
        report[name + "_seconds"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(report[name], default=str)[:3000], file=sys.stderr, flush=True)
    return report


if __name__ == "__main__":
    print(json.dumps(run(), indent=1, default=str))
