"""A real aiohttp webhook receiver on 127.0.0.1 that verifies Standard Webhooks signatures.

Verification is written here from the specification (HMAC-SHA256 over
``id.timestamp.body`` with the base64 key of a ``whsec_`` secret), independently of the
bridge's own signing code, so a test proves the two agree.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SECRET = "whsec_" + base64.b64encode(b"callbridge-test-secret-32-bytes!").decode()


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    type: str
    data: dict[str, Any]
    body: bytes


@dataclass
class WebhookReceiver:
    """Collects verified events; ``fail_next`` answers the next N requests with a status."""

    secret: str = SECRET
    events: list[Received] = field(default_factory=list)
    attempts: int = 0
    bad_signatures: int = 0
    fail_statuses: list[int] = field(default_factory=list)
    fail_calls: dict[str, list[int]] = field(default_factory=dict)  # per call_id
    retry_after: str | None = None
    delay_s: list[float] = field(default_factory=list)  # per request, first ones
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    url: str = ""

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def verify(self, headers: Any, body: bytes) -> bool:
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{ts}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
        return fresh and any(hmac.compare_digest(expected, s)
                             for s in headers.get("webhook-signature", "").split(" "))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s.pop(0))  # a slow receiver
        if not self.verify(request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail_statuses:
            status = self.fail_statuses.pop(0)
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.Response(status=status, headers=headers)
        payload = json.loads(body)
        failing = self.fail_calls.get(payload["data"].get("call_id"))
        if failing:
            return web.Response(status=failing.pop(0))
        async with self._changed:
            self.events.append(Received(request.headers["webhook-id"],
                                        int(request.headers["webhook-timestamp"]),
                                        payload["type"], payload["data"], body))
            self._changed.notify_all()
        return web.Response(status=204)

    async def wait_for(self, predicate: Callable[[list[Received]], bool],
                       within_s: float = 30.0) -> list[Received]:
        """Wait until ``predicate(events)`` holds; returns the events."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.events))
        return self.events

    def of_call(self, call_id: str) -> list[Received]:
        return [e for e in self.events if e.data.get("call_id") == call_id]

    def ended(self, call_id: str) -> Callable[[list[Received]], bool]:
        return lambda events: any(e.type == "call.ended" and e.data["call_id"] == call_id
                                  for e in events)


async def _serve_forever(port: int) -> None:
    receiver = WebhookReceiver()
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        response = await receiver._handle(request)
        if receiver.events and response.status == 204:
            event = receiver.events[-1]
            shown = {k: event.data[k] for k in ("leg", "sequence", "text") if k in event.data}
            print(f"{event.type:20} {event.data.get('call_id')} {shown}", flush=True)
        else:
            print(f"refused: status {response.status}", flush=True)
        return response

    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"webhook receiver on http://127.0.0.1:{port}/hook, secret {receiver.secret}",
          flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print verified webhooks (127.0.0.1).")
    parser.add_argument("--port", type=int, default=9000)
    asyncio.run(_serve_forever(parser.parse_args().port))
