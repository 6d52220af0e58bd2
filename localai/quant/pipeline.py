"""`localai quantize` as a library call: load, pick calibration, quantize, save, measure.

Methods: turboquant (calibrated when calibration is available, else data-free),
nf4 (bitsandbytes) and int4 (round-to-nearest); all write a checkpoint that
`from_pretrained` loads after `import localai`. A Voxtral TTS folder (Mistral's
native layout) takes data-free turboquant only and stays in that layout.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from localai.errors import LocalaiError, UsageError
from localai.infile import check_input_file

METHODS = ("turboquant", "nf4", "int4")
NF4_BLOCK = 64
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 matmul kernels accept


@dataclass
class QuantizeOptions:
    method: str = "turboquant"
    group_size: int = 64
    calib_file: Path | None = None
    use_calib: bool = True
    calib_tokens: int = 16_384
    quantize_head: bool = False
    seed: int = 0


@dataclass
class QuantizeSummary:
    method: str
    output: str
    layers: int
    group_size: int
    calibration: str
    calib_tokens: int
    linear_params: int
    linear_bytes: int
    bits_per_weight: float
    linear_compression_vs_bf16: float
    size_before: int
    size_after: int
    checkpoint_compression: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_options(opts: QuantizeOptions, out: Path) -> None:
    """Errors that need no model: unknown method, bad sizes, flags that do not apply, an existing -o."""
    if opts.method not in METHODS:
        raise UsageError(f"unknown method {opts.method!r}", f"use one of: {', '.join(METHODS)}")
    if opts.method == "turboquant":
        from localai.quant.turboquant import GROUP_SIZES

        if opts.group_size not in GROUP_SIZES:
            raise UsageError(f"TurboQuant's kernels take groups of {', '.join(map(str, GROUP_SIZES))}, "
                             f"not {opts.group_size}", "use --group-size 64 (4.25 bits per weight)")
    if opts.method == "nf4" and opts.group_size != NF4_BLOCK:
        raise UsageError("bitsandbytes NF4 uses blocks of 64", "leave --group-size at 64 with --method nf4")
    if opts.method == "int4" and opts.group_size not in INT4_GROUP_SIZES:
        raise UsageError(f"torch's int4 kernel takes groups of {', '.join(map(str, INT4_GROUP_SIZES))}, "
                         f"not {opts.group_size}", "use --group-size 64 with --method int4")
    if opts.method == "nf4" and opts.quantize_head:
        raise UsageError("--quantize-head is not available with --method nf4", "use turboquant or int4")
    if opts.method != "turboquant" and opts.calib_file is not None:
        raise UsageError(f"--calib applies to turboquant only, not {opts.method}", "drop --calib")
    if opts.method == "turboquant" and opts.use_calib:
        from localai.quant.calib_data import SEQ_LEN

        if opts.calib_tokens < SEQ_LEN:
            raise UsageError(f"--calib-tokens {opts.calib_tokens} is less than one calibration sequence "
                             f"({SEQ_LEN} tokens)", f"use --calib-tokens {SEQ_LEN} or more")
    if opts.calib_file is not None:
        check_input_file(opts.calib_file, "--calib")
    _check_output(Path(out))


def _check_output(out: Path) -> None:
    """-o must be an absent or empty folder whose nearest existing parent is a folder we can write in:
    the checkpoint is staged there, at the end of a quantization that may take hours."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LocalaiError(f"{out} already exists", "choose another -o folder or remove it first")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise LocalaiError(f"cannot create {out}: {parent} is a file, not a folder", "choose another -o folder")
    try:  # a real write: permissions, read-only mounts and pseudo filesystems all answer it
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
    except OSError as exc:
        raise LocalaiError(f"cannot create {out}: {parent} is not writable ({exc.strerror or exc})",
                           "choose another -o folder") from None


def check_not_quantized(source: Path) -> None:
    """Quantizing quantized weights again would treat packed bytes as numbers: refuse."""
    from localai.quant.checkpoint import read_quantization_config

    if not (Path(source) / "config.json").is_file():
        return  # not a transformers folder: the loader says so
    qc = read_quantization_config(source)
    if qc:
        method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
        raise LocalaiError(f"{source} is already quantized ({method})", "quantize the original full-precision model")


def _safetensors_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _stored_linear_bytes(folder: Path, modules: list[str]) -> int:
    """Bytes of the stored tensors that make up the converted linears' weights (bias excluded)."""
    from safetensors import safe_open

    prefixes = tuple(f"{m}." for m in modules)
    total = 0
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefixes) and not key.endswith(".bias"):
                    part = handle.get_slice(key)
                    numel = 1
                    for dim in part.get_shape():
                        numel *= dim
                    total += numel * _DTYPE_BYTES.get(part.get_dtype(), 4)
    return total


_DTYPE_BYTES = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8, "F64": 8}


def _calibration(model, tokenizer, opts: QuantizeOptions, device: str, progress):
    """(token ids [S, T] or None, description) for turboquant."""
    from localai.quant import calib_data

    if not opts.use_calib:
        return None, "none (data-free)"
    if opts.calib_file is not None:
        ids = calib_data.from_text_file(opts.calib_file, tokenizer, opts.calib_tokens)
        if ids.numel() + calib_data.SEQ_LEN <= opts.calib_tokens:  # short of a whole sequence or more
            from localai.console import warn

            warn(f"{opts.calib_file.name} gives {ids.numel():,} calibration tokens of the {opts.calib_tokens:,} "
                 "asked for: calibrating on those")
        return ids, f"{opts.calib_file.name}, {ids.numel():,} tokens"
    from localai.console import note, verbose
    from localai.engine.oom import out_of_memory_as
    from localai.quant.offload import placed_for_sampling

    with out_of_memory_as(f"out of memory on {device} while the model sampled its calibration text",
                          "calibrate on a text file with --calib FILE (layer by layer, no sampling), "
                          "or use --no-calib"):
        with placed_for_sampling(model, device, notice=note, detail=verbose) as where:
            ids = calib_data.self_generated(model, tokenizer, opts.calib_tokens, seed=opts.seed, device=where,
                                            on_batch=lambda done, total: progress(f"calibration text {done}/{total}"))
    return ids, f"self-generated by the model, {ids.numel():,} tokens"


