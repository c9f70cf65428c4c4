"""Typed settings: the one source of truth for configuration.

Values come from, in rising precedence: the defaults below, the TOML file named by
``CALLBRIDGE_CONFIG`` (or ``--config``), and environment variables. Every setting has one
variable, ``CALLBRIDGE_<SECTION>_<KEY>`` (``CALLBRIDGE_SERVER_PORT``), generated from the
dataclasses below; the providers' own key variables (``TELNYX_API_KEY``, ...) work too.
Names from before that scheme still work and print one deprecation line each (see
``DEPRECATED_VARIABLES`` and ``load_settings``). Secrets come from the environment only,
never from the file, and are held in ``Secret`` so that printing settings cannot reveal them.

Each section checks its own values (``validate``); ``_validate_across`` holds the few checks
that read two sections. A wrong value raises ``ConfigError`` naming the setting as the user
wrote it (``webhooks.urls`` in the file, ``CALLBRIDGE_WEBHOOKS_URLS`` or the older
``CALLBRIDGE_WEBHOOK_URLS`` in the environment).

The engine registry (``ENGINES``) is the one list of speech-to-text engines: their settings
section, key variable, session limit and which one the embedded recognizer stands in for.
``bridge.stt.engines`` maps the same names to session classes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import importlib.util
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from bridge.errors import ConfigError
from bridge.events import EventType as EventKinds
from bridge.security import check_webhook_url, is_loopback_host, parse_audiohook_keys

LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# Telnyx engine names are case-sensitive: "Telnyx" works where "telnyx" is refused.
TELNYX_ENGINES: Final = ("Deepgram", "Telnyx", "Google", "Azure", "xAI", "AssemblyAI",
                         "Speechmatics", "Soniox", "Parakeet", "Reson8")
DEFAULT_STT_URL: Final = "wss://api.telnyx.com/v2/speech-to-text/transcription"
# The media dialects, by endpoint name (/streams/<name>); bridge.ingress has their parsers.
MEDIA_DIALECTS: Final = ("twilio", "telnyx", "plivo", "signalwire", "exotel", "bandwidth",
                         "vonage", "audiofork", "jambonz", "audiohook")

MAX_WORKERS: Final = 64  # serving processes per host (server.workers, serve --workers)

SettingName = Callable[[str], str]
"""A section's key -> the setting's name as the user wrote it (file key or variable)."""


def _require(ok: bool, setting: str, problem: str) -> None:
    if not ok:
        raise ConfigError(setting, problem)


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks, settings dumps)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What the settings know of one speech-to-text engine (its session class is mapped in
    ``bridge.stt.engines``, which imports this module)."""

    name: str
    section: str  # the settings section that holds its url, api_key, ...
    key_variable: str  # the provider's own variable for its API key
    session_limit_key: str = ""  # the key in its section that bounds a session's life
    # The embedded recognizer speaks this engine's protocol and stands in for it when the
    # engine has neither a URL nor a key.
    embedded: bool = False


ENGINES: Final[Mapping[str, EngineSpec]] = {
    "telnyx": EngineSpec("telnyx", "telnyx", "TELNYX_API_KEY", embedded=True),
    "deepgram": EngineSpec("deepgram", "deepgram", "DEEPGRAM_API_KEY"),
    "assemblyai": EngineSpec("assemblyai", "assemblyai", "ASSEMBLYAI_API_KEY",
                             session_limit_key="max_session_s"),
}
ENGINE_LIST: Final = ", ".join(ENGINES)


