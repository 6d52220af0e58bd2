"""A chat's history: system message, turns, fitting into the context, saving and loading."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from localai.engine.prompts import check_messages, render_chat
from localai.errors import LocalaiError
from localai.infile import read_text_file
from localai.outfile import write_text


CHAT_NAME_EXAMPLE = "chat.json"  # the file name in hints about where a conversation is saved


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict] = field(default_factory=list)  # user/assistant turns, oldest first

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def reset(self) -> None:
        self.messages.clear()

    def full(self) -> list[dict]:
        return self.head() + self.messages

    def head(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def fit(self, tokenizer, max_tokens: int) -> tuple[list[int], int]:
        """Prompt ids of the conversation within max_tokens, dropping the oldest turns first.

        Returns (ids, number of messages dropped). The last user message is never dropped.
        """
        alone = len(render_chat(tokenizer, self.head() + self.messages[-1:]))
        if alone > max_tokens:  # checked first, so a refused message drops nothing
            raise LocalaiError(f"the message needs {alone} tokens but only {max_tokens} fit in the context",
                               "send a shorter message, or lower --max-new-tokens")
        dropped = 0
        while True:
            ids = render_chat(tokenizer, self.full())
            if len(ids) <= max_tokens:
                return ids, dropped
            removed = 2 if len(self.messages) > 2 and self.messages[0]["role"] == "user" else 1
            del self.messages[:removed]
            dropped += removed

    # --- files -------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"system": self.system, "messages": self.messages}

    def save(self, path: str | Path, flag: str = "/save") -> None:
        """Write the conversation as JSON, complete or not at all (localai.outfile); a failure is one
        LocalaiError, so the REPL goes on. `flag` names where the path came from, for the hint."""
        write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", flag, CHAT_NAME_EXAMPLE)

    @classmethod
    def load(cls, path: str | Path, flag: str = "/load") -> "Conversation":
        """`flag` names where the path came from, for the hint."""
        path = Path(path).expanduser()
        try:
            data = json.loads(read_text_file(path, flag))
        except ValueError as exc:
            raise LocalaiError(f"{path} is not a saved conversation ({exc})", "load a file written by /save") from exc
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise LocalaiError(f"{path} is not a saved conversation", "load a file written by /save")
        messages = check_messages(data["messages"]) if data["messages"] else []
        system = data.get("system")
        return cls(system=system if isinstance(system, str) else None,
                   messages=[m for m in messages if m["role"] != "system"])
