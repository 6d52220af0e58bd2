"""Text to speech with Voxtral: prompt, frame loop with a KV cache, streaming codec decode.

The prompt comes from mistral-common (`SpeechRequest` + `encode_speech_request`):
    [BOS] [BEGIN_AUDIO] [AUDIO] x N [NEXT_AUDIO_TEXT] text [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO]
and the N [AUDIO] positions take the voice tensor's rows. The hidden state at the final
[BEGIN_AUDIO] gives the first frame; each frame's 37 codes, embedded and summed, are the
backbone's next input, until the semantic code says end of audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from localai.errors import LocalaiError, first_line
from localai.tts.voxtral.config import END_AUDIO
from localai.tts.voxtral.frame_steps import FRAME_STEPS, EagerFrames
from localai.tts.voxtral.loader import load_voice, usable_voices
from localai.tts.voxtral.streaming import StreamingDecoder

MAX_FRAMES = 2048  # 164 s of audio, the reference deployment's limit per request
MAX_POSITIONS = 4096  # the reference deployment's context: prompt + frames
# speech runs about 0.8 frames per character of English; a slow voice, or digits and symbols
# said in full in other languages, take several times that. Beyond this the model is rambling.
FRAMES_PER_CHAR = 6
BASE_FRAMES = 80  # ~6 s for any text, however short


class VoxtralSynthesizer:
    """Speech for one stream at a time (the frame steps keep one KV cache).

    decode_mode: "eager", "fixed-shape" or "graphs" (see frame_steps.py); None = graphs on
    CUDA (the frame step is launch-bound there), eager elsewhere."""

    def __init__(self, model, tokenizer, folder: Path, max_frames: int = MAX_FRAMES, decode_mode: str | None = None):
        self.model, self.tokenizer, self.folder = model, tokenizer, Path(folder)
        self.config = model.config
        self.max_frames = max_frames
        self._voices: dict[str, torch.Tensor] = {}
        decode_mode = decode_mode or ("graphs" if model.device.type == "cuda" else "eager")
        if decode_mode not in FRAME_STEPS:
            raise LocalaiError(f"unknown decode mode {decode_mode!r}", f"use one of: {', '.join(FRAME_STEPS)}")
        if decode_mode == "graphs" and model.device.type != "cuda":
            raise LocalaiError("CUDA graphs need the model on a CUDA device", "use decode mode eager")
        self.decode_mode = decode_mode
        self.frame_steps = FRAME_STEPS[decode_mode](model)

    @torch.inference_mode()
    def prepare(self) -> None:
        """Capture the frame step's CUDA graph now rather than during the first sentence; if the
        capture fails, speak with the eager step instead (and say so)."""
        if self.decode_mode != "graphs":
            return
        try:
            self.frame_steps.cache_for(1)
            self.frame_steps.capture()
        except Exception as exc:  # any capture failure: eager frames still speak
            from localai.console import warn

            warn(f"could not capture the Voxtral frame step in a CUDA graph ({first_line(exc)}); "
                 "speaking with the eager step, which is slower")
            self.decode_mode, self.frame_steps = "eager", EagerFrames(self.model)

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    def voices(self) -> list[str]:
        return usable_voices(self.folder, self.tokenizer)

    def voice(self, name: str) -> torch.Tensor:
        if name not in self._voices:
            if name not in self.voices():
                raise LocalaiError(f"unknown voice {name!r}", f"choose one of: {', '.join(self.voices())}")
            self._voices[name] = load_voice(self.folder, name, self.config)
        return self._voices[name]

    def prompt_ids(self, text: str, voice: str) -> list[int]:
        from mistral_common.protocol.speech.request import SpeechRequest

        request = SpeechRequest(input=text, voice=voice)
        return list(self.tokenizer.instruct_tokenizer.encode_speech_request(request).tokens)

    @torch.inference_mode()
    def frames(self, text: str, voice: str, seed: int = 0, should_stop=None) -> Iterator[torch.Tensor]:
        """Yield one [37] tensor of model ids per 80 ms frame until the model ends the audio
        (or should_stop() says so)."""
        model = self.model
        rows = self.voice(voice)
        ids = self.prompt_ids(text, voice)
        embeds = model.embed_prompt(ids, rows)  # [1, T, C]
        budget = max(1, min(self.max_frames, MAX_POSITIONS - len(ids), BASE_FRAMES + FRAMES_PER_CHAR * len(text)))
        cache = self.frame_steps.cache_for(len(ids) + budget + 1)  # the last position stays free
        hidden = model.backbone(embeds, cache, 0)[:, -1]  # [1, C] at the final [BEGIN_AUDIO]
        generator = torch.Generator(device=model.device).manual_seed(seed)
        noise_shape = (1, self.config.n_acoustic_codebook)
        for position in range(len(ids), len(ids) + budget):
            noise = torch.randn(noise_shape, generator=generator, device=model.device, dtype=torch.float32)
            # the codes of this frame, and already the hidden state for the next one
            codes, hidden = self.frame_steps.step(hidden, noise, position)
            if int(codes[0, 0]) == END_AUDIO or (should_stop is not None and should_stop()):
                return
            yield codes[0]
        from localai.console import warn

        seconds = budget * self.config.samples_per_frame / self.sample_rate
        warn(f"speech for {text[:40]!r}{'...' if len(text) > 40 else ''} reached its limit of {budget} frames "
             f"({seconds:.1f} s) before the model ended it: the rest is cut")

    @torch.inference_mode()
    def stream(self, text: str, voice: str, seed: int = 0, should_stop=None) -> Iterator[torch.Tensor]:
        """Yield audio chunks (float32, 1-D, on the model's device) while frames are generated."""
        decoder = StreamingDecoder(self.model.codec, self.config.samples_per_frame)
        for frame in self.frames(text, voice, seed, should_stop):
            chunk = decoder.push(frame)
            if chunk is not None:
                yield chunk
        tail = decoder.flush()
        if tail is not None:
            yield tail
