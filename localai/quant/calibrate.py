"""Quantize a causal LM's linear layers, data-free or calibrated layer by layer.

Calibrated mode is sequential: the inputs of decoder layer i come from layers
0..i-1 already quantized, and inside a layer the linears run in groups that share
one input (q/k/v, then o, then gate/up, then down for a Llama block), each group
seeing the outputs of the groups quantized before it. A quantized linear keeps its
dequantized weight during calibration so the next forward sees its real error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from localai.errors import LocalaiError
from localai.quant import gptq
from localai.quant.hadamard import random_signs
from localai.quant.turboquant import (
    PackedWeight, dequantize_weight, finite_weight, join_rows, make_layout, pack, quantize_rows, rotate_weight,
    storable,
)

CALIB_BATCH = 4  # calibration sequences per forward


@dataclass
class QuantSpec:
    group_size: int = 64
    seed: int = 0
    max_block: int = 128
    quantize_head: bool = False
    damp: float = gptq.DEFAULT_DAMP
    refine_passes: int = 2  # code refinement passes after GPTQ (held-out error -3%, then -1%)


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    seconds: float
    rel_error: float  # calibrated: output error / output energy; data-free: weight error / weight energy


@dataclass
class QuantResult:
    packed: dict[str, PackedWeight] = field(default_factory=dict)
    reports: list[LayerReport] = field(default_factory=list)


class _StopForward(Exception):
    """Raised from a hook once everything needed from a forward has been captured."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks (the ModuleList with num_hidden_layers entries)."""
    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise LocalaiError("could not find the decoder layers of this model",
                       "TurboQuant supports decoder-only transformers LMs (Llama, Qwen, Mistral, ...)")


def target_linears(model, quantize_head: bool) -> dict[str, torch.nn.Linear]:
    """name -> nn.Linear to quantize: every linear inside the decoder blocks, plus lm_head if asked."""
    layer_ids = {id(m) for layer in decoder_layers(model) for m in layer.modules()}
    head = model.get_output_embeddings()
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if id(module) in layer_ids or (quantize_head and module is head):
            found[name] = module
    return found


def _quantize_data_free(name: str, linear: torch.nn.Linear, spec: QuantSpec, device) -> tuple[PackedWeight, LayerReport]:
    start = time.perf_counter()
    weight = linear.weight.detach()  # [N, K]
    layout = make_layout(weight.shape[1], spec.group_size, spec.max_block)
    parts, error, energy = [], 0.0, 0.0
    for rows, packed in quantize_rows(weight, layout, spec.seed, name, device):
        error += float((rows - dequantize_weight(packed, spec.seed)).pow(2).sum())
        energy += float(rows.pow(2).sum())
        parts.append(PackedWeight(packed.codes.cpu(), packed.gains.cpu(), layout))
    return join_rows(parts, layout), LayerReport(name, tuple(weight.shape), time.perf_counter() - start,
                                                 error / max(energy, 1e-30))


def quantize_data_free(model, spec: QuantSpec, device="cpu", on_layer=None) -> QuantResult:
    """Data-free TurboQuant of every target linear; the model itself is left unchanged."""
    result = QuantResult()
    for name, linear in target_linears(model, spec.quantize_head).items():
        packed, report = _quantize_data_free(name, linear, spec, device)
        result.packed[name] = packed
        result.reports.append(report)
        if on_layer:
            on_layer(report)
    return result


def _quantize_calibrated(name: str, linear: torch.nn.Linear, hessian: torch.Tensor,
                         spec: QuantSpec) -> tuple[PackedWeight, LayerReport]:
    """GPTQ in the rotated basis, then passes of code refinement, for one linear;
    writes the dequantized weight back into it."""
    start = time.perf_counter()
    w = finite_weight(name, linear.weight.detach().float())  # [N, K]
    layout = make_layout(w.shape[1], spec.group_size, spec.max_block)
    signs = random_signs(layout.k_padded, spec.seed, device=w.device)
    h_rot = gptq.rotate_hessian(hessian, signs, layout.block)  # [Kp, Kp]
    w_rot = rotate_weight(w, layout, spec.seed)  # [N, Kp]
    try:
        codes, gains = gptq.gptq_codes(w_rot, h_rot, spec.group_size, spec.damp)
    except gptq.NotPositiveDefinite as exc:
        raise LocalaiError(f"{name}: {exc} (its calibration inputs hold NaN or infinite values)",
                           "quantize from a float32 or bfloat16 copy of the model, or use --no-calib") from None
    gains = gptq.refit_gains(w_rot, h_rot, codes, spec.group_size, spec.damp)
    for _ in range(spec.refine_passes):
        codes = gptq.refine_codes(w_rot, h_rot, codes, gains, spec.group_size, spec.damp)
        gains = gptq.refit_gains(w_rot, h_rot, codes, spec.group_size, spec.damp)
    packed = storable(name, pack(codes, gains, layout))
    w_hat = dequantize_weight(packed, spec.seed)
    energy = gptq.output_error(w, torch.zeros_like(w), hessian)
    rel = gptq.output_error(w, w_hat, hessian) / max(energy, 1e-30)
    linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
    packed = PackedWeight(packed.codes.cpu(), packed.gains.cpu(), layout)
    return packed, LayerReport(name, tuple(w.shape), time.perf_counter() - start, rel)


