"""Random-sign block Hadamard rotation in plain torch: the reference the CPU and Triton
rotations are tested against, and the fallback where neither runs.

The rotation acts on the input dimension K in blocks of `block` (a power of two), K
zero-padded up to the length of `signs`; it is orthogonal, so <x, w> = <rotate(x), rotate(w)>.
"""

from __future__ import annotations

import torch


def check_block(block: int) -> None:
    if block < 2 or block & (block - 1):
        raise ValueError(f"the Hadamard block must be a power of two >= 2, got {block}")


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform of each length-`block` chunk of the last dim.

    x: [..., K] with K a multiple of `block`; returns the same shape and dtype. The butterflies
    run in float32 (the native and Triton rotations do too): in 16-bit, the sums grow up to
    `block` times before the final scale, past float16's range for large inputs.
    """
    check_block(block)
    shape = x.shape
    k = shape[-1]
    y = x.float().reshape(-1, k // block, block)
    h = 1
    while h < block:
        # pair element i with i + h inside every run of 2h
        y = y.reshape(y.shape[0], y.shape[1], block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return (y.reshape(shape) * block ** -0.5).to(x.dtype)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Rotate rows of x: [..., K] -> [..., K_padded]; pads K with zeros, flips signs, then FWHT."""
    k_padded = signs.shape[0]
    if x.shape[-1] < k_padded:
        x = torch.nn.functional.pad(x, (0, k_padded - x.shape[-1]))
    return fwht(x * signs.to(x.dtype), block)
