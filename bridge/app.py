"""The aiohttp application: media-stream endpoints, health, and the shared resources.

Routes: ``/streams/<dialect>`` for each known provider, ``/streams`` (recognises the
provider from its first messages), ``GET /healthz``, ``/readyz``, ``/metrics``, and the
admin API and live feed of ``bridge.admin``. The webhook dispatcher and its HTTP client
live in ``cleanup_ctx`` and are drained on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import __version__
from bridge.admin import add_admin_routes
from bridge.admission import ConnectionGate, LiveCalls, peer_key
from bridge.appkeys import (
    AUTH_FAILURES,
    CALLS_CHANGED,
    DRAINING,
    ENGINES,
    FEEDS,
    GATE,
    LIVE_CALLS,
    METRICS,
    NONCES,
    REFUSALS,
    SETTINGS,
    SINK,
)
from bridge.calls import Call
from bridge.config import (
    DEFAULT_STT_URL,
    Settings,
    SttTarget,
    redact_url,
    stt_target,
    uses_telnyx_protocol,
)
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.delivery.feed import LiveTee
from bridge.errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    AuthenticationFailed,
    MessageTooBig,
    PeerError,
    PolicyRefusal,
)
from bridge.events import StreamStarted
from bridge.ingress import BINARY_DIALECTS, DIALECTS, SUBPROTOCOLS, make_dialect
from bridge.ingress.auth import (
    NonceCache,
    check_audiohook,
    check_basic,
    check_bearer,
    check_parameter_token,
    check_twilio,
    parse_audiohook_keys,
)
from bridge.metrics import Metrics, counter, gauge
from bridge.security import GuardedResolver, is_loopback_host
from bridge.stt.engines import Engines
from bridge.stt.local.supervisor import EmbeddedRecognizer

log = structlog.get_logger("bridge.app")


def create_app(settings: Settings) -> web.Application:
    """Build the application for ``settings``."""
    app = web.Application()
    app[SETTINGS] = settings
    server = settings.server
    app[CALLS_CHANGED] = asyncio.Event()
    app[LIVE_CALLS] = LiveCalls(max_calls=server.max_calls,
                                duplicates=server.duplicate_call_id,
                                changed=app[CALLS_CHANGED])
    app[GATE] = ConnectionGate(limit=server.max_pending_streams,
                               per_address=server.max_pending_per_address)
    app[AUTH_FAILURES] = {}
    app[REFUSALS] = Counter()
    app[NONCES] = NonceCache()
    app[METRICS] = Metrics()
    app[DRAINING] = False

    app.cleanup_ctx.append(_speech_to_text)
    app.cleanup_ctx.append(_webhooks)
    app.cleanup_ctx.append(_observability)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/streams", partial(media_stream, dialect=None))
    for name in ENDPOINTS:
        app.router.add_get(f"/streams/{name}", partial(media_stream, dialect=name))
    add_admin_routes(app)
    return app


async def _speech_to_text(app: web.Application) -> AsyncIterator[None]:
    """The engines legs use; starts the embedded recognizer when the Telnyx-protocol engine
    is in use with neither a key nor a URL."""
    settings = app[SETTINGS]
    target = stt_target(settings)
    if not uses_telnyx_protocol(settings) or target is not SttTarget.EMBEDDED:
        url = settings.telnyx.url or DEFAULT_STT_URL
        app[ENGINES] = Engines(settings, lambda: url)
        log.info("speech-to-text", engines=list(app[ENGINES].names),
                 telnyx=target.value if uses_telnyx_protocol(settings) else None,
                 url=redact_url(url) if uses_telnyx_protocol(settings) else None)
        yield
        return
    local = settings.local_stt
    async with EmbeddedRecognizer(workers=local.workers, max_sessions=local.max_sessions,
                                  model=local.model) as embedded:
        log.warning("no TELNYX_API_KEY: transcribing with the embedded recognizer "
                    "(offline); its accuracy is for development, not production",
                    model=local.model, url=embedded.url, pid=embedded.pid)
        app[ENGINES] = Engines(settings, lambda: embedded.url)
        yield


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    hooks = settings.webhooks
    connector = aiohttp.TCPConnector(
        limit_per_host=hooks.max_in_flight + 2,
        resolver=GuardedResolver(allow_private=hooks.allow_private_networks))
    async with (aiohttp.ClientSession(connector=connector) as session,
                DurableDispatcher(settings, session) as dispatcher):
        app[SINK] = dispatcher
        log.info("webhook delivery ready", outbox=str(settings.outbox.path),
                 targets=sorted(dispatcher.targets))
        yield


async def _observability(app: web.Application) -> AsyncIterator[None]:
    """Event-loop lag measurement, and the values metrics read when scraped."""
    registry = app[METRICS]

    def scraped() -> Iterator[Any]:
        dispatcher = app.get(SINK)
        if dispatcher is not None:
            stats = dispatcher.stats
            yield counter("callbridge_webhook_deliveries", "Webhook deliveries by outcome",
                          ["outcome"], {("delivered",): stats.delivered,
                                        ("retried",): stats.retried, ("dead",): stats.dead,
                                        ("partial_sent",): stats.partials_sent,
                                        ("partial_dropped",): stats.partials_dropped,
                                        ("refused_outbox_full",): stats.outbox_rejected})
            yield gauge("callbridge_outbox_pending", "Deliveries waiting in the outbox",
                        ["target"], {(label,): count for label, count
                                     in dispatcher.pending_by_label().items()})
        yield counter("callbridge_auth_failures", "Media connections refused for their "
                      "credentials", ["endpoint"],
                      {(k,): v for k, v in app[AUTH_FAILURES].items()})
        yield counter("callbridge_media_refused", "Media connections refused by policy: no "
                      "start in time, too many waiting, at capacity, call id in use",
                      ["reason"], {(k,): v for k, v in app[REFUSALS].items()})
        yield gauge("callbridge_media_waiting", "Media connections that have not started a "
                    "stream yet", [], {(): app[GATE].pending})
        feeds = app.get(FEEDS)
        if feeds is not None:
            yield gauge("callbridge_live_viewers", "Open live feed streams", [],
                        {(): feeds.viewers})
            yield counter("callbridge_live_viewers_cut_off", "Live feed streams closed for "
                          "falling behind", [], {(): feeds.viewers_cut_off})

    registry.watch(scraped)
    lag = asyncio.create_task(registry.measure_loop_lag(), name="loop lag")
    yield
    lag.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take calls: not draining, the outbox writable, the engine reachable."""
    app = request.app
    problems = []
    if app[DRAINING]:
        problems.append("draining")
    dispatcher = app.get(SINK)
    if dispatcher is None:
        problems.append("outbox not open")
    else:
        try:
            async with asyncio.timeout(2):
                await dispatcher.db.call(lambda ob: ob.check_writable())
        except Exception:  # noqa: BLE001 - any failure here means "not ready", said below
            problems.append("outbox not writable")
    engines = app.get(ENGINES)
    if engines is None or not await engines.reachable():
        problems.append("speech-to-text engine not reachable")
    status = 503 if problems else 200
    return web.json_response({"ready": not problems, "problems": problems}, status=status)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok", "version": __version__,
                              "calls": len(request.app[LIVE_CALLS])})