def _layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def capture_layer_inputs(model, layers, calib_ids: torch.Tensor, device):
    """Per batch: (hidden [B, T, C] entering the first decoder layer, [each layer's keyword arguments]).

    Layers can be called differently: a sliding-window layer gets its own attention mask
    (Qwen3 with max_window_layers, Gemma, Mistral variants with layer_types), some models give
    local layers their own rotary embeddings. The model runs once per batch with every layer
    replaced by a pass-through that records its call, so no layer computes anything here.
    """
    captured = []

    def recorder(index):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs.pop("hidden_states", None)
            if index == 0:
                captured.append((hidden, []))
            captured[-1][1].append(kwargs)
            if index == len(layers) - 1:
                raise _StopForward
            return hidden
        return forward

    own = [layer.__dict__.get("forward") for layer in layers]  # a hook library's wrapper, if any
    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        for first in range(0, calib_ids.shape[0], CALIB_BATCH):
            batch = calib_ids[first: first + CALIB_BATCH].to(device)  # [B, T]
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
    finally:
        for layer, forward in zip(layers, own):
            del layer.forward
            if forward is not None:
                layer.forward = forward
    return captured


def _input_groups(layer, linears: dict[str, torch.nn.Linear], sample) -> list[list[str]]:
    """Linears of one layer in call order, grouped when consecutive ones read the same input tensor.

    The hooks keep every input alive until the grouping is done: a freed input's memory is
    soon handed to the next tensor, and an address comparison would then join o_proj (the
    attention output) with gate/up (the normed hidden state) now and then."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: calls.append((n, args[0])))
               for n, m in linears.items()]
    try:
        layer(sample[0], **sample[1])
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last = None
    for name, x in calls:
        if name in {n for g in groups for n in g}:
            continue
        if groups and x is last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = x
    return groups


def _group_hessian(layer, first_module, inputs) -> torch.Tensor:
    """H = sum X^T X over the calibration inputs of a group (they share first_module's input): [K, K]."""
    total = {"h": None}

    def hook(_module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [B*T, K]
        h = x.T @ x
        total["h"] = h if total["h"] is None else total["h"] + h
        raise _StopForward  # nothing after this module matters for the group

    handle = first_module.register_forward_pre_hook(hook)
    try:
        for hidden, kwargs in inputs:
            try:
                layer(hidden, **kwargs)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return total["h"]


def quantize_calibrated(model, calib_ids: torch.Tensor, spec: QuantSpec, device="cpu",
                        on_layer=None) -> QuantResult:
    """Sequential GPTQ-style TurboQuant over the decoder layers; calib_ids: [S, T] token ids.

    The model's linear weights are replaced by their dequantized versions as it goes.
    """
    layers = decoder_layers(model)
    result = QuantResult()
    all_targets = target_linears(model, spec.quantize_head)
    home = next(model.parameters()).device
    _move_outside_layers(model, layers, device)
    with torch.no_grad():
        captured = capture_layer_inputs(model, layers, calib_ids, device)
        hiddens, calls = [hidden for hidden, _ in captured], [kwargs for _, kwargs in captured]
        del captured  # each layer's outputs replace its inputs below
        prefix = {id(layer): name for name, layer in model.named_modules() if name}
        for index, layer in enumerate(layers):
            inputs = [(hidden, kwargs[index]) for hidden, kwargs in zip(hiddens, calls)]
            layer.to(device)
            layer_name = prefix[id(layer)]
            local = {n[len(layer_name) + 1:]: m for n, m in all_targets.items() if n.startswith(layer_name + ".")}
            for group in _input_groups(layer, local, inputs[0]):
                hessian = _group_hessian(layer, local[group[0]], inputs)
                for short in group:
                    name = f"{layer_name}.{short}"
                    packed, report = _quantize_calibrated(name, local[short], hessian, spec)
                    result.packed[name] = packed
                    result.reports.append(report)
                    if on_layer:
                        on_layer(report)
            hiddens = [_layer_output(layer(hidden, **kwargs)) for hidden, kwargs in inputs]
            layer.to(home)
    _move_outside_layers(model, layers, home)
    _quantize_rest(model, all_targets, result, spec, device, on_layer)
    return result


def _quantize_rest(model, all_targets, result: QuantResult, spec: QuantSpec, device, on_layer) -> None:
    """Targets outside the decoder layers (lm_head with --quantize-head): data-free."""
    for name, linear in all_targets.items():
        if name not in result.packed:
            packed, report = _quantize_data_free(name, linear, spec, device)
            result.packed[name] = packed
            result.reports.append(report)
            if on_layer:
                on_layer(report)


def _move_outside_layers(model, layers, device) -> None:
    """Move every parameter and buffer that is not inside a decoder layer to `device`."""
    inside = {id(t) for layer in layers for t in list(layer.parameters()) + list(layer.buffers())}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in inside:
            tensor.data = tensor.data.to(device)
