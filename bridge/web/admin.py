"""The admin API, the live feed and its two pages; all off (404) without an admin token.

Routes: ``GET /calls`` (JSON; the calls page for a browser), ``GET /calls/{id}``,
``POST /calls/{id}/end``, ``/pause``, ``/resume``, ``/token``; ``GET /calls/{id}/events``
(Server-Sent Events); ``GET /captions/{id}`` (the captions page); ``GET /cluster``;
``GET /calls/{id}/artifacts`` and ``GET /calls/{id}/artifacts/{name}`` (an ended call's
files, with ``artifacts.enabled``).

In cluster mode the call views and actions answer for every live call of the cluster: a call
another instance holds is listed from Redis, and its view and actions are sent to that
instance (``bridge.cluster.calls``), whose answer is given as if it were local, with
``instance`` added. Redis away: this instance's calls, marked ``"partial": true``.

The admin token is sent as ``Authorization: Bearer``. The event stream also takes a token in
``?token=`` (browsers' ``EventSource`` cannot send headers): a short-lived one from
``POST /calls/{id}/token``, or the admin token itself. The same tokens open a call's
transcript files once it ended (never its other artifacts, such as the recording). The
pages are static: they carry no data and read their token from the URL's fragment, which
browsers never send to a server.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import partial
from importlib import resources
from typing import Any, Final
from urllib.parse import quote

import structlog
from aiohttp import web

from bridge.analytics.talk import TalkAnalytics
from bridge.artifacts.formats import TRANSCRIPT_FILES
from bridge.artifacts.store import ArtifactStore, CallArtifacts, is_artifact_name
from bridge.calls import Call
from bridge.cluster.calls import ClusterCalls, Command, Reply
from bridge.cluster.connection import REDIS_ERRORS
from bridge.cluster.feeds import SharedFeed
from bridge.errors import (
    ArtifactStoreError,
    ClusterMessageInvalid,
    InvalidNumber,
    OwnerUnreachable,
)
from bridge.events import Track
from bridge.ingress.auth import raw_bytes
from bridge.metrics import counter
from bridge.numbers import read_float
from bridge.web.feed import (
    LiveFeed,
    LiveFeeds,
    LiveTokens,
    resume_point,
    serve_frames,
    stream_events,
)
from bridge.web.keys import (
    AFTER_CALL,
    CLUSTER,
    CLUSTER_CALLS,
    DRAINING,
    ENGINE_SLOTS,
    FEEDS,
    LIVE_CALLS,
    METRICS,
    SETTINGS,
    SHARED_FEEDS,
    TOKENS,
)

log = structlog.get_logger("bridge.admin")

# Engines a member's row in GET /cluster shows sessions of (its heartbeat is read from Redis).
MAX_ENGINES_SHOWN: Final = 16

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
    app.cleanup_ctx.append(_cluster_calls)
    app.router.add_get("/cluster", cluster_view)
    app.router.add_get("/calls", list_calls)
    app.router.add_get("/calls/{call_id}", show_call)
    app.router.add_post("/calls/{call_id}/end", end_call)
    app.router.add_post("/calls/{call_id}/pause", partial(pause_call, paused=True))
    app.router.add_post("/calls/{call_id}/resume", partial(pause_call, paused=False))
    app.router.add_post("/calls/{call_id}/token", issue_token)
    app.router.add_get("/calls/{call_id}/events", live_events)
    app.router.add_get("/captions/{call_id}", captions_page)
    app.router.add_get("/calls/{call_id}/artifacts", list_artifacts)
    app.router.add_get("/calls/{call_id}/artifacts/{name}", download_artifact)


async def _end_feeds(app: web.Application) -> None:
    app[FEEDS].close()
    shared = app.get(SHARED_FEEDS)
    if shared is not None:
        shared.close()


async def _cluster_calls(app: web.Application) -> AsyncIterator[None]:
    """In cluster mode, this instance's calls published in Redis and, with the admin token,
    admin actions taken from other instances; nothing otherwise."""
    member = app.get(CLUSTER)
    if member is None:
        yield
        return
    live_calls = app[LIVE_CALLS]
    token = app[SETTINGS].server.admin_token

    def summaries() -> dict[str, Mapping[str, Any]]:
        return {call.key: {**_call_view(call, detail=False), "opened_at": call.opened_at}
                for call in live_calls if call.started and call.key}

    async with ClusterCalls(member, summaries=summaries, updated=live_calls.updated,
                            admin_token=token.reveal() if token else "",
                            perform=partial(_perform_for_cluster, app)) as calls:
        app[CLUSTER_CALLS] = calls

        def scraped() -> Iterator[Any]:
            yield counter("callbridge_cluster_admin_actions", "Admin actions between "
                          "instances: sent and answered or unanswered, taken from others, "
                          "ignored (invalid, replayed, too many at once)", ["outcome"],
                          {(outcome,): calls.outcomes[outcome] for outcome in
                           ("answered", "unanswered", "taken", "ignored")})

        app[METRICS].watch(scraped)
        yield


async def _perform_for_cluster(app: web.Application, command: Command) -> Reply:
    """An admin action another instance sent for one of this instance's calls."""
    call = app[LIVE_CALLS].get(command.call_key)
    if call is None:
        return Reply(404, {"error": NO_SUCH_CALL})
    status, body = await _act(call, command.action,
                              Track(command.leg) if command.leg is not None else None)
    return Reply(status, body)


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


