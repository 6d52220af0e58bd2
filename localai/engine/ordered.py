"""Put interleaved events back in input order: stream the earliest unfinished request, hold the rest."""

from __future__ import annotations

from typing import Iterable, Iterator

from localai.engine.events import GenerationEvent, RequestResult


def in_order(events: Iterable[GenerationEvent], results: list[RequestResult]) -> Iterator[tuple[int, str, bool]]:
    """Yield (index, text, done) in input order; results[i] are filled as events arrive.

    The request at the cursor streams as its events arrive; text of later requests is held
    until every request before them is done. done=True comes once per request, after its text.
    """
    held: dict[int, list[str]] = {}
    cursor = 0
    for event in events:
        results[event.index].add(event)
        if event.index == cursor:
            if event.text:
                yield cursor, event.text, False
        else:
            held.setdefault(event.index, []).append(event.text)
        while cursor < len(results) and results[cursor].finish_reason is not None:
            yield cursor, "", True
            cursor += 1
            if cursor < len(results):
                pieces = "".join(held.pop(cursor, []))
                if pieces:
                    yield cursor, pieces, False
