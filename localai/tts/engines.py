"""Choosing the speech engine: `--tts auto|voxtral|fallback`.

auto: Voxtral when its weights are downloaded (the store resolves `voxtral-tts`) and a CUDA
GPU is usable, else the offline fallback (PicoTTS). voxtral: Voxtral even on the CPU
(slower than real time). The choice is said on stderr; the first Voxtral use shows its
CC BY-NC 4.0 license notice once (remembered under LOCALAI_HOME).

Every engine has: name, label, voices(), resolve_voice(voice, lang), language(voice),
load() (the model; Voxtral's is not loaded before), then sample_rate and
stream(text, voice, should_stop) -> iterator of float32 mono chunks (should_stop() -> True
ends the stream early).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from localai.console import info, note, warn
from localai.errors import LocalaiError, UsageError
from localai.settings import localai_home, settings

CHOICES = ("auto", "voxtral", "fallback")
VOXTRAL_ALIAS = "voxtral-tts"
VOXTRAL_LANGUAGES = ("en", "fr", "es", "de", "it", "pt", "nl", "ar", "hi")
LICENSE_NOTICE = (
    "Voxtral TTS weights and voices are licensed CC BY-NC 4.0 by Mistral AI: non-commercial use only, "
    "with attribution (https://creativecommons.org/licenses/by-nc/4.0/). Generated speech is subject to it too."
)


class VoxtralEngine:
    """The voices are known from the folder; the model itself is loaded by load(), so listing
    the voices or a mistyped --voice costs no 8 GB load."""

    name = "voxtral"

    def __init__(self, folder: Path, device: str, quantize: bool = False):
        self.folder, self.device, self.quantize = folder, device, quantize
        self.synthesizer = None
        self.label = "Voxtral 4B TTS"
        self._voices: list[str] | None = None
        self._tokenizer = None  # read once: for the voice list, then for the synthesizer

    @property
    def sample_rate(self) -> int:
        return self.synthesizer.sample_rate  # known once loaded

    def load(self) -> None:
        """Load the model (once) and say on stderr which one it is."""
        if self.synthesizer is None:
            self.synthesizer, quantized = load_synthesizer(self.folder, self.device, self.quantize, self.tokenizer())
            weights = "4-bit TurboQuant" if quantized else str(self.synthesizer.model.dtype).removeprefix("torch.")
            self.label = f"Voxtral 4B TTS ({self.device}, {weights})"
            info(f"tts: {self.label}")

    def tokenizer(self):
        if self._tokenizer is None:
            from localai.tts.voxtral.loader import load_tokenizer

            self._tokenizer = load_tokenizer(self.folder)
        return self._tokenizer

    def voices(self) -> list[str]:
        if self._voices is None:
            from localai.tts.voxtral.loader import usable_voices

            self._voices = usable_voices(self.folder, self.tokenizer())
        return self._voices

    def resolve_voice(self, voice: str | None, lang: str | None) -> str:
        voices = self.voices()
        if voice:  # in any case, as the reference server takes them
            by_lower = {name.lower(): name for name in voices}
            if voice.lower() not in by_lower:
                raise LocalaiError(f"Voxtral has no voice {voice!r}", f"choose one of: {', '.join(voices)}")
            return by_lower[voice.lower()]
        code = (lang or "en").lower().split("-")[0]
        if code not in VOXTRAL_LANGUAGES:
            raise LocalaiError(f"Voxtral cannot speak {lang!r}", f"languages: {', '.join(VOXTRAL_LANGUAGES)}")
        prefixes = ("neutral_", "casual_", "cheerful_") if code == "en" else (f"{code}_",)
        for prefix in prefixes:
            for gender in ("female", "male"):
                if f"{prefix}{gender}" in voices:
                    return f"{prefix}{gender}"
        if not voices:
            raise LocalaiError("the Voxtral checkpoint has no voice files", "download voxtral-tts again")
        return voices[0]

    def language(self, voice: str) -> str:
        code = voice.split("_")[0]
        return code if code in VOXTRAL_LANGUAGES else "en"

    def stream(self, text: str, voice: str, should_stop=None) -> Iterator:
        yield from self.synthesizer.stream(text, voice, should_stop=should_stop)


def voxtral_folder(model: str = VOXTRAL_ALIAS) -> Path | None:
    """Where the Voxtral weights are on disk (a folder path or the downloaded alias); None when they
    are not there, an error when `model` names another kind of model."""
    from localai.store.resolve import find_local
    from localai.tts.voxtral.loader import is_voxtral_folder

    folder = find_local(model)
    if folder is not None and not is_voxtral_folder(folder):
        raise LocalaiError(f"{model} is not a Voxtral TTS checkpoint (params.json and consolidated.safetensors)",
                           "give --tts-model the voxtral-tts alias or a folder made from mistralai/Voxtral-4B-TTS-2603")
    return folder


def show_license_once() -> None:
    marker = localai_home() / "notices" / "voxtral-license-shown"
    if marker.exists():
        return
    note(LICENSE_NOTICE)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(LICENSE_NOTICE + "\n")
    except OSError as exc:
        warn(f"could not remember the license notice ({exc})")


def load_synthesizer(folder: Path, device: str, quantize: bool = False, tokenizer=None):
    """(VoxtralSynthesizer, whether its weights are 4-bit); `tokenizer`: the folder's, if already read."""
    import torch

    from localai.tts.voxtral.generate import VoxtralSynthesizer
    from localai.tts.voxtral.loader import is_quantized, load_model, load_tokenizer

    show_license_once()
    if device == "cpu":
        warn("Voxtral on the CPU is slower than real time; a CUDA GPU or --tts fallback is faster")
    stored_4bit = is_quantized(folder)  # written by `localai quantize`: loads as 4-bit, nothing to quantize
    quantize = quantize and not stored_4bit
    # to quantize, the 16-bit weights stay in CPU memory and go to the GPU one layer at a time
    model = load_model(folder, device="cpu" if quantize else device, dtype=torch.bfloat16)
    if quantize:
        from localai.tts.voxtral.quantize import quantize_voxtral

        info(f"quantizing the Voxtral backbone and acoustic head to 4 bits on the {device}...")
        quantize_voxtral(model, device)
    synthesizer = VoxtralSynthesizer(model, tokenizer or load_tokenizer(folder), folder)
    synthesizer.prepare()
    return synthesizer, quantize or stored_4bit


