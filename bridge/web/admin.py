"""The admin API, the live feed and its two pages; all off (404) without an admin token.

Routes: ``GET /calls`` (JSON; the calls page for a browser), ``GET /calls/{id}``,
``POST /calls/{id}/end``, ``/pause``, ``/resume``, ``/token``; ``GET /calls/{id}/events``
(Server-Sent Events); ``GET /captions/{id}`` (the captions page).

The admin token is sent as ``Authorization: Bearer``. The event stream also takes a token in
``?token=`` (browsers' ``EventSource`` cannot send headers): a short-lived one from
``POST /calls/{id}/token``, or the admin token itself. The pages are static: they carry no
data and read their token from the URL's fragment, which browsers never send to a server.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from bridge.calls import Call
from bridge.cluster.feeds import SharedFeed
from bridge.errors import InvalidNumber
from bridge.events import Track
from bridge.ingress.auth import raw_bytes
from bridge.numbers import read_float
from bridge.web.feed import (
    LiveFeed,
    LiveFeeds,
    LiveTokens,
    resume_point,
    serve_frames,
    stream_events,
)
from bridge.web.keys import FEEDS, LIVE_CALLS, SETTINGS, SHARED_FEEDS, TOKENS


def add_admin_routes(app: web.Application) -> None:
    """Register the routes; the live feed's state exists only with an admin token."""
    settings = app[SETTINGS]
    token = settings.server.admin_token
    if token:
        live = settings.live
        app[FEEDS] = LiveFeeds(backlog_bytes=live.backlog_bytes,
                               viewer_buffer=live.viewer_buffer, retain_s=live.retain_s)
        app[TOKENS] = LiveTokens(token.reveal())
        app.on_shutdown.append(_end_feeds)
    app.router.add_get("/calls", list_calls)
    app.router.add_get("/calls/{call_id}", show_call)
    app.router.add_post("/calls/{call_id}/end", end_call)
    app.router.add_post("/calls/{call_id}/pause", partial(pause_call, paused=True))
    app.router.add_post("/calls/{call_id}/resume", partial(pause_call, paused=False))
    app.router.add_post("/calls/{call_id}/token", issue_token)
    app.router.add_get("/calls/{call_id}/events", live_events)
    app.router.add_get("/captions/{call_id}", captions_page)


async def _end_feeds(app: web.Application) -> None:
    app[FEEDS].close()
    shared = app.get(SHARED_FEEDS)
    if shared is not None:
        shared.close()


def _require_admin_api(request: web.Request) -> str:
    token = request.app[SETTINGS].server.admin_token
    if not token:
        raise web.HTTPNotFound(text="the admin API is off: set CALLBRIDGE_SERVER_ADMIN_TOKEN\n")
    return token.reveal()


def _authorise(request: web.Request) -> None:
    """The admin token as a bearer token, or 401."""
    expected = _require_admin_api(request)
    given = raw_bytes(request.headers.get("Authorization", ""))
    if not hmac.compare_digest(given, f"Bearer {expected}".encode()):
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"},
                                   text="a valid bearer token is required\n")


def _live_call(request: web.Request) -> Call:
    call = request.app[LIVE_CALLS].get(request.match_info["call_id"])
    if call is None:
        raise web.HTTPNotFound(text="no live call with that id\n")
    return call


def _call_view(call: Call, *, detail: bool) -> dict[str, Any]:
    started = call.started
    return {
        "call_id": call.call_id, "provider": started.provider if started else None,
        "stream_id": started.stream_id if started else None, "state": call.state.value,
        "engine": getattr(call, "engine_name", None),
        "duration_s": round(time.time() - call.opened_at, 1), "paused": call.paused,
        "legs": {track.value: {k: v for k, v in leg.summary().items()
                               if detail or k in ("speaker", "audio_ms", "transcripts",
                                                  "upstream", "engine")}
                 for track, leg in call.legs.items()}}


async def list_calls(request: web.Request) -> web.Response:
    """Live calls; a browser asking for HTML without credentials gets the calls page."""
    if "text/html" in request.headers.get("Accept", "") and \
            "Authorization" not in request.headers:
        _require_admin_api(request)
        return _page("calls.html")
    _authorise(request)
    calls = [_call_view(c, detail=False) for c in request.app[LIVE_CALLS] if c.started]
    return web.json_response({"calls": calls})


async def show_call(request: web.Request) -> web.Response:
    """One live call with its legs' counters."""
    _authorise(request)
    return web.json_response(_call_view(_live_call(request), detail=True))


async def end_call(request: web.Request) -> web.Response:
    """End a live call: its media connection closes, its legs finish and deliver their last
    finals, ``call.ended`` says ``ended_by_admin``."""
    _authorise(request)
    call = _live_call(request)
    await call.hang_up()
    return web.json_response({"call_id": call.call_id, "ending": True}, status=202)


