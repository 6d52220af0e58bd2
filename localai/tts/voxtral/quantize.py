"""4-bit TurboQuant for Voxtral: the backbone's and the acoustic head's transformer linears.

Quantized (data-free, localai.quant.turboquant): every linear of the 26 backbone layers and
of the 3 acoustic-head layers, plus the head's llm/time projections (~3.4B weights, 94% of
the model). Kept in 16-bit: the text and audio-code embeddings, the head's small input
projection and its two output heads (the semantic argmax is the most sensitive decision),
and the whole codec.
"""

from __future__ import annotations

from torch import nn

from localai.quant.turboquant import DEFAULT_GROUP_SIZE, DEFAULT_MAX_BLOCK, DEFAULT_SEED, quantize_weight

HEAD_PROJECTIONS = ("llm_projection", "time_projection")


def quantized_linears(model) -> list[tuple[str, nn.Module, str]]:
    """(module name, parent module, attribute name) of every linear that goes to 4 bits."""
    targets = []
    for prefix, stack in (("backbone.layers", model.backbone.layers), ("acoustic.layers", model.acoustic.layers)):
        for path, module in stack.named_modules(prefix=prefix):
            targets += [(f"{path}.{name}", module, name) for name, child in module.named_children()
                        if isinstance(child, nn.Linear)]
    targets += [(f"acoustic.{name}", model.acoustic, name) for name in HEAD_PROJECTIONS]
    return targets


def quantize_voxtral(model, device="cuda", group_size: int = DEFAULT_GROUP_SIZE, seed: int = DEFAULT_SEED,
                     on_layer=None) -> int:
    """Replace the target linears by TurboLinear on `device`, one layer at a time (a CPU-loaded model
    never has its full 16-bit weights on the GPU), then move the rest except the text embeddings
    to `device`. `on_layer(module name, (out, in))` reports each layer once it is quantized.
    Returns the number of weights quantized."""
    from localai.quant.linear import TurboLinear

    count = 0
    for path, parent, name in quantized_linears(model):
        linear = getattr(parent, name)
        packed = quantize_weight(linear.weight.detach().to(device), group_size, seed, DEFAULT_MAX_BLOCK, name=path)
        setattr(parent, name, TurboLinear.from_packed(packed.codes, packed.gains, linear.in_features, group_size,
                                                      seed, block=packed.layout.block))
        count += linear.weight.numel()
        if on_layer is not None:
            on_layer(path, tuple(linear.weight.shape))
        del linear, packed
    for part in (model.backbone, model.audio_embeddings, model.acoustic, model.codec):
        part.to(device)
    return count
