"""Data-free TurboQuant for one weight matrix: rotate, scale per row-group, nearest code, gain refit.

For W [N, K] (out, in): rotate each row with the random-sign block Hadamard
(K zero-padded to Kp), cut the rotated rows into groups of G columns, and give
every (row, group) one fp16 gain s and 16-level codes q so that s * LEVELS[q]
approximates the group. The gain is the least-squares one, s = <y, q> / <q, q>,
picked from a small search over scales and refined by alternating codes and gain.

The method is TurboQuant's MSE variant (Zandieh et al., arXiv 2504.19874), which for
weights is the scalar case of HIGGS (Malinovskii et al., arXiv 2411.17525).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from localai.errors import LocalaiError
from localai.kernels.codebook import LEVELS_4BIT
from localai.quant.codebook import codebook, nearest_code, pack_codes, unpack_codes
from localai.quant.hadamard import choose_block, fwht, padded_dim, random_signs, rotate

DEFAULT_GROUP_SIZE = 64
GROUP_SIZES = (32, 64, 128, 256)  # what the fused kernels take (powers of two from 32); others run dequantized
DEFAULT_MAX_BLOCK = 128
DEFAULT_SEED = 0
# multiples of the group's RMS tried as the first scale; the refit then moves it freely
SCALE_GRID = tuple(0.70 + 0.025 * i for i in range(25))
REFIT_STEPS = 3
# inside GPTQ the gains are refit afterwards anyway: a coarser search costs half as much
COARSE_GRID = tuple(0.70 + 0.05 * i for i in range(13))
FLOAT16_MAX = 65504.0
ROW_CHUNK_BYTES = 256 * 2**20  # float32 weight rows quantized at a time


@dataclass
class Layout:
    """How a layer with `in_features` inputs is rotated and grouped."""

    in_features: int
    block: int
    k_padded: int
    group_size: int

    @property
    def groups(self) -> int:
        return self.k_padded // self.group_size


@dataclass
class PackedWeight:
    codes: torch.Tensor  # uint8 [N, Kp // 2]
    gains: torch.Tensor  # float16 [N, Kp // G]
    layout: Layout


def make_layout(in_features: int, group_size: int = DEFAULT_GROUP_SIZE,
                max_block: int = DEFAULT_MAX_BLOCK) -> Layout:
    block = choose_block(in_features, max_block)
    k_padded = padded_dim(in_features, block)
    if group_size < 2 or group_size % 2 or k_padded % group_size:
        fitting = [str(size) for size in GROUP_SIZES if k_padded % size == 0]
        raise LocalaiError(
            f"group size {group_size} does not divide the padded input size {k_padded} "
            f"(input size {in_features}, Hadamard block {block})",
            f"choose a group size that divides it: {', '.join(fitting)}")
    return Layout(in_features, block, k_padded, group_size)


def rotate_weight(w: torch.Tensor, layout: Layout, seed: int) -> torch.Tensor:
    """w: [N, K] -> rotated rows [N, Kp] in float32."""
    signs = random_signs(layout.k_padded, seed, device=w.device)
    return rotate(w.float(), signs, layout.block)


def unrotate_weight(w_rot: torch.Tensor, layout: Layout, seed: int) -> torch.Tensor:
    """Inverse of rotate_weight: [N, Kp] -> [N, K] (the orthonormal FWHT is its own inverse)."""
    signs = random_signs(layout.k_padded, seed, device=w_rot.device)
    return (fwht(w_rot.float(), layout.block) * signs)[:, : layout.in_features]


def least_squares_gain(y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """s = <y, q> / <q, q> over the last dim: y, q [..., G] -> [...]."""
    return (y * q).sum(-1) / (q * q).sum(-1).clamp_min(1e-30)


def _codes_for(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Nearest codes for y [..., G] at scale [...]: uint8 [..., G]."""
    return nearest_code(y / scale.clamp_min(1e-30).unsqueeze(-1))