async def media_stream(request: web.Request, *, dialect: str | None) -> web.StreamResponse:
    """One media connection: read frames, feed the parser, hand events to the call.

    Checks, in order: the handshake credential of a named endpoint; a place among the
    connections waiting to start (``ConnectionGate``); on ``/streams``, the credentials of the
    dialect the stream turns out to be, before any of its events is handled; the stream token;
    a call slot and the call id (``LiveCalls``), all before ``server.start_timeout_s`` passes.
    A peer that breaks the protocol or a check gets the fitting close code and one log line;
    its legs are still finished, so every transcript already produced is delivered.
    """
    app = request.app
    settings = app[SETTINGS]
    endpoint = dialect or "streams"
    if dialect is not None:
        refusal = _authenticate(request, dialect, settings)
        if refusal is not None:
            _count_auth_failure(app, dialect)
            log.warning("ingress authentication failed", endpoint=request.path, reason=refusal,
                        remote=request.remote)
            error = web.HTTPUnauthorized if refusal.startswith("missing") else web.HTTPForbidden
            raise error(text="authentication failed\n")
    if app[DRAINING]:
        raise web.HTTPServiceUnavailable(text="callbridge is draining: no new calls\n")
    calls = app[LIVE_CALLS]
    if len(calls) >= settings.server.max_calls:
        _count_refusal(app, "at_capacity")
        raise web.HTTPServiceUnavailable(text="callbridge is at capacity\n")
    address = peer_key(request.remote)
    gate = app[GATE]
    full = gate.admit(address)
    if full is not None:
        _count_refusal(app, full)
        raise web.HTTPServiceUnavailable(text="too many connections are waiting to start\n")
    waiting = True

    def started() -> None:
        """The stream started (or the connection ended first): its place is free."""
        nonlocal waiting
        if waiting:
            waiting = False
            gate.leave(address)

    try:
        return await _serve_stream(request, dialect, endpoint, started)
    finally:
        started()


