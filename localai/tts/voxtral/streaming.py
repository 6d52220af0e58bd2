"""Chunked codec decoding while frames are still being generated (the vLLM-Omni schedule).

Up to `chunk` frames, a chunk of `first_chunk` frames is decoded as soon as it is complete
(first audio after 5 frames = 400 ms of speech); after that, chunks of `chunk` frames.
Each chunk is decoded together with up to `left_context` earlier frames, whose samples are
then dropped. The codec is causal and its receptive field (about 21 frames) is shorter
than the context, so the chunks join seamlessly: streaming equals one-shot decoding.
"""

from __future__ import annotations

import torch

from localai.tts.voxtral.config import N_AUDIO_SPECIAL


def decode_frames(codec, frames: torch.Tensor) -> torch.Tensor:
    """frames: [T, 37] model ids -> audio [T * samples_per_frame] (float32, on the codec's device)."""
    codes = (frames.to(torch.long) - N_AUDIO_SPECIAL).T[None]  # [1, 37, T]
    return codec(codes)[0]


class StreamingDecoder:
    def __init__(self, codec, samples_per_frame: int, first_chunk: int = 5, chunk: int = 25, left_context: int = 25):
        self.codec, self.samples_per_frame = codec, samples_per_frame
        self.first_chunk, self.chunk, self.left_context = first_chunk, chunk, left_context
        self.recent: list[torch.Tensor] = []  # the last left_context + chunk frames, [37] each
        self.total = 0  # frames pushed
        self.emitted = 0  # frames already turned into audio

    def push(self, frame: torch.Tensor) -> torch.Tensor | None:
        """Add one frame ([37] model ids); returns the next chunk of audio when one is complete."""
        self.recent.append(frame)
        self.recent = self.recent[-(self.left_context + self.chunk):]
        self.total += 1
        size = self.first_chunk if self.total <= self.chunk else self.chunk
        if self.total % size == 0:
            return self._decode(self.total - self.emitted)
        return None

    def flush(self) -> torch.Tensor | None:
        """Audio of the frames not decoded yet (end of speech)."""
        pending = self.total - self.emitted
        return self._decode(pending) if pending else None

    def _decode(self, new: int) -> torch.Tensor:
        window = self.recent[-min(len(self.recent), self.left_context + new):]
        audio = decode_frames(self.codec, torch.stack(window))
        self.emitted += new
        return audio[(len(window) - new) * self.samples_per_frame:]