def _check_ws_url(url: str, setting: str, *, optional: bool = False) -> None:
    _require((optional and url == "") or url.startswith(("ws://", "wss://")), setting,
             "must be a ws:// or wss:// URL" + (", or empty" if optional else ""))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_message_bytes: int = 64 * 1024
    max_calls: int = 2000
    drain_s: float = 30.0
    event_loop: str = "auto"
    admin_token: Secret = field(default_factory=lambda: Secret(""))
    start_timeout_s: float = 5.0
    idle_check_s: float = 15.0
    max_pending_streams: int = 256
    max_pending_per_address: int = 32
    header_timeout_s: float = 10.0
    duplicate_call_id: str = "refuse"
    require_ingress_auth: bool = False
    dialects: tuple[str, ...] = MEDIA_DIALECTS  # the media endpoints served
    workers: int = 1  # serving processes on one port (more than one needs cluster mode)

    def validate(self, name: SettingName) -> None:
        unknown = sorted(set(self.dialects) - set(MEDIA_DIALECTS))
        _require(not unknown and bool(self.dialects), name("dialects"),
                 f"must list some of {', '.join(MEDIA_DIALECTS)}"
                 + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        _require(1 <= self.port <= 65535, name("port"), "must be 1-65535")
        _require(1024 <= self.max_message_bytes <= 16 * 1024 * 1024, name("max_message_bytes"),
                 "must be 1024-16777216")
        _require(self.max_calls >= 1, name("max_calls"), "must be at least 1")
        _require(0.5 <= self.start_timeout_s <= 120, name("start_timeout_s"),
                 "must be 0.5-120 (seconds)")
        _require(0.1 <= self.idle_check_s <= 600, name("idle_check_s"),
                 "must be 0.1-600 (seconds)")
        _require(1 <= self.max_pending_streams <= 100_000, name("max_pending_streams"),
                 "must be 1-100000")
        _require(0 <= self.max_pending_per_address <= 100_000, name("max_pending_per_address"),
                 "must be 0-100000 (0: no cap per address)")
        _require(1 <= self.header_timeout_s <= 600, name("header_timeout_s"),
                 "must be 1-600 (seconds)")
        _require(self.duplicate_call_id in ("refuse", "separate"), name("duplicate_call_id"),
                 "must be refuse or separate")
        _require(0 <= self.drain_s <= 3600, name("drain_s"), "must be 0-3600 (seconds)")
        _require(self.event_loop in ("auto", "asyncio", "uvloop"), name("event_loop"),
                 "must be auto, asyncio or uvloop")
        _require(1 <= self.workers <= MAX_WORKERS, name("workers"), f"must be 1-{MAX_WORKERS}")
        if self.admin_token:
            _require(len(self.admin_token.reveal()) >= 16, name("admin_token"),
                     "must be at least 16 characters")


@dataclass(frozen=True, slots=True)
class AudioSettings:
    chunk_ms: int = 100
    reorder_window_frames: int = 5
    max_gap_fill_ms: int = 5000
    max_buffer_ms: int = 5000

    def validate(self, name: SettingName) -> None:
        _require(20 <= self.chunk_ms <= 1000, name("chunk_ms"), "must be 20-1000 (ms)")
        _require(0 <= self.reorder_window_frames <= 50, name("reorder_window_frames"),
                 "must be 0-50")
        _require(0 <= self.max_gap_fill_ms <= 60000, name("max_gap_fill_ms"),
                 "must be 0-60000")
        _require(self.chunk_ms <= self.max_buffer_ms <= 60000, name("max_buffer_ms"),
                 "must be at least chunk_ms and at most 60000")


@dataclass(frozen=True, slots=True)
class EngineRouteSettings:
    """An engine (and language) for calls on ``path`` whose parameters all match; it may
    also say whether such calls are recorded (None: as ``artifacts.recording`` says)."""

    engine: str = ""
    language: str = ""
    path: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    recording: bool | None = None

    def matches(self, parameters: Mapping[str, str], path: str) -> bool:
        """Whether a call on ``path`` with these custom parameters takes this route."""
        return (not self.path or self.path == path) and all(
            parameters.get(k) == v for k, v in self.parameters)


@dataclass(frozen=True, slots=True)
class SttSettings:
    """What holds for every engine: which ones, per-call choices, and a session's life."""

    engine: str = "telnyx"
    secondary_engine: str = ""
    call_options: tuple[str, ...] = ("language",)
    silence_timeout_s: float = 0.0
    roll_margin_s: float = 300.0
    routes: tuple[EngineRouteSettings, ...] = ()
    close_grace_s: float = 2.0
    replay_ms: int = 30000

    def in_use(self) -> tuple[str, ...]:
        """The configured engines: the primary, then the secondary if any."""
        return tuple(n for n in (self.engine, self.secondary_engine) if n)

    def validate(self, name: SettingName) -> None:
        _require(self.engine in ENGINES, name("engine"), f"must be one of {ENGINE_LIST}")
        _require(self.secondary_engine in ("", *ENGINES)
                 and self.secondary_engine != self.engine, name("secondary_engine"),
                 f"must be another of {ENGINE_LIST}, or empty")
        _require(all(o in ("engine", "language") for o in self.call_options),
                 name("call_options"), "may list engine and language")
        for n, route in enumerate(self.routes):
            if route.engine and route.engine not in (self.engine, self.secondary_engine):
                raise ConfigError(f"stt.routes[{n}]", f"engine {route.engine!r} is neither "
                                  "stt.engine nor stt.secondary_engine")
        _require(self.silence_timeout_s >= 0, name("silence_timeout_s"), "must be >= 0 (0: off)")
        _require(self.roll_margin_s >= 0, name("roll_margin_s"), "must be >= 0")
        _require(0 <= self.close_grace_s <= 60, name("close_grace_s"), "must be 0-60 (seconds)")
        _require(1000 <= self.replay_ms <= 300000, name("replay_ms"), "must be 1000-300000")


@dataclass(frozen=True, slots=True)
class TelnyxSettings:
    """The Telnyx speech-to-text service (and the embedded recognizer, which speaks its
    protocol): used when ``stt.engine`` or ``stt.secondary_engine`` is ``telnyx``."""

    url: str = ""
    api_key: Secret = field(default_factory=lambda: Secret(""))
    transcription_engine: str = "Deepgram"
    model: str = ""
    language: str = "en-US"
    interim_results: bool = False
    endpointing: str = ""
    redact: str = ""
    keyterms: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    max_streams: int = 0  # concurrent sessions the account allows; 0: no limit

    def validate(self, name: SettingName) -> None:
        _require(0 <= self.max_streams <= 1_000_000, name("max_streams"),
                 "must be 0-1000000 (0: no limit)")
        _check_ws_url(self.url, name("url"), optional=True)
        _require(self.transcription_engine in TELNYX_ENGINES, name("transcription_engine"),
                 f"must be one of {', '.join(TELNYX_ENGINES)} (case-sensitive)")
        _require(self.endpointing in ("", "false") or self.endpointing.isdigit(),
                 name("endpointing"), "must be a number of milliseconds or \"false\"")
        _require(self.connect_timeout_s > 0, name("connect_timeout_s"), "must be positive")
        _require(1 <= self.ping_interval_s <= 300, name("ping_interval_s"), "must be 1-300")


@dataclass(frozen=True, slots=True)
class DeepgramSettings:
    url: str = "wss://api.deepgram.com/v1/listen"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    model: str = "nova-3"
    language: str = "en-US"
    interim_results: bool = False
    endpointing: str = "300"
    utterance_end_ms: int = 1000
    smart_format: bool = True
    redact: tuple[str, ...] = ()
    keyterms: tuple[str, ...] = ()
    keepalive_s: float = 4.0
    connect_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    max_streams: int = 0  # concurrent sessions the account allows; 0: no limit

    def validate(self, name: SettingName) -> None:
        _require(0 <= self.max_streams <= 1_000_000, name("max_streams"),
                 "must be 0-1000000 (0: no limit)")
        _check_ws_url(self.url, name("url"))
        _require(0.1 <= self.keepalive_s <= 9, name("keepalive_s"),
                 "must be 0.1-9 (Deepgram closes after 10 s without audio)")


@dataclass(frozen=True, slots=True)
class AssemblyAISettings:
    url: str = "wss://streaming.assemblyai.com/v3/ws"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    speech_model: str = "universal-streaming-english"
    format_turns: bool = True
    keyterms: tuple[str, ...] = ()
    redact: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    max_session_s: float = 10800.0  # the service ends a session after 3 h (close 3008)
    max_streams: int = 0  # concurrent sessions the account allows; 0: no limit

    def validate(self, name: SettingName) -> None:
        _require(0 <= self.max_streams <= 1_000_000, name("max_streams"),
                 "must be 0-1000000 (0: no limit)")
        _check_ws_url(self.url, name("url"))


@dataclass(frozen=True, slots=True)
class LocalSttSettings:
    model: str = "whisper-tiny.en"  # or "pocketsphinx" (bridge/stt/local/recognizer.py)
    beam_size: int = 1  # Whisper's beam for finals; 1 is greedy (cheapest, as accurate here)
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 0
    max_sessions: int = 0  # 0: SESSIONS_PER_WORKER per worker (bridge/stt/local/server.py)
    endpointing_ms: int = 600
    partial_every_ms: int = 1000
    max_utterance_ms: int = 15000

    def validate(self, name: SettingName) -> None:
        _require(self.model in ("whisper-tiny.en", "pocketsphinx"), name("model"),
                 "must be whisper-tiny.en or pocketsphinx")
        _require(1 <= self.beam_size <= 5, name("beam_size"), "must be 1-5")
        _require(0 <= self.port <= 65535, name("port"), "must be 0-65535")
        _require(0 <= self.workers <= 64, name("workers"), "must be 0-64 (0: one per CPU)")
        _require(0 <= self.max_sessions <= 1000, name("max_sessions"),
                 "must be 0-1000 (0: 8 per recognition worker)")
        _require(100 <= self.endpointing_ms <= 10000, name("endpointing_ms"),
                 "must be 100-10000")
        _require(200 <= self.partial_every_ms <= 10000, name("partial_every_ms"),
                 "must be 200-10000")
        _require(1000 <= self.max_utterance_ms <= 60000, name("max_utterance_ms"),
                 "must be 1000-60000")


WEBHOOK_SECRET_VARIABLE: Final = "CALLBRIDGE_WEBHOOKS_SECRET"  # noqa: S105 - a variable's name


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """A named webhook target: its URL, its signing secret and the events it wants."""

    name: str
    url: str
    secret: Secret = field(default_factory=lambda: Secret(""))
    secret_env: str = WEBHOOK_SECRET_VARIABLE
    events: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """Which targets a call gets: by ingress path and by custom parameters (all must match)."""

    targets: tuple[str, ...]
    path: str = ""
    parameters: tuple[tuple[str, str], ...] = ()


DEFAULT_TARGET: Final = "default"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...] = ()
    secret: Secret = field(default_factory=lambda: Secret(""))
    targets: tuple[TargetSettings, ...] = ()
    routes: tuple[RouteSettings, ...] = ()
    timeout_s: float = 10.0
    retry_schedule_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0,
                                           7200.0, 14400.0)
    ttl_s: float = 72 * 3600.0
    max_in_flight: int = 8
    partial_max_age_s: float = 2.0
    allow_insecure_http: bool = False
    allow_private_networks: bool = False
    call_url_parameter: str = "callbridge_webhook_url"
    call_url_allowlist: tuple[str, ...] = ()
    max_call_targets: int = 200
    drain_timeout_s: float = 10.0

    def all_targets(self) -> tuple[TargetSettings, ...]:
        """The configured targets, plus ``default`` for ``urls`` (every event)."""
        extra = tuple(TargetSettings(DEFAULT_TARGET if i == 0 else f"{DEFAULT_TARGET}-{i + 1}",
                                     url, self.secret) for i, url in enumerate(self.urls))
        return extra + self.targets

    def _url_problem(self, url: str) -> str | None:
        return check_webhook_url(url, allow_insecure_http=self.allow_insecure_http,
                                 allow_private=self.allow_private_networks)

    def validate(self, name: SettingName) -> None:
        _require(self.timeout_s > 0, name("timeout_s"), "must be positive")
        _require(self.ttl_s > 0, name("ttl_s"), "must be positive")
        _require(1 <= self.max_in_flight <= 256, name("max_in_flight"), "must be 1-256")
        _require(1 <= self.max_call_targets <= 10_000, name("max_call_targets"),
                 "must be 1-10000")
        _require(bool(self.retry_schedule_s)
                 and all(0.01 <= step <= 86400 for step in self.retry_schedule_s),
                 name("retry_schedule_s"), "must be steps of 0.01-86400 seconds")
        _require(self.partial_max_age_s > 0, name("partial_max_age_s"), "must be positive")
        _require(self.drain_timeout_s >= 0, name("drain_timeout_s"), "must be >= 0")
        for url in self.urls:
            problem = self._url_problem(url)
            _require(problem is None, name("urls"), f"{redact_url(url)}: {problem}")
        if self.secret:
            _require(decode_webhook_secret(self.secret) is not None, name("secret"),
                     "must be whsec_ followed by base64 of 24-64 random bytes")
        names = [t.name for t in self.all_targets()]
        for n, target in enumerate(self.targets):
            where = f"webhooks.targets[{n}]"
            if names.count(target.name) > 1:
                raise ConfigError(where, f"target name {target.name!r} is used twice")
            problem = self._url_problem(target.url)
            if problem is not None:
                raise ConfigError(where, f"{redact_url(target.url)}: {problem}")
            if decode_webhook_secret(target.secret) is None:
                raise ConfigError(target.secret_env, f"the secret of target {target.name!r} "
                                  "must be whsec_ followed by base64 of 24-64 random bytes")
            for pattern in target.events:
                if not any(fnmatch(t.value, pattern) for t in EventKinds):
                    raise ConfigError(where, f"event filter {pattern!r} matches no event type")
        for n, route in enumerate(self.routes):
            for target_name in route.targets:
                if target_name not in names:
                    raise ConfigError(f"webhooks.routes[{n}]", f"unknown target {target_name!r}")
        for entry in self.call_url_allowlist:
            problem = self._url_problem(entry)
            if problem is None and urlsplit(entry).query:
                problem = "must not have a query string (entries match scheme, host, port, path)"
            _require(problem is None, name("call_url_allowlist"),
                     f"{redact_url(entry)}: {problem}")


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: str = "callbridge-outbox.db"
    max_events: int = 1_000_000
    retention_days: float = 0.0

    def validate(self, name: SettingName) -> None:
        _require(1000 <= self.max_events <= 100_000_000, name("max_events"),
                 "must be 1000-100000000")
        _require(self.retention_days >= 0, name("retention_days"), "must be >= 0")
        _require(bool(self.path), name("path"), "must be a file path")