def select_engine(choice: str = "auto", model: str = VOXTRAL_ALIAS, quantize: bool = False):
    """The engine for --tts CHOICE; says on stderr which one and why."""
    choice = choice.lower()
    if choice not in CHOICES:
        raise UsageError(f"unknown --tts {choice!r}", f"use one of: {', '.join(CHOICES)}")
    if choice == "fallback":
        if quantize:
            raise UsageError("--quantize applies to Voxtral, not to the fallback engine",
                             "drop --quantize, or use --tts voxtral")
        return _fallback("as asked")
    folder = voxtral_folder(model)
    if choice == "voxtral":
        if folder is None:
            raise LocalaiError(f"Voxtral weights ({model}) are not downloaded",
                               "run `localai download voxtral-tts` (about 8 GB) or use --tts fallback")
        return _voxtral(folder, quantize)
    reason = "Voxtral weights not downloaded" if folder is None else None if _gpu_usable() else "no CUDA GPU for Voxtral"
    if reason is None:
        return _voxtral(folder, quantize)
    if quantize:
        warn("--quantize does nothing here: the fallback engine has no weights to quantize")
    return _fallback(reason)


def choose_voice(engine, voice: str | None, lang: str | None) -> str:
    """The engine's voice for --voice and/or --lang; both given must agree (a voice speaks one language)."""
    name = engine.resolve_voice(voice, lang)
    if voice and lang:
        spoken, asked = engine.language(name), lang.lower().split("-")[0]
        if spoken != asked:
            raise UsageError(f"voice {name} speaks {spoken}, not {lang}",
                             "drop --lang, or choose a voice of that language (--list-voices)")
    return name


def _gpu_usable() -> bool:
    if settings.device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def _voxtral(folder: Path, quantize: bool) -> VoxtralEngine:
    return VoxtralEngine(folder, "cuda" if _gpu_usable() else "cpu", quantize)  # loaded by load()


def _fallback(reason: str):
    from localai.tts.fallback import PicoEngine

    engine = PicoEngine()
    info(f"tts: fallback {engine.label}: {reason}")
    return engine


def engine_report() -> list[dict]:
    """Records for `localai doctor`: which engines work here and which one --tts auto picks."""
    records = []
    try:
        from localai.tts.fallback import PicoEngine

        PicoEngine()
        records.append(dict(name="tts fallback", status="ok", detail="PicoTTS via py-nanotts, 16 kHz, en/de/es/fr/it"))
    except LocalaiError as exc:
        records.append(dict(name="tts fallback", status="missing", detail=exc.message, hint=exc.hint or ""))
    folder = voxtral_folder()
    gpu = _gpu_usable()
    auto = "voxtral" if folder is not None and gpu else "fallback"
    why = "weights present, GPU usable" if auto == "voxtral" else (
        "no Voxtral weights" if folder is None else "no CUDA GPU")
    records.append(dict(name="tts auto", status="info", detail=f"--tts auto uses {auto} ({why})"))
    return records
