"""The engines' WebSocket client against a server written at the byte level on 127.0.0.1:
what goes on the wire (masks, frames, order), handshake refusals, keepalive, a server that
stops reading, hostile frames, and engines behind a proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import ssl
import struct
import subprocess
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError

from bridge.errors import EngineAtCapacity, UpstreamRefused, UpstreamUnavailable
from bridge.stt.transport import (
    EngineConnection,
    EngineSocket,
    ProxiedConnection,
    open_engine_connection,
    tls_context,
)
from bridge.stt.websocket import MAX_SERVER_MESSAGE, WebSocketSession

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


@dataclass
class ClientFrame:
    opcode: int
    fin: bool
    mask: bytes
    payload: bytes


def client_frames(data: bytes) -> list[ClientFrame]:
    """Every complete frame a client sent, unmasked (RFC 6455 section 5.2)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        first, second = data[at], data[at + 1]
        length, at = second & 0x7F, at + 2
        if length == 126:
            (length,), at = struct.unpack_from("!H", data, at), at + 2
        elif length == 127:
            (length,), at = struct.unpack_from("!Q", data, at), at + 8
        assert second & 0x80, "a client frame without a mask"
        mask, at = data[at:at + 4], at + 4
        if at + length > len(data):
            break
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[at:at + length]))
        frames.append(ClientFrame(first & 0x0F, bool(first & 0x80), mask, payload))
        at += length
    return frames


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    head = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        return bytes([head, len(payload)]) + payload
    return struct.pack("!BBQ", head, 127, len(payload)) + payload


def close_code(frame: ClientFrame) -> int:
    return int(struct.unpack("!H", frame.payload[:2])[0])


