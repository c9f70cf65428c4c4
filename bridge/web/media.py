"""The media-stream endpoint: one WebSocket per call, its credentials checked first.

``media_stream`` serves ``/streams/<dialect>`` and ``/streams`` (the dialect recognised from
the first messages). It is a thin driver: it feeds the sans-I/O parser, applies the handshake
check of the dialect the stream is (or turns out to be) and the stream token, and hands the
parser's events to a ``Call``. ``ingress_exposure`` tells ``serve`` which endpoints are open
to anyone on a non-loopback address.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, cast

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from bridge.admission import peer_key
from bridge.calls import Call
from bridge.cluster.events_stream import EventStreamTee
from bridge.config import Settings
from bridge.delivery.webhooks import EventSink
from bridge.errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    AuthenticationFailed,
    MessageTooBig,
    PeerError,
    PolicyRefusal,
    ProtocolViolation,
)
from bridge.events import StreamStarted
from bridge.ingress import (
    BINARY_DIALECTS,
    DIALECTS,
    SUBPROTOCOLS,
    DetectingDialect,
    MediaDialect,
    make_dialect,
)
from bridge.ingress.auth import (
    check_audiohook,
    check_basic,
    check_bearer,
    check_parameter_token,
    check_twilio,
)
from bridge.security import is_loopback_host, parse_audiohook_keys
from bridge.web.feed import LiveTee
from bridge.web.keys import (
    AFTER_CALL,
    AUTH_FAILURES,
    DRAINING,
    ENGINE_SLOTS,
    ENGINES,
    EVENT_STREAM,
    FEEDS,
    GATE,
    LIVE_CALLS,
    METRICS,
    NONCES,
    REFUSALS,
    SETTINGS,
    SINK,
)
from bridge.web.media_socket import (
    WAKE,
    MediaSocket,
    MessageHandler,
    direct_reading_available,
)

log = structlog.get_logger("bridge.media")
# Read once: an enum member looked up on its class costs about as much as a function call,
# and every media message is tested against it.
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY


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
    idle_s = settings.server.idle_check_s
    # mod_audio_fork and jambonz offer a subprotocol that must be echoed; AudioHook clients
    # abort if one is selected, so only these two are ever chosen.
    ws: web.WebSocketResponse
    if direct_reading_available():
        ws = MediaSocket(max_msg_size=settings.server.max_message_bytes, autoping=True,
                         protocols=SUBPROTOCOLS)
    else:
        # aiohttp's heartbeat pings after twice the interval of silence and waits half that.
        ws = web.WebSocketResponse(max_msg_size=settings.server.max_message_bytes,
                                   autoping=True, heartbeat=2 * idle_s, protocols=SUBPROTOCOLS)
    await ws.prepare(request)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(endpoint=request.path)
    parser = make_dialect(dialect, request.query, connection_id=uuid.uuid4().hex)
    reason = "disconnected"
    dispatcher = app[SINK]
    feeds = app.get(FEEDS)
    stream = app.get(EVENT_STREAM)
    delivery: EventSink = dispatcher if stream is None else EventStreamTee(dispatcher, stream)
    sink = delivery if feeds is None else LiveTee(delivery, feeds)
    # Messages are handled in this context, inside the transport's callbacks as well as in
    # this task; what they bind (call_id, stream_id) is copied back when reading ends.
    context = contextvars.copy_context()
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=settings, sink=sink, engines=app[ENGINES], tasks=tasks,
                    route=lambda started: dispatcher.route(request.path,
                                                           started.custom_parameters),
                    path=request.path, metrics=app[METRICS], registry=app[LIVE_CALLS],
                    slots=app[ENGINE_SLOTS], after=app[AFTER_CALL])
        call.media_socket = ws
        idle_watch: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(settings.server.start_timeout_s) as deadline:
                reader = _StreamReader(request, dialect, parser, call, deadline, started)
                # (mypy cannot type a partial of Context.run: its ParamSpec is bound by the callee.)
                handle: MessageHandler = functools.partial(cast(Any, context.run), reader.receive)
                if isinstance(ws, MediaSocket):
                    ws.hand_to(handle)
                    idle_watch = tasks.create_task(ws.watch_idle(idle_s), name="idle check")
                try:
                    async for message in ws:
                        kind = message.type
                        if kind is _TEXT or kind is _BINARY:
                            handle(kind, message.data)  # it queued behind a control message
                        elif kind is WSMsgType.ERROR:
                            failure = ws.failure if isinstance(ws, MediaSocket) else None
                            if failure is not None and message.data is failure:
                                raise failure
                            _raise_socket_error(ws.exception())
                        elif kind is WAKE and isinstance(ws, MediaSocket):
                            ws.woken()
                        try:
                            while reader.replies:
                                await ws.send_str(reader.replies.popleft())
                        except ConnectionError:  # aiohttp: "Connection lost", or a reset
                            break  # the connection went while the peer was answered
                    # The idle check closed the connection while this task was busy (writing
                    # replies, or with messages queued): aiohttp then ends the iteration
                    # without the ERROR message that says why.
                    if ws.exception() is not None:
                        _raise_socket_error(ws.exception())
                finally:
                    if isinstance(ws, MediaSocket):
                        ws.stop_handing()
                    for variable, value in context.items():
                        variable.set(value)
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
            if idle_watch is not None:
                idle_watch.cancel()
            started()  # reading is over: no longer waiting to start, whatever ends the call
            try:
                await call.end(reason)
            finally:
                call.release()
                if isinstance(sink, LiveTee):
                    sink.close()
    return ws


class _StreamReader:
    """One connection's messages: fed to its parser, checked, and handed to its call.

    ``receive`` is synchronous and may run inside the transport's callback; it raises
    ``PeerError`` for what the peer got wrong, and keeps the parser's replies in
    ``replies`` for the reading task to write, in order.
    """

    def __init__(self, request: web.Request, dialect: str | None, parser: MediaDialect,
                 call: Call, deadline: asyncio.Timeout, started: Callable[[], None]) -> None:
        self._request = request
        self._settings: Settings = request.app[SETTINGS]
        self._dialect = dialect
        self._parser = parser
        self._call = call
        self._deadline = deadline
        self._started = started
        self._verified = dialect is not None  # /streams: checked once the dialect is known
        # True once the stream started and passed its checks: the dialects' state table
        # refuses a second start, so from then on every event goes straight to the call.
        self._streaming = False
        self.replies: deque[str] = deque()

    def receive(self, kind: WSMsgType, data: str | bytes) -> bool:
        """Handle one data message; True when it left replies to write."""
        parser = self._parser
        if kind is _TEXT:
            parser.receive_text(data)  # type: ignore[arg-type]  # TEXT carries str
        else:
            parser.receive_bytes(data)  # type: ignore[arg-type]  # BINARY carries bytes
        if self._streaming:
            handle = self._call.handle
            for event in parser.events():
                if type(event) is StreamStarted:  # pragma: no cover - the state table refuses it
                    raise ProtocolViolation("a second stream start")
                handle(event)
        else:
            self._before_streaming(parser)
        if not parser.may_reply:
            return False
        replies = parser.to_send()
        if not replies:
            return False
        self.replies.extend(replies)
        return True

    def _before_streaming(self, parser: MediaDialect) -> None:
        """Until the stream started: the checks of the dialect recognised and of the start."""
        if not self._verified and parser.name != "unknown":
            settings = self._settings
            if parser.name not in settings.server.dialects:
                raise PolicyRefusal(f"the {parser.name} dialect is not served "
                                    "(server.dialects)")
            _check_detected(self._request, parser.name, settings)
            self._verified = True
        call = self._call
        for event in parser.events():
            if isinstance(event, StreamStarted):
                if self._deadline.expired():
                    # The start timeout fired and is ending this connection: too late.
                    raise TimeoutError
                event = _check_stream_token(event, self._dialect, self._settings)
                call.handle(event)  # claims the call id and a slot, or raises
                self._deadline.reschedule(None)
                self._started()
                self._streaming = True
                if isinstance(parser, DetectingDialect) and parser.inner is not None:
                    # /streams: the recognised dialect takes every later message itself
                    # (the detector only passes them on), one call fewer per message.
                    self._parser = parser.inner
            else:
                call.handle(event)


ENDPOINTS: Final = (*DIALECTS, *BINARY_DIALECTS, "audiohook")


def ingress_exposure(settings: Settings) -> dict[str, str]:
    """Dialects whose streams need no credential on a non-loopback address, each with the
    setting that would protect it; empty when the bridge listens on loopback only."""
    if is_loopback_host(settings.server.host):
        return {}
    auth = settings.ingress_auth
    open_dialects = {}
    for name in settings.server.dialects:
        if _handshake_check(name, settings) is not None or (
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
    checks = [check for name in DETECTED_AS.get(detected, (detected,))
              if (check := _handshake_check(name, settings)) is not None]
    problems = [check(request) for check in checks]
    if problems and all(problem is not None for problem in problems):
        raise AuthenticationFailed(f"recognised as {detected}: {problems[0]}")


HandshakeCheck = Callable[[web.Request], str | None]


def _handshake_check(dialect: str, settings: Settings) -> HandshakeCheck | None:
    """The handshake check configured for a dialect (it returns None when the request
    passes, else why not), or None when none is configured: the one place that says which
    credential guards which dialect at the handshake."""
    auth = settings.ingress_auth
    if dialect == "twilio" and auth.twilio_auth_token:
        token, public = auth.twilio_auth_token.reveal(), auth.twilio_public_url.rstrip("/")
        return lambda request: check_twilio(
            token, (public or f"wss://{request.host}") + request.path_qs,
            request.headers.get("X-Twilio-Signature"))
    if dialect == "exotel" and auth.exotel_basic:
        basic = auth.exotel_basic.reveal()
        return lambda request: check_basic(basic, request.headers.get("Authorization"))
    if dialect == "audiohook" and auth.audiohook_keys:
        keys = parse_audiohook_keys(auth.audiohook_keys.reveal())
        return lambda request: check_audiohook(
            keys, target=request.path_qs, authority=request.host, headers=request.headers,
            now=int(time.time()), nonces=request.app[NONCES])
    if dialect in auth.bearer_endpoints and auth.bearer_token:
        bearer = auth.bearer_token.reveal()
        return lambda request: check_bearer(bearer, request.headers.get("Authorization"))
    return None


def _authenticate(request: web.Request, dialect: str, settings: Settings) -> str | None:
    """The handshake check configured for this dialect: None when it passes (or none is)."""
    check = _handshake_check(dialect, settings)
    return None if check is None else check(request)


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