def _call_view(call: Call, *, detail: bool) -> dict[str, Any]:
    started = call.started
    view: dict[str, Any] = {
        "call_id": call.call_id, "provider": started.provider if started else None,
        "stream_id": started.stream_id if started else None, "state": call.state.value,
        "engine": getattr(call, "engine_name", None),
        "duration_s": round(time.time() - call.opened_at, 1), "paused": call.paused,
        "legs": {track.value: {k: v for k, v in leg.summary().items()
                               if detail or k in ("speaker", "audio_ms", "transcripts",
                                                  "upstream", "engine")}
                 for track, leg in call.legs.items()}}
    if detail:
        # Computed now from the spans heard so far: the figures of a live call.
        for observer in call.observers:
            if isinstance(observer, TalkAnalytics):
                view["analytics"] = observer.figures(call)
    return view


async def list_calls(request: web.Request) -> web.Response:
    """Live calls; a browser asking for HTML without credentials gets the calls page.

    In cluster mode: every instance's, each with ``instance``, and ``partial`` true when
    some could not be read (Redis away).
    """
    if "text/html" in request.headers.get("Accept", "") and \
            "Authorization" not in request.headers:
        _require_admin_api(request)
        return _page("calls.html")
    _authorise(request)
    app = request.app
    calls = [_call_view(c, detail=False) for c in app[LIVE_CALLS] if c.started]
    member, cluster = app.get(CLUSTER), app.get(CLUSTER_CALLS)
    if member is None or cluster is None:
        return web.json_response({"calls": calls})
    for view in calls:
        view["instance"] = member.id
    try:
        elsewhere, partial_listing = await cluster.elsewhere()
    except REDIS_ERRORS as exc:
        member.trouble("listing the cluster's calls", exc)
        elsewhere, partial_listing = [], True
    return web.json_response({"calls": calls + elsewhere, "instance": member.id,
                              "partial": partial_listing})


async def show_call(request: web.Request) -> web.Response:
    """One live call with its legs' counters."""
    return await _call_action(request, "show")


async def end_call(request: web.Request) -> web.Response:
    """End a live call: its media connection closes, its legs finish and deliver their last
    finals, ``call.ended`` says ``ended_by_admin``."""
    return await _call_action(request, "end")


async def pause_call(request: web.Request, *, paused: bool) -> web.Response:
    """Pause or resume transcription of a live call (``?leg=inbound|outbound`` for one leg)."""
    return await _call_action(request, "pause" if paused else "resume")


NO_SUCH_CALL = "no live call with that id"