async def _serve_stream(request: web.Request, dialect: str | None, endpoint: str,
                        started: Callable[[], None]) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    # mod_audio_fork and jambonz offer a subprotocol that must be echoed; AudioHook clients
    # abort if one is selected, so only these two are ever chosen.
    ws = web.WebSocketResponse(max_msg_size=settings.server.max_message_bytes,
                               autoping=True, heartbeat=30.0, protocols=SUBPROTOCOLS)
    await ws.prepare(request)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(endpoint=request.path)
    parser = make_dialect(dialect, request.query, connection_id=uuid.uuid4().hex)
    verified = dialect is not None  # /streams: checked once the dialect is known
    reason = "disconnected"
    dispatcher = app[SINK]
    feeds = app.get(FEEDS)
    sink = dispatcher if feeds is None else LiveTee(dispatcher, feeds)
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=settings, sink=sink, engines=app[ENGINES], tasks=tasks,
                    route=lambda started: dispatcher.route(request.path,
                                                           started.custom_parameters),
                    path=request.path, metrics=app[METRICS], registry=app[LIVE_CALLS])
        call.media_socket = ws
        try:
            async with asyncio.timeout(settings.server.start_timeout_s) as deadline:
                async for message in ws:
                    if message.type is WSMsgType.TEXT:
                        parser.receive_text(message.data)
                    elif message.type is WSMsgType.BINARY:
                        parser.receive_bytes(message.data)
                    elif message.type is WSMsgType.ERROR:
                        _raise_socket_error(ws.exception())
                    if not verified and parser.name != "unknown":
                        _check_detected(request, parser.name, settings)
                        verified = True
                    for event in parser.events():
                        if isinstance(event, StreamStarted):
                            event = _check_stream_token(event, dialect, settings)
                            call.handle(event)  # claims the call id and a slot, or raises
                            deadline.reschedule(None)
                            started()
                        else:
                            call.handle(event)
                    for reply in parser.to_send():
                        await ws.send_str(reply)
            reason = call.end_reason or ("stopped" if parser.stopped else "disconnected")
        except TimeoutError:
            reason = "refused"
            _count_refusal(app, "start_timeout")
            log.warning("media connection refused: no stream start in time", endpoint=endpoint,
                        start_timeout_s=settings.server.start_timeout_s, remote=request.remote)
            await ws.close(code=CLOSE_POLICY_VIOLATION, message=b"no stream start in time")
        except PeerError as exc:
            reason = "protocol_error"
            if isinstance(exc, AuthenticationFailed):
                reason = "refused"
                _count_auth_failure(app, endpoint)
                log.warning("ingress authentication failed", endpoint=request.path,
                            dialect=parser.name, reason=str(exc), remote=request.remote,
                            close_code=exc.close_code)
            elif isinstance(exc, PolicyRefusal):
                reason = "refused"
                _count_refusal(app, "policy")
                log.warning("media connection refused", dialect=parser.name, reason=str(exc),
                            close_code=exc.close_code, remote=request.remote)
            else:
                log.warning("closing media connection: peer broke the protocol",
                            dialect=parser.name, error=str(exc), close_code=exc.close_code)
            # A close frame's reason has at most 123 bytes: cut on a character boundary.
            reason_bytes = str(exc).encode()[:123].decode("utf-8", "ignore").encode()
            await ws.close(code=exc.close_code, message=reason_bytes)
        except Exception:
            reason = "internal_error"
            log.exception("closing media connection: internal error")
            await ws.close(code=CLOSE_INTERNAL_ERROR, message=b"internal error")
            raise
        finally:
            try:
                await call.end(reason)
            finally:
                call.release()
                if isinstance(sink, LiveTee):
                    sink.close()
    return ws


ENDPOINTS: Final = (*DIALECTS, *BINARY_DIALECTS, "audiohook")


