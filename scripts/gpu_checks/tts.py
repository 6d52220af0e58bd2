"""Voxtral TTS on the GPU at the released dimensions, with random weights (no download here).

run() -> dict, CUDA only, well under 120 s on an H100. For bf16 and for the 4-bit TurboQuant
backbone + acoustic head it measures: time to first audio, real-time factor, per-frame cost
of each part, whether every streamed chunk arrives before the audio already delivered runs
out (faster than real time), and peak GPU memory while speaking. Speech uses the default
frame step (replayed from a CUDA graph); the 4-bit model also speaks with the eager step
as the baseline, in the same run. Random weights make the
speech meaningless but the work per frame identical. Each measurement records its error
instead of stopping the others.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(Path(__file__).resolve().parent)]
import localai  # noqa: E402
from target import (DEVICE, REHEARSAL, allocated_bytes, device_name, empty_cache, missing_device,  # noqa: E402
                    peak_memory_bytes, reset_peak_memory, sized, synchronize)

localai.__path__.append(str(ROOT))  # localai.kernels and localai.commands live at the top level when not installed

TEXT = "Streaming speech from a four-bit backbone, one frame every eighty milliseconds."
VOICE = "casual_female"
FRAMES = sized(75, 55)  # 6 s of audio per measured sentence: five 5-frame chunks, then 25-frame chunks with left context
WARMUP_FRAMES = 12  # compiles and autotunes every kernel shape before anything is timed
GIB = 2 ** 30
VOICE_ROWS = sized(147, 6)  # [AUDIO] positions a voice embedding fills


def model_params() -> dict:
    """The released dimensions; the tiny test checkpoint's in a rehearsal."""
    from make_tiny_voxtral import params, real_params

    return params() if REHEARSAL else real_params()


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "trace": traceback.format_exc()[-1500:]}


def build_model(quantize: bool):
    """The model at the released dimensions, random weights created on the GPU in bf16."""
    import torch

    from localai.tts.voxtral.config import END_AUDIO, config_from_params
    from localai.tts.voxtral.model import VoxtralModel

    config = config_from_params(model_params())
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = VoxtralModel(config).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        model.acoustic.semantic_codebook_output.weight[END_AUDIO].zero_()  # random weights must not stop early
    model.text_embeddings.to("cpu")
    if quantize:
        from localai.tts.voxtral.quantize import quantize_voxtral

        quantize_voxtral(model, device=DEVICE)
    synchronize()
    empty_cache()
    return model


class PlainPromptSynthesizer:
    """Where mistral-common is not installed: the same prompt layout, text as byte tokens."""

    def prompt_ids(self, text: str, voice: str) -> list[int]:
        return [1, 25] + [24] * VOICE_ROWS + [36] + [100 + b for b in text.encode()] + [35, 25]

    def voices(self) -> list[str]:
        return [VOICE]


def make_synthesizer(model, folder: Path, decode_mode: str | None = None):
    import torch

    from make_tiny_voxtral import tekken_json
    from localai.tts.voxtral.generate import VoxtralSynthesizer

    rows = VOICE_ROWS
    (folder / "voice_embedding").mkdir(parents=True, exist_ok=True)
    voice = torch.randn(rows, model.config.backbone.dim).to(torch.bfloat16)
    torch.save(voice, folder / "voice_embedding" / f"{VOICE}.pt")
    try:
        from localai.tts.voxtral.loader import load_tokenizer

        (folder / "tekken.json").write_text(json.dumps(tekken_json({VOICE: rows})))

        return VoxtralSynthesizer(model, load_tokenizer(folder), folder, max_frames=FRAMES, decode_mode=decode_mode)
    except ImportError:
        plain = type("Synthesizer", (PlainPromptSynthesizer, VoxtralSynthesizer), {})
        return plain(model, None, folder, max_frames=FRAMES, decode_mode=decode_mode)


def speak_once(synthesizer) -> dict:
    """One sentence through the streaming path: chunk arrival times against the audio delivered so far."""
    synchronize()
    start = time.perf_counter()
    arrivals, samples = [], 0
    for chunk in synthesizer.stream(TEXT, VOICE, seed=0):
        chunk = chunk.cpu()  # what playback needs; synchronizes
        now = time.perf_counter() - start
        arrivals.append({"at_s": now, "audio_before_s": samples / synthesizer.sample_rate,
                         "chunk_s": chunk.numel() / synthesizer.sample_rate})
        samples += chunk.numel()
    total = time.perf_counter() - start
    audio_s = samples / synthesizer.sample_rate
    first = arrivals[0]["at_s"] if arrivals else None
    # playback starts when the first chunk arrives; chunk k is late if it arrives after chunks 0..k-1 have played
    slack = [first + a["audio_before_s"] - a["at_s"] for a in arrivals[1:]] if arrivals else []
    return {
        "time_to_first_audio_s": round(first, 4) if first is not None else None,
        "synth_s": round(total, 3), "audio_s": round(audio_s, 3),
        "real_time_factor": round(total / audio_s, 4) if audio_s else None,
        "chunks": len(arrivals), "chunk_frames": [round(a["chunk_s"] * 12.5) for a in arrivals],
        "min_chunk_slack_s": round(min(slack), 4) if slack else None,
        "chunks_faster_than_real_time": all(s >= 0 for s in slack),
    }


