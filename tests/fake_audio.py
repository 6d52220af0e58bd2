"""A stand-in sound card for the speech tests: no audio device needed."""

import threading

import numpy as np


class FakeSpeaker:
    """Stands in for a sounddevice OutputStream: records what it is asked to play."""

    def __init__(self, fail_after: int | None = None, seconds_per_sample: float = 0.0):
        self.chunks, self.fail_after, self.seconds_per_sample = [], fail_after, seconds_per_sample
        self.stopped = self.aborted = self.closed = False
        self.restarts = 0

    def write(self, data):
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise RuntimeError("device unplugged")
        assert data.dtype == np.float32 and data.ndim == 2 and data.shape[1] == 1
        self.chunks.append(data[:, 0].copy())
        threading.Event().wait(len(data) * self.seconds_per_sample)  # a real device blocks while it plays

    def start(self):
        self.restarts += 1

    def stop(self):
        self.stopped = True

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
