"""The baselines every TurboQuant number is compared with, behind the same `localai quantize`.

- nf4: bitsandbytes 4-bit NF4 (blocksize 64) through transformers' BitsAndBytesConfig,
  saved with save_pretrained so it reloads with from_pretrained.
- int4: round-to-nearest affine int4 as in gpt-fast: per (row, group of G) a scale and
  a zero, w = (q - 8) * scale + zero; it runs on torch's int4 matmul ops
  (`_weight_int4pack_mm_for_cpu` on the CPU, `_weight_int4pack_mm` on CUDA).
"""

from __future__ import annotations

from pathlib import Path

import torch

from localai.errors import LocalaiError

from localai.quant.checkpoint import INT4_METHOD
from localai.quant.linear import float16_kept, refuse_casts


def int4_quantize(w: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """w: [N, K] -> qweight uint8 [N, K // 2] (element 2j in the low nibble), scales/zeros fp16 [N, K // G]."""
    n, k = w.shape
    if k % group_size or group_size % 2:
        raise LocalaiError(f"group size {group_size} does not divide the input size {k}",
                           "choose an even group size that divides every layer's input size, e.g. 32 or 64")
    groups = w.float().reshape(n, k // group_size, group_size)
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low) / 15).clamp_min(1e-6)
    q = ((groups - low.unsqueeze(-1)) / scales.unsqueeze(-1)).round().clamp(0, 15).to(torch.uint8)
    zeros = low + 8 * scales  # so that w = (q - 8) * scale + zero
    q = q.reshape(n, k)
    return {"qweight": q[:, 0::2] | (q[:, 1::2] << 4), "scales": scales.half(), "zeros": zeros.half()}


def int4_unpack(qweight: torch.Tensor) -> torch.Tensor:
    """[N, K // 2] uint8 -> [N, K] int32 values in 0..15."""
    return torch.stack((qweight & 0x0F, qweight >> 4), dim=-1).flatten(-2).to(torch.int32)


def int4_dequantize(parts: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
    """The float weight [N, K] that an int4 layer multiplies by (large CPU batches use it; tests too)."""
    q = int4_unpack(parts["qweight"]).float()
    n, k = q.shape
    q = q.reshape(n, k // group_size, group_size)
    w = (q - 8) * parts["scales"].float().unsqueeze(-1) + parts["zeros"].float().unsqueeze(-1)
    return w.reshape(n, k)


def _inner_k_tiles(k: int) -> int:
    """Largest tile count torch's CUDA int4 layout accepts for this K (K % (16 * tiles) == 0)."""
    return next(tiles for tiles in (8, 4, 2) if k % (16 * tiles) == 0)


def cuda_int4_kernel_fits(capability: tuple[int, int], out_features: int, in_features: int) -> bool:
    """Whether torch's CUDA int4 kernel takes this layer on a GPU of this compute capability: it is
    built for sm_80 and newer (not RTX 20xx) and its layout needs N % 8 == 0 and K % 32 == 0."""
    return capability >= (8, 0) and out_features % 8 == 0 and in_features % 32 == 0


# torch's int4 kernels take bfloat16 activations (on the CPU, float32 ones run ~30x slower:
# 776 against 28 us for one row of 576 -> 1536). Decoding uses them; past this many rows (prefill,
# perplexity scoring) one dequantized layer and a float32 BLAS matmul keep float32 arithmetic.
CPU_INT4_KERNEL_MAX_ROWS = 64


class Int4Linear(torch.nn.Module):
    """nn.Linear with round-to-nearest int4 weights, multiplied by torch's int4 kernels."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = False,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        self._packed = None  # (device, dtype, kernel weight, scales_and_zeros), built on first use

    def _kernel_operands(self, device: torch.device, dtype: torch.dtype):
        if self._packed is None or self._packed[:2] != (device, dtype):
            # scales_and_zeros: [K // G, N, 2]
            sz = torch.stack((self.scales.T, self.zeros.T), dim=-1).to(device, dtype).contiguous()
            q = int4_unpack(self.qweight).to(device)  # [N, K]
            if device.type == "cuda":
                high_first = (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8)
                weight = torch.ops.aten._convert_weight_to_int4pack(high_first, _inner_k_tiles(self.in_features))
            else:
                weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            self._packed = (device, dtype, weight, sz)
        return self._packed[2], self._packed[3]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self._packed = None  # built from the old buffers
        refuse_casts(state_dict, prefix, {"qweight": torch.uint8, "scales": torch.float16, "zeros": torch.float16},
                     error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() must not cast the stored scales and zeros (float16 by format);
        # the kernel operands are rebuilt on next use
        with float16_kept(self, ("scales", "zeros")):
            super()._apply(fn, recurse)
        self._packed = None
        return self

    def _kernel_takes(self, x2: torch.Tensor) -> bool:
        """torch's int4 kernel for these rows: on the CPU up to CPU_INT4_KERNEL_MAX_ROWS of them,
        on CUDA where cuda_int4_kernel_fits."""
        if x2.device.type == "cpu":
            return x2.shape[0] <= CPU_INT4_KERNEL_MAX_ROWS
        return cuda_int4_kernel_fits(torch.cuda.get_device_capability(x2.device), self.out_features,
                                     self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).contiguous()  # [M, K]
        if not self._kernel_takes(x2):  # one dequantized layer and a plain matmul
            parts = {"qweight": self.qweight, "scales": self.scales, "zeros": self.zeros}
            y = torch.nn.functional.linear(x2, int4_dequantize(parts, self.group_size).to(x2.dtype))
        else:
            weight, sz = self._kernel_operands(x2.device, torch.bfloat16)
            matmul = torch.ops.aten._weight_int4pack_mm if x2.device.type == "cuda" else \
                torch.ops.aten._weight_int4pack_mm_for_cpu
            y = matmul(x2.to(torch.bfloat16), weight, self.group_size, sz).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


def int4_config(group_size: int, modules: list[str], not_converted: list[str]) -> dict:
    return {"quant_method": INT4_METHOD, "bits": 4, "group_size": group_size,
            "modules_to_convert": sorted(modules), "modules_not_converted": sorted(not_converted)}


def quantize_int4(model, tokenizer, targets: dict, group_size: int, out: Path, on_layer=None) -> Path:
    """Round-to-nearest int4 for the `targets` {name: nn.Linear} of `model`, saved to `out`."""
    from localai.quant.checkpoint import linear_names, save_checkpoint

    replaced = {}
    for name, linear in targets.items():
        replaced[name] = int4_quantize(linear.weight.detach(), group_size)
        if on_layer:
            on_layer(name, tuple(linear.weight.shape))
    not_converted = [n for n in linear_names(model) if n not in replaced]
    return save_checkpoint(model, tokenizer, replaced, int4_config(group_size, list(replaced), not_converted), out)


def nf4_config():
    """bitsandbytes NF4, blocksize 64 (its default), no double quantization, fp32 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                              bnb_4bit_compute_dtype=torch.float32)


def quantize_nf4(source: Path, tokenizer, out: Path, device: str) -> Path:
    """Load `source` through bitsandbytes NF4 and save it (16-bit for everything else) to `out`."""
    from transformers import AutoModelForCausalLM

    from localai.loading import quiet_transformers
    from localai.quant.checkpoint import output_staging, publish

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=nf4_config(), device_map=device,
                                                 dtype=torch.bfloat16, trust_remote_code=False)
    staging = output_staging(out)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        return publish(staging, out)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
