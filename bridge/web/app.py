"""The aiohttp application: its routes, health, and the shared resources.

Routes: ``/streams/<dialect>`` for each known provider and ``/streams`` (recognises the
provider from its first messages), served by ``bridge.web.media``; ``GET /healthz``,
``/readyz``, ``/metrics``; the admin API and live feed of ``bridge.web.admin``. The webhook
dispatcher and its HTTP client live in ``cleanup_ctx`` and are drained on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import __version__
from bridge.admission import ConnectionGate, LiveCalls
from bridge.analytics.alerts import compile_rules
from bridge.analytics.sentiment import shared_scorer
from bridge.analytics.sentiment_summary import sentiment_summary
from bridge.analytics.talk import talk_observer
from bridge.artifacts.record import TranscriptRecord
from bridge.artifacts.recording import (
    recording_factory,
    recording_possible,
    remove_stale_spools,
)
from bridge.artifacts.service import AfterCallService, ObserverFactory
from bridge.artifacts.store import open_artifact_store, retention_sweeps
from bridge.calls import Call, CallObserver
from bridge.cluster.connection import stop
from bridge.cluster.engine_slots import ClusterEngineSlots
from bridge.cluster.events_stream import EventStream
from bridge.cluster.feeds import FeedWriter, SharedFeeds
from bridge.cluster.member import ClusterMember
from bridge.cluster.outbox import OutboxMirror, Takeovers
from bridge.config import (
    DEFAULT_STT_URL,
    Settings,
    SttTarget,
    redact_url,
    stt_target,
    uses_telnyx_protocol,
)
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.events import Track
from bridge.ingress.auth import NonceCache
from bridge.metrics import Metrics, counter, gauge
from bridge.security import GuardedResolver
from bridge.stt.engines import Engines
from bridge.stt.local.supervisor import EmbeddedRecognizer
from bridge.stt.slots import LocalEngineSlots, stream_limits
from bridge.tracing import CLOSE_WITHIN_S, ENDPOINT_VARIABLE, tracing_from_environment
from bridge.web.admin import add_admin_routes, engine_sessions
from bridge.web.keys import (
    AFTER_CALL,
    AUTH_FAILURES,
    CALLS_CHANGED,
    CLUSTER,
    DRAINING,
    ENGINE_SLOTS,
    ENGINES,
    EVENT_STREAM,
    FEEDS,
    GATE,
    LIVE_CALLS,
    METRICS,
    MIRROR,
    NONCES,
    REFUSALS,
    SETTINGS,
    SHARED_FEEDS,
    SINK,
)
from bridge.web.media import ENDPOINTS, media_stream

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
    # Before anything starts: OTEL_EXPORTER_OTLP_ENDPOINT set without the extra stops here.
    app[METRICS].stages.tracing = tracing_from_environment()
    app[DRAINING] = False

    app.cleanup_ctx.append(_tracing)  # first in, last out: after the webhooks' last spans
    app.cleanup_ctx.append(_cluster)
    app.cleanup_ctx.append(_cluster_streams)
    app.cleanup_ctx.append(_engine_slots)
    app.cleanup_ctx.append(_after_call)
    app.cleanup_ctx.append(_speech_to_text)
    app.cleanup_ctx.append(_webhooks)
    app.cleanup_ctx.append(_observability)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    # Only the dialects served have an endpoint; /streams refuses the others it recognises.
    app.router.add_get("/streams", partial(media_stream, dialect=None))
    for name in ENDPOINTS:
        if name in settings.server.dialects:
            app.router.add_get(f"/streams/{name}", partial(media_stream, dialect=name))
    add_admin_routes(app)
    return app


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    """Traces, when on: at shutdown the spans still queued are exported, off the event
    loop, waited for at most ``CLOSE_WITHIN_S``."""
    tracing = app[METRICS].stages.tracing
    if tracing is not None:
        log.info("tracing on: spans exported over OTLP", variable=ENDPOINT_VARIABLE)
    yield
    if tracing is not None:
        await tracing.close(CLOSE_WITHIN_S)


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """In cluster mode, this instance's membership (``bridge.cluster``); nothing otherwise."""
    settings = app[SETTINGS]
    if not settings.cluster.enabled:
        yield
        return

    def state() -> dict[str, Any]:
        return {"calls": len(app[LIVE_CALLS]), "max_calls": settings.server.max_calls,
                "draining": app[DRAINING], "version": __version__,
                "engine_sessions": engine_sessions(app)}

    async with ClusterMember(settings.cluster, state=state) as member:
        app[CLUSTER] = member
        yield


