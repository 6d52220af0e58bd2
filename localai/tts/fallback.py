"""The offline fallback engine: SVOX PicoTTS through `py-nanotts` (Apache-2.0).

Its six voices ship inside the Python package, so it speaks on a fresh machine without a
download or a GPU: 16 kHz mono, one voice per language (en-US, en-GB, de-DE, es-ES, fr-FR, it-IT).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from localai.errors import LocalaiError

VOICES = ("en-US", "en-GB", "de-DE", "es-ES", "fr-FR", "it-IT")
LANGUAGE_VOICE = {"en": "en-US", "de": "de-DE", "es": "es-ES", "fr": "fr-FR", "it": "it-IT"}


class PicoEngine:
    name = "fallback"
    label = "PicoTTS (py-nanotts)"
    sample_rate = 16000

    def __init__(self):
        try:
            from py_nanotts import NanoTTS
        except ImportError as exc:
            raise LocalaiError(f"the fallback speech engine is not installed ({exc})",
                               "install it with `pip install py-nanotts`") from None
        self._tts = NanoTTS()

    def load(self) -> None:
        """Nothing to load: the voices ship inside the package."""

    def voices(self) -> list[str]:
        return list(VOICES)

    def resolve_voice(self, voice: str | None, lang: str | None) -> str:
        """The voice to use: --voice if it is one of ours, else the voice of --lang, else en-US."""
        if voice:
            for name in VOICES:
                if name.lower() == voice.lower().replace("_", "-"):
                    return name
            raise LocalaiError(f"the fallback engine has no voice {voice!r}", f"choose one of: {', '.join(VOICES)}")
        if lang:
            code = lang.lower().split("-")[0]
            if code not in LANGUAGE_VOICE:
                raise LocalaiError(f"the fallback engine cannot speak {lang!r}",
                                   f"languages: {', '.join(LANGUAGE_VOICE)} (Voxtral also speaks pt, nl, ar, hi)")
            return LANGUAGE_VOICE[code]
        return "en-US"

    def language(self, voice: str) -> str:
        return voice.split("-")[0]

    def stream(self, text: str, voice: str, should_stop=None) -> Iterator[np.ndarray]:
        """One float32 chunk in [-1, 1] for the whole text (synthesis takes milliseconds: nothing to stop)."""
        pcm = self._tts.speak(text, voice=voice)
        if pcm:
            yield np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
