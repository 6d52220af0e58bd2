"""Calibrated TurboQuant: GPTQ-style error feedback in the rotated basis.

With calibration inputs X (rotated: X_r = rotate(X)), the layer's output error for a
rotated weight row w and its quantized version w' is (w - w')^T H (w - w') with
H = X_r^T X_r. GPTQ (Frantar et al., 2022) quantizes the columns one by one and
spreads each column's error over the columns not yet quantized, using the Cholesky
factor of H^-1; updates are applied lazily, one batch of columns at a time.

Each group's gain is chosen just before its first column is quantized, from the
error-updated weights of that group. Once all codes are fixed, the gains of every
row are refit jointly in the H metric (a small least-squares system per row), which
keeps the error feedback's benefit instead of undoing it as a plain refit would. Passes
of coordinate descent on the codes (exact in the H metric), each with a refit, follow.
The dampening is strong (0.1 x mean diagonal): with ~16k calibration tokens it lowers
the output error on held-out text, where weaker dampening overfits the calibration set.
"""

from __future__ import annotations

import torch

from localai.quant.codebook import codebook, nearest_code
from localai.quant.turboquant import COARSE_GRID, fit_group

DEFAULT_DAMP = 0.1  # of mean(diag H); held-out output error is lowest near 0.1 at 16k tokens
LAZY_BATCH = 128
REFIT_BYTES = 256 << 20  # the gain refit's per-chunk H B_r tensor stays under this (R x Kp x groups x 4 bytes)


class NotPositiveDefinite(RuntimeError):
    """The Hessian cannot be factored (NaN or infinite calibration activations, typically)."""


