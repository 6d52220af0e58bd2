"""Sample-rate conversion for playback, chunk by chunk, for sound cards that refuse the engine's rate.

Linear interpolation: plenty for speech played on a speaker (the WAV file keeps the engine's
own rate). Chunks join without a seam: each call continues where the previous one ended.
"""

from __future__ import annotations

import numpy as np


class Resampler:
    def __init__(self, source_rate: int, target_rate: int):
        self.step = source_rate / target_rate  # source samples per output sample
        self.position = 0.0  # where the next output sample falls, in samples of `tail + chunk`
        self.tail = np.zeros(0, dtype=np.float32)  # the last source sample of the previous chunk

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """float32 mono at the source rate -> float32 mono at the target rate."""
        data = np.concatenate([self.tail, np.asarray(chunk, dtype=np.float32)])
        if len(data) < 2:
            self.tail = data
            return np.zeros(0, dtype=np.float32)
        positions = np.arange(self.position, len(data) - 1, self.step)
        out = np.interp(positions, np.arange(len(data)), data).astype(np.float32)
        self.position += len(positions) * self.step - (len(data) - 1)  # the kept sample becomes index 0
        self.tail = data[-1:]
        return out
