"""Run the Triton kernels under TRITON_INTERPRET=1 on the CPU against the reference.

Started in a subprocess by tests/test_kernels.py: the interpreter must be switched on before
the kernels are defined, which must not leak into other tests. Prints one JSON object:
{case name: relative error}.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from localai.kernels import reference, triton_matmul  # noqa: E402
from localai.quant.hadamard import random_signs, rotate  # noqa: E402
from localai.quant.turboquant import quantize_weight  # noqa: E402


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def main() -> None:
    torch.manual_seed(0)
    errors = {}
    # (N, K, group, batches, dtypes): K=576 and 1536 are SmolLM2's, K=100 pads to 128, N is odd;
    # group 128 is decoded in slices by the tiled kernel
    cases = ((97, 576, 64, (1, 17), (torch.float32, torch.bfloat16)),
             (33, 1536, 64, (3,), (torch.float16,)),
             (33, 100, 32, (1, 17), (torch.bfloat16, torch.float16)),
             (19, 384, 128, (2, 17), (torch.float32,)))
    for n, k, group, batches, dtypes in cases:
        packed = quantize_weight(torch.randn(n, k), group, seed=1)
        k_padded = packed.layout.k_padded
        for m in batches:
            for dtype in dtypes:
                x = torch.randn(m, k_padded).to(dtype)
                ref = reference.turbo_matmul(x.float(), packed.codes, packed.gains, group)
                got = triton_matmul.turbo_matmul(x, packed.codes, packed.gains, group)
                assert got.dtype == dtype and got.shape == (m, n), (got.dtype, got.shape)
                errors[f"matmul {n}x{k} g{group} m{m} {dtype}"] = rel_err(got, ref)
        x = torch.randn(2, k_padded)
        split = triton_matmul.turbo_matmul(x, packed.codes, packed.gains, group, split_k=2)
        # codes one byte into their buffer: the GEMV reads them as 4-byte words, so they move
        shifted = torch.empty(packed.codes.numel() + 1, dtype=torch.uint8)[1:].view(packed.codes.shape)
        shifted.copy_(packed.codes)
        errors[f"offset codes {n}x{k}"] = rel_err(triton_matmul.turbo_matmul(x, shifted, packed.gains, group),
                                                  reference.turbo_matmul(x, packed.codes, packed.gains, group))
        errors[f"split-k {n}x{k}"] = rel_err(split, reference.turbo_matmul(x, packed.codes, packed.gains, group))
        signs = random_signs(k_padded, 3)
        x = torch.randn(3, k)
        errors[f"rotate {k}"] = rel_err(triton_matmul.rotate(x, signs, packed.layout.block),
                                        rotate(x, signs, packed.layout.block))
    errors.update(every_gpu_tile())
    json.dump(errors, sys.stdout)


# the float32 tiled kernel runs the same tiles with one pipeline stage
F32_DOT_TILES = tuple((block_n, warps, 1) for block_n, warps, _ in triton_matmul.DOT_TILES)


def every_gpu_tile() -> dict:
    """Each tile the GPU may pick by autotuning, on its own (batch 1 for the GEMV, 17 for tl.dot)."""
    packed = quantize_weight(torch.randn(37, 576), 64, seed=2)
    errors = {}
    for name, tiles, make, m, dtype in (("gemv", triton_matmul.GEMV_TILES, triton_matmul.gemv_config, 1, torch.float32),
                                        ("dot", triton_matmul.DOT_TILES, triton_matmul.dot_config, 17, torch.bfloat16),
                                        ("dot_f32", F32_DOT_TILES, triton_matmul.dot_config, 17, torch.float32)):
        kernel = triton_matmul.AUTOTUNED[name]
        saved = kernel.configs
        x = torch.randn(m, packed.layout.k_padded).to(dtype)
        ref = reference.turbo_matmul(x.float(), packed.codes, packed.gains, 64)
        try:
            for tile in tiles:
                kernel.configs = [make(*tile)]
                got = triton_matmul.turbo_matmul(x, packed.codes, packed.gains, 64)
                errors[f"tile {name} {tile} {dtype}"] = rel_err(got, ref)
        finally:
            kernel.configs = saved
    return errors


if __name__ == "__main__":
    main()