@dataclass(frozen=True, slots=True)
class ComplianceSettings:
    redaction: bool = True
    credit_card: bool = True
    security_code: bool = True
    expiry: bool = True
    ssn: bool = True
    custom_patterns: tuple[str, ...] = ()
    hold_s: float = 2.0
    dtmf: str = "drop"

    def validate(self, name: SettingName) -> None:
        _require(self.dtmf in ("drop", "masked"), name("dtmf"), "must be drop or masked")
        _require(0.1 <= self.hold_s <= 10, name("hold_s"), "must be 0.1-10 (seconds)")
        for entry in self.custom_patterns:
            custom_pattern(entry, name("custom_patterns"))


@dataclass(frozen=True, slots=True)
class IngressAuthSettings:
    twilio_auth_token: Secret = field(default_factory=lambda: Secret(""))
    twilio_public_url: str = ""
    bearer_token: Secret = field(default_factory=lambda: Secret(""))
    bearer_endpoints: tuple[str, ...] = ("signalwire",)
    exotel_basic: Secret = field(default_factory=lambda: Secret(""))
    audiohook_keys: Secret = field(default_factory=lambda: Secret(""))
    stream_token: Secret = field(default_factory=lambda: Secret(""))
    stream_token_parameter: str = "callbridge_token"  # noqa: S105 - a parameter name
    stream_token_endpoints: tuple[str, ...] = ("telnyx", "plivo", "bandwidth", "vonage",
                                               "audiofork", "jambonz")

    def validate(self, name: SettingName) -> None:
        if self.audiohook_keys:
            try:
                parse_audiohook_keys(self.audiohook_keys.reveal())
            except ValueError:
                raise ConfigError(name("audiohook_keys"), "expected comma-separated "
                                  "api_key:base64_client_secret pairs") from None
        if self.exotel_basic:
            _require(":" in self.exotel_basic.reveal(), name("exotel_basic"),
                     "expected user:password")
        _require(self.twilio_public_url == "" or self.twilio_public_url.startswith("wss://"),
                 name("twilio_public_url"), "must start with wss:// (as Twilio dials it)")


@dataclass(frozen=True, slots=True)
class SpeakerSettings:
    inbound: str = "caller"
    outbound: str = "agent"
    mixed: str = "call"

    def validate(self, name: SettingName) -> None:
        """Any label will do: nothing to check."""


@dataclass(frozen=True, slots=True)
class LiveSettings:
    token_ttl_s: float = 900.0
    backlog_bytes: int = 64 * 1024
    viewer_buffer: int = 256
    max_viewers: int = 20
    keepalive_s: float = 15.0
    retain_s: float = 60.0

    def validate(self, name: SettingName) -> None:
        _require(60 <= self.token_ttl_s <= 86400, name("token_ttl_s"),
                 "must be 60-86400 (seconds)")
        _require(0 <= self.backlog_bytes <= 16 * 1024 * 1024, name("backlog_bytes"),
                 "must be 0-16777216")
        _require(16 <= self.viewer_buffer <= 10000, name("viewer_buffer"), "must be 16-10000")
        _require(1 <= self.max_viewers <= 1000, name("max_viewers"), "must be 1-1000")
        _require(1 <= self.keepalive_s <= 300, name("keepalive_s"), "must be 1-300 (seconds)")
        _require(0 <= self.retain_s <= 3600, name("retain_s"), "must be 0-3600 (seconds)")