async def _act(call: Call, action: str, track: Track | None) -> tuple[int, dict[str, Any]]:
    """Do an admin action on one of this instance's calls: the status and JSON answer."""
    if action == "show":
        return 200, _call_view(call, detail=True)
    if action == "end":
        await call.hang_up()
        return 202, {"call_id": call.call_id, "ending": True}
    state = call.set_paused(action == "pause", track, reason="admin")
    return 200, {"call_id": call.call_id, "paused": state, "call_paused": call.paused}


async def _call_action(request: web.Request, action: str) -> web.Response:
    """An admin action on a live call: done here if this instance holds the call, else (in
    cluster mode) sent to the instance that does, whose answer is given with ``instance``.

    ``?instance=`` chooses among instances holding streams with the same call id (409
    otherwise). 404: no live call; 503: not here and Redis away; 504: its instance did not
    answer.
    """
    _authorise(request)
    app = request.app
    leg = request.query.get("leg") if action in ("pause", "resume") else None
    try:
        track = Track(leg) if leg else None
    except ValueError:
        raise web.HTTPBadRequest(text="leg must be inbound or outbound\n") from None
    call_key = request.match_info["call_id"]
    chosen = request.query.get("instance")
    member, cluster = app.get(CLUSTER), app.get(CLUSTER_CALLS)
    call = app[LIVE_CALLS].get(call_key)
    if call is not None and (member is None or chosen in (None, member.id)):
        status, body = await _act(call, action, track)
        if member is not None:
            body["instance"] = member.id
        return web.json_response(body, status=status)
    if member is None or cluster is None:
        raise web.HTTPNotFound(text=f"{NO_SUCH_CALL}\n")
    try:
        owners = await cluster.owners(call_key)
        owners = [owner for owner in owners if chosen in (None, owner)]
        if not owners:
            raise web.HTTPNotFound(text=f"{NO_SUCH_CALL}\n")
        if len(owners) > 1:
            return web.json_response(
                {"error": "several instances hold a live stream with that call id: choose "
                          "one with ?instance=", "instances": owners}, status=409)
        reply = await cluster.send(owners[0], action, call_key, leg)
    except REDIS_ERRORS as exc:
        member.trouble("sending an admin action", exc)
        raise web.HTTPServiceUnavailable(
            text="this instance holds no live call with that id, and the cluster's Redis "
                 "is unreachable\n") from None
    except OwnerUnreachable as exc:
        raise web.HTTPGatewayTimeout(text=f"{exc}\n") from None
    except ClusterMessageInvalid:
        raise web.HTTPBadGateway(text=f"instance {owners[0]} gave an answer that is not "
                                      "one\n") from None
    if reply.status >= 400:
        error = reply.body.get("error")
        return web.Response(status=reply.status,
                            text=f"{error if isinstance(error, str) else 'failed'}\n")
    return web.json_response({**reply.body, "instance": owners[0]}, status=reply.status)


def engine_sessions(app: web.Application) -> dict[str, int]:
    """Upstream sessions this instance holds, per engine with a ``max_streams`` limit."""
    slots = app.get(ENGINE_SLOTS)
    if slots is None:
        return {}
    return {engine: count for (engine, scope), count in slots.usage().items()
            if scope == "instance"}


async def cluster_view(request: web.Request) -> web.Response:
    """The instances of the cluster: alive or lost, heartbeat age, calls, load, whether they
    take calls. Without cluster mode, this instance alone, under ``"cluster": false``."""
    _authorise(request)
    app = request.app
    settings = app[SETTINGS]
    member = app.get(CLUSTER)
    here = {"instance": member.id if member is not None else settings.cluster.instance(),
            "alive": True, "heartbeat_age_s": 0.0, "calls": len(app[LIVE_CALLS]),
            "max_calls": settings.server.max_calls, "draining": app[DRAINING],
            "engine_sessions": engine_sessions(app)}
    if member is None:
        return web.json_response({"cluster": False, "instances": [_member_view(here, 0)]})
    cluster = app.get(CLUSTER_CALLS)
    try:
        members = [state for state in await member.members()
                   if state.get("instance") != member.id]
        alive = [state for state in members if state.get("alive") is True]
        if cluster is not None:
            # The calls' hashes follow each start and end; heartbeats lag by up to one beat.
            for state, count in zip(alive, await cluster.counts(
                    [state["instance"] for state in alive]), strict=True):
                state["calls"] = count
        partial_listing = False
    except REDIS_ERRORS as exc:
        member.trouble("listing the cluster's members", exc)
        members, partial_listing = [], True
    now_ms = time.time() * 1000
    instances = [_member_view(here, now_ms)]
    instances += [_member_view(state, now_ms) for state in members]
    return web.json_response({"cluster": True, "instance": member.id, "redis_up": member.up,
                              "partial": partial_listing, "instances": instances})


