"""transformers integration: `from_pretrained` loads turboquant and int4_rtn checkpoints.

A config class and an HfQuantizer per method, registered with transformers by
`register()` (localai.quant.autoregister calls it when transformers' quantizer
table loads). Before the weights load, the listed linears are swapped for
TurboLinear / Int4Linear on the meta device, so the stored codes and gains load
straight into their buffers; no full-precision weight is ever built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from localai.quant.checkpoint import (INT4_METHOD, QUANT_METHOD, SCALE_SUFFIXES, check_fields, check_finite,
                                      check_stored, stored_headers)

_registered = False


class _LocalaiConfig(QuantizationConfigMixin):
    """Fields exactly as stored in config.json; missing or invalid ones fail with one line."""

    method = ""

    def __init__(self, **fields):
        fields.pop("quant_method", None)
        self.quant_method = self.method
        for name, value in fields.items():
            setattr(self, name, value)
        check_fields(self.to_dict())

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class TurboQuantConfig(_LocalaiConfig):
    method = QUANT_METHOD


class Int4Config(_LocalaiConfig):
    method = INT4_METHOD


def _build_turbo(linear, qc) -> torch.nn.Module:
    from localai.quant.hadamard import choose_block
    from localai.quant.linear import TurboLinear

    return TurboLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       group_size=qc.group_size, seed=qc.rotation_seed,
                       block=choose_block(linear.in_features, qc.max_block),
                       dtype=linear.weight.dtype)


def _build_int4(linear, qc) -> torch.nn.Module:
    from localai.quant.baselines import Int4Linear

    return Int4Linear(linear.in_features, linear.out_features, qc.group_size, bias=linear.bias is not None,
                      dtype=linear.weight.dtype)


def replace_linears(model, names: list[str], build) -> None:
    """Swap each named nn.Linear of `model` for build(linear), on the meta device."""
    modules = dict(model.named_modules())
    for name in names:
        linear = modules.get(name)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"quantization_config names {name!r}, which is not a linear layer of this model")
        parent_name, _, child = name.rpartition(".")
        with torch.device("meta"):
            setattr(modules[parent_name] if parent_name else model, child, build(linear))


class _LocalaiQuantizer(HfQuantizer):
    """Loads pre-quantized checkpoints only; `localai quantize` makes them."""

    requires_calibration = True
    build = None

    def validate_environment(self, *args, **kwargs):
        return None

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        qc = self.quantization_config
        replace_linears(model, qc.modules_to_convert, lambda linear: type(self).build(linear, qc))
        files = [Path(f) for f in checkpoint_files or ()]
        self._source = files[0].parent if files else "the checkpoint"
        if files and all(f.suffix == ".safetensors" for f in files):
            # transformers would load missing packed tensors as uninitialized memory and cast wrong dtypes
            check_stored(model, qc.to_dict(), stored_headers(files), self._source)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name in self.quantization_config.modules_to_convert:
            module = model.get_submodule(name)
            if hasattr(module, "reset_signs"):
                module.reset_signs()  # non-persistent, derived from the seed
            for suffix in SCALE_SUFFIXES:  # a NaN gain would turn every output into NaN
                if hasattr(module, suffix):
                    check_finite(f"{name}.{suffix}", getattr(module, suffix), self._source)
        return model

    def is_serializable(self, *args, **kwargs):
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


class TurboQuantHfQuantizer(_LocalaiQuantizer):
    build = staticmethod(_build_turbo)


class Int4HfQuantizer(_LocalaiQuantizer):
    build = staticmethod(_build_int4)


def register() -> None:
    """Make transformers' from_pretrained recognize both methods (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers.quantizers.auto import register_quantization_config, register_quantizer

    for method, config_cls, quantizer_cls in ((QUANT_METHOD, TurboQuantConfig, TurboQuantHfQuantizer),
                                              (INT4_METHOD, Int4Config, Int4HfQuantizer)):
        register_quantization_config(method)(config_cls)
        register_quantizer(method)(quantizer_cls)
    _registered = True
