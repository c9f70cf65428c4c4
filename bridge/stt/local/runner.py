"""The ``stt-local`` process: serve until a signal, or until the parent process is gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import structlog
from aiohttp import web

from bridge.config import LocalSttSettings
from bridge.stt.local.server import create_stt_app, session_limit

log = structlog.get_logger("bridge.stt.local")

PARENT_CHECK_S = 1.0


async def serve_local(settings: LocalSttSettings, *, announce: bool = False,
                      exit_with_parent: bool = False) -> int:
    """Run the recognizer server; returns the exit status."""
    parent = os.getppid()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_stt_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1]
        log.info("embedded recognizer listening", host=settings.host, port=port,
                 workers=settings.workers or os.cpu_count(), max_sessions=session_limit(settings),
                 model=settings.model)
        if announce:
            sys.stdout.write(json.dumps({"port": port}) + "\n")
            sys.stdout.flush()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
            except TimeoutError:
                if exit_with_parent and os.getppid() != parent:
                    log.warning("parent process is gone; embedded recognizer exiting")
                    break
    finally:
        await runner.cleanup()
    log.info("embedded recognizer stopped")
    return 0