@dataclass(frozen=True, slots=True)
class AnalyticsSettings:
    """Talk analytics from each leg's audio (``bridge.analytics``)."""

    talk: bool = True
    vad_aggressiveness: int = 2  # the WebRTC VAD's mode: 0 least strict, 3 most
    hangover_ms: int = 300  # unvoiced audio within a run of speech before it ends
    min_speech_ms: int = 150  # voiced audio a run needs to count as speech
    interruption_after_ms: int = 300  # how long the other party must have been speaking
    sentiment: bool = False  # VADER's score of each final (the sentiment extra)

    def validate(self, name: SettingName) -> None:
        # The lexicon model is an optional extra: refuse to start rather than fail per call.
        _require(not self.sentiment or importlib.util.find_spec("vaderSentiment") is not None,
                 name("sentiment"), "needs the sentiment extra, which is not installed: "
                 "pip install 'callbridge[sentiment]'")
        _require(0 <= self.vad_aggressiveness <= 3, name("vad_aggressiveness"),
                 "must be 0, 1, 2 or 3")
        _require(30 <= self.hangover_ms <= 3000, name("hangover_ms"),
                 "must be 30-3000 (milliseconds)")
        _require(30 <= self.min_speech_ms <= 3000, name("min_speech_ms"),
                 "must be 30-3000 (milliseconds)")
        _require(0 <= self.interruption_after_ms <= 60_000, name("interruption_after_ms"),
                 "must be 0-60000 (milliseconds)")


INSTANCE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Cluster mode: instances share calls, feeds, undelivered events and engine limits in
    Redis (or Valkey). Off while both ``redis_url`` and ``sentinels`` are empty."""

    redis_url: Secret = field(default_factory=lambda: Secret(""))  # or CALLBRIDGE_REDIS_URL
    sentinels: tuple[str, ...] = ()  # host:port of each Sentinel; replaces redis_url's host
    sentinel_primary: str = "mymaster"  # the primary's name as the Sentinels know it
    instance_id: str = ""  # empty: <host name>-<pid>
    key_prefix: str = "callbridge"
    heartbeat_s: float = 1.0
    takeover_s: float = 10.0  # an instance silent this long is lost; survivors take over
    command_timeout_s: float = 5.0  # an admin action sent to the instance holding the call
    wait_replicas: int = 0  # WAIT for this many replicas before an event counts as stored
    wait_timeout_ms: int = 500
    feed_max_events: int = 2000  # each call's event stream in Redis, for captions anywhere
    feed_readers: int = 200  # viewers here of calls held elsewhere (one connection each)
    events_stream: str = ""  # every event appended here for consumer groups; empty: off
    events_stream_max_len: int = 100_000
    events_stream_max_age_s: float = 0.0  # 0: trimmed by length only

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url) or bool(self.sentinels)

    def validate(self, name: SettingName) -> None:
        if self.redis_url:
            url = self.redis_url.reveal()
            _require(url.startswith(("redis://", "rediss://", "unix://")),
                     name("redis_url"), "must be a redis://, rediss:// or unix:// URL")
            try:  # never in the message: the URL may hold a password
                parts = urlsplit(url)
                _ = parts.port
                readable = url.startswith("unix://") or bool(parts.hostname)
            except ValueError:
                readable = False
            _require(readable, name("redis_url"), "is not a URL that can be read: "
                     "percent-encode '/', '?', '#' and '@' in the user name and password")
        for address in self.sentinels:
            host, _, port = address.rpartition(":")
            _require(bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
                     name("sentinels"), "must list host:port addresses")
        _require(bool(self.sentinel_primary), name("sentinel_primary"), "must be a name")
        _require(not self.instance_id or bool(INSTANCE_ID.match(self.instance_id)),
                 name("instance_id"), "must be 1-63 letters, digits, '.', '_' or '-'")
        _require(bool(re.match(r"^[A-Za-z0-9_.:-]{1,40}$", self.key_prefix)),
                 name("key_prefix"), "must be 1-40 letters, digits, '.', '_', ':' or '-'")
        _require(0.1 <= self.heartbeat_s <= 60, name("heartbeat_s"), "must be 0.1-60 (seconds)")
        _require(self.heartbeat_s * 3 <= self.takeover_s <= 3600, name("takeover_s"),
                 "must be at least three heartbeats (cluster.heartbeat_s) and at most 3600")
        _require(0.1 <= self.command_timeout_s <= 60, name("command_timeout_s"),
                 "must be 0.1-60 (seconds)")
        _require(0 <= self.wait_replicas <= 16, name("wait_replicas"), "must be 0-16")
        _require(1 <= self.wait_timeout_ms <= 60_000, name("wait_timeout_ms"),
                 "must be 1-60000 (milliseconds)")
        _require(16 <= self.feed_max_events <= 1_000_000, name("feed_max_events"),
                 "must be 16-1000000")
        _require(1 <= self.feed_readers <= 10_000, name("feed_readers"), "must be 1-10000")
        _require(not self.events_stream or bool(re.match(r"^[A-Za-z0-9_.:{}-]{1,100}$",
                                                         self.events_stream)),
                 name("events_stream"), "must be a Redis key of letters, digits and _.:{}-")
        _require(100 <= self.events_stream_max_len <= 100_000_000, name("events_stream_max_len"),
                 "must be 100-100000000")
        _require(0 <= self.events_stream_max_age_s <= 30 * 86400,
                 name("events_stream_max_age_s"), "must be 0-2592000 (seconds)")

    def instance(self) -> str:
        """This instance's id: the setting, else the host name and the process id."""
        if self.instance_id:
            return self.instance_id
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40].strip(".-_")
        return f"{host or 'host'}-{os.getpid()}"


S3_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules
RECORDING_FORMATS: Final = ("wav", "flac", "opus")


def _codecs_installed() -> bool:
    """Whether PyAV (the codecs extra) imports."""
    try:
        import av  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


ARTIFACT_STORES: Final = ("local", "s3")


@dataclass(frozen=True, slots=True)
class ArtifactsSettings:
    """What is kept of each call after it ends (``bridge.artifacts``): its files, off by
    default; ``call.completed``, on by default."""

    enabled: bool = False
    # Where the files go, and for how long.
    store: str = "local"  # "local" (dir) or "s3" (an S3-compatible object store)
    dir: str = ""  # empty: "callbridge-artifacts" beside the outbox file
    s3_bucket: str = ""
    s3_prefix: str = ""  # prepended to every key ("calls/" keeps them under calls/)
    s3_endpoint_url: str = ""  # empty: AWS; else an S3-compatible store's URL
    s3_region: str = ""  # empty: the environment's (AWS_DEFAULT_REGION), else us-east-1
    retention_days: float = 0.0  # 0: kept until deleted by hand
    retention_check_s: float = 3600.0  # how often the retention sweep runs
    store_timeout_s: float = 120.0  # writing one call's files; beyond it they are given up
    # The PCI-safe recording (stored with the other files: it needs enabled).
    recording: bool = False  # a stereo recording of every call (routes may differ)
    recording_per_call: bool = False  # calls may choose: callbridge_recording=true|false
    recording_format: str = "wav"
    spool_dir: str = ""  # empty: callbridge-spool beside outbox.path
    max_recording_s: float = 14400.0
    # call.completed: one event per call after call.ended, with the whole transcript.
    completed: bool = True
    # Past this size (bytes of the transcript's JSON), call.completed carries the lines that
    # fit and a link to the stored transcript instead of the whole.
    completed_max_bytes: int = 256 * 1024

    def validate(self, name: SettingName) -> None:
        _require(self.store in ARTIFACT_STORES, name("store"),
                 f"must be one of {', '.join(ARTIFACT_STORES)}")
        if self.store == "s3":
            _require(bool(S3_BUCKET.fullmatch(self.s3_bucket)), name("s3_bucket"),
                     "must be a bucket name (3-63 lower-case letters, digits, '.' or '-') "
                     "when artifacts.store is s3")
        _require(len(self.s3_prefix) <= 200 and not self.s3_prefix.startswith("/")
                 and ".." not in self.s3_prefix.split("/"), name("s3_prefix"),
                 "must be at most 200 characters, not start with '/' nor hold '..'")
        _require(not self.s3_endpoint_url
                 or self.s3_endpoint_url.startswith(("http://", "https://")),
                 name("s3_endpoint_url"), "must be an http:// or https:// URL, or empty")
        _require(self.s3_region == "" or bool(re.fullmatch(r"[a-z0-9-]{1,40}", self.s3_region)),
                 name("s3_region"), "must be a region name such as eu-west-1, or empty")
        _require(0 <= self.retention_days <= 36500, name("retention_days"),
                 "must be 0-36500 (days; 0 keeps them)")
        _require(60 <= self.retention_check_s <= 86400, name("retention_check_s"),
                 "must be 60-86400 (seconds)")
        _require(1 <= self.store_timeout_s <= 3600, name("store_timeout_s"),
                 "must be 1-3600 (seconds)")
        for key in ("recording", "recording_per_call"):
            _require(self.enabled or not getattr(self, key), name(key),
                     "needs artifacts.enabled = true: recordings are kept in the artifact store")
        _require(self.recording_format in RECORDING_FORMATS, name("recording_format"),
                 f"must be one of {RECORDING_FORMATS}")
        _require(self.recording_format == "wav" or _codecs_installed(), name("recording_format"),
                 "flac and opus need the codecs extra: pip install 'callbridge[codecs]'")
        _require(60 <= self.max_recording_s <= 86400, name("max_recording_s"),
                 "must be 60-86400 (seconds)")
        _require(1024 <= self.completed_max_bytes <= 16 * 1024 * 1024,
                 name("completed_max_bytes"), "must be 1024-16777216 (bytes)")

    def spool_path(self, outbox_path: str) -> Path:
        """Where legs' audio waits for the call's end: the setting, else beside the outbox."""
        return Path(self.spool_dir or Path(outbox_path).resolve().parent / "callbridge-spool")

    def local_dir(self, outbox_path: str) -> Path:
        """The local store's folder: ``dir``, or beside the outbox file."""
        return Path(self.dir) if self.dir else Path(outbox_path).parent / "callbridge-artifacts"


