"""The plain-torch TurboQuant matmul: the test oracle for every faster path.

Packed format for a weight W [N, K] rotated to Wr [N, Kp] (see localai.quant.hadamard):
  codes  uint8   [N, Kp // 2]  two 4-bit codebook indices per byte, element 2j in the low nibble
  gains  float16 [N, Kp // G]  one least-squares gain per (row, group of G columns)
  Wr[n, k] = gains[n, k // G] * LEVELS_4BIT[codes[n, k]]
"""

from __future__ import annotations

import torch

from localai.kernels.codebook import LEVELS_4BIT


def check_packed(codes: torch.Tensor, gains: torch.Tensor, group_size: int) -> tuple[int, int]:
    """Validate the packed tensors; returns (N, Kp)."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"codes must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    n, k_padded = codes.shape[0], codes.shape[1] * 2
    if group_size < 2 or group_size % 2 or k_padded % group_size:
        raise ValueError(f"group size {group_size} must be even and divide the padded input size {k_padded}")
    if gains.dim() != 2 or tuple(gains.shape) != (n, k_padded // group_size):
        raise ValueError(f"gains must have shape {(n, k_padded // group_size)}, got {tuple(gains.shape)}")
    return n, k_padded


def dequantize(codes: torch.Tensor, gains: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full rotated weight: [N, Kp] in `dtype` (materializes it: the reference path only)."""
    n, k_padded = check_packed(codes, gains, group_size)
    levels = torch.tensor(LEVELS_4BIT, dtype=torch.float32, device=codes.device)
    low = (codes & 0x0F).long()
    high = (codes >> 4).long()
    # w: [N, Kp // 2, 2] -> [N, Kp]; element 2j from the low nibble, 2j+1 from the high one
    w = torch.stack((levels[low], levels[high]), dim=-1).reshape(n, k_padded)
    w = w.reshape(n, k_padded // group_size, group_size) * gains.float().unsqueeze(-1)
    return w.reshape(n, k_padded).to(dtype)


def turbo_matmul(x_rot: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor, group_size: int) -> torch.Tensor:
    """y = x_rot @ Wr.T in float32, returned in x_rot's dtype. x_rot: [M, Kp] -> [M, N]."""
    w = dequantize(codes, gains, group_size)
    return (x_rot.float() @ w.T).to(x_rot.dtype)
