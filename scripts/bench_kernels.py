"""CPU layer benchmark: TurboLinear vs nn.Linear (fp32) vs bitsandbytes Linear4bit (NF4).

    python scripts/bench_kernels.py [--batches 1,16] [--copies 30] [--repeats 50] [--threads N]

Shapes are SmolLM2-135M's linear layers (in x out): 576x576 (q, o), 576x192 (k, v),
576x1536 (gate, up), 1536x576 (down). Each contender gets `copies` distinct layers of a shape
(30 = one per SmolLM2 decoder layer) and is timed calling them in turn, so weights stream from
memory as they do while decoding instead of sitting in cache. Reports the median microseconds
per layer call over `repeats` passes, after warm-up. Table on stderr, JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576))  # (in_features, out_features)


def median_us(layers, x, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        for layer in layers[:3]:  # warm-up (and the native kernel's first-use build)
            layer(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for layer in layers:
                layer(x)
            times.append((time.perf_counter() - start) / len(layers))
    return round(statistics.median(times) * 1e6, 1)


def build(kind: str, in_features: int, out_features: int, copies: int):
    import torch
    from torch import nn

    layers = []
    for i in range(copies):
        torch.manual_seed(i)
        dense = nn.Linear(in_features, out_features, bias=False)
        if kind == "fp32":
            layers.append(dense)
        elif kind == "turbo":
            from localai.quant.linear import TurboLinear
            from localai.quant.turboquant import quantize_weight

            packed = quantize_weight(dense.weight.data, 64, seed=i)
            layers.append(TurboLinear.from_packed(packed.codes, packed.gains, in_features, 64, i))
        else:
            import bitsandbytes as bnb

            layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32,
                                      quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(dense.weight.data, requires_grad=False, quant_type="nf4", blocksize=64)
            layers.append(layer.to("cpu"))
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from localai.kernels import cpu

    native = cpu.native_library()
    rows = []
    for in_features, out_features in SHAPES:
        contenders = {kind: build(kind, in_features, out_features, args.copies) for kind in ("fp32", "turbo", "nf4")}
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, in_features)
            row = {"shape": f"{in_features}x{out_features}", "batch": batch}
            for kind, layers in contenders.items():
                row[f"{kind}_us"] = median_us(layers, x, args.repeats)
            row["turbo_vs_fp32"] = round(row["fp32_us"] / row["turbo_us"], 2)
            row["turbo_vs_nf4"] = round(row["nf4_us"] / row["turbo_us"], 2)
            rows.append(row)
    totals = {f"{kind}_us": round(sum(r[f"{kind}_us"] for r in rows if r["batch"] == 1), 1) for kind in ("fp32", "turbo", "nf4")}
    report = {"threads": torch.get_num_threads(), "copies": args.copies,
              "cpu_kernel": f"native, vector width {native.turbo_vector_width()}" if native else "torch fallback",
              "rows": rows, "batch1_sum_over_shapes": totals}
    print(f"{'shape':>10} {'batch':>5} {'fp32 us':>9} {'turbo us':>9} {'nf4 us':>9} {'vs fp32':>8} {'vs nf4':>8}", file=sys.stderr)
    for r in rows:
        print(f"{r['shape']:>10} {r['batch']:>5} {r['fp32_us']:>9} {r['turbo_us']:>9} {r['nf4_us']:>9} "
              f"{r['turbo_vs_fp32']:>8} {r['turbo_vs_nf4']:>8}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
