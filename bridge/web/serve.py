"""Running the bridge: serve until SIGTERM, then drain.

On the first SIGTERM (or SIGINT) the bridge stops taking media connections (they are
refused with 503, and ``/readyz`` answers 503 at once), lets live calls finish for up to
``server.drain_s``, then ends the rest itself: each call's legs close their upstream
sessions, deliver their last finals, and ``call.ended`` says ``shutdown``. Webhook delivery
then gets ``webhooks.drain_timeout_s``; what is left stays in the outbox for the next
start. A second signal cuts the waiting short; nothing stored is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import socket
import sys
from collections.abc import Collection
from typing import Final

import structlog
from aiohttp import web

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.web.app import create_app
from bridge.web.keys import CALLS_CHANGED, DRAINING, LIVE_CALLS

log = structlog.get_logger("bridge.serve")

END_CALLS_TIMEOUT_S: Final = 30.0  # for calls told to end to finish their last finals


async def serve(settings: Settings, listener: socket.socket | None = None) -> int:
    """Serve until told to stop; returns the exit status.

    ``listener`` is a socket from ``bind_listener`` (bound, not yet listening), which serve
    closes; without one, serve binds ``server.host``/``server.port`` itself and raises
    ``ConfigError`` if it cannot. Port 0 binds a free port; the ready line says which.
    """
    if listener is None:
        listener = bind_listener(settings.server.host, settings.server.port)
    app = create_app(settings)
    # keepalive_timeout also closes a connection that has not completed a request's headers
    # in that time (aiohttp 3.14.4 and later): half-sent requests cannot pile up.
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=settings.webhooks.drain_timeout_s,
                           keepalive_timeout=settings.server.header_timeout_s)
    await runner.setup()
    _tune_garbage_collection()
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await web.SockSite(runner, listener).start()
        host, port = settings.server.host, int(listener.getsockname()[1])
        log.info("listening", host=host, port=port)
        print(ready_line(host, port), file=sys.stdout, flush=True)
        await stop.wait()
        app[DRAINING] = True
        calls = app[LIVE_CALLS]
        log.info("draining: no new calls; live calls may finish", calls=len(calls),
                 drain_s=settings.server.drain_s)
        changed = app[CALLS_CHANGED]
        await _until_no_calls(calls, changed, settings.server.drain_s, force)
        if calls:
            log.info("drain time is over: ending the remaining calls", calls=len(calls))
            for call in list(calls):
                await call.hang_up("shutdown")
            await _until_no_calls(calls, changed, END_CALLS_TIMEOUT_S, force)
    finally:
        await runner.cleanup()  # webhook delivery drains; the embedded recognizer stops
        listener.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def ready_line(host: str, port: int, workers: int = 1) -> str:
    """The one line ``serve`` prints on stdout once it accepts calls (once every worker
    does, with ``--workers``)."""
    shown = f"[{host}]" if ":" in host else host
    processes = f" with {workers} workers" if workers > 1 else ""
    return (f"callbridge: ready on http://{shown}:{port}{processes} "
            f"(media at ws://{shown}:{port}/streams/<provider>; Ctrl-C or SIGTERM stops)")


def bind_listener(host: str, port: int, setting: str = "server.port",
                  host_setting: str = "server.host", *,
                  reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host``:``port``, not yet listening, for ``serve``.

    Binding first, before anything starts, lets a port in use fail at once in one line:
    raises ``ConfigError`` naming ``setting`` (how the user gave the port), or
    ``host_setting`` for a host that does not resolve. ``reuse_port``: SO_REUSEPORT, so
    that several sockets of this user share the port (``--workers``).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(host_setting, f"cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's own sites
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(setting, _bind_problem(host, port, exc)) from None
    return sock


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{host}:{port} is already in use by another process; choose another port"
    if exc.errno == errno.EACCES:
        return f"{host}:{port} needs privileges to bind; choose a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _tune_garbage_collection() -> None:
    """Keep the cyclic garbage collector from stalling media.

    Per-frame objects are freed by reference counting; the collector only finds cycles. With
    its default thresholds it ran so often over a heap of thousands of legs that full
    collections stalled the event loop by 100 ms and more at 1,000 legs (bench/README.md).
    Objects made at start-up are frozen out of its view, and it runs after 50,000 new
    container objects instead of 700.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _until_no_calls(calls: Collection[object], changed: asyncio.Event, within_s: float,
                          force: asyncio.Event) -> None:
    """Wait until no call is live, ``within_s`` passes, or ``force`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while calls and not force.is_set():
                changed.clear()
                waits = [asyncio.ensure_future(changed.wait()),
                         asyncio.ensure_future(force.wait())]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