@dataclass
class RawEngine:
    """``async with RawEngine(...)``: one WebSocket server, bytes in and out as a test
    says. It answers the upgrade with ``status``, sends ``greeting`` after a 101, answers
    pings when ``pongs``, echoes a close and hangs up, and reads nothing more after
    ``stop_reading()``."""

    status: int = 101
    greeting: bytes = b""
    pongs: bool = True
    requests: list[str] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    reading: asyncio.Event = field(default_factory=asyncio.Event)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    got_data: asyncio.Condition = field(default_factory=asyncio.Condition)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/listen"

    async def __aenter__(self) -> RawEngine:
        self.reading.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.reading.set()
        for writer in self._writers:
            writer.close()
        self._server.close()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    def stop_reading(self) -> None:
        """A stuck engine: nothing more is read from its socket, which then fills."""
        self.reading.clear()
        for writer in self._writers:
            transport = writer.transport
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()

    def frames(self) -> list[ClientFrame]:
        return client_frames(bytes(self.received))

    async def wait_for_frame(self, opcode: int) -> ClientFrame:
        async with self.got_data:
            await self.got_data.wait_for(
                lambda: any(f.opcode == opcode for f in self.frames()))
        return next(f for f in self.frames() if f.opcode == opcode)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = (await reader.readuntil(b"\r\n\r\n")).decode()
            self.requests.append(request)
            if self.status != 101:
                writer.write(f"HTTP/1.1 {self.status} No\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            key = next(line.split(":", 1)[1].strip() for line in request.split("\r\n")
                       if line.lower().startswith("sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()  # noqa: S324 - RFC 6455's handshake
            writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                         .encode() + self.greeting)
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up first
        finally:
            self.hung_up.set()
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while True:
            await self.reading.wait()
            data = await reader.read(65536)
            if not data:
                return
            async with self.got_data:
                self.received += data
                self.got_data.notify_all()
            frames = self.frames()
            for frame in frames[answered:]:
                if frame.opcode == PING and self.pongs:
                    writer.write(server_frame(PONG, frame.payload))
                if frame.opcode == CLOSE:
                    writer.write(server_frame(CLOSE, frame.payload))
                    await writer.drain()
                    return
            answered = len(frames)
            await writer.drain()


async def connect(url: str, **changes: float) -> EngineSocket:
    options: dict[str, float] = {"open_timeout": 2.0, "ping_interval": 20.0,
                                 "ping_timeout": 20.0, "close_timeout": 2.0}
    options.update(changes)
    return await open_engine_connection(
        url, {"Authorization": "Token k"}, user_agent="callbridge/test",
        max_size=MAX_SERVER_MESSAGE, max_queue=64, write_limit=64 * 1024,
        open_timeout=options["open_timeout"], ping_interval=options["ping_interval"],
        ping_timeout=options["ping_timeout"], close_timeout=options["close_timeout"])


class Session(WebSocketSession):
    """The transport every engine module builds on, without an engine's protocol."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def open(self, headers: Mapping[str, str] | None = None,
                   ping_interval: float = 20.0) -> None:
        await self._connect(headers or {}, open_timeout=2.0, ping_interval=ping_interval,
                            close_timeout=0.5)


async def test_each_audio_frame_has_its_own_mask_and_frames_keep_their_order() -> None:
    chunks = [bytes([n]) * (800 + n) for n in range(40)] + [b"", b"x" * 70_000]
    async with RawEngine() as engine:
        connection = await connect(engine.url)
        for chunk in chunks[:20]:
            await connection.send_audio(chunk)
        await connection.send_text('{"type": "KeepAlive"}')
        await connection.send_audio_many(chunks[20:])
        await connection.close()
        await engine.hung_up.wait()
    frames = engine.frames()
    assert [f.opcode for f in frames] == [BINARY] * 20 + [TEXT] + [BINARY] * 22 + [CLOSE]
    assert all(f.fin for f in frames)
    audio = [f for f in frames if f.opcode == BINARY]
    assert [f.payload for f in audio] == chunks
    assert len({f.mask for f in audio}) == len(audio)  # never one mask twice
    assert frames[20].payload == b'{"type": "KeepAlive"}'
    assert close_code(frames[-1]) == 1000


async def test_the_handshake_sends_our_headers_without_origin_or_compression() -> None:
    async with RawEngine() as engine:
        session = Session(engine.url)
        await session.open({"Authorization": "Token secret"})
        await session.close()
    request = engine.requests[0].lower()
    assert request.startswith("get /v1/listen http/1.1")
    assert "authorization: token secret" in request
    assert "user-agent: callbridge/" in request
    assert "origin:" not in request
    assert "sec-websocket-extensions" not in request


@pytest.mark.parametrize(("status", "error"), [
    (429, EngineAtCapacity), (403, UpstreamRefused), (500, UpstreamUnavailable)])
async def test_a_refused_upgrade_maps_to_the_upstream_error_of_its_status(
        status: int, error: type[Exception]) -> None:
    async with RawEngine(status=status) as engine:
        session = Session(engine.url)
        with pytest.raises(error) as caught:
            await session.open()
    assert type(caught.value) is error
    assert getattr(caught.value, "status", None) == status


async def test_nothing_listening_is_unavailable(refused_port: int) -> None:
    session = Session(f"ws://127.0.0.1:{refused_port}/")
    with pytest.raises(UpstreamUnavailable):
        await session.open()


async def test_a_server_that_never_answers_the_upgrade_times_out_as_unavailable() -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # the request, and then nothing until the client gives up
        writer.close()
        hung_up.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        session = Session(f"ws://127.0.0.1:{port}/")
        with pytest.raises(UpstreamUnavailable, match="TimeoutError"):
            await session._connect({}, open_timeout=0.2, ping_interval=20.0)
        await hung_up.wait()  # the client left nothing open behind
    finally:
        server.close()
        await server.wait_closed()


async def test_cancelling_an_open_leaves_no_connection_behind() -> None:
    asked, hung_up = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            asked.set()
            await reader.read()  # until the client hangs up
        writer.close()
        hung_up.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        opening = asyncio.create_task(connect(f"ws://127.0.0.1:{port}/"))
        await asyncio.wait_for(asked.wait(), 5)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await asyncio.wait_for(hung_up.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_pongs_is_dropped_with_1011_and_the_session_ends() -> None:
    async with RawEngine(pongs=False) as engine:
        session = Session(engine.url)
        await session.open(ping_interval=0.05)
        with pytest.raises(UpstreamUnavailable) as caught:
            async for _ in session.text_frames():
                pass
        await session.close()
    # Failing the connection, the client reads nothing more, the echo of its close
    # included: the end is abnormal, as with websockets' own client.
    assert caught.value.code == "1006"
    frames = engine.frames()
    assert any(f.opcode == PING for f in frames)
    assert close_code(next(f for f in frames if f.opcode == CLOSE)) == 1011


async def test_the_servers_pings_are_answered_and_its_fragments_joined() -> None:
    greeting = (server_frame(PING, b"abcd") + server_frame(TEXT, b'{"a": ', fin=False)
                + server_frame(0, b"1}"))
    async with RawEngine(greeting=greeting) as engine:
        session = Session(engine.url)
        await session.open()
        pong = await engine.wait_for_frame(PONG)
        frames = session.text_frames()
        assert isinstance(frames, AsyncGenerator)
        async with contextlib.aclosing(frames):
            received = [await anext(frames)]
        await session.close()
    assert pong.payload == b"abcd"
    assert received == [{"a": 1}]


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    too_big = struct.pack("!BBQ", 0x81, 127, MAX_SERVER_MESSAGE + 1) + b"{" * 1000
    async with RawEngine(greeting=too_big) as engine:
        connection = await connect(engine.url)
        with pytest.raises(ConnectionClosedError):
            async for _ in connection:
                pass
        frame = await engine.wait_for_frame(CLOSE)
        await connection.close()
    assert close_code(frame) == 1009


async def test_invalid_utf8_in_a_text_message_closes_with_1007() -> None:
    async with RawEngine(greeting=server_frame(TEXT, b"\xff\xfe")) as engine:
        connection = await connect(engine.url)
        frame = await engine.wait_for_frame(CLOSE)
        with pytest.raises(ConnectionClosedError):
            async for _ in connection:
                pass
        await connection.close()
    assert close_code(frame) == 1007


@pytest.mark.parametrize("seed", range(8))
async def test_garbage_from_the_server_ends_the_connection_and_nothing_else(seed: int) -> None:
    noise = random.Random(seed).randbytes(4096)
    # Half start like a frame header, half are noise from the first byte.
    greeting = (server_frame(TEXT, b"{}")[:2] + noise) if seed % 2 else noise
    async with RawEngine(greeting=greeting) as engine:
        connection = await connect(engine.url)
        with contextlib.suppress(ConnectionClosedError):
            async for message in connection:
                assert isinstance(message, str | bytes)
        await connection.close()


async def test_a_server_that_stops_reading_bounds_the_buffer_and_the_session_drops() -> None:
    chunk = b"\x7f" * 800
    async with RawEngine() as engine:
        connection = await connect(engine.url, ping_interval=0.2, ping_timeout=0.2,
                                   close_timeout=0.2)
        assert isinstance(connection, EngineConnection)
        engine.stop_reading()  # the engine is stuck: its socket fills, then ours
        sent = 0
        while not connection.writing_paused:
            connection.write_audio(chunk)
            sent += 1
            assert sent < 200_000, "the write buffer never filled"
        frame_size = len(chunk) + 8
        assert connection.buffered_bytes <= 64 * 1024 + frame_size
        # Paused: the writer waits instead of buffering more, until keepalive finds the
        # engine gone and the connection ends.
        with pytest.raises(ConnectionClosedError):
            await connection.send_audio(chunk)
        assert connection.buffered_bytes == 0
        await connection.close()


async def test_a_server_that_pings_and_never_reads_cannot_grow_the_write_buffer() -> None:
    # Every ping wants a pong. A server that floods pings and reads nothing must not make
    # the client queue pong after pong in memory: it stops reading the server while its
    # own writes wait, and keepalive then finds the server gone.
    pings = server_frame(PING, b"p" * 125) * (8 * 1024 * 1024 // 127)
    async with RawEngine(greeting=pings + server_frame(TEXT, b"after the pings")) as engine:
        engine.stop_reading()  # from the start: nothing the client sends is read
        # Keepalive long enough for every ping to be read if the client kept reading.
        connection = await connect(engine.url, ping_interval=4, ping_timeout=4,
                                   close_timeout=0.3)
        assert isinstance(connection, EngineConnection)
        buffered: list[int] = []  # what the client had buffered at each message

        async def read_all() -> None:
            async for _ in connection:
                buffered.append(connection.buffered_bytes)

        with pytest.raises(ConnectionClosedError):
            await read_all()
        await connection.close()
    # The high-water mark and what one read can add, whether or not the text came through.
    assert all(size <= 64 * 1024 + 4096 for size in buffered)


async def test_an_engine_behind_a_proxy_is_reached_through_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tunnels: list[str] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = request.split()[1]
        tunnels.append(request.split()[0] + " " + target)
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(pump(reader, upstream_writer))
            tasks.create_task(pump(upstream_reader, writer))

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy_port}")
    try:
        async with RawEngine() as engine:
            address = engine.url.split("/")[2]
            connection = await connect(engine.url)
            assert isinstance(connection, ProxiedConnection)
            await connection.send_audio(b"hello")
            frame = await engine.wait_for_frame(BINARY)
            await connection.close()
    finally:
        server.close()
        await server.wait_closed()
    assert frame.payload == b"hello"
    assert tunnels == [f"CONNECT {address}"]


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1, made by Debian's openssl."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


async def test_a_wss_engine_is_reached_over_tls_with_its_certificate_checked(
        self_signed: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    received: list[bytes] = []

    async def engine(connection: ServerConnection) -> None:
        async for message in connection:
            received.append(message if isinstance(message, bytes) else message.encode())

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with serve(engine, "127.0.0.1", 0, ssl=server_context) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        tls_context.cache_clear()
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "elsewhere.pem"))
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(url)  # a certificate nobody vouches for
            tls_context.cache_clear()
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            connection = await connect(url)
            assert isinstance(connection, EngineConnection)
            await connection.send_audio(b"over tls")
            await connection.close()
        finally:
            tls_context.cache_clear()
    assert received == [b"over tls"]
