"""Who may hold the bridge's resources: connections waiting to start, and live calls.

A media connection goes through two doors. While it has upgraded but not yet started a stream
(no ``start`` message, no credential checked), it holds one place of a small, separate
allowance (``server.max_pending_streams``, and ``server.max_pending_per_address`` for one peer
address), and only for ``server.start_timeout_s``. Once its stream has started and passed its
checks, it claims a call slot (``server.max_calls``) under its call id. So sockets that upgrade
and say nothing can never keep an authenticated call out.

A call's identity is the stream that opened it: a second live stream claiming the same call id
is refused, or (``server.duplicate_call_id = "separate"``) kept apart under an id of its own,
``<call id>~2``, ``~3`` ..., never merged into the first. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import Counter
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

from bridge.errors import CLOSE_TRY_AGAIN_LATER, PolicyRefusal

C = TypeVar("C")
MAX_STREAMS_PER_CALL_ID: Final = 8  # "separate" mode: streams of one call id at once
# The form of the ids given to streams kept apart: no stream may announce one itself.
_SUFFIXED: Final = re.compile(r"~[0-9]+$")


def peer_key(address: str | None) -> str:
    """The key a peer's connections are counted under: its IPv4 address, or its IPv6 /64
    (one host is handed a whole /64 and may rotate through it)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


class ConnectionGate:
    """The allowance for connections that have not started a stream yet."""

    def __init__(self, *, limit: int, per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address  # 0: no cap per address (behind a proxy)
        self._by_address: Counter[str] = Counter()
        self.pending = 0

    def admit(self, address: str) -> str | None:
        """Take a place for a new connection from ``address``; the refusal reason (for the
        ``callbridge_media_refused`` metric) when there is none."""
        if self.pending >= self.limit:
            return "pending_full"
        if self.per_address and self._by_address[address] >= self.per_address:
            return "pending_per_address"
        self.pending += 1
        self._by_address[address] += 1
        return None

    def leave(self, address: str) -> None:
        """The connection started its stream, or closed before it did."""
        self.pending -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class LiveCalls(Generic[C]):
    """The live calls of this process, by call key: what the admin API lists and drain waits
    for. ``changed`` is set whenever a call leaves, ``updated`` whenever one comes or leaves."""

    def __init__(self, *, max_calls: int, duplicates: str = "refuse",
                 changed: asyncio.Event | None = None) -> None:
        self.max_calls = max_calls
        self.duplicates = duplicates
        self.changed = changed or asyncio.Event()
        self.updated = asyncio.Event()
        self._calls: dict[str, C] = {}

    def claim(self, call_id: str, call: C) -> str:
        """Register ``call`` for the stream that announced ``call_id``; its key.

        Raises ``PolicyRefusal``: 1013 when every call slot is taken, 1008 when another live
        stream holds ``call_id`` (and duplicates are refused, or too many are kept apart).
        """
        if _SUFFIXED.search(call_id):
            raise PolicyRefusal("call ids ending in ~<number> are kept for streams kept apart")
        if len(self._calls) >= self.max_calls:
            raise PolicyRefusal("the bridge is at capacity (server.max_calls)",
                                close_code=CLOSE_TRY_AGAIN_LATER)
        key = call_id
        if key in self._calls:
            if self.duplicates != "separate":
                raise PolicyRefusal("another live stream holds this call id")
            key = next((f"{call_id}~{n}" for n in range(2, MAX_STREAMS_PER_CALL_ID + 1)
                        if f"{call_id}~{n}" not in self._calls), "")
            if not key:
                raise PolicyRefusal("too many live streams for this call id")
        self._calls[key] = call
        self.updated.set()
        return key

    def release(self, key: str, call: C) -> None:
        """``call`` ended: its key is free again (only its own: never another stream's)."""
        if self._calls.get(key) is call:
            del self._calls[key]
            self.changed.set()
            self.updated.set()

    def get(self, key: str) -> C | None:
        return self._calls.get(key)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._calls.values()))

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call: object) -> bool:
        return any(held is call for held in self._calls.values())

    def __bool__(self) -> bool:
        return bool(self._calls)
