"""The TurboQuant checkpoint: model.safetensors + config.json with a `quantization_config`.

Quantized linears store `<name>.codes` (uint8 [N, Kp // 2]) and `<name>.gains`
(float16 [N, Kp // G]) instead of `<name>.weight`; every other tensor is stored in
16-bit. `quantization_config` names the method and its parameters and lists the
converted modules, so a loader can rebuild the layers without reading any weights.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

from localai.errors import LocalaiError, first_line

QUANT_METHOD = "turboquant"
WEIGHTS_NAME = "model.safetensors"
INT4_METHOD = "int4_rtn"
# method -> the fields its quantization_config must carry
OUR_METHODS = {
    QUANT_METHOD: ("bits", "group_size", "rotation", "rotation_seed", "max_block", "modules_to_convert"),
    INT4_METHOD: ("bits", "group_size", "modules_to_convert"),
}
REQUANTIZE_HINT = "Quantize the model again with `localai quantize`"


def quantization_config(spec, modules: list[str], not_converted: list[str]) -> dict:
    """The `quantization_config` entry of config.json for a QuantSpec and the converted module names."""
    return {
        "quant_method": QUANT_METHOD,
        "bits": 4,
        "group_size": spec.group_size,
        "rotation": "hadamard",
        "rotation_seed": spec.seed,
        "max_block": spec.max_block,
        "modules_to_convert": sorted(modules),
        "modules_not_converted": sorted(not_converted),
    }


def output_staging(out: Path) -> Path:
    """A fresh temporary folder beside `out` (same filesystem, so the final rename is atomic)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LocalaiError(f"{out} already exists", "choose another -o folder or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def publish(staging: Path, out: Path) -> Path:
    """Rename the finished staging folder to `out` (an empty `out` is replaced), readable as any
    new file is (safetensors writes its files owner-only)."""
    from localai.store.home import share_like_umask

    share_like_umask(staging)
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    os.replace(staging, out)
    return out


def _tensors_to_store(model, replaced: set, dtype) -> dict:
    """name -> tensor for model.safetensors, leaving out the weights of the `replaced` linears."""
    skip = {f"{name}.weight" for name in replaced}
    tensors, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if key in skip:
            continue
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if storage in seen:
            continue  # a tied copy (lm_head sharing the embedding): transformers re-ties it on load
        seen.add(storage)
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.detach().cpu().contiguous()
    return tensors


def save_checkpoint(model, tokenizer, replaced: dict, qconfig: dict, out: Path, dtype=None) -> Path:
    """Write `model` to `out` with the linears in `replaced` {name: {suffix: tensor}} stored as given.

    Every other floating tensor is stored in `dtype` (bf16 by default); config.json gets `qconfig`.
    """
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.bfloat16
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    config = model.config.to_dict()
    config["quantization_config"] = qconfig
    config["dtype"] = str(dtype).removeprefix("torch.")
    if head_name in replaced:
        config["tie_word_embeddings"] = False  # the head gets its own 4-bit copy; the embedding stays 16-bit
    tensors = _tensors_to_store(model, set(replaced), dtype)
    for name, parts in replaced.items():
        tensors.update({f"{name}.{suffix}": t.detach().cpu().contiguous() for suffix, t in parts.items()})
    staging = output_staging(out)
    try:
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        return publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def linear_names(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def save_quantized(model, tokenizer, packed: dict, spec, out: Path, dtype=None) -> Path:
    """Write a TurboQuant checkpoint for `model` with `packed` {module name: PackedWeight} to `out`."""
    not_converted = [n for n in linear_names(model) if n not in packed]
    qconfig = quantization_config(spec, list(packed), not_converted)
    replaced = {name: {"codes": w.codes, "gains": w.gains} for name, w in packed.items()}
    return save_checkpoint(model, tokenizer, replaced, qconfig, out, dtype)


def read_quantization_config(folder: Path) -> dict | None:
    """The checkpoint's quantization_config (None for an unquantized model); ours are checked field by field."""
    from localai.loading import read_config

    return quantization_config_of(read_config(folder))


def quantization_config_of(config: dict) -> dict | None:
    """read_quantization_config for a config.json already read."""
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict) or not isinstance(qc.get("quant_method"), str):
        _fail_field("has no quant_method" if isinstance(qc, dict) else "is not an object")
    if qc["quant_method"] in OUR_METHODS:
        check_fields(qc)
    return qc


CONFIG_FIELD = "quantization_config in config.json"


def _fail_field(message: str, where: str = CONFIG_FIELD):
    raise LocalaiError(f"{where} {message}", REQUANTIZE_HINT)


def check_fields(qc: dict, where: str = CONFIG_FIELD) -> None:
    """One-line errors for missing or invalid fields of a turboquant or int4_rtn quantization
    config; `where` names the record in the messages (Voxtral keeps it in its own file)."""
    fail = functools.partial(_fail_field, where=where)
    method = qc.get("quant_method")
    missing = [f for f in OUR_METHODS[method] if f not in qc]
    if missing:
        fail(f"lacks {', '.join(missing)}")
    if qc["bits"] != 4:
        fail(f"has bits={qc['bits']!r}; {method} checkpoints are 4-bit")
    for name in ("group_size", "rotation_seed", "max_block"):
        if name in qc and (not isinstance(qc[name], int) or isinstance(qc[name], bool) or qc[name] < 0):
            fail(f"has {name}={qc[name]!r}, not a non-negative integer")
    if qc["group_size"] < 2 or qc["group_size"] % 2:
        fail(f"has group_size={qc['group_size']}, not an even size >= 2")
    if method == QUANT_METHOD:
        if qc["rotation"] != "hadamard":
            fail(f"has rotation={qc['rotation']!r}; only 'hadamard' exists")
        if qc["max_block"] < 2 or qc["max_block"] & (qc["max_block"] - 1):
            fail(f"has max_block={qc['max_block']}, not a power of two")
    modules = qc["modules_to_convert"]
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        fail("has modules_to_convert that is not a list of module names")


def expected_shapes(model, qc: dict) -> dict:
    """key -> (shape, safetensors dtype) that the stored tensors of each converted module must have."""
    from localai.quant.turboquant import make_layout

    modules = dict(model.named_modules())
    g = qc["group_size"]
    shapes = {}
    for name in qc["modules_to_convert"]:
        linear = modules.get(name)
        if linear is None or not hasattr(linear, "in_features"):
            raise LocalaiError(f"quantization_config names {name!r}, which is not a linear layer of this model",
                               REQUANTIZE_HINT)
        n, k = linear.out_features, linear.in_features
        if qc["quant_method"] == QUANT_METHOD:
            layout = make_layout(k, g, qc["max_block"])
            shapes[f"{name}.codes"] = ((n, layout.k_padded // 2), "U8")
            shapes[f"{name}.gains"] = ((n, layout.groups), "F16")
        else:
            if k % g:
                _fail_field(f"has group_size={g}, which does not divide the input size {k} of {name}")
            shapes[f"{name}.qweight"] = ((n, k // 2), "U8")
            shapes[f"{name}.scales"] = ((n, k // g), "F16")
            shapes[f"{name}.zeros"] = ((n, k // g), "F16")
    return shapes


def stored_headers(files: list[Path]) -> dict:
    """key -> (shape, dtype name) read from the safetensors headers only (no tensor data)."""
    from safetensors import safe_open

    headers = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    part = handle.get_slice(key)
                    headers[key] = (tuple(part.get_shape()), part.get_dtype())
        except Exception as exc:  # safetensors raises its own error type for damaged files
            raise LocalaiError(f"{file} is truncated or corrupt ({first_line(exc)})",
                               REQUANTIZE_HINT) from None
    return headers


def check_stored(model, qc: dict, stored: dict, folder) -> None:
    """Every tensor `model` needs is in `stored` {key: (shape, dtype)} with its shape, and the packed
    tensors of the converted linears also with their dtype. `model` may be built with the original
    linears or with the converted ones (both on the meta device)."""
    expected = expected_shapes(model, qc)
    for key, (shape, dtype) in expected.items():
        if key not in stored:
            raise LocalaiError(f"{folder} lacks the tensor {key}", REQUANTIZE_HINT)
        if stored[key] != (shape, dtype):
            raise LocalaiError(f"{key} in {folder} has shape {list(stored[key][0])} {stored[key][1]}, "
                               f"expected {list(shape)} {dtype}", REQUANTIZE_HINT)
    converted = {f"{name}.weight" for name in qc["modules_to_convert"]}
    tied = tied_names(model)
    for key, tensor in model.state_dict().items():
        if key in expected or key in converted or any(other in stored for other in tied.get(key, ())):
            continue
        if key not in stored:
            raise LocalaiError(f"{folder} lacks the tensor {key}", REQUANTIZE_HINT)
        if stored[key][0] != tuple(tensor.shape):
            raise LocalaiError(f"{key} in {folder} has shape {list(stored[key][0])}, expected {list(tensor.shape)}",
                               REQUANTIZE_HINT)


def tied_names(model) -> dict[str, list[str]]:
    """For each weight the model ties to another (the head to the embedding), the other names:
    such a pair is saved once, under either name."""
    groups: dict[str, set[str]] = {}
    for name, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():  # transformers 5
        groups.setdefault(name, set()).add(source)
        groups.setdefault(source, set()).add(name)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(text_config, "tie_word_embeddings", False):  # transformers 4: from the config
        modules = {id(module): name for name, module in model.named_modules()}
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and embed is not None and id(head) in modules and id(embed) in modules:
            head_key, embed_key = f"{modules[id(head)]}.weight", f"{modules[id(embed)]}.weight"
            groups.setdefault(head_key, set()).add(embed_key)
            groups.setdefault(embed_key, set()).add(head_key)
    return {name: sorted(others) for name, others in groups.items()}


SCALE_SUFFIXES = ("gains", "scales", "zeros")  # the float16 parts of a packed weight: finite by format


def check_finite(key: str, tensor, folder) -> None:
    import torch

    if not bool(torch.isfinite(tensor).all()):
        raise LocalaiError(f"{key} in {folder} holds NaN or infinite values", REQUANTIZE_HINT)


def _check_stored_scales(files: list[Path], qc: dict, folder) -> None:
    """Read only the gains (or int4 scales and zeros) of the converted linears and check them."""
    from safetensors import safe_open

    wanted = {f"{name}.{suffix}" for name in qc["modules_to_convert"] for suffix in SCALE_SUFFIXES}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in wanted.intersection(handle.keys()):
                check_finite(key, handle.get_tensor(key), folder)


def _meta_model(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from localai.loading import read_auto_config

    config = read_auto_config(folder, REQUANTIZE_HINT)
    config.quantization_config = None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def validate(folder: Path) -> dict | None:
    """Check a turboquant or int4_rtn checkpoint before loading: fields, files, every stored shape,
    finite gains. Returns its quantization_config (None for an unquantized model; others are
    returned unchecked)."""
    folder = Path(folder)
    qc = read_quantization_config(folder)
    if not isinstance(qc, dict) or qc.get("quant_method") not in OUR_METHODS:
        return qc
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LocalaiError(f"{folder} has no .safetensors weights", REQUANTIZE_HINT)
    check_stored(_meta_model(folder), qc, stored_headers(files), folder)
    _check_stored_scales(files, qc, folder)
    return qc
