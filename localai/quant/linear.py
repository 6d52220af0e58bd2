"""TurboLinear: a drop-in nn.Linear whose weight is stored as TurboQuant 4-bit codes.

forward(x) rotates the activations once (random signs + fast Walsh-Hadamard transform)
and multiplies them with the packed rotated weight through the localai::turbo_matmul op;
the full-precision weight is never built. Buffers: `codes` uint8 [N, Kp // 2] and `gains`
float16 [N, Kp // G] are saved in the state dict; `signs` [Kp] comes from `seed`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from localai.kernels import cpu as cpu_kernels
from localai.kernels import ops
from localai.quant.hadamard import check_block, choose_block, padded_dim, random_signs
from localai.settings import localai_home

cpu_kernels.cache_dir_provider = lambda: localai_home() / "kernels"  # the compiled CPU kernel lives in our cache

DEFAULT_GROUP_SIZE = 64


@contextmanager
def float16_kept(module: nn.Module, names: tuple[str, ...]):
    """Inside, the float16 buffers `names` are int16 bits, so a dtype cast of the module (which
    converts floating tensors only) moves them without changing them."""
    for name in names:
        module._buffers[name] = module._buffers[name].view(torch.int16)
    try:
        yield
    finally:
        for name in names:
            module._buffers[name] = module._buffers[name].view(torch.float16)


def refuse_casts(state_dict: dict, prefix: str, formats: dict[str, torch.dtype], error_msgs: list) -> None:
    """For _load_from_state_dict: a packed tensor stored in another dtype is an error, not a cast
    (load_state_dict would cast: int32 codes wrap around, float32 scales past 65504 become inf)."""
    for name, dtype in formats.items():
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and value.dtype != dtype:
            error_msgs.append(f"{prefix}{name} is {value.dtype}; the packed format stores {dtype}")


class TurboLinear(nn.Module):
    """y = x @ W.T + b with W in TurboQuant 4-bit form. The output dtype follows the input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 group_size: int = DEFAULT_GROUP_SIZE, seed: int = 0, block: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block = block or choose_block(in_features)
        check_block(self.block)
        self.k_padded = padded_dim(in_features, self.block)
        if group_size < 2 or group_size % 2 or self.k_padded % group_size:
            raise ValueError(f"group size {group_size} must be even and divide the padded input size "
                             f"{self.k_padded} (input size {in_features}, Hadamard block {self.block})")
        self.group_size, self.seed = group_size, seed
        self.register_buffer("codes", torch.zeros(out_features, self.k_padded // 2, dtype=torch.uint8, device=device))
        self.register_buffer("gains", torch.zeros(out_features, self.k_padded // group_size,
                                                  dtype=torch.float16, device=device))
        self.register_buffer("signs", random_signs(self.k_padded, seed, device=device), persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_packed(cls, codes: torch.Tensor, gains: torch.Tensor, in_features: int, group_size: int,
                    seed: int, bias: torch.Tensor | None = None, block: int | None = None) -> "TurboLinear":
        """Wrap already-packed codes [N, Kp // 2] and gains [N, Kp // G] (no copy when they fit)."""
        layer = cls(in_features, codes.shape[0], bias=bias is not None, group_size=group_size, seed=seed,
                    block=block, device="meta")
        expected_codes = (codes.shape[0], layer.k_padded // 2)
        expected_gains = (codes.shape[0], layer.k_padded // group_size)
        if tuple(codes.shape) != expected_codes or tuple(gains.shape) != expected_gains:
            raise ValueError(f"codes {tuple(codes.shape)} / gains {tuple(gains.shape)} do not fit "
                             f"{in_features} inputs at group size {group_size}: expected {expected_codes} / {expected_gains}")
        layer.codes = codes.to(torch.uint8)
        layer.gains = gains.to(torch.float16)
        layer.reset_signs()
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(codes.device), requires_grad=False)
        return layer

    def reset_signs(self) -> None:
        """Rebuild the signs from the seed on the codes' device (they are never saved)."""
        self.signs = random_signs(self.k_padded, self.seed, device=self.codes.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.signs.device != self.codes.device:  # codes were loaded in place (meta or another device)
            self.reset_signs()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # x2: [M, K]
        y = ops.turbo_linear(x2, self.signs, self.block, self.codes, self.gains, self.group_size)  # y: [M, N]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        refuse_casts(state_dict, prefix, {"codes": torch.uint8, "gains": torch.float16}, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) / .half() must not cast the packed format; signs are rebuilt from the
        # seed afterwards (this also covers to_empty, which leaves buffers uninitialized)
        with float16_kept(self, ("gains",)):
            super()._apply(fn, recurse)
        self.reset_signs()
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}, block={self.block}, seed={self.seed}")
