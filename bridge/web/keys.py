"""Typed keys of the application's shared state, read by its handlers and by ``serve``."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web

from bridge.admission import ConnectionGate, LiveCalls
from bridge.artifacts.service import AfterCallService
from bridge.calls import Call
from bridge.cluster.calls import ClusterCalls
from bridge.cluster.events_stream import EventStream
from bridge.cluster.feeds import SharedFeeds
from bridge.cluster.member import ClusterMember
from bridge.cluster.outbox import OutboxMirror
from bridge.config import Settings
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.ingress.auth import NonceCache
from bridge.metrics import Metrics
from bridge.stt.engines import Engines
from bridge.stt.slots import EngineLimits
from bridge.web.feed import LiveFeeds, LiveTokens

SETTINGS = web.AppKey("settings", Settings)
SINK = web.AppKey("sink", DurableDispatcher)
ENGINES = web.AppKey("engines", Engines)
LIVE_CALLS = web.AppKey("live_calls", LiveCalls[Call])  # started calls, by call key
GATE = web.AppKey("gate", ConnectionGate)  # connections that have not started a stream yet
AUTH_FAILURES = web.AppKey("auth_failures", dict[str, int])  # per endpoint, for metrics
REFUSALS = web.AppKey("refusals", Counter[str])  # media connections refused, by reason
NONCES = web.AppKey("nonces", NonceCache)  # AudioHook signature nonces seen
METRICS = web.AppKey("metrics", Metrics)
CALLS_CHANGED = web.AppKey("calls_changed", asyncio.Event)  # set when a call ends
DRAINING = web.AppKey("draining", bool)
FEEDS = web.AppKey("feeds", LiveFeeds)  # present when the admin API is on
TOKENS = web.AppKey("tokens", LiveTokens)  # likewise
CLUSTER = web.AppKey("cluster", ClusterMember)  # present in cluster mode only
CLUSTER_CALLS = web.AppKey("cluster_calls", ClusterCalls)  # likewise: the cluster's calls
SHARED_FEEDS = web.AppKey("shared_feeds", SharedFeeds)  # cluster mode with an admin token
EVENT_STREAM = web.AppKey("event_stream", EventStream)  # cluster mode with cluster.events_stream
# The engines' max_streams: counted here, or across the cluster in cluster mode.
ENGINE_SLOTS = web.AppKey[EngineLimits]("engine_slots")
AFTER_CALL = web.AppKey("after_call", AfterCallService)  # the after-call work of every call
MIRROR = web.AppKey("mirror", OutboxMirror)  # the outbox's copy in Redis; likewise
