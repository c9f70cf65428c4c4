"""``MediaSocket`` in an aiohttp server on 127.0.0.1, against a raw client socket: the idle
check when the peer has stopped reading what the bridge writes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from bridge.web.media_socket import MediaSocket, direct_reading_available

pytestmark = pytest.mark.skipif(not direct_reading_available(),
                                reason="the installed aiohttp lacks the reader API")

IDLE_S = 0.1
WRITER_LIMIT = 256 * 1024  # bytes aiohttp's writer sends between two waits for the socket
WATCHED = web.AppKey("watched", asyncio.Future)


async def serve_a_full_socket(request: web.Request) -> web.StreamResponse:
    """Leave aiohttp's writer where a peer that reads nothing can leave it (the socket
    full, all but one byte of aiohttp's writer limit written since it last waited for the
    socket, so that the next frame waits), run the idle check, and report how it ended
    once the write that waited ended too."""
    ws = MediaSocket(writer_limit=WRITER_LIMIT)
    await ws.prepare(request)
    ws.hand_to(lambda kind, payload: False)
    # A reply written while the socket still took data: it fills the socket, then waits.
    filling = asyncio.ensure_future(ws.send_bytes(b"x" * (32 * 1024 * 1024)))
    await asyncio.sleep(0)
    assert not filling.done()
    # And a 10-byte header: one byte short of the next wait (after 256 KiB: aiohttp's
    # writer limit), so that the next frame written, whatever it is, waits.
    await ws.send_bytes(b"y" * (WRITER_LIMIT - 11))
    await ws.watch_idle(IDLE_S)
    # The connection is gone for the bridge, though the peer never went: the reply that
    # waited for its socket ends too.
    with contextlib.suppress(ConnectionError):
        await filling
    request.app[WATCHED].set_result(type(ws.exception()).__name__)
    return ws


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, asyncio.Future[str]]]:
    app = web.Application()
    watched: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    app[WATCHED] = watched
    app.router.add_get("/stream", serve_a_full_socket)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, watched
    finally:
        await runner.cleanup()


async def test_a_peer_that_reads_nothing_is_still_closed_by_the_idle_check(
        server: tuple[int, asyncio.Future[str]]) -> None:
    port, watched = server
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/stream"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        protocol.send_request(protocol.connect())
        writer.write(b"".join(protocol.data_to_send()))
        await reader.readuntil(b"\r\n\r\n")  # the upgrade; nothing is read after it
        # A guard only: the check pings after a tenth of a second and closes after two.
        async with asyncio.timeout(20):
            outcome = await watched
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert outcome == "TimeoutError"  # as aiohttp's heartbeat closes a silent peer
