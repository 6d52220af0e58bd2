"""Quantize a model to 4 bits: TurboQuant (calibrated or data-free), or the nf4 / int4 baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _print_summary(s) -> None:
    from localai.console import info

    mib = 1024 ** 2
    info(f"method         {s.method}, group size {s.group_size}, {s.layers} linear layers")
    info(f"calibration    {s.calibration}")
    info(f"linear layers  {s.bits_per_weight:.3f} bits/weight, {s.linear_compression_vs_bf16:.2f}x smaller than bf16 "
         f"({s.linear_params * 2 / mib:,.1f} -> {s.linear_bytes / mib:,.1f} MiB)")
    info(f"checkpoint     {s.checkpoint_compression:.2f}x smaller "
         f"({s.size_before / mib:,.1f} -> {s.size_after / mib:,.1f} MiB)")
    info(f"time           {s.seconds:,.1f} s")


def main(
    model: str = typer.Argument(..., help="Model folder, alias or hub repo id."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the quantized checkpoint to (must not exist, or be empty)."),
    method: str = typer.Option("turboquant", "--method", help="turboquant, nf4 (bitsandbytes) or int4 (round-to-nearest)."),
    group_size: int = typer.Option(64, "--group-size", help="Weights per gain/scale (turboquant, int4)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="UTF-8 text to calibrate on (default: text sampled from the model)."),
    no_calib: bool = typer.Option(False, "--no-calib", help="Data-free TurboQuant: no calibration at all."),
    calib_tokens: int = typer.Option(16_384, "--calib-tokens", help="Calibration tokens (in sequences of 512)."),
    quantize_head: bool = typer.Option(False, "--quantize-head", help="Also quantize lm_head (kept 16-bit by default)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Quantize a model to 4 bits: TurboQuant (calibrated or data-free), or the nf4 / int4 baselines."""
    from localai.console import info, out, out_json, status_line, verbose
    from localai.device import resolve_device
    from localai.errors import UsageError
    from localai.quant.pipeline import (QuantizeOptions, check_options, check_voxtral_options, quantize,
                                        quantize_voxtral_tts)
    from localai.store import resolve_model
    from localai.tts.voxtral.loader import is_voxtral_folder

    if calib is not None and no_calib:
        raise UsageError("--calib and --no-calib exclude each other", "pass one of them")
    opts = QuantizeOptions(method=method.lower(), group_size=group_size, calib_file=calib, use_calib=not no_calib,
                           calib_tokens=calib_tokens, quantize_head=quantize_head)
    check_options(opts, output)
    source = resolve_model(model)

    with status_line(f"quantizing {model}...") as show:
        done = 0

        def on_layer(name: str, shape: tuple, error) -> None:
            nonlocal done
            done += 1
            detail = "" if error is None else f"  relative error {error:.5f}"
            verbose(f"quantized {name} [{shape[0]}x{shape[1]}]{detail}")
            show(f"quantized layer {done}: {name}")

        if is_voxtral_folder(source):
            check_voxtral_options(opts)
            info("Voxtral TTS is quantized data-free (TurboQuant without calibration)")
            summary = quantize_voxtral_tts(source, output, opts, resolve_device(), on_layer=on_layer)
        else:
            summary = quantize(source, output, opts, resolve_device(), progress=show, on_layer=on_layer)
    if as_json:
        out_json(summary.to_dict())
        return
    _print_summary(summary)
    out(str(output))