def fit_group(y: torch.Tensor, grid: tuple = SCALE_GRID, steps: int = REFIT_STEPS):
    """Codes and gains for groups y: [..., G] -> (codes uint8 [..., G], gains float32 [...]).

    Tries each scale of `grid` x RMS, keeps the one whose least-squares gain leaves the
    smallest error, then alternates nearest codes and the least-squares gain `steps` times.
    """
    levels = codebook(y.device)
    y = y.float()
    energy = (y * y).sum(-1)
    rms = (energy / y.shape[-1]).sqrt()
    best_err = torch.full_like(rms, float("inf"))
    best_scale = rms.clone()
    for factor in grid:
        q = levels[_codes_for(y, rms * factor).long()]
        yq, qq = (y * q).sum(-1), (q * q).sum(-1).clamp_min(1e-30)
        err = energy - yq * yq / qq  # ||y - s q||^2 at the least-squares s
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, yq / qq, best_scale)
    gains = best_scale
    for _ in range(max(steps, 1)):  # Lloyd steps on the scale: the error never grows
        codes = _codes_for(y, gains)
        gains = least_squares_gain(y, levels[codes.long()])
    return codes, gains


def quantize_rotated(w_rot: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Already-rotated rows [N, Kp] -> (codes uint8 [N, Kp], gains float32 [N, Kp // G])."""
    n, k_padded = w_rot.shape
    codes, gains = fit_group(w_rot.reshape(n, k_padded // group_size, group_size))
    return codes.reshape(n, k_padded), gains


def pack(codes: torch.Tensor, gains: torch.Tensor, layout: Layout) -> PackedWeight:
    """Unpacked codes [N, Kp] and float gains [N, Kp // G] -> the stored format."""
    return PackedWeight(pack_codes(codes).contiguous(), gains.to(torch.float16).contiguous(), layout)


def finite_weight(name: str, w: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(w).all():
        raise LocalaiError(f"{name} holds NaN or infinite weights", "the source checkpoint is damaged: download it again")
    return w


def storable(name: str, packed: PackedWeight) -> PackedWeight:
    """Every stored weight, level x gain, must be a float16 number: the kernels multiply them in float16."""
    largest = packed.gains.float().abs().max() * max(abs(level) for level in LEVELS_4BIT)
    if not torch.isfinite(largest) or largest > FLOAT16_MAX:
        raise LocalaiError(f"{name} has a group of weights too large for float16 (above {FLOAT16_MAX:.0f})",
                           "this model's weights cannot be stored in the TurboQuant format")
    return packed


def quantize_rows(w: torch.Tensor, layout: Layout, seed: int, name: str = "weight",
                  device=None) -> Iterator[tuple[torch.Tensor, PackedWeight]]:
    """Data-free TurboQuant of w [N, K] a few rows at a time: yields (the rows in float32 on `device`,
    their packed form). Rows are independent (rotation and groups run along the input), so ROW_CHUNK_BYTES
    of rows at a time give the same codes as the whole weight: a 128k-vocabulary head needs no 10 GB of
    temporaries. `name` is the layer named by the errors for NaN weights or gains beyond float16."""
    rows = max(1, ROW_CHUNK_BYTES // (4 * layout.k_padded))
    for first in range(0, w.shape[0], rows):
        chunk = finite_weight(name, w[first:first + rows].to(device or w.device, torch.float32))
        codes, gains = quantize_rotated(rotate_weight(chunk, layout, seed), layout.group_size)
        yield chunk, storable(name, pack(codes, gains, layout))


def join_rows(parts: list[PackedWeight], layout: Layout) -> PackedWeight:
    return PackedWeight(torch.cat([p.codes for p in parts]), torch.cat([p.gains for p in parts]), layout)


def quantize_weight(w: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE, seed: int = DEFAULT_SEED,
                    max_block: int = DEFAULT_MAX_BLOCK, name: str = "weight") -> PackedWeight:
    """Data-free TurboQuant of one weight w: [N, K], on w's device."""
    layout = make_layout(w.shape[1], group_size, max_block)
    return join_rows([packed for _, packed in quantize_rows(w, layout, seed, name)], layout)


def dequantize_rotated(packed: PackedWeight) -> torch.Tensor:
    """The stored weight in the rotated basis: [N, Kp] float32."""
    codes = unpack_codes(packed.codes).long()
    n, k_padded = codes.shape
    g = packed.layout.group_size
    values = codebook(codes.device)[codes].reshape(n, k_padded // g, g)
    return (values * packed.gains.float().unsqueeze(-1)).reshape(n, k_padded)


def dequantize_weight(packed: PackedWeight, seed: int) -> torch.Tensor:
    """The stored weight back in the original basis: [N, K] float32 (for calibration and tests)."""
    return unrotate_weight(dequantize_rotated(packed), packed.layout, seed)
