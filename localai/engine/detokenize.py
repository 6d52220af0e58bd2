"""Token ids -> text deltas, one token at a time, with stop strings.

Decoding a growing window (from a little before the last emitted token) keeps
multi-byte characters and leading-space rules right; text that could be the start
of a stop string is held back until the next tokens settle it.
"""

from __future__ import annotations

from typing import Sequence


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.prefix_offset = 0  # decode from here to get the context for the next piece
        self.read_offset = 0  # ids before this are already in self.text
        self.text = ""  # all text decoded so far
        self.emitted = 0  # characters of self.text handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one token; return the text that is now safe to show (may be empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release()

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        if not self.stopped:
            tail = self._decode(self.ids[self.prefix_offset:])[len(self._decode(self.ids[self.prefix_offset:self.read_offset])):]
            self.text += tail
            self.read_offset = len(self.ids)
            self._find_stop()
        return self._take(len(self.text))

    def _find_stop(self) -> None:
        if self.stopped or not self.stop:
            return
        longest = max(len(s) for s in self.stop)
        window_start = max(0, self.emitted - longest)
        hits = [i for i in (self.text.find(s, window_start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _release(self) -> str:
        self._find_stop()
        if self.stopped:
            return self._take(len(self.text))
        return self._take(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def _take(self, end: int) -> str:
        end = max(end, self.emitted)
        piece, self.emitted = self.text[self.emitted:end], end
        return piece