async def _cluster_streams(app: web.Application) -> AsyncIterator[None]:
    """In cluster mode: live feeds mirrored to Redis and read from it for calls other
    instances hold (with an admin token), and the consumers' event stream (when set)."""
    member = app.get(CLUSTER)
    if member is None:
        yield
        return
    settings = app[SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        feeds = app.get(FEEDS)
        if feeds is not None:
            feeds.mirror = await stack.enter_async_context(FeedWriter(
                member, max_events=settings.cluster.feed_max_events,
                retain_s=settings.live.retain_s))
            app[SHARED_FEEDS] = await stack.enter_async_context(SharedFeeds(
                member, max_readers=settings.cluster.feed_readers,
                max_per_call=settings.live.max_viewers))
        if settings.cluster.events_stream:
            app[EVENT_STREAM] = await stack.enter_async_context(EventStream(
                member, stream=settings.cluster.events_stream,
                max_len=settings.cluster.events_stream_max_len,
                max_age_s=settings.cluster.events_stream_max_age_s))
        try:
            yield
        finally:
            if feeds is not None:
                feeds.mirror = None  # the writer is stopping: feeds opened from now stay local


async def _engine_slots(app: web.Application) -> AsyncIterator[None]:
    """The engines' ``max_streams``: across the cluster in cluster mode, else counted here."""
    limits = stream_limits(app[SETTINGS])
    member = app.get(CLUSTER)
    if member is None:
        app[ENGINE_SLOTS] = LocalEngineSlots(limits)
        yield
        return
    async with ClusterEngineSlots(member, limits) as slots:
        app[ENGINE_SLOTS] = slots
        yield


async def _after_call(app: web.Application) -> AsyncIterator[None]:
    """The after-call work: the recording's observer (when recordings are possible), and
    with ``artifacts.enabled`` the transcript, the store and the retention sweeps."""
    settings = app[SETTINGS]
    artifacts = settings.artifacts
    factories: list[ObserverFactory] = [talk_observer]
    spool_dir = artifacts.spool_path(settings.outbox.path)
    if recording_possible(settings):
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Even with recording off now: a crash's spool files are raw audio, numbers unsilenced.
    if spool_dir.is_dir():
        removed = remove_stale_spools(spool_dir)
        if removed:
            log.warning("removed spool files a crash left behind", files=removed)
    if recording_possible(settings):
        factories.append(recording_factory(settings, spool_dir))
    if settings.analytics.sentiment:
        shared_scorer()  # the lexicon loads now, not in the first call's media reader
        factories.append(sentiment_summary)
        log.info("sentiment on finals", model="vader")
    if settings.alerts:  # compiled now (each call shares them), and named once
        compile_rules(settings.alerts)
        log.info("phrase alerts", rules=[rule.name for rule in settings.alerts])
    if not artifacts.enabled:
        app[AFTER_CALL] = AfterCallService(factories, artifacts=artifacts)
        yield
        return
    async with open_artifact_store(settings) as store:
        feeds = app.get(FEEDS)

        def feed_stream(call: Call) -> str:
            feed = feeds.get(call.key) if feeds is not None and call.key else None
            return feed.stream_uid if feed is not None else ""

        def transcript(call: Call) -> CallObserver:
            return TranscriptRecord({track: getattr(settings.speakers, track.value)
                                     for track in Track})

        service = AfterCallService([transcript, *factories], store=store,
                                   feed_stream=feed_stream, timeout_s=artifacts.store_timeout_s,
                                   artifacts=artifacts)
        app[AFTER_CALL] = service

        def scraped() -> Iterator[Any]:
            yield counter("callbridge_call_artifacts", "Ended calls whose artifacts were "
                          "stored, or not (the store failed or did not answer in time)",
                          ["outcome"], {(outcome,): service.outcomes[outcome]
                                        for outcome in ("stored", "failed")})

        app[METRICS].watch(scraped)
        log.info("call artifacts on", store=store.description,
                 retention_days=artifacts.retention_days or None)
        sweeps = None
        if artifacts.retention_days:
            sweeps = asyncio.create_task(retention_sweeps(
                store, retention_days=artifacts.retention_days,
                every_s=artifacts.retention_check_s), name="artifacts retention")
        try:
            yield
        finally:
            await stop(sweeps)


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
    member = app.get(CLUSTER)
    # Cluster mode: the outbox is mirrored to Redis, and lost members' events taken over.
    mirror = OutboxMirror(member) if member is not None else None
    stream = app.get(EVENT_STREAM)
    async with (aiohttp.ClientSession(connector=connector) as session,
                DurableDispatcher(settings, session, replica=mirror,
                                  made=stream.offer if stream is not None else None,
                                  stages=app[METRICS].stages) as dispatcher,
                contextlib.AsyncExitStack() as cluster):
        app[SINK] = dispatcher
        if member is not None and mirror is not None:
            app[MIRROR] = mirror
            await cluster.enter_async_context(Takeovers(member, mirror, dispatcher))
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
        slots = app.get(ENGINE_SLOTS)
        if slots is not None:
            yield gauge("callbridge_engine_sessions", "Speech-to-text sessions holding a slot "
                        "of their engine's max_streams, in this instance and (as Redis last "
                        "said) in the cluster", ["engine", "scope"],
                        {key: count for key, count in slots.usage().items()})
        member = app.get(CLUSTER)
        if member is not None:
            yield gauge("callbridge_cluster_redis_up", "Whether the cluster's Redis answered "
                        "the last call made to it (1) or not (0)", [], {(): int(member.up)})
        mirror = app.get(MIRROR)
        if mirror is not None:
            yield gauge("callbridge_cluster_outbox_backlog", "Outbox rows (events, calls, "
                        "removals) not yet copied to Redis", [], {(): mirror.backlog})
            yield counter("callbridge_cluster_outbox_mirrored", "Outbox events copied to "
                          "Redis", [], {(): mirror.mirrored})
            yield counter("callbridge_cluster_wait_shortfalls", "Outbox copies that fewer "
                          "replicas than cluster.wait_replicas acknowledged in time", [],
                          {(): mirror.wait_shortfalls})
            yield counter("callbridge_cluster_takeovers", "Lost instances whose undelivered "
                          "events and calls this instance took over", [],
                          {(): mirror.takeovers})
        dropped: dict[tuple[str, ...], float] = {}
        stream = app.get(EVENT_STREAM)
        if stream is not None:
            dropped[("events",)] = stream.dropped
        feeds = app.get(FEEDS)
        if feeds is not None and isinstance(feeds.mirror, FeedWriter):
            dropped[("feed",)] = feeds.mirror.dropped
        if feeds is not None and isinstance(feeds.mirror, FeedWriter):
            yield counter("callbridge_live_feeds_unshared", "Live feeds not shared through "
                          "Redis: another instance's live stream held their call id", [],
                          {(): feeds.mirror.unshared})
        if dropped:
            yield counter("callbridge_cluster_stream_dropped", "Entries for a Redis stream "
                          "(live feeds, the event stream) dropped: the queue was full while "
                          "Redis was away", ["stream"], dropped)
        shared = app.get(SHARED_FEEDS)
        if shared is not None:
            yield gauge("callbridge_live_shared_readers", "Open live feed streams of calls "
                        "other instances hold", [], {(): len(shared.readers)})
        if feeds is not None:
            yield gauge("callbridge_live_viewers", "Open live feed streams", [],
                        {(): feeds.viewers})
            yield counter("callbridge_live_viewers_cut_off", "Live feed streams closed for "
                          "falling behind", [], {(): feeds.viewers_cut_off})

    registry.watch(scraped)
    lag = asyncio.create_task(registry.measure_loop_lag(), name="loop lag")
    yield
    await stop(lag)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take calls: not draining, the outbox writable, the engine reachable.

    Redis away is not a problem here (calls go on, events wait locally) but it is listed
    under ``degraded``.
    """
    app = request.app
    problems = []
    degraded = []
    member = app.get(CLUSTER)
    if member is not None and not member.up:
        degraded.append("redis unreachable: cluster state is kept locally until it is back")
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
    body: dict[str, Any] = {"ready": not problems, "problems": problems}
    if member is not None:
        body.update(instance=member.id, degraded=degraded)
    return web.json_response(body, status=status)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok", "version": __version__,
                              "calls": len(request.app[LIVE_CALLS])})
