"""Quantize a causal LM's linear layers, data-free or calibrated layer by layer.

Calibrated mode is sequential: the inputs of decoder layer i come from layers
0..i-1 already quantized, and inside a layer the linears run in groups that share
one input (q/k/v, then o, then gate/up, then down for a Llama block), each group
seeing the outputs of the groups quantized before it. A quantized linear keeps its
dequantized weight during calibration so the next forward sees its real error.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from localai.quant import gptq
from localai.quant.hadamard import random_signs
from localai.quant.turboquant import (
    PackedWeight, dequantize_weight, make_layout, pack, quantize_rotated, rotate_weight,
)

CALIB_BATCH = 4  # calibration sequences per forward


@dataclass
class QuantSpec:
    group_size: int = 64
    seed: int = 0
    max_block: int = 128
    quantize_head: bool = False
    damp: float = gptq.DEFAULT_DAMP
    asymmetric: bool = True  # also correct the input error left by earlier layers


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
    raise ValueError("could not find the decoder layers of this model")


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
    w = linear.weight.detach().to(device, torch.float32)  # [N, K]
    layout = make_layout(w.shape[1], spec.group_size, spec.max_block)
    w_rot = rotate_weight(w, layout, spec.seed)
    codes, gains = quantize_rotated(w_rot, spec.group_size)
    packed = pack(codes, gains, layout)
    w_hat = dequantize_weight(packed, spec.seed)
    rel = float((w - w_hat).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30))
    packed = PackedWeight(packed.codes.cpu(), packed.gains.cpu(), layout)
    return packed, LayerReport(name, tuple(w.shape), time.perf_counter() - start, rel)


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


def asymmetric_target(w: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damp: float) -> torch.Tensor:
    """The weight that best maps the quantized model's inputs to the full-precision outputs.

    With X_q the inputs in the partly quantized model and X_f those in the original one
    (same tokens), H = X_q^T X_q and C = X_q^T X_f: argmin_w' |X_q w' - X_f w|^2 is
    w + H^-1 (C - H) w (row by row; H dampened). GPTQ then quantizes toward it, so each
    layer also corrects the error the layers before it left in its inputs (the asymmetric
    calibration of GPTAQ, Li et al., 2025).
    """
    h = hessian.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp * torch.diag(h).mean().clamp_min(1e-8)
    correction = torch.linalg.solve(h, (cross - hessian) @ w.T)  # [K, N]
    return w + correction.T


def _quantize_calibrated(name: str, linear: torch.nn.Linear, hessian: torch.Tensor, spec: QuantSpec,
                         cross: torch.Tensor | None = None) -> tuple[PackedWeight, LayerReport]:
    """GPTQ in the rotated basis for one linear; writes the dequantized weight back into it."""
    start = time.perf_counter()
    w = linear.weight.detach().float()  # [N, K]
    if cross is not None:
        w = asymmetric_target(w, hessian, cross, spec.damp)
    layout = make_layout(w.shape[1], spec.group_size, spec.max_block)
    signs = random_signs(layout.k_padded, spec.seed, device=w.device)
    h_rot = gptq.rotate_hessian(hessian, signs, layout.block)  # [Kp, Kp]
    w_rot = rotate_weight(w, layout, spec.seed)  # [N, Kp]
    codes, gains = gptq.gptq_codes(w_rot, h_rot, spec.group_size, spec.damp)
    gains = gptq.refit_gains(w_rot, h_rot, codes, spec.group_size, spec.damp)
    packed = pack(codes, gains, layout)
    w_hat = dequantize_weight(packed, spec.seed)
    energy = gptq.output_error(w, torch.zeros_like(w), hessian)
    rel = gptq.output_error(w, w_hat, hessian) / max(energy, 1e-30)
    linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
    packed = PackedWeight(packed.codes.cpu(), packed.gains.cpu(), layout)
    return packed, LayerReport(name, tuple(w.shape), time.perf_counter() - start, rel)


def _layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def capture_first_layer_inputs(model, layers, calib_ids: torch.Tensor, device):
    """Run the model up to its first decoder layer: a list of (hidden [B, T, C], kwargs) per batch."""
    captured = []

    def grab(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for first in range(0, calib_ids.shape[0], CALIB_BATCH):
            batch = calib_ids[first: first + CALIB_BATCH].to(device)  # [B, T]
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _input_groups(layer, linears: dict[str, torch.nn.Linear], sample) -> list[list[str]]:
    """Linears of one layer in call order, grouped when consecutive ones read the same input tensor."""
    calls: list[tuple[str, int]] = []
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: calls.append((n, args[0].data_ptr())))
               for n, m in linears.items()]
    try:
        layer(sample[0], **sample[1])
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last_ptr = None
    for name, ptr in calls:
        if name in {n for g in groups for n in g}:
            continue
        if groups and ptr == last_ptr:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_ptr = ptr
    return groups


def _group_inputs_fp(fp_layer, first_modules: list, inputs):
    """One forward of the unquantized layer: each group's input per batch, and the layer outputs."""
    seen: list[list[torch.Tensor]] = [[] for _ in first_modules]
    handles = [m.register_forward_pre_hook(lambda _m, args, i=i: seen[i].append(args[0].detach()))
               for i, m in enumerate(first_modules)]
    try:
        outputs = [(_layer_output(fp_layer(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
    finally:
        for h in handles:
            h.remove()
    return seen, outputs


def _group_statistics(layer, first_module, inputs, fp_inputs=None):
    """H = sum X^T X of the group's inputs (and C = sum X^T X_f with fp_inputs): [K, K] float32."""
    stats = {"h": None, "c": None}
    batch = {"index": 0}

    def hook(_module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [B*T, K]
        h = x.T @ x
        stats["h"] = h if stats["h"] is None else stats["h"] + h
        if fp_inputs is not None:
            xf = fp_inputs[batch["index"]].reshape(-1, x.shape[-1]).float()
            c = x.T @ xf
            stats["c"] = c if stats["c"] is None else stats["c"] + c
        raise _StopForward

    handle = first_module.register_forward_pre_hook(hook)
    try:
        for index, (hidden, kwargs) in enumerate(inputs):
            batch["index"] = index
            try:
                layer(hidden, **kwargs)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return stats["h"], stats["c"]


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
        inputs = capture_first_layer_inputs(model, layers, calib_ids, device)
        fp_stream = inputs if spec.asymmetric else None  # the unquantized model's hidden states
        prefix = {id(layer): name for name, layer in model.named_modules() if name}
        for layer in layers:
            layer.to(device)
            layer_name = prefix[id(layer)]
            local = {n[len(layer_name) + 1:]: m for n, m in all_targets.items() if n.startswith(layer_name + ".")}
            groups = _input_groups(layer, local, inputs[0])
            fp_inputs = [None] * len(groups)
            if fp_stream is not None:
                fp_layer = copy.deepcopy(layer)
                fp_modules = dict(fp_layer.named_modules())
                fp_inputs, fp_stream = _group_inputs_fp(fp_layer, [fp_modules[g[0]] for g in groups], fp_stream)
                del fp_layer
            for group, group_fp in zip(groups, fp_inputs):
                hessian, cross = _group_statistics(layer, local[group[0]], inputs, group_fp)
                for short in group:
                    name = f"{layer_name}.{short}"
                    packed, report = _quantize_calibrated(name, local[short], hessian, spec, cross)
                    result.packed[name] = packed
                    result.reports.append(report)
                    if on_layer:
                        on_layer(report)
            inputs = [(_layer_output(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
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
