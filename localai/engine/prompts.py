"""Prompt text or chat messages -> token ids, through the model's chat template when it has one."""

from __future__ import annotations

from localai.errors import LocalaiError

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages) -> list[dict]:
    """Raise LocalaiError unless messages is a list of {role, content} with known roles."""
    if not isinstance(messages, list) or not messages:
        raise LocalaiError("messages must be a non-empty list", 'write [{"role": "user", "content": "..."}]')
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
                message.get("content"), str):
            raise LocalaiError(f"bad message {message!r}", f"each message needs a role ({', '.join(ROLES)}) "
                               "and text content")
    return messages


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}] + messages
    return messages


def render_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation followed by the assistant's turn opener."""
    if not getattr(tokenizer, "chat_template", None):
        raise LocalaiError("this model's tokenizer has no chat template", "pass plain prompts, without messages")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt: str | None = None, messages: list[dict] | None = None,
                  system: str | None = None, chat: bool | None = None) -> list[int]:
    """Token ids for a prompt or messages. chat=None: use the chat template when the tokenizer has one."""
    if messages is not None:
        return render_chat(tokenizer, with_system(check_messages(messages), system))
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        return render_chat(tokenizer, with_system([{"role": "user", "content": prompt}], system))
    text = f"{system}\n\n{prompt}" if system else prompt
    return tokenizer(text)["input_ids"]
