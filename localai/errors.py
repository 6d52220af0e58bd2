"""Errors a user can cause. The CLI prints them as one line on stderr and exits 1."""

from __future__ import annotations


class LocalaiError(Exception):
    """A failure the user can act on: `message` says what happened, `hint` what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:  # a sentence of its own: capitalized, unless it starts with a flag or a command
            text += f". {self.hint[:1].upper()}{self.hint[1:].rstrip('.')}"
        return " ".join(text.split())


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line for a one-line report (its type when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UsageError(LocalaiError):
    """Bad arguments that the parser could not catch; exits 2 like a parser error."""