def rotate_hessian(hessian: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """H [K, K] in the input basis -> R H R^T [Kp, Kp] (R the padded random-sign block Hadamard)."""
    from localai.quant.hadamard import rotate

    h = rotate(hessian.float(), signs, block)  # rows rotated: [K, Kp]
    return rotate(h.T.contiguous(), signs, block)  # [Kp, Kp], symmetric


def inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1: [Kp, Kp]."""
    h = hessian.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp * torch.diag(h).mean().clamp_min(1e-8)
    for extra in (0.0, 0.1, 1.0):
        if extra:
            h[idx, idx] += extra * torch.diag(h).mean()
        factor, info = torch.linalg.cholesky_ex(h)
        if info.item() == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
    raise NotPositiveDefinite("the calibration Hessian is not positive definite even after extra dampening")


def gptq_codes(w_rot: torch.Tensor, hessian: torch.Tensor, group_size: int, damp: float = DEFAULT_DAMP):
    """Codes [N, Kp] uint8 and gains [N, Kp // G] float32 for rotated rows w_rot [N, Kp] and H [Kp, Kp]."""
    levels = codebook(w_rot.device)
    w = w_rot.float().clone()
    n, k_padded = w.shape
    u = inverse_cholesky(hessian.float(), damp)  # [Kp, Kp], upper
    codes = torch.empty(n, k_padded, dtype=torch.uint8, device=w.device)
    gains = torch.empty(n, k_padded // group_size, device=w.device)
    batch = max(group_size, LAZY_BATCH // group_size * group_size)
    for start in range(0, k_padded, batch):
        stop = min(start + batch, k_padded)
        w_batch = w[:, start:stop].clone()  # [N, B], receives the in-batch error feedback
        err_batch = torch.zeros_like(w_batch)
        u_batch = u[start:stop, start:stop]
        for i in range(stop - start):
            col = start + i
            if col % group_size == 0:
                _, gain = fit_group(w_batch[:, i: i + group_size], COARSE_GRID, steps=1)
                gains[:, col // group_size] = gain
            gain = gains[:, col // group_size]
            code = nearest_code(w_batch[:, i] / gain.clamp_min(1e-30))
            codes[:, col] = code
            err = (w_batch[:, i] - gain * levels[code.long()]) / u_batch[i, i]  # [N]
            w_batch[:, i:] -= err.unsqueeze(1) * u_batch[i, i:].unsqueeze(0)
            err_batch[:, i] = err
        w[:, stop:] -= err_batch @ u[start:stop, stop:]
    return codes, gains


def refit_gains(w_rot: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, group_size: int,
                damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """Gains [N, Kp // G] minimizing (w - w')^T H (w - w') per row, with the codes held fixed."""
    levels = codebook(w_rot.device)
    n, k_padded = w_rot.shape
    groups = k_padded // group_size
    h = hessian.float().clone()
    idx = torch.arange(k_padded, device=h.device)
    h[idx, idx] += damp * torch.diag(h).mean().clamp_min(1e-8)
    h_blocks = h.reshape(k_padded, groups, group_size)  # [Kp, groups, G]
    hw = (w_rot.float() @ h).reshape(n, groups, group_size)  # (H w_n) per row: [N, groups, G]
    gains = torch.empty(n, groups, device=w_rot.device)
    eye = torch.eye(groups, device=w_rot.device)
    # rows per chunk: 256 for SmolLM2's layers, 20 for a 14336-wide down projection (3.3 GB at 256)
    chunk = max(1, min(256, REFIT_BYTES // (k_padded * groups * 4)))
    for first in range(0, n, chunk):
        rows = slice(first, min(first + chunk, n))
        q = levels[codes[rows].long()].reshape(-1, groups, group_size)  # [R, groups, G]
        hq = torch.einsum("igb,rgb->rig", h_blocks, q)  # H B_r: [R, Kp, groups]
        m = torch.einsum("rga,rgah->rgh", q, hq.reshape(-1, groups, group_size, groups))  # B^T H B
        rhs = (q * hw[rows]).sum(-1)  # B^T H w: [R, groups]
        ridge = 1e-6 * m.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
        gains[rows] = torch.linalg.solve(m + ridge[:, None, None] * eye, rhs)
    return gains


def refine_codes(w_rot: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor,
                 group_size: int, damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """One pass of coordinate descent on the codes in the H metric, gains fixed: new codes [N, Kp].

    For each column k (all rows at once) the code whose value changes the error e = w' - w
    by the step d that minimizes 2 d (e H)_k + d^2 H_kk is taken; e H is kept current lazily,
    a batch of columns at a time, like the GPTQ updates. The error never grows.
    """
    levels = codebook(w_rot.device)
    n, k_padded = w_rot.shape
    h = hessian.float().clone()
    idx = torch.arange(k_padded, device=h.device)
    h[idx, idx] += damp * torch.diag(h).mean().clamp_min(1e-8)
    codes = codes.clone()
    row_gains = gains.float().repeat_interleave(group_size, dim=1)  # [N, Kp]
    w_hat = levels[codes.long()] * row_gains
    eh = (w_hat - w_rot.float()) @ h  # [N, Kp]
    rows = torch.arange(n, device=w_rot.device)
    for start in range(0, k_padded, LAZY_BATCH):
        stop = min(start + LAZY_BATCH, k_padded)
        steps = torch.zeros(n, stop - start, device=w_rot.device)
        for i in range(stop - start):
            col = start + i
            delta = row_gains[:, col: col + 1] * levels - w_hat[:, col: col + 1]  # [N, 16]
            best = (delta * (2 * eh[:, col: col + 1] + delta * h[col, col])).argmin(-1)
            step = delta[rows, best]
            codes[:, col] = best.to(torch.uint8)
            w_hat[:, col] += step
            steps[:, i] = step
            eh[:, col:stop] += step.unsqueeze(1) * h[col, col:stop].unsqueeze(0)
        eh[:, :start] += steps @ h[start:stop, :start]
        eh[:, stop:] += steps @ h[start:stop, stop:]
    return codes


def output_error(w_rot: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """sum_n (w_n - w'_n)^T H (w_n - w'_n): the calibration output error of a quantized weight."""
    d = (w_rot.float() - w_hat.float())
    return float(((d @ hessian.float()) * d).sum())
