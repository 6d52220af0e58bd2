"""Random-sign block Hadamard rotation, applied with a fast Walsh-Hadamard transform.

The rotation acts on the input dimension K in blocks of `block` (a power of two).
K is zero-padded up to a multiple of the block: `padded_dim(K, block)` columns.
For a weight row w and an activation row x, <x, w> = <rotate(x), rotate(w)>
because the rotation is orthogonal.
"""

from __future__ import annotations

import torch


def padded_dim(k: int, block: int) -> int:
    return -(-k // block) * block


def check_block(block: int) -> None:
    if block < 2 or block & (block - 1):
        raise ValueError(f"the Hadamard block must be a power of two >= 2, got {block}")


def random_signs(k_padded: int, seed: int, device=None) -> torch.Tensor:
    """±1 per input coordinate, from `seed` (reproducible across machines): [k_padded] float32."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (k_padded,), generator=gen)
    return (bits * 2 - 1).to(torch.float32).to(device)


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform of each length-`block` chunk of the last dim.

    x: [..., K] with K a multiple of `block`; returns the same shape and dtype.
    """
    check_block(block)
    shape = x.shape
    k = shape[-1]
    y = x.reshape(-1, k // block, block)
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


def choose_block(k: int, max_block: int = 128, min_block: int = 32) -> int:
    """The Hadamard block for input size k: the largest power of two <= max_block that
    divides k (no padding), or max_block (k is then zero-padded) when that is < min_block.

    e.g. 4096 -> 128, 576 -> 64, 1536 -> 128, 100 -> 128 (padded to 128).
    """
    check_block(max_block)
    block = max_block
    while block >= min_block:
        if k % block == 0:
            return block
        block //= 2
    return max_block
