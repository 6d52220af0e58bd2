"""Streaming sentence splitter: text deltas in, whole sentences out, as soon as they are certain.

A sentence ends at . ! ? or … followed by whitespace (closing quotes and brackets stay with
it), at the Devanagari danda । and the Arabic ؟ likewise, at the full-width 。！？ even
without a space (Chinese, Japanese), or at a line break. Not at abbreviations ("Dr.", "e.g."), initials ("J. K."),
decimals ("3.14"), list numbers ("2. item"), except where one that often ends a sentence ("etc.",
"p.m.") is followed by a capital letter. A period at the very end of the text seen so
far waits for the next character. Sentences shorter than `min_chars` are held and joined
with the next one; fenced code blocks (``` or ~~~ at the start of a line) stay whole; `flush()` returns whatever is left.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e eg ie cf al approx no nos fig figs vol p pp ch sec dept est "
    "inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun u.s a.m p.m".split()
)
# abbreviations that often end a sentence too: there, a capital letter after them starts the next one
# ("Dr." and "U.S." are not here: "Dr. Smith", "the U.S. Army")
SENTENCE_FINAL = frozenset("etc a.m p.m inc ltd corp jr".split())
WIDE_TERMINATORS = "。！？｡"  # end a sentence without a space after them
TERMINATORS = ".!?…।॥؟" + WIDE_TERMINATORS
CLOSERS = "\"')]}”’»」』）】》〕"
FENCES = ("```", "~~~")
CLOSING_FENCE = {fence: re.compile(rf"\n {{0,3}}{fence}") for fence in FENCES}


def _word_before(text: str, end: int) -> str:
    """The word (letters and inner dots) that ends at text[end - 1], lower-cased."""
    match = re.search(r"([\w.]+)$", text[:end])
    return match.group(1).lower().strip(".") if match else ""


def _is_false_stop(text: str, dot: int) -> bool:
    """Does the period at text[dot] end an abbreviation, an initial or a list number?"""
    word = _word_before(text, dot)
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return True
    line_start = text.rfind("\n", 0, dot) + 1
    return text[line_start:dot].strip().isdigit()  # "1. first item"


def _opens_a_line(text: str, i: int, at_line_start: bool) -> bool:
    """Is text[i] the first character of a line but for up to 3 spaces, as a Markdown fence must be?
    `at_line_start`: whether text[0] begins a line."""
    line_start = text.rfind("\n", 0, i) + 1
    return (line_start > 0 or at_line_start) and i - line_start <= 3 and not text[line_start:i].strip(" ")


def find_boundary(text: str, at_line_start: bool = True) -> int | None:
    """Index just past the first certain sentence end in `text`, or None if none is certain yet.
    `at_line_start`: whether text[0] begins a line (a ``` in the middle of a line is no fence)."""
    i, n = 0, len(text)
    while i < n:
        if text.startswith(FENCES, i) and _opens_a_line(text, i, at_line_start):
            close = CLOSING_FENCE[text[i:i + 3]].search(text, i + 3)  # at the start of a line too
            if close is None:
                return None  # wait for the block to close
            i = close.end()
            continue
        char = text[i]
        if char == "\n":
            return i + 1
        if char in TERMINATORS:
            end = i + 1
            while end < n and (text[end] in TERMINATORS or text[end] in CLOSERS):
                end += 1
            if end == n:
                return None  # the next character decides
            if char in WIDE_TERMINATORS:
                return end
            if text[end].isspace():
                if not (char == "." and end == i + 1):
                    return end
                if _word_before(text, i) in SENTENCE_FINAL:
                    following = text[end:].lstrip()
                    if not following:
                        return None  # the next word decides
                    if following[0].isupper():
                        return end
                elif not _is_false_stop(text, i):
                    return end
            i = end
            continue
        i += 1
    return None


class SentenceSplitter:
    def __init__(self, min_chars: int = 12, max_chars: int = 400):
        self.min_chars, self.max_chars = min_chars, max_chars
        self.buffer = ""  # text not yet split
        self.buffer_opens_a_line = True  # the buffer's first character begins a line of the text
        self.held = ""  # a finished sentence too short to speak alone

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the sentences it completed."""
        self.buffer += delta
        sentences = []
        while True:
            end = find_boundary(self.buffer, self.buffer_opens_a_line)
            if end is None or end > self.max_chars:
                end = self._forced_cut() or end
            if end is None:
                return sentences
            sentence, self.buffer = self.buffer[:end], self.buffer[end:]
            self.buffer_opens_a_line = sentence.endswith("\n")
            sentences += self._release(sentence)

    def flush(self) -> list[str]:
        """End of text: everything left, as at most one sentence."""
        rest = "\n".join(part.strip() for part in (self.held, self.buffer) if part.strip())
        self.held = self.buffer = ""
        self.buffer_opens_a_line = True
        return [rest] if rest else []

    def _forced_cut(self) -> int | None:
        """A run-on text longer than max_chars is cut after its last comma or space."""
        window = self.buffer[:self.max_chars]
        if len(self.buffer) <= self.max_chars or any(fence in window for fence in FENCES):  # not in a code block
            return None
        cut = max(window.rfind(", "), window.rfind("; "))
        return (cut + 2) if cut > 0 else (window.rfind(" ") + 1 or self.max_chars)

    def _release(self, sentence: str) -> list[str]:
        text = "\n".join(part.strip() for part in (self.held, sentence) if part.strip())
        if len(text) < self.min_chars:
            self.held = text
            return []
        self.held = ""
        return [text]