# Phrase alerts ([[alerts]]): bounds that keep matching cheap for every final of every leg.
MAX_ALERT_RULES: Final = 100
MAX_ALERT_ENTRIES: Final = 200  # phrases and patterns of one rule
MAX_ALERT_ENTRY_CHARS: Final = 200  # one phrase or pattern
ALERT_RULE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
ALERT_RULE_KEYS: Final = ("name", "phrases", "patterns", "speaker", "partials")


@dataclass(frozen=True, slots=True)
class AlertRuleSettings:
    """One ``[[alerts]]`` rule: a ``call.alert`` when a transcript says one of its phrases or
    matches one of its patterns; ``speaker`` ("" for any) limits it to one leg (its track or
    its speaker name); ``partials`` lets partials trigger it."""

    name: str
    phrases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    speaker: str = ""
    partials: bool = False


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    format: str = "auto"

    def validate(self, name: SettingName) -> None:
        _require(self.level in LOG_LEVELS, name("level"), f"must be one of {LOG_LEVELS}")
        _require(self.format in LOG_FORMATS, name("format"), f"must be one of {LOG_FORMATS}")


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    stt: SttSettings = field(default_factory=SttSettings)
    telnyx: TelnyxSettings = field(default_factory=TelnyxSettings)
    local_stt: LocalSttSettings = field(default_factory=LocalSttSettings)
    deepgram: DeepgramSettings = field(default_factory=DeepgramSettings)
    assemblyai: AssemblyAISettings = field(default_factory=AssemblyAISettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    compliance: ComplianceSettings = field(default_factory=ComplianceSettings)
    ingress_auth: IngressAuthSettings = field(default_factory=IngressAuthSettings)
    speakers: SpeakerSettings = field(default_factory=SpeakerSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    artifacts: ArtifactsSettings = field(default_factory=ArtifactsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    alerts: tuple[AlertRuleSettings, ...] = ()  # [[alerts]], in the file only


SECTIONS: Final[Mapping[str, type[Any]]] = {
    "server": ServerSettings,
    "audio": AudioSettings,
    "stt": SttSettings,
    "telnyx": TelnyxSettings,
    "local_stt": LocalSttSettings,
    "deepgram": DeepgramSettings,
    "assemblyai": AssemblyAISettings,
    "webhooks": WebhookSettings,
    "outbox": OutboxSettings,
    "compliance": ComplianceSettings,
    "ingress_auth": IngressAuthSettings,
    "speakers": SpeakerSettings,
    "live": LiveSettings,
    "analytics": AnalyticsSettings,
    "cluster": ClusterSettings,
    "artifacts": ArtifactsSettings,
    "logging": LoggingSettings,
}
# Top-level arrays of tables that are not sections: set in the file only.
FILE_ONLY_ARRAYS: Final = ("alerts",)


# Arrays of tables: set in the file only.
FILE_ONLY: Final = {("stt", "routes"), ("webhooks", "targets"), ("webhooks", "routes")}
SECRET_KEYS: Final = frozenset((section, f.name) for section, cls in SECTIONS.items()
                               for f in fields(cls) if f.type in ("Secret", Secret))


def variable_for(section: str, key: str) -> str:
    """The setting's environment variable under the one scheme, ``CALLBRIDGE_<SECTION>_<KEY>``."""
    return f"CALLBRIDGE_{section.upper()}_{key.upper()}"


# Every setting's variable, generated: variable -> (section, key).
ENVIRONMENT: Final[Mapping[str, tuple[str, str]]] = {
    variable_for(section, f.name): (section, f.name)
    for section, cls in SECTIONS.items() for f in fields(cls)
    if (section, f.name) not in FILE_ONLY}
# The providers' own variables, as their documentation names them; the CALLBRIDGE_ one wins.
PROVIDER_VARIABLES: Final[Mapping[str, tuple[str, str]]] = {
    **{spec.key_variable: (spec.section, "api_key") for spec in ENGINES.values()},
    "TWILIO_AUTH_TOKEN": ("ingress_auth", "twilio_auth_token"),
    "CALLBRIDGE_REDIS_URL": ("cluster", "redis_url"),
}
# Names from before the scheme: old -> new. Each still works, with one deprecation line.
DEPRECATED_VARIABLES: Final[Mapping[str, str]] = {
    "CALLBRIDGE_HOST": "CALLBRIDGE_SERVER_HOST",
    "CALLBRIDGE_PORT": "CALLBRIDGE_SERVER_PORT",
    "CALLBRIDGE_DRAIN_S": "CALLBRIDGE_SERVER_DRAIN_S",
    "CALLBRIDGE_ADMIN_TOKEN": "CALLBRIDGE_SERVER_ADMIN_TOKEN",
    "CALLBRIDGE_MAX_CALLS": "CALLBRIDGE_SERVER_MAX_CALLS",
    "CALLBRIDGE_START_TIMEOUT_S": "CALLBRIDGE_SERVER_START_TIMEOUT_S",
    "CALLBRIDGE_MAX_PENDING_STREAMS": "CALLBRIDGE_SERVER_MAX_PENDING_STREAMS",
    "CALLBRIDGE_MAX_PENDING_PER_ADDRESS": "CALLBRIDGE_SERVER_MAX_PENDING_PER_ADDRESS",
    "CALLBRIDGE_DUPLICATE_CALL_ID": "CALLBRIDGE_SERVER_DUPLICATE_CALL_ID",
    "CALLBRIDGE_REQUIRE_INGRESS_AUTH": "CALLBRIDGE_SERVER_REQUIRE_INGRESS_AUTH",
    "CALLBRIDGE_HEADER_TIMEOUT_S": "CALLBRIDGE_SERVER_HEADER_TIMEOUT_S",
    "CALLBRIDGE_EVENT_LOOP": "CALLBRIDGE_SERVER_EVENT_LOOP",
    "CALLBRIDGE_TWILIO_PUBLIC_URL": "CALLBRIDGE_INGRESS_AUTH_TWILIO_PUBLIC_URL",
    "CALLBRIDGE_INGRESS_TOKEN": "CALLBRIDGE_INGRESS_AUTH_BEARER_TOKEN",
    "CALLBRIDGE_EXOTEL_BASIC": "CALLBRIDGE_INGRESS_AUTH_EXOTEL_BASIC",
    "CALLBRIDGE_AUDIOHOOK_KEYS": "CALLBRIDGE_INGRESS_AUTH_AUDIOHOOK_KEYS",
    "CALLBRIDGE_STREAM_TOKEN": "CALLBRIDGE_INGRESS_AUTH_STREAM_TOKEN",
    "CALLBRIDGE_REDACTION": "CALLBRIDGE_COMPLIANCE_REDACTION",
    "CALLBRIDGE_DTMF": "CALLBRIDGE_COMPLIANCE_DTMF",
    "CALLBRIDGE_CHUNK_MS": "CALLBRIDGE_AUDIO_CHUNK_MS",
    "CALLBRIDGE_ENGINE": "CALLBRIDGE_STT_ENGINE",
    "CALLBRIDGE_SECONDARY_ENGINE": "CALLBRIDGE_STT_SECONDARY_ENGINE",
    "CALLBRIDGE_STT_URL": "CALLBRIDGE_TELNYX_URL",
    "CALLBRIDGE_STT_INTERIM_RESULTS": "CALLBRIDGE_TELNYX_INTERIM_RESULTS",
    "CALLBRIDGE_WEBHOOK_URLS": "CALLBRIDGE_WEBHOOKS_URLS",
    "CALLBRIDGE_WEBHOOK_SECRET": WEBHOOK_SECRET_VARIABLE,
    "CALLBRIDGE_WEBHOOK_ALLOW_HTTP": "CALLBRIDGE_WEBHOOKS_ALLOW_INSECURE_HTTP",
    "CALLBRIDGE_WEBHOOK_ALLOW_PRIVATE": "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS",
    "CALLBRIDGE_WEBHOOK_RETRY_SCHEDULE": "CALLBRIDGE_WEBHOOKS_RETRY_SCHEDULE_S",
    "CALLBRIDGE_WEBHOOK_TTL_S": "CALLBRIDGE_WEBHOOKS_TTL_S",
    "CALLBRIDGE_LOG_LEVEL": "CALLBRIDGE_LOGGING_LEVEL",
    "CALLBRIDGE_LOG_FORMAT": "CALLBRIDGE_LOGGING_FORMAT",
}
# Before the scheme this named telnyx.transcription_engine; now it is stt.engine's variable.
# A Telnyx engine name as its value ("Deepgram", "Azure": capitalised, case-sensitive) is
# taken in the old meaning, with a deprecation line; anything else in the new.
STT_ENGINE_VARIABLE: Final = "CALLBRIDGE_STT_ENGINE"
# [stt] keys that moved to [telnyx]: still read from [stt] in a file, with a deprecation line.
MOVED_TO_TELNYX: Final = tuple(f.name for f in fields(TelnyxSettings))


def variables_of(section: str, key: str) -> tuple[str, ...]:
    """The variables that set a setting, the one that wins first: its own, the provider's,
    then the deprecated names."""
    own = variable_for(section, key)
    provider = [v for v, target in PROVIDER_VARIABLES.items() if target == (section, key)]
    old = [v for v, new in DEPRECATED_VARIABLES.items() if new == own]
    return (own, *provider, *old)


def given_as(section: str, key: str, environ: Mapping[str, str] | None = None) -> str:
    """How the user gave a setting, to name it in an error found after loading: the variable
    that set it, else the file key."""
    env = os.environ if environ is None else environ
    return next((v for v in variables_of(section, key) if env.get(v)), f"{section}.{key}")


def _default_name(section: str, key: str) -> str:
    """A setting's name in an error when the user did not set it: for a secret, the variable
    to set (the provider's if it has one); else the file key."""
    if (section, key) not in SECRET_KEYS:
        return f"{section}.{key}"
    provider = [v for v, target in PROVIDER_VARIABLES.items() if target == (section, key)]
    return provider[0] if provider else variable_for(section, key)


T = TypeVar("T")


def _print_deprecation(line: str) -> None:
    print(f"callbridge: {line}", file=sys.stderr)


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None, *,
                  warn: Callable[[str], None] = _print_deprecation) -> Settings:
    """Build validated settings from the file (if any) and the environment.

    Each deprecated name in use (a variable or an ``[stt]`` key that moved to ``[telnyx]``)
    is reported once through ``warn``, by default one line on stderr naming the new one.
    """
    env = os.environ if environ is None else environ
    given_as_option = "--config" if path else "CALLBRIDGE_CONFIG"
    path = path or env.get("CALLBRIDGE_CONFIG") or None
    raw: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    alerts: Any = None
    if path is not None:
        raw = _read_file(Path(path), given_as_option)
        alerts = raw.pop("alerts", None)
        for section, values in raw.items():
            for key in values:
                origin[(section, key)] = f"{section}.{key}"
                if (section, key) in SECRET_KEYS or (
                        section == "stt" and key in MOVED_TO_TELNYX
                        and ("telnyx", key) in SECRET_KEYS):
                    raise ConfigError(f"{section}.{key}", "secrets are read from the "
                                      "environment only; remove it from the file")
        _move_old_stt_keys(raw, origin, warn)
    _read_environment(env, raw, origin, warn)
    settings = _build(raw, origin, env)
    if alerts is not None:
        settings = replace(settings, alerts=_alert_rules(alerts))
    _validate(settings, origin)
    return settings


def _move_old_stt_keys(raw: dict[str, dict[str, Any]], origin: dict[tuple[str, str], str],
                       warn: Callable[[str], None]) -> None:
    stt = raw.get("stt", {})
    for key in [k for k in stt if k in MOVED_TO_TELNYX]:
        value = stt.pop(key)
        del origin[("stt", key)]
        warn(f"stt.{key} in the settings file is deprecated: use telnyx.{key} "
             "(in a [telnyx] section)")
        telnyx = raw.setdefault("telnyx", {})
        if key not in telnyx:  # the new key wins when both are given
            telnyx[key] = value
            origin[("telnyx", key)] = f"stt.{key}"


def _read_environment(env: Mapping[str, str], raw: dict[str, dict[str, Any]],
                      origin: dict[tuple[str, str], str], warn: Callable[[str], None]) -> None:
    telnyx_engine_given_old_way = env.get(STT_ENGINE_VARIABLE, "") in TELNYX_ENGINES
    for section, key in ENVIRONMENT.values():
        names = variables_of(section, key)
        if telnyx_engine_given_old_way:
            if (section, key) == ("stt", "engine"):
                names = tuple(n for n in names if n != STT_ENGINE_VARIABLE)
            elif (section, key) == ("telnyx", "transcription_engine"):
                names = (*names, STT_ENGINE_VARIABLE)
        variable = next((n for n in names if env.get(n)), None)
        if variable is not None:
            raw.setdefault(section, {})[key] = env[variable]
            origin[(section, key)] = variable
    for old, new in DEPRECATED_VARIABLES.items():
        if env.get(old):
            warn(f"{old} is deprecated: use {new}")
    if telnyx_engine_given_old_way:
        warn(f"{STT_ENGINE_VARIABLE}={env[STT_ENGINE_VARIABLE]} (a Telnyx engine) is "
             "deprecated: use CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE; "
             f"{STT_ENGINE_VARIABLE} now chooses among {ENGINE_LIST}")


def _read_file(path: Path, given_as: str) -> dict[str, dict[str, Any]]:
    """The settings file's tables; ``given_as`` names where the path came from, for errors."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(given_as, f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(given_as, f"{path} is a directory, not a settings file") from None
    except PermissionError:
        raise ConfigError(given_as, f"{path} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(given_as, f"{path} is not a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(given_as, f"{path} is not valid TOML: {exc}") from None
    for section, values in data.items():
        if section in FILE_ONLY_ARRAYS:
            continue  # checked where it is read
        if section not in SECTIONS:
            raise ConfigError(section, "unknown section; expected one of "
                              f"{', '.join((*SECTIONS, *FILE_ONLY_ARRAYS))}")
        if not isinstance(values, dict):
            raise ConfigError(section, "must be a table")
    return data


def _build(raw: dict[str, dict[str, Any]], origin: dict[tuple[str, str], str],
           env: Mapping[str, str]) -> Settings:
    sections: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    hooks = raw.get("webhooks", {})
    engine_routes = raw.get("stt", {}).pop("routes", None)
    if "targets" in hooks:
        tables["targets"] = _targets(hooks.pop("targets"), env)
    if "routes" in hooks:
        tables["routes"] = _routes(hooks.pop("routes"))
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"{section}.{key}", "unknown setting")
        default = cls()
        changes = {}
        for key, value in values.items():
            name = origin.get((section, key), f"{section}.{key}")
            changes[key] = _coerce(name, value, getattr(default, key))
        if section == "webhooks":
            changes.update(tables)
        if section == "stt" and engine_routes is not None:
            changes["routes"] = _engine_routes(engine_routes)
        sections[section] = replace(default, **changes)
    return Settings(**sections)


def _targets(value: Any, env: Mapping[str, str]) -> tuple[TargetSettings, ...]:
    if not isinstance(value, list):
        raise ConfigError("webhooks.targets", "must be an array of tables ([[webhooks.targets]])")
    targets = []
    for n, item in enumerate(value):
        name = f"webhooks.targets[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not \
                isinstance(item.get("url"), str):
            raise ConfigError(name, "needs a name and a url")
        unknown = set(item) - {"name", "url", "secret_env", "events"}
        if unknown:
            raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown setting")
        # Without its own, a target is signed with webhooks.secret, from whichever of its
        # variables is set (the name is kept in the outbox to sign again after a restart).
        secret_env = item.get("secret_env", next(
            (v for v in variables_of("webhooks", "secret") if env.get(v)),
            WEBHOOK_SECRET_VARIABLE))
        events = item.get("events", ["*"])
        if not isinstance(secret_env, str) or not isinstance(events, list) or not all(
                isinstance(e, str) for e in events):
            raise ConfigError(name, "secret_env must be a string and events a list of strings")
        targets.append(TargetSettings(item["name"], item["url"], Secret(env.get(secret_env, "")),
                                      secret_env, tuple(events)))
    return tuple(targets)


def _engine_routes(value: Any) -> tuple[EngineRouteSettings, ...]:
    if not isinstance(value, list):
        raise ConfigError("stt.routes", "must be an array of tables ([[stt.routes]])")
    routes = []
    for n, item in enumerate(value):
        name = f"stt.routes[{n}]"
        if not isinstance(item, dict):
            raise ConfigError(name, "must be a table")
        unknown = set(item) - {"engine", "language", "path", "parameters", "recording"}
        if unknown:
            raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown setting")
        parameters = item.get("parameters", {})
        values = [item.get(k, "") for k in ("engine", "language", "path")]
        if not all(isinstance(v, str) for v in values) or not isinstance(parameters, dict) \
                or not all(isinstance(v, str) for v in parameters.values()):
            raise ConfigError(name, "engine, language and path are strings; parameters a "
                              "table of strings")
        engine, language, route_path = values
        recording = item.get("recording")
        if recording is not None and not isinstance(recording, bool):
            raise ConfigError(f"{name}.recording", "must be true or false")
        routes.append(EngineRouteSettings(engine, language, route_path,
                                          tuple(sorted(parameters.items())), recording))
    return tuple(routes)


def _routes(value: Any) -> tuple[RouteSettings, ...]:
    if not isinstance(value, list):
        raise ConfigError("webhooks.routes", "must be an array of tables ([[webhooks.routes]])")
    routes = []
    for n, item in enumerate(value):
        name = f"webhooks.routes[{n}]"
        targets = item.get("targets") if isinstance(item, dict) else None
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ConfigError(name, "needs targets, a list of target names")
        unknown = set(item) - {"targets", "path", "parameters"}
        if unknown:
            raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown setting")
        path = item.get("path", "")
        parameters = item.get("parameters", {})
        if not isinstance(path, str) or not isinstance(parameters, dict) or not all(
                isinstance(v, str) for v in parameters.values()):
            raise ConfigError(name, "path must be a string and parameters a table of strings")
        routes.append(RouteSettings(tuple(targets), path, tuple(sorted(parameters.items()))))
    return tuple(routes)


def _alert_rules(value: Any) -> tuple[AlertRuleSettings, ...]:
    """The ``[[alerts]]`` rules, checked entry by entry (each regular expression compiled)."""
    if not isinstance(value, list):
        raise ConfigError("alerts", "must be an array of tables ([[alerts]])")
    _require(len(value) <= MAX_ALERT_RULES, "alerts", f"at most {MAX_ALERT_RULES} rules")
    rules: list[AlertRuleSettings] = []
    for n, item in enumerate(value):
        name = f"alerts[{n}]"
        if not isinstance(item, dict):
            raise ConfigError(name, "must be a table")
        unknown = set(item) - set(ALERT_RULE_KEYS)
        if unknown:
            raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown setting")
        rule_name = item.get("name")
        if not isinstance(rule_name, str) or not ALERT_RULE_NAME.match(rule_name):
            raise ConfigError(f"{name}.name", "needs a name of 1-64 letters, digits and _.:- "
                              "(it is the event's rule)")
        _require(rule_name not in {r.name for r in rules}, f"{name}.name",
                 f"{rule_name!r} names an earlier rule too")
        entries: dict[str, tuple[str, ...]] = {}
        for key in ("phrases", "patterns"):
            listed = item.get(key, [])
            if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
                raise ConfigError(f"{name}.{key}", "must be a list of strings")
            for i, entry in enumerate(listed):
                _require(0 < len(entry) <= MAX_ALERT_ENTRY_CHARS, f"{name}.{key}[{i}]",
                         f"must be 1-{MAX_ALERT_ENTRY_CHARS} characters")
                if key == "phrases":
                    _require(bool(re.search(r"\w", entry)), f"{name}.{key}[{i}]",
                             "must hold a word")
                else:
                    alert_pattern(entry, f"{name}.{key}[{i}]")
            entries[key] = tuple(listed)
        count = len(entries["phrases"]) + len(entries["patterns"])
        _require(0 < count <= MAX_ALERT_ENTRIES, name,
                 f"needs 1-{MAX_ALERT_ENTRIES} phrases and patterns in all")
        speaker = item.get("speaker", "")
        partials = item.get("partials", False)
        _require(isinstance(speaker, str), f"{name}.speaker", "must be a string")
        _require(isinstance(partials, bool), f"{name}.partials", "must be true or false")
        rules.append(AlertRuleSettings(rule_name, entries["phrases"], entries["patterns"],
                                       speaker, partials))
    return tuple(rules)


def alert_pattern(pattern: str, setting: str) -> re.Pattern[str]:
    """An ``[[alerts]]`` pattern as it is matched: case-insensitive, and only where a word
    starts and ends (a match may not begin or end inside a word)."""
    try:
        # Compiled alone first: a pattern that only compiles inside the group (an unbalanced
        # ")|(") would escape the word boundaries.
        re.compile(pattern)
        compiled = re.compile(rf"(?<!\w)(?:{pattern})(?!\w)", re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(setting, f"not a valid regular expression: {exc}") from None
    _require(compiled.fullmatch("") is None, setting,
             "matches an empty text, so it would match every transcript")
    return compiled


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a file or environment value to the type of the setting's default."""
    if isinstance(default, Secret):
        return Secret(_expect(name, value, str, "a string"))
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(name, f"expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(name, f"expected a whole number, got {value!r}")
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}") from None
    if isinstance(default, tuple) and default and isinstance(default[0], float):
        parts = value.split(",") if isinstance(value, str) else value
        try:
            numbers = tuple(float(p) for p in parts)
        except (TypeError, ValueError):
            raise ConfigError(name, "expected a list of numbers") from None
        if not numbers or min(numbers) <= 0:
            raise ConfigError(name, "expected a non-empty list of positive numbers")
        return numbers
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(name, "expected a list of strings")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name.endswith(
            "endpointing"):
        return str(value)
    return _expect(name, value, str, "a string")


def _expect(name: str, value: Any, kind: type[T], description: str) -> T:
    if not isinstance(value, kind):
        raise ConfigError(name, f"expected {description}, got {value!r}")
    return value


def _validate(settings: Settings, origin: Mapping[tuple[str, str], str]) -> None:
    """Each section checks itself, then the checks that read two sections."""
    for section in SECTIONS:
        def name(key: str, section: str = section) -> str:
            return origin.get((section, key), _default_name(section, key))

        getattr(settings, section).validate(name)
    _validate_across(settings, lambda section, key: origin.get(
        (section, key), _default_name(section, key)))


def _validate_across(s: Settings, name: Callable[[str, str], str]) -> None:
    for engine in s.stt.in_use():
        spec = ENGINES[engine]
        url = getattr(s, spec.section).url
        # A URL on this machine (an emulator, a local server) needs no key; an empty one is
        # the embedded recognizer or the service's default, which the Telnyx check below covers.
        needs_key = bool(url) and not is_loopback_host(urlsplit(url).hostname or "")
        _require(bool(getattr(s, spec.section).api_key) or not needs_key,
                 name(spec.section, "api_key"),
                 f"{spec.key_variable} must be set: {name(spec.section, 'url')} is not on "
                 "this machine")
    if s.webhooks.urls:
        _require(bool(s.webhooks.secret), name("webhooks", "secret"),
                 "webhook URLs are set, so a secret must be set to sign them")
    for n, route in enumerate(s.stt.routes):
        # Named by its place in the file, as the other route errors are: a file may hold many.
        _require(s.artifacts.enabled or not route.recording, f"stt.routes[{n}].recording",
                 "needs artifacts.enabled = true: recordings are kept in the artifact store")
    speakers = {"inbound", "outbound", "mixed",
                s.speakers.inbound, s.speakers.outbound, s.speakers.mixed}
    for n, rule in enumerate(s.alerts):
        _require(rule.speaker in speakers or not rule.speaker, f"alerts[{n}].speaker",
                 f"must be a track or a speaker name: one of {', '.join(sorted(speakers))}")


class SttTarget(enum.Enum):
    """Where a bridge's legs are transcribed."""

    TELNYX = "telnyx"  # the Telnyx service (a key is set)
    CONFIGURED = "configured"  # telnyx.url as given (a local server or an emulator)
    EMBEDDED = "embedded"  # no key, no URL: the bridge starts the embedded recognizer


def uses_telnyx_protocol(settings: Settings) -> bool:
    """Whether an engine in use speaks the protocol of the embedded recognizer."""
    return any(ENGINES[name].embedded for name in settings.stt.in_use())


def stt_target(settings: Settings) -> SttTarget:
    """Where the Telnyx-protocol engine goes: an explicit URL, Telnyx with a key, else the
    embedded recognizer (only started when the Telnyx engine is in use)."""
    if settings.telnyx.url:
        return SttTarget.CONFIGURED
    return SttTarget.TELNYX if settings.telnyx.api_key else SttTarget.EMBEDDED


def engine_settings(settings: Settings, engine: str) -> Any:
    """The settings section of an engine named in ``ENGINES``."""
    return getattr(settings, ENGINES[engine].section)


def session_limit_s(settings: Settings, engine: str) -> float:
    """How long a session of this engine may live (0: no limit)."""
    key = ENGINES[engine].session_limit_key
    return float(getattr(engine_settings(settings, engine), key)) if key else 0.0


def custom_pattern(entry: str, setting: str = "compliance.custom_patterns"
                   ) -> tuple[str, re.Pattern[str]]:
    """Parse a ``name=regular expression`` custom redaction pattern."""
    kind, sep, pattern = entry.partition("=")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", kind):
        raise ConfigError(setting, "each entry is name=pattern, name in lower case letters, "
                          "digits and _")
    try:
        return kind, re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(setting, f"pattern {kind!r} is not a valid regular expression: "
                          f"{exc}") from None


def decode_webhook_secret(secret: Secret) -> bytes | None:
    """The HMAC key inside a ``whsec_<base64>`` secret, or None when it is malformed."""
    text = secret.reveal()
    if not text.startswith("whsec_"):
        return None
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if 24 <= len(key) <= 64 else None


def redact_url(url: str) -> str:
    """A URL as it may appear in a log line or an error: without query string (tokens ride
    there) or credentials."""
    head = url.split("?", 1)[0]
    if "@" in head:
        scheme, _, rest = head.partition("://")
        head = f"{scheme}://***@{rest.split('@', 1)[1]}"
    return head


def describe(settings: Settings) -> dict[str, Any]:
    """A loggable view of the settings: secrets shown only as set or not."""
    view: dict[str, Any] = {}
    for section in SECTIONS:
        values = getattr(settings, section)
        for f in fields(values):
            value = getattr(values, f.name)
            if isinstance(value, Secret):
                value = "set" if value else "unset"
            elif f.name == "urls" or f.name == "call_url_allowlist":
                value = [redact_url(u) for u in value]
            elif f.name == "url":
                value = redact_url(value)
            elif f.name == "targets":
                value = [{"name": t.name, "url": redact_url(t.url), "events": list(t.events)}
                         for t in value]
            elif f.name == "routes":
                # Parameter values may identify a customer: only their names are shown.
                value = [{"path": r.path, "parameters": sorted(k for k, _ in r.parameters),
                          **({"targets": list(r.targets)} if isinstance(r, RouteSettings)
                             else {"engine": r.engine, "language": r.language})}
                         for r in value]
            view[f"{section}.{f.name}"] = value
    return view


def override(settings: Settings, section: str, **changes: Any) -> Settings:
    """A copy of ``settings`` with some values of one section replaced (for the CLI)."""
    return replace(settings, **{section: replace(getattr(settings, section), **changes)})


