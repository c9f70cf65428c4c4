"""Typed keys of the application's shared state, read by its handlers and by ``serve``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from bridge.calls import Call
from bridge.config import Settings
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.delivery.feed import LiveFeeds, LiveTokens
from bridge.metrics import Metrics
from bridge.stt.engines import Engines

SETTINGS = web.AppKey("settings", Settings)
SINK = web.AppKey("sink", DurableDispatcher)
ENGINES = web.AppKey("engines", Engines)
LIVE_CALLS = web.AppKey("live_calls", set[Call])
AUTH_FAILURES = web.AppKey("auth_failures", dict[str, int])  # per endpoint, for metrics
METRICS = web.AppKey("metrics", Metrics)
CALLS_CHANGED = web.AppKey("calls_changed", asyncio.Event)  # set when a call ends
DRAINING = web.AppKey("draining", bool)
FEEDS = web.AppKey("feeds", LiveFeeds)  # present when the admin API is on
TOKENS = web.AppKey("tokens", LiveTokens)  # likewise
