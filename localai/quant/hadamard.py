"""Random-sign block Hadamard rotation, applied with a fast Walsh-Hadamard transform.

The rotation acts on the input dimension K in blocks of `block` (a power of two).
K is zero-padded up to a multiple of the block: `padded_dim(K, block)` columns.
For a weight row w and an activation row x, <x, w> = <rotate(x), rotate(w)>
because the rotation is orthogonal.
"""

from __future__ import annotations

import torch

from localai.kernels.hadamard import check_block, fwht, rotate  # noqa: F401  (re-exported)


def padded_dim(k: int, block: int) -> int:
    return -(-k // block) * block


def random_signs(k_padded: int, seed: int, device=None) -> torch.Tensor:
    """±1 per input coordinate, from `seed` (reproducible across machines): [k_padded] float32."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (k_padded,), generator=gen)
    return (bits * 2 - 1).to(torch.float32).to(device)


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
