#!/usr/bin/env python3
"""A per-frame forwarder, written the way sample media-stream bridges are: the comparison
point for ``bench/load.py``.

Each Twilio message is parsed with ``json.loads``; each media frame is base64-decoded and
sent upstream at once with an ``await``, one upstream WebSocket per track. Transcripts are
read and dropped. No reordering, no buffering, no delivery: the least a bridge can do.

    python bench/forwarder.py --port 8090 --stt-url ws://127.0.0.1:9100/v2/... --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json

from aiohttp import WSMsgType, web
from websockets.asyncio.client import ClientConnection, connect


async def drain(upstream: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _message in upstream:
            pass  # a sample bridge would print the transcript here


async def media(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    options = request.app["options"]
    upstreams: dict[str, ClientConnection] = {}
    readers = []
    async for message in ws:
        if message.type is not WSMsgType.TEXT:
            continue
        data = json.loads(message.data)
        event = data["event"]
        if event == "start":
            for track in data["start"]["tracks"]:
                upstream = await connect(
                    options.stt_url + "?transcription_engine=Deepgram&input_format=mulaw"
                    "&sample_rate=8000",
                    additional_headers={"Authorization": f"Bearer {options.api_key}"})
                upstreams[track] = upstream
                readers.append(asyncio.create_task(drain(upstream)))
        elif event == "media":
            payload = base64.b64decode(data["media"]["payload"])
            await upstreams[data["media"]["track"]].send(payload)
        elif event == "stop":
            break
    for upstream in upstreams.values():
        await upstream.send(json.dumps({"type": "CloseStream"}))
        await upstream.close()
    await asyncio.gather(*readers)
    await ws.close()
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description="A per-frame forwarding bridge.")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--stt-url", required=True)
    parser.add_argument("--api-key", required=True)
    options = parser.parse_args()
    app = web.Application()
    app["options"] = options
    app.router.add_get("/streams/twilio", media)
    web.run_app(app, host="127.0.0.1", port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