def quantize(source: Path, out: Path, opts: QuantizeOptions, device: str = "cpu", progress=None,
             on_layer=None) -> QuantizeSummary:
    """Quantize the model folder `source` into `out`; `progress(text)` and `on_layer(report)` report."""
    from localai.loading import load_model, load_tokenizer, pick_dtype
    from localai.quant import baselines, calibrate
    from localai.quant.checkpoint import save_quantized
    from localai.quant.turboquant import make_layout

    progress = progress or (lambda text: None)
    out = Path(out)
    check_options(opts, out)
    check_not_quantized(source)
    start = time.perf_counter()
    tokenizer = load_tokenizer(source)
    calibration, tokens = "none", 0
    if opts.method == "nf4":
        targets = _nf4_targets(source)
        baselines.quantize_nf4(source, tokenizer, out, device)
    else:
        model = load_model(source, device="cpu", dtype=pick_dtype(device))
        spec = calibrate.QuantSpec(group_size=opts.group_size, seed=opts.seed, quantize_head=opts.quantize_head)
        found = calibrate.target_linears(model, opts.quantize_head)
        targets = {name: tuple(m.weight.shape) for name, m in found.items()}
        if opts.method == "int4":
            baselines.quantize_int4(model, tokenizer, found, opts.group_size, out,
                                    on_layer=lambda name, shape: on_layer and on_layer(name, shape, None))
        else:
            for linear in found.values():
                make_layout(linear.in_features, opts.group_size, spec.max_block)  # bad group size fails here
            ids, calibration = _calibration(model, tokenizer, opts, device, progress)
            report = (lambda r: on_layer(r.name, r.shape, r.rel_error)) if on_layer else None
            tokens = 0 if ids is None else ids.numel()
            result = _turboquant_layers(model, ids, spec, device, report)
            save_quantized(model, tokenizer, result.packed, spec, out)
    return _summary(source, out, opts, targets, calibration, tokens, time.perf_counter() - start)


def _turboquant_layers(model, ids, spec, device: str, report):
    """TurboQuant of the model's linears, calibrated on `ids` or data-free (None); running out of
    memory says what needs less."""
    from localai.engine.oom import out_of_memory_as
    from localai.quant import calibrate

    ways = (["--no-calib (data-free, one weight at a time)"] if ids is not None else []) + (
        ["--device cpu"] if device != "cpu" else [])
    hint = f"use {' or '.join(ways)}" if ways else "close other programs to free memory"
    with out_of_memory_as(f"out of memory on {device} while quantizing layer by layer", hint):
        if ids is None:
            return calibrate.quantize_data_free(model, spec, device, report)
        return calibrate.quantize_calibrated(model, ids, spec, device, report)


def check_voxtral_options(opts: QuantizeOptions) -> None:
    """Usage errors for flags that a Voxtral TTS model does not take."""
    if opts.method != "turboquant":
        raise UsageError(f"Voxtral TTS is quantized with turboquant only, not {opts.method}",
                         "drop --method or use --method turboquant")
    if opts.calib_file is not None:
        raise UsageError("Voxtral TTS is quantized data-free; --calib does not apply", "drop --calib")
    if opts.quantize_head:
        raise UsageError("--quantize-head does not apply to Voxtral TTS (its output heads stay 16-bit)",
                         "drop --quantize-head")


def quantize_voxtral_tts(source: Path, out: Path, opts: QuantizeOptions, device: str = "cpu",
                         on_layer=None) -> QuantizeSummary:
    """Data-free TurboQuant of the Voxtral TTS folder `source` into `out`; `on_layer(name, shape, None)` reports."""
    from localai.tts.voxtral.checkpoint import save_quantized_voxtral

    out = Path(out)
    check_options(opts, out)
    check_voxtral_options(opts)
    start = time.perf_counter()
    report = (lambda name, shape: on_layer(name, shape, None)) if on_layer else None
    targets = save_quantized_voxtral(source, out, device, opts.group_size, opts.seed, report)
    return _summary(source, out, opts, targets, "none (data-free)", 0, time.perf_counter() - start)


def _nf4_targets(source: Path) -> dict:
    """The linears bitsandbytes converts (all but the output head), from a model built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    head = model.get_output_embeddings()
    return {n: tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}


def _summary(source, out, opts, targets: dict, calibration: str, tokens: int, seconds: float) -> QuantizeSummary:
    params = sum(n * k for n, k in targets.values())
    linear_bytes = _stored_linear_bytes(out, list(targets))
    before, after = _safetensors_bytes(source), _safetensors_bytes(out)
    return QuantizeSummary(
        method=opts.method, output=str(out), layers=len(targets),
        group_size=NF4_BLOCK if opts.method == "nf4" else opts.group_size,
        calibration=calibration if opts.method == "turboquant" else "not used", calib_tokens=tokens,
        linear_params=params, linear_bytes=linear_bytes,
        bits_per_weight=8 * linear_bytes / max(params, 1),
        linear_compression_vs_bf16=2 * params / max(linear_bytes, 1),
        size_before=before, size_after=after, checkpoint_compression=before / max(after, 1),
        seconds=seconds)