def part_costs(model, synthesizer) -> dict:
    """Median GPU time per frame of the backbone step and the acoustic head, and of one 25-frame codec chunk."""
    import torch

    from localai.tts.voxtral.streaming import decode_frames

    def median_ms(fn, repeats=20):
        times = []
        for _ in range(repeats):
            synchronize()
            t0 = time.perf_counter()
            fn()
            synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        return round(sorted(times)[len(times) // 2], 3)

    dim = model.config.backbone.dim
    hidden = torch.randn(1, dim, device=DEVICE, dtype=torch.bfloat16)
    noise = torch.randn(1, model.config.n_acoustic_codebook, device=DEVICE)
    cache = model.backbone.new_cache(512)
    codes = torch.randint(2, 23, (50, 37), device=DEVICE)
    steps = synthesizer.frame_steps  # the synthesizer's graph, captured while it spoke
    position = min(300, steps.cache.max_len - 1)  # inside the cache it spoke with
    with torch.inference_mode():
        model.backbone(torch.randn(1, 300, dim, device=DEVICE, dtype=torch.bfloat16), cache, 0)
        return {
            "backbone_step_eager_ms": median_ms(lambda: model.backbone(hidden[:, None], cache, 300)),
            "acoustic_head_eager_ms": median_ms(lambda: model.acoustic(hidden, noise)),
            f"frame_step_{synthesizer.decode_mode}_ms": median_ms(lambda: steps.step(hidden, noise, position)),
            "codec_chunk_25_frames_with_context_ms": median_ms(lambda: decode_frames(model.codec, codes), 5),
        }


def measure(quantize: bool, eager_baseline: bool) -> dict:
    result: dict = {}
    reset_peak_memory()
    start = time.perf_counter()
    try:
        model = build_model(quantize)
    except Exception as exc:
        return {"build": _error(exc)}
    result["build_s"] = round(time.perf_counter() - start, 1)
    result["build_peak_gb"] = round(peak_memory_bytes() / GIB, 2)
    result["resident_gb"] = round(allocated_bytes() / GIB, 2)
    with tempfile.TemporaryDirectory() as tmp:
        try:  # the default: frame steps replayed from a CUDA graph
            synthesizer = make_synthesizer(model, Path(tmp))
            start = time.perf_counter()
            synthesizer.prepare()  # what loading does: capture the graph
            result["prepare_s"] = round(time.perf_counter() - start, 3)
            result["decode_mode"] = synthesizer.decode_mode  # eager if the capture failed
            synthesizer.max_frames = WARMUP_FRAMES
            speak_once(synthesizer)  # warm-up
            synthesizer.max_frames = FRAMES
            reset_peak_memory()
            result["speak"] = speak_once(synthesizer)
            result["speak_peak_gb"] = round(peak_memory_bytes() / GIB, 2)
        except Exception as exc:
            result["speak"] = _error(exc)
        if eager_baseline:
            try:  # the same sentence with the frame step launched kernel by kernel
                eager = make_synthesizer(model, Path(tmp), decode_mode="eager")
                result["speak_eager"] = speak_once(eager)
            except Exception as exc:
                result["speak_eager"] = _error(exc)
        try:
            result["per_frame"] = part_costs(model, synthesizer)
        except Exception as exc:
            result["per_frame"] = _error(exc)
    del model
    empty_cache()
    return result


def run() -> dict:
    if why := missing_device():
        return {"error": why}
    report = {"gpu": device_name(), "frames_per_sentence": FRAMES,
              "note": "random weights at the released dimensions; speech is noise, work per frame is real"}
    for name, quantize in (("bf16", False), ("turboquant_4bit", True)):
        start = time.perf_counter()
        try:
            report[name] = measure(quantize, eager_baseline=quantize)
        except Exception as exc:
            report[name] = _error(exc)
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
    four_bit = report.get("turboquant_4bit", {})
    if "speak_peak_gb" in four_bit:
        report["4bit_peak_within_3.5_gb"] = four_bit["speak_peak_gb"] <= 3.5
    return report


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
