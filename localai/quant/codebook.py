"""The 4-bit Lloyd-Max codebook for a unit Gaussian, and packing two codes per byte.

After a random rotation every weight coordinate is close to N(0, sigma^2), so one
fixed 16-level codebook, scaled per group by a least-squares gain, is near-optimal
(TurboQuant, arXiv 2504.19874; the scalar case of HIGGS, arXiv 2411.17525).
"""

from __future__ import annotations

import functools

import torch

from localai.kernels.codebook import LEVELS_4BIT  # Lloyd-Max levels for N(0, 1), MSE 0.00950

# Decision boundaries between consecutive levels (15 of them).
BOUNDARIES_4BIT = (
    -2.4008, -1.8435, -1.4371, -1.0993, -0.7995, -0.5224, -0.2582, 0.0,
    0.2582, 0.5224, 0.7995, 1.0993, 1.4371, 1.8435, 2.4008,
)


@functools.lru_cache(maxsize=None)
def _table(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`values` as a tensor on `device`, built once. On a GPU a tensor made from Python numbers is a
    blocking host-to-device copy, which the quantizers' per-column loops would wait on thousands of
    times per layer. Shared: never modified in place."""
    with torch.inference_mode(False):  # usable outside inference mode too
        return torch.tensor(values, device=device, dtype=dtype)


def codebook(device=None, dtype=torch.float32) -> torch.Tensor:
    """The 16 levels as a tensor: [16] (a shared constant: do not modify it in place)."""
    return _table(LEVELS_4BIT, torch.device(device or "cpu"), dtype)


def nearest_code(x: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level for each element of x (already divided by its scale): uint8, same shape."""
    return torch.bucketize(x, _table(BOUNDARIES_4BIT, x.device, x.dtype)).to(torch.uint8)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 (K even) -> [N, K // 2] uint8; element 2j in the low nibble, 2j+1 in the high."""
    if codes.shape[-1] % 2:
        raise ValueError(f"the last dimension must be even to pack two codes per byte, got {codes.shape[-1]}")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """[N, K // 2] uint8 -> [N, K] codes in 0..15 (uint8)."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)