async def pause_call(request: web.Request, *, paused: bool) -> web.Response:
    """Pause or resume transcription of a live call (``?leg=inbound|outbound`` for one leg)."""
    _authorise(request)
    call = _live_call(request)
    leg = request.query.get("leg")
    try:
        track = Track(leg) if leg else None
    except ValueError:
        raise web.HTTPBadRequest(text="leg must be inbound or outbound\n") from None
    state = call.set_paused(paused, track, reason="admin")
    return web.json_response({"call_id": call.call_id, "paused": state,
                              "call_paused": call.paused})


async def _find_feed(request: web.Request, call_id: str) -> LiveFeed | SharedFeed | None:
    """The call's feed: this instance's, or in cluster mode the one Redis has from the
    instance holding the call (503 while Redis is away)."""
    feed = request.app[FEEDS].get(call_id)
    shared = request.app.get(SHARED_FEEDS)
    if feed is not None or shared is None:
        return feed
    found = await shared.find(call_id)
    if found is None and not shared.member.up:
        raise web.HTTPServiceUnavailable(
            text="the cluster's Redis is unreachable: feeds of calls held by other "
                 "instances cannot be read now\n")
    return found


async def issue_token(request: web.Request) -> web.Response:
    """A short-lived token for one live call's feed (``?ttl_s=`` shortens it), on any
    instance of a cluster."""
    _authorise(request)
    call_id = request.match_info["call_id"]
    feed = await _find_feed(request, call_id)
    if feed is None:
        raise web.HTTPNotFound(text="no live call with that id\n")
    limit = request.app[SETTINGS].live.token_ttl_s
    try:
        ttl_s = read_float(request.query.get("ttl_s", limit), field="ttl_s", low=1, high=limit)
    except InvalidNumber:
        raise web.HTTPBadRequest(text=f"ttl_s must be a number of seconds, 1-{limit:g}\n"
                                 ) from None
    token, expires = request.app[TOKENS].issue(feed.subject, now=time.time(), ttl_s=ttl_s)
    quoted = quote(call_id, safe="")
    return web.json_response({
        "token": token, "expires_at": expires,
        "events_url": f"/calls/{quoted}/events?token={token}",
        "captions_url": f"/captions/{quoted}#token={token}"})


def _feed_access(request: web.Request, feed: LiveFeed | SharedFeed | None) -> None:
    """The admin token (header or query), or a live token for this feed, or 401.

    A token opens the feed of the stream it was issued for: a later stream that announces
    the same call id has a feed of its own, which the earlier token does not open.
    """
    admin = _require_admin_api(request)
    header = request.headers.get("Authorization", "")
    if header:
        _authorise(request)
        return
    given = request.query.get("token", "")
    if given and (hmac.compare_digest(raw_bytes(given), admin.encode()) or (
            feed is not None
            and request.app[TOKENS].check(feed.subject, given, now=time.time()))):
        return
    raise web.HTTPUnauthorized(
        headers={"WWW-Authenticate": "Bearer"},
        text="a valid token is required (expired? ask POST /calls/{id}/token for another)\n")


async def live_events(request: web.Request) -> web.StreamResponse:
    """A live call's events as Server-Sent Events (``bridge.web.feed.stream_events``), for
    the admin token or a token issued for that call's feed."""
    call_id = request.match_info["call_id"]
    app = request.app
    _require_admin_api(request)
    feed = await _find_feed(request, call_id)
    _feed_access(request, feed)
    if feed is None:
        raise web.HTTPNotFound(text="no live call with that id\n")
    live = app[SETTINGS].live
    if isinstance(feed, LiveFeed):
        return await stream_events(request, feed, app[TOKENS], max_viewers=live.max_viewers,
                                   keepalive_s=live.keepalive_s, token_ttl_s=live.token_ttl_s)
    shared = app[SHARED_FEEDS]
    reader = shared.read(feed, resume_point(request))
    if reader is None:
        raise web.HTTPTooManyRequests(text="too many viewers of calls held elsewhere\n")
    try:
        return await serve_frames(request, reader, app[TOKENS], feed.subject,
                                  keepalive_s=live.keepalive_s, token_ttl_s=live.token_ttl_s)
    finally:
        shared.leave(reader)


async def captions_page(request: web.Request) -> web.Response:
    """The captions page of one call (static; the call's feed gives it its content)."""
    _require_admin_api(request)
    return _page("captions.html")


@functools.cache
def _template(name: str) -> str:
    """A page's text, read from the package once."""
    return resources.files("bridge.pages").joinpath(name).read_text(encoding="utf-8")


def _page(name: str) -> web.Response:
    """A page from ``bridge/pages``, with a fresh nonce for its inline script and style and
    a policy that lets it load nothing else and talk to this origin only."""
    nonce = secrets.token_urlsafe(16)
    text = _template(name)
    policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
              "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return web.Response(text=text.replace("{{nonce}}", nonce), content_type="text/html",
                        headers={"Content-Security-Policy": policy,
                                 "Referrer-Policy": "no-referrer",
                                 "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-store"})
