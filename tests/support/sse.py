"""A Server-Sent Events reader for tests, parsing the stream as the HTML standard says:
fields up to a blank line make one event; lines starting with ':' are comments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: str

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """The events of an open ``text/event-stream`` response, until it ends."""
    fields: dict[str, list[str]] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield SseEvent(id=fields.get("id", [None])[-1],
                               event=fields.get("event", ["message"])[-1],
                               data="\n".join(fields["data"]))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
