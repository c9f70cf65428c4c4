"""Ports for tests, without races between choosing a port and using it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refusing_port() -> Iterator[int]:
    """A local port that refuses connections for as long as the block runs.

    The port stays bound (never listening), so a connection to it is refused at once and
    no other process can take it meanwhile: unlike a port picked then released, nothing can
    start listening there halfway through a test.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def free_port() -> int:
    """A local port free a moment ago, for a server that cannot bind port 0 itself (Redis).

    Another process may take it before the server binds it: callers retry with another.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