def ingress_exposure(settings: Settings) -> dict[str, str]:
    """Dialects whose streams need no credential on a non-loopback address, each with the
    setting that would protect it; empty when the bridge listens on loopback only."""
    if is_loopback_host(settings.server.host):
        return {}
    auth = settings.ingress_auth
    open_dialects = {}
    for name in ENDPOINTS:
        if _has_handshake_check(name, settings) or (
                auth.stream_token and name in auth.stream_token_endpoints):
            continue
        open_dialects[name] = (
            "TWILIO_AUTH_TOKEN" if name == "twilio"
            else "CALLBRIDGE_INGRESS_AUTH_EXOTEL_BASIC" if name == "exotel"
            else "CALLBRIDGE_INGRESS_AUTH_AUDIOHOOK_KEYS" if name == "audiohook"
            else "CALLBRIDGE_INGRESS_AUTH_BEARER_TOKEN" if name in auth.bearer_endpoints
            else "CALLBRIDGE_INGRESS_AUTH_STREAM_TOKEN" if name in auth.stream_token_endpoints
            else "ingress_auth.bearer_endpoints or ingress_auth.stream_token_endpoints")
    return open_dialects


def _count_auth_failure(app: web.Application, endpoint: str) -> None:
    app[AUTH_FAILURES][endpoint] = app[AUTH_FAILURES].get(endpoint, 0) + 1


def _count_refusal(app: web.Application, reason: str) -> None:
    app[REFUSALS][reason] += 1


# A stream recognised on /streams must pass the handshake check of what it turned out to be.
# SignalWire copies Twilio's messages: a Twilio-shaped stream may be either, and must pass
# the check of one of them (when either has one configured).
DETECTED_AS: Final = {"twilio": ("twilio", "signalwire")}


def _check_detected(request: web.Request, detected: str, settings: Settings) -> None:
    """Apply the handshake checks configured for the dialect a ``/streams`` stream turned out
    to be (its headers were kept from the handshake); raises ``AuthenticationFailed``."""
    problems = [_authenticate(request, name, settings)
                for name in DETECTED_AS.get(detected, (detected,))
                if _has_handshake_check(name, settings)]
    if problems and all(problem is not None for problem in problems):
        raise AuthenticationFailed(f"recognised as {detected}: {problems[0]}")


def _has_handshake_check(name: str, settings: Settings) -> bool:
    auth = settings.ingress_auth
    return bool((name == "twilio" and auth.twilio_auth_token)
                or (name == "exotel" and auth.exotel_basic)
                or (name == "audiohook" and auth.audiohook_keys)
                or (name in auth.bearer_endpoints and auth.bearer_token))


def _authenticate(request: web.Request, dialect: str, settings: Settings) -> str | None:
    """The handshake check configured for this dialect: None when it passes (or none is)."""
    auth = settings.ingress_auth
    authorization = request.headers.get("Authorization")
    if dialect == "twilio" and auth.twilio_auth_token:
        base = auth.twilio_public_url.rstrip("/") or f"wss://{request.host}"
        return check_twilio(auth.twilio_auth_token.reveal(), base + request.path_qs,
                            request.headers.get("X-Twilio-Signature"))
    if dialect == "exotel" and auth.exotel_basic:
        return check_basic(auth.exotel_basic.reveal(), authorization)
    if dialect == "audiohook" and auth.audiohook_keys:
        return check_audiohook(parse_audiohook_keys(auth.audiohook_keys.reveal()),
                               target=request.path_qs, authority=request.host,
                               headers=request.headers, now=int(time.time()),
                               nonces=request.app[NONCES])
    if dialect in auth.bearer_endpoints and auth.bearer_token:
        return check_bearer(auth.bearer_token.reveal(), authorization)
    return None


def _check_stream_token(event: StreamStarted, dialect: str | None,
                        settings: Settings) -> StreamStarted:
    """For platforms that sign nothing: the shared token in a custom parameter, which is
    then removed so that it reaches no webhook."""
    auth = settings.ingress_auth
    name = dialect or event.provider
    if not auth.stream_token or name not in auth.stream_token_endpoints:
        return event
    parameters = dict(event.custom_parameters)
    problem = check_parameter_token(auth.stream_token.reveal(),
                                    parameters.pop(auth.stream_token_parameter, None))
    if problem is not None:
        raise AuthenticationFailed(problem)
    return replace(event, custom_parameters=parameters)


def _raise_socket_error(error: BaseException | None) -> None:
    code = getattr(error, "code", None)
    if code == CLOSE_MESSAGE_TOO_BIG or code == WSCloseCode.MESSAGE_TOO_BIG:
        raise MessageTooBig("message larger than server.max_message_bytes")
    raise PeerError(f"WebSocket error: {type(error).__name__}")
