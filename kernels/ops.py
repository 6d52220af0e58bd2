"""The TurboQuant ops as torch.library custom ops, so torch.compile(fullgraph=True) traces them.

  turbo_matmul(x_rot, codes, gains, group_size) -> [M, N]   x_rot: [M, Kp] (already rotated)
  hadamard_rotate(x, signs, block) -> [M, Kp]                x: [M, K]

Each dispatches by device: CUDA -> Triton kernels (GEMV for small batches, tiled tl.dot for
large ones), CPU -> the native kernel (torch fallback), anything else -> the reference.
Outputs are new contiguous tensors in the input's dtype.

`turbo_linear` is what modules call: rotate + matmul through the ops, or, in plain eager
inference, straight into the same implementations (the dispatcher costs ~10 us per call,
a tenth of a small layer's time on the CPU).
"""

from __future__ import annotations

import torch

from localai.kernels import cpu, reference


def _matmul_impl(x_rot, codes, gains, group_size):
    if x_rot.device.type == "cpu":
        return cpu.turbo_matmul(x_rot, codes, gains, group_size).contiguous()
    if x_rot.device.type == "cuda":
        from localai.kernels import triton_matmul

        return triton_matmul.turbo_matmul(x_rot, codes, gains, group_size)
    return reference.turbo_matmul(x_rot, codes, gains, group_size)


def _rotate_impl(x, signs, block):
    if x.device.type == "cpu":
        return cpu.rotate(x, signs, block).contiguous()
    if x.device.type == "cuda":
        from localai.kernels import triton_matmul

        return triton_matmul.rotate(x, signs, block)
    from localai.kernels.hadamard import rotate

    return rotate(x, signs, block).contiguous()


@torch.library.custom_op("localai::turbo_matmul", mutates_args=())
def turbo_matmul(x_rot: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor, group_size: int) -> torch.Tensor:
    """y = x_rot @ Wr.T with Wr the packed rotated weight. x_rot: [M, Kp] -> [M, N], x_rot's dtype."""
    return _matmul_impl(x_rot, codes, gains, group_size)


@turbo_matmul.register_fake
def _turbo_matmul_fake(x_rot, codes, gains, group_size):
    torch._check(x_rot.dim() == 2 and x_rot.shape[1] == codes.shape[1] * 2,
                 lambda: f"x_rot {tuple(x_rot.shape)} does not match codes {tuple(codes.shape)}")
    return x_rot.new_empty((x_rot.shape[0], codes.shape[0]))


@torch.library.custom_op("localai::hadamard_rotate", mutates_args=())
def hadamard_rotate(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Zero-pad rows of x [M, K] to Kp = len(signs), flip signs, block FWHT: [M, Kp] in x's dtype."""
    return _rotate_impl(x, signs, block)


@hadamard_rotate.register_fake
def _hadamard_rotate_fake(x, signs, block):
    return x.new_empty((*x.shape[:-1], signs.shape[0]))


def _plain_eager(x: torch.Tensor) -> bool:
    """True when nothing needs the dispatcher: no tracing, no autograd, a plain CPU/CUDA tensor."""
    return (type(x) is torch.Tensor and x.device.type in ("cpu", "cuda") and not torch.compiler.is_compiling()
            and not (x.requires_grad and torch.is_grad_enabled()))


def turbo_linear(x: torch.Tensor, signs: torch.Tensor, block: int, codes: torch.Tensor, gains: torch.Tensor,
                 group_size: int) -> torch.Tensor:
    """x [M, K] -> rotate -> packed matmul -> [M, N], in x's dtype."""
    if _plain_eager(x):
        if x.device.type == "cpu":
            return cpu.linear(x, signs, block, codes, gains, group_size)
        return _matmul_impl(_rotate_impl(x, signs, block), codes, gains, group_size)
    return turbo_matmul(hadamard_rotate(x, signs, block), codes, gains, group_size)
