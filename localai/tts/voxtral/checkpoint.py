"""Write a 4-bit TurboQuant Voxtral checkpoint in Mistral's native layout.

    params.json, tekken.json, voice_embedding/   copied unchanged
    consolidated.safetensors   the original key names; each quantized linear's `X.weight` is
                               replaced by `X.codes` (uint8 [N, Kp // 2]) and `X.gains`
                               (float16 [N, Kp // G]); every other tensor is copied from the
                               source file as it is (the codec keeps its weight-norm parts)
    quantization.json          the `quantization_config` a TurboQuant transformers checkpoint
                               carries (method, bits, group size, rotation and its seed, max
                               Hadamard block, converted and kept linears), module names as
                               in consolidated.safetensors

loader.load_model reads it back with the listed linears as TurboLinear layers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from localai.errors import LocalaiError
from localai.quant.turboquant import DEFAULT_GROUP_SIZE, DEFAULT_MAX_BLOCK, DEFAULT_SEED
from localai.tts.voxtral.loader import (QUANT_FILE, TOKENIZER_FILE, VOICE_FOLDER, WEIGHTS_FILE, checkpoint_key,
                                        is_quantized, load_model)

COPIED_FILES = ("params.json", TOKENIZER_FILE)


def _linears_by_kind(model) -> tuple[dict, list[str]]:
    """({checkpoint module name: TurboLinear} of the quantized layers, names of the nn.Linear layers kept)."""
    from torch import nn

    from localai.quant.linear import TurboLinear

    packed, kept = {}, []
    for name, layer in model.named_modules():
        if isinstance(layer, TurboLinear):
            packed[checkpoint_key(name)] = layer
        elif isinstance(layer, nn.Linear):
            kept.append(checkpoint_key(name))
    return packed, kept


def _tensors_to_store(source: Path, packed: dict) -> dict:
    """Every tensor of the new consolidated.safetensors: packed linears, the rest as stored in `source`."""
    from safetensors import safe_open

    tensors = {}
    for name, layer in packed.items():
        tensors[f"{name}.codes"] = layer.codes.detach().cpu().contiguous()
        tensors[f"{name}.gains"] = layer.gains.detach().cpu().contiguous()
    replaced = {f"{name}.weight" for name in packed}
    with safe_open(str(source / WEIGHTS_FILE), framework="pt", device="cpu") as file:
        for key in file.keys():
            if key not in replaced:
                tensors[key] = file.get_tensor(key)
    return tensors


def save_quantized_voxtral(source: Path, out: Path, device: str = "cpu", group_size: int = DEFAULT_GROUP_SIZE,
                           seed: int = DEFAULT_SEED, on_layer=None) -> dict[str, tuple]:
    """Quantize the Voxtral folder `source` (data-free) into the new folder `out`.

    `on_layer(checkpoint module name, (out, in))` reports each layer. Returns {checkpoint module name:
    (out, in)} of the quantized linears. Nothing is left behind at `out` on failure."""
    import torch
    from safetensors.torch import save_file

    from localai.quant.calibrate import QuantSpec
    from localai.quant.checkpoint import output_staging, publish, quantization_config
    from localai.quant.turboquant import make_layout
    from localai.tts.voxtral.quantize import quantize_voxtral, quantized_linears

    source, out = Path(source), Path(out)
    if is_quantized(source):
        raise LocalaiError(f"{source} is already quantized ({QUANT_FILE})", "quantize the original voxtral-tts")
    staging = output_staging(out)
    try:
        model = load_model(source, device="cpu", dtype=torch.bfloat16)
        for _, parent, name in quantized_linears(model):  # a group size that does not fit fails before any work
            make_layout(getattr(parent, name).in_features, group_size, DEFAULT_MAX_BLOCK)
        report = (lambda name, shape: on_layer(checkpoint_key(name), shape)) if on_layer else None
        quantize_voxtral(model, device, group_size, seed, report)
        packed, kept = _linears_by_kind(model)
        save_file(_tensors_to_store(source, packed), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for name in COPIED_FILES:
            shutil.copy2(source / name, staging / name)
        if (source / VOICE_FOLDER).is_dir():
            shutil.copytree(source / VOICE_FOLDER, staging / VOICE_FOLDER)
        spec = QuantSpec(group_size=group_size, seed=seed, max_block=DEFAULT_MAX_BLOCK)
        record = quantization_config(spec, list(packed), kept)
        (staging / QUANT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: (layer.out_features, layer.in_features) for name, layer in packed.items()}
