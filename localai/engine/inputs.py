"""Prompts for `generate`: arguments, a file or stdin; one prompt per line, or JSONL with options.

A JSONL line is an object with `prompt` or `messages`, and optionally `id`, `system` and any
sampling option (max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
stop, min_new_tokens). Every line is checked here, so a bad one is reported with its line
number before any model is loaded.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, replace
from typing import Iterable

from localai.engine.prompts import check_messages
from localai.engine.request import SamplingParams
from localai.errors import LocalaiError
from localai.infile import read_text_file

OPTION_TYPES = {
    "max_new_tokens": int, "min_new_tokens": int, "top_k": int, "seed": int,
    "temperature": float, "top_p": float, "min_p": float, "repetition_penalty": float,
}
REQUEST_KEYS = {"id", "prompt", "messages", "system", "stop"} | set(OPTION_TYPES)


@dataclass
class PromptSpec:
    prompt: str | None
    messages: list[dict] | None
    params: SamplingParams
    system: str | None = None
    id: str | int | None = None


def looks_like_jsonl(source: str, lines: list[str]) -> bool:
    """A .jsonl file is JSONL and a .txt file plain lines, whatever they start with; any other source
    (stdin included) is JSONL when its first line that is not blank starts with `{`."""
    suffix = source.lower().rpartition(".")[2] if "." in source else ""
    if suffix in ("jsonl", "txt"):
        return suffix == "jsonl"
    first = next((line.strip() for line in lines if line.strip()), "")
    return first.startswith("{")


def parse_lines(lines: Iterable[str], source: str, defaults: SamplingParams) -> list[PromptSpec]:
    """Prompts from the lines of a file (`source` names it in errors); blank lines are skipped."""
    lines = list(lines)
    if lines:  # the byte order mark some editors put first is not part of the text
        lines[0] = lines[0].removeprefix("\ufeff")
    jsonl = looks_like_jsonl(source, lines)
    specs = []
    for number, line in enumerate(lines, start=1):
        text = utf8_text(line.rstrip("\r\n"), f"{source}:{number}")
        if not text.strip():
            continue
        if jsonl:
            specs.append(parse_json_line(text, f"{source}:{number}", defaults))
        else:
            specs.append(PromptSpec(prompt=text, messages=None, params=defaults))
    return specs


def parse_json_line(text: str, where: str, defaults: SamplingParams) -> PromptSpec:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalaiError(f"{where}: not valid JSON ({exc.msg})", "each line must be one JSON object") from exc
    utf8_text(json.dumps(data, ensure_ascii=False), where)  # JSON's \ud800 escape gives a lone surrogate
    if not isinstance(data, dict):
        raise LocalaiError(f"{where}: expected a JSON object, got {type(data).__name__}",
                           'write {"prompt": "..."} on each line')
    unknown = sorted(set(data) - REQUEST_KEYS)
    if unknown:
        raise LocalaiError(f"{where}: unknown key {unknown[0]!r}", f"use {', '.join(sorted(REQUEST_KEYS))}")
    if ("prompt" in data) == ("messages" in data):
        raise LocalaiError(f"{where}: give exactly one of prompt or messages", 'e.g. {"prompt": "Hello"}')
    if "prompt" in data and not isinstance(data["prompt"], str):
        raise LocalaiError(f"{where}: prompt must be a string", 'e.g. {"prompt": "Hello"}')
    try:
        messages = check_messages(data["messages"]) if "messages" in data else None
        params = line_params(data, defaults)
    except LocalaiError as exc:
        raise LocalaiError(f"{where}: {exc.message}", exc.hint) from exc
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise LocalaiError(f"{where}: system must be a string", 'e.g. {"system": "Be brief."}')
    return PromptSpec(prompt=data.get("prompt"), messages=messages, params=params, system=system,
                      id=data.get("id"))


def line_params(data: dict, defaults: SamplingParams) -> SamplingParams:
    """defaults overridden by the options on one line, type-checked and range-checked."""
    changes = {}
    for key, kind in OPTION_TYPES.items():
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    kind is int and value != int(value)):  # JSON's 1e400 and NaN are no numbers to sample with
                raise LocalaiError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}",
                                   "fix the option's value")
            changes[key] = kind(value)
    if "stop" in data:
        stop = data["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise LocalaiError("stop must be a string or a list of strings", 'e.g. "stop": ["\\n\\n"]')
        changes["stop"] = tuple(stop)
    return replace(defaults, **changes).validate()


def utf8_text(text: str, where: str) -> str:
    """text, unless it holds what UTF-8 cannot encode: undecodable input bytes (which Python keeps as
    lone surrogates) or a lone surrogate escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalaiError(f"{where} is not UTF-8 text", "convert it to UTF-8, e.g. with iconv") from exc
    return text


def stdin_lines(stdin) -> list[str]:
    """The lines of stdin; one line of error when they are not UTF-8 (a strict decoder raises)."""
    try:
        return stdin.readlines()
    except UnicodeDecodeError as exc:
        raise LocalaiError("<stdin> is not UTF-8 text", "convert it to UTF-8, e.g. with iconv") from exc


def read_prompts(arguments: list[str], file: str | None, stdin, defaults: SamplingParams) -> list[PromptSpec]:
    """Prompts from the arguments (each one a prompt; `-` reads stdin) and from --file (`-` = stdin)."""
    specs = []
    for argument in arguments:
        if argument == "-":
            specs += parse_lines(stdin_lines(stdin), "<stdin>", defaults)
        else:
            specs.append(PromptSpec(prompt=utf8_text(argument, "a prompt argument"), messages=None, params=defaults))
    if file == "-":
        specs += parse_lines(stdin_lines(stdin), "<stdin>", defaults)
    elif file is not None:
        lines = io.StringIO(read_text_file(file, "-f"), newline=None).readlines()  # CRLF or CR ends a line too
        specs += parse_lines(lines, file, defaults)
    return specs


def seeded(specs: list[PromptSpec], seed: int | None) -> list[PromptSpec]:
    """Give each request without its own seed the seed `seed + its index` (when a seed was given)."""
    if seed is None:
        return specs
    return [spec if spec.params.seed is not None else replace(spec, params=replace(spec.params, seed=seed + i))
            for i, spec in enumerate(specs)]