def _member_view(state: Mapping[str, Any], now_ms: float) -> dict[str, Any]:
    """One member as ``GET /cluster`` shows it, from its heartbeat's state (read from Redis:
    a value of the wrong kind is shown as null)."""
    def number(name: str) -> float | None:
        value = state.get(name)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    alive = state.get("alive") is True
    heartbeat_ms = number("heartbeat_ms")
    calls, max_calls = number("calls"), number("max_calls")
    draining = state.get("draining") if isinstance(state.get("draining"), bool) else None
    view: dict[str, Any] = {
        "instance": state.get("instance"), "alive": alive,
        "heartbeat_age_s": (state["heartbeat_age_s"] if "heartbeat_age_s" in state
                            else round(max(0.0, now_ms - heartbeat_ms) / 1000, 1)
                            if heartbeat_ms is not None else None),
        "calls": calls if alive else None, "max_calls": max_calls if alive else None,
        "load": round(calls / max_calls, 3) if alive and calls is not None and max_calls
        else None,
        "draining": draining if alive else None,
        "accepting_calls": bool(alive and draining is False and calls is not None
                                and max_calls is not None and calls < max_calls)}
    sessions = state.get("engine_sessions")
    if alive and isinstance(sessions, dict):
        view["engine_sessions"] = {
            engine: count for engine, count in list(sessions.items())[:MAX_ENGINES_SHOWN]
            if isinstance(engine, str) and len(engine) <= 40 and isinstance(count, int)
            and not isinstance(count, bool) and 0 <= count <= 1_000_000}
    if isinstance(state.get("version"), str):
        view["version"] = state["version"]
    return view


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


def _viewer_token(request: web.Request) -> str | None:
    """Before anything is looked up: None for the admin token (header or query), else the
    live token given, if it is well formed and unexpired; anything else is 401.

    Nothing reaches Redis without one or the other; the token's signature is checked once
    its feed is known (``_feed_access``).
    """
    admin = _require_admin_api(request)
    if request.headers.get("Authorization", ""):
        _authorise(request)
        return None
    given = request.query.get("token", "")
    if given and hmac.compare_digest(raw_bytes(given), admin.encode()):
        return None
    if given and request.app[TOKENS].well_formed(given, now=time.time()):
        return given
    raise _token_required()


def _token_required() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        headers={"WWW-Authenticate": "Bearer"},
        text="a valid token is required (expired? ask POST /calls/{id}/token for another)\n")


def _feed_access(request: web.Request, token: str | None,
                 feed: LiveFeed | SharedFeed | None) -> None:
    """A live token opens the feed of the stream it was issued for, or 401 (``token`` None:
    the admin token was given).

    A later stream that announces the same call id has a feed of its own, which the earlier
    token does not open; and a token for no feed is 401, not 404 (it says nothing of calls).
    """
    if token is not None and (
            feed is None or not request.app[TOKENS].check(feed.subject, token, now=time.time())):
        raise _token_required()


async def live_events(request: web.Request) -> web.StreamResponse:
    """A live call's events as Server-Sent Events (``bridge.web.feed.stream_events``), for
    the admin token or a token issued for that call's feed."""
    call_id = request.match_info["call_id"]
    app = request.app
    token = _viewer_token(request)
    feed = await _find_feed(request, call_id)
    _feed_access(request, token, feed)
    if feed is None:
        raise web.HTTPNotFound(text="no live call with that id\n")
    live = app[SETTINGS].live
    if isinstance(feed, LiveFeed):
        return await stream_events(request, feed, app[TOKENS], max_viewers=live.max_viewers,
                                   keepalive_s=live.keepalive_s, token_ttl_s=live.token_ttl_s,
                                   latency=app[METRICS].stages.result_to_viewer)
    shared = app[SHARED_FEEDS]
    reader = shared.read(feed, resume_point(request))
    if reader is None:
        raise web.HTTPTooManyRequests(text="too many viewers of calls held elsewhere\n")
    try:
        return await serve_frames(request, reader, app[TOKENS], feed.subject,
                                  keepalive_s=live.keepalive_s, token_ttl_s=live.token_ttl_s)
    finally:
        shared.leave(reader)


NO_ARTIFACTS = "no stored artifacts for that call id"


async def _artifacts_access(request: web.Request) -> tuple[ArtifactStore, CallArtifacts, bool]:
    """The store, the call's manifest, and whether only its transcript files may be read
    (a viewer token); 401 for a token that does not open that call, 404 for no artifacts.

    A viewer token opens the files of the stream its feed belonged to; one for no stored
    call is 401, not 404, as for the feed (it says nothing of which calls exist).
    """
    token = _viewer_token(request)
    store = request.app[AFTER_CALL].store
    if store is None:
        raise web.HTTPNotFound(text="call artifacts are off (artifacts.enabled)\n")
    call_id = request.match_info["call_id"]
    try:
        manifest = await store.manifest(call_id)
    except ArtifactStoreError as exc:
        log.warning("artifact store unreadable", error=str(exc))
        raise web.HTTPServiceUnavailable(text="the artifact store cannot be read now\n"
                                         ) from None
    if token is not None and (manifest is None or not manifest.stream or not request.app[
            TOKENS].check(f"{call_id}\n{manifest.stream}", token, now=time.time())):
        raise _token_required()
    if manifest is None or manifest.call_id != call_id:
        raise web.HTTPNotFound(text=f"{NO_ARTIFACTS}\n")
    return store, manifest, token is not None


async def list_artifacts(request: web.Request) -> web.Response:
    """An ended call's stored artifacts: name, media type, size and download path of each
    (for a viewer token, the transcript files alone)."""
    _, manifest, viewer = await _artifacts_access(request)
    quoted = quote(manifest.call_id, safe="")
    return web.json_response({
        "call_id": manifest.call_id, "stored_at": manifest.stored_at,
        "artifacts": [{"name": f.name, "content_type": f.content_type, "size": f.size,
                       "path": f"/calls/{quoted}/artifacts/{f.name}"}
                      for f in manifest.files if not viewer or f.name in TRANSCRIPT_FILES]},
        headers={"Cache-Control": "no-store"})


async def download_artifact(request: web.Request) -> web.StreamResponse:
    """One stored artifact of an ended call, as an attachment; a viewer token reads the
    transcript files only (403 for the others). Names outside the call's list are 404."""
    name = request.match_info["name"]
    store, manifest, viewer = await _artifacts_access(request)
    stored = manifest.find(name) if is_artifact_name(name) else None
    if stored is None:
        raise web.HTTPNotFound(text="no artifact of that name for this call\n")
    if viewer and name not in TRANSCRIPT_FILES:
        raise web.HTTPForbidden(text="a viewer token opens the transcript files only\n")
    chunks = store.open(manifest.call_id, stored)
    try:
        first = await anext(chunks, b"")
    except ArtifactStoreError as exc:
        await chunks.aclose()
        log.warning("artifact unreadable", error=str(exc))
        raise web.HTTPServiceUnavailable(text="the artifact cannot be read now\n") from None
    response = web.StreamResponse(headers={
        "Content-Type": stored.content_type, "Content-Length": str(stored.size),
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
    try:
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    except ArtifactStoreError as exc:
        log.warning("artifact read failed midway", error=str(exc))  # the client sees it cut
    finally:
        await chunks.aclose()
    return response


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
