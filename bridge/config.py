"""Typed settings: the one source of truth for configuration.

Values come from, in rising precedence: the defaults below, the TOML file named by
``CALLBRIDGE_CONFIG`` (or ``--config``), and environment variables. Secrets (the Telnyx key,
the webhook secret) come from the environment only, never from the file, and are held in
``Secret`` so that printing a settings object cannot reveal them.

A wrong value raises ``ConfigError`` naming the setting as the user wrote it
(``webhooks.urls`` in the file, ``CALLBRIDGE_WEBHOOK_URLS`` in the environment).
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
import tomllib
from collections.abc import Mapping
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
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_message_bytes: int = 64 * 1024
    max_calls: int = 2000
    drain_s: float = 30.0
    event_loop: str = "auto"
    admin_token: Secret = field(default_factory=lambda: Secret(""))
    start_timeout_s: float = 5.0
    max_pending_streams: int = 256
    max_pending_per_address: int = 32
    header_timeout_s: float = 10.0
    duplicate_call_id: str = "refuse"
    require_ingress_auth: bool = False


@dataclass(frozen=True, slots=True)
class AudioSettings:
    chunk_ms: int = 100
    reorder_window_frames: int = 5
    max_gap_fill_ms: int = 5000
    max_buffer_ms: int = 5000


@dataclass(frozen=True, slots=True)
class EngineRouteSettings:
    """An engine (and language) for calls on ``path`` whose parameters all match."""

    engine: str = ""
    language: str = ""
    path: str = ""
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SttSettings:
    engine: str = "telnyx"
    secondary_engine: str = ""
    call_options: tuple[str, ...] = ("language",)
    silence_timeout_s: float = 0.0
    roll_margin_s: float = 300.0
    routes: tuple[EngineRouteSettings, ...] = ()
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
    close_grace_s: float = 2.0
    replay_ms: int = 30000
    ping_interval_s: float = 20.0


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


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """A named webhook target: its URL, its signing secret and the events it wants."""

    name: str
    url: str
    secret: Secret = field(default_factory=lambda: Secret(""))
    secret_env: str = "CALLBRIDGE_WEBHOOK_SECRET"  # noqa: S105 - a variable's name, not a secret
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


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: str = "callbridge-outbox.db"
    max_events: int = 1_000_000
    retention_days: float = 0.0


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


@dataclass(frozen=True, slots=True)
class SpeakerSettings:
    inbound: str = "caller"
    outbound: str = "agent"
    mixed: str = "call"


@dataclass(frozen=True, slots=True)
class LiveSettings:
    token_ttl_s: float = 900.0
    backlog_bytes: int = 64 * 1024
    viewer_buffer: int = 256
    max_viewers: int = 20
    keepalive_s: float = 15.0
    retain_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    stt: SttSettings = field(default_factory=SttSettings)
    local_stt: LocalSttSettings = field(default_factory=LocalSttSettings)
    deepgram: DeepgramSettings = field(default_factory=DeepgramSettings)
    assemblyai: AssemblyAISettings = field(default_factory=AssemblyAISettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    compliance: ComplianceSettings = field(default_factory=ComplianceSettings)
    ingress_auth: IngressAuthSettings = field(default_factory=IngressAuthSettings)
    speakers: SpeakerSettings = field(default_factory=SpeakerSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


# Environment variable -> (section, key). Values are parsed like the file's, as strings.
ENVIRONMENT: Final[Mapping[str, tuple[str, str]]] = {
    "CALLBRIDGE_HOST": ("server", "host"),
    "CALLBRIDGE_DRAIN_S": ("server", "drain_s"),
    "CALLBRIDGE_ADMIN_TOKEN": ("server", "admin_token"),
    "CALLBRIDGE_LIVE_TOKEN_TTL_S": ("live", "token_ttl_s"),
    "TWILIO_AUTH_TOKEN": ("ingress_auth", "twilio_auth_token"),
    "CALLBRIDGE_TWILIO_PUBLIC_URL": ("ingress_auth", "twilio_public_url"),
    "CALLBRIDGE_INGRESS_TOKEN": ("ingress_auth", "bearer_token"),
    "CALLBRIDGE_EXOTEL_BASIC": ("ingress_auth", "exotel_basic"),
    "CALLBRIDGE_AUDIOHOOK_KEYS": ("ingress_auth", "audiohook_keys"),
    "CALLBRIDGE_STREAM_TOKEN": ("ingress_auth", "stream_token"),
    "CALLBRIDGE_REDACTION": ("compliance", "redaction"),
    "CALLBRIDGE_DTMF": ("compliance", "dtmf"),
    "CALLBRIDGE_PORT": ("server", "port"),
    "CALLBRIDGE_MAX_CALLS": ("server", "max_calls"),
    "CALLBRIDGE_START_TIMEOUT_S": ("server", "start_timeout_s"),
    "CALLBRIDGE_MAX_PENDING_STREAMS": ("server", "max_pending_streams"),
    "CALLBRIDGE_MAX_PENDING_PER_ADDRESS": ("server", "max_pending_per_address"),
    "CALLBRIDGE_DUPLICATE_CALL_ID": ("server", "duplicate_call_id"),
    "CALLBRIDGE_REQUIRE_INGRESS_AUTH": ("server", "require_ingress_auth"),
    "CALLBRIDGE_HEADER_TIMEOUT_S": ("server", "header_timeout_s"),
    "CALLBRIDGE_EVENT_LOOP": ("server", "event_loop"),
    "CALLBRIDGE_CHUNK_MS": ("audio", "chunk_ms"),
    "CALLBRIDGE_STT_URL": ("stt", "url"),
    "CALLBRIDGE_ENGINE": ("stt", "engine"),
    "CALLBRIDGE_SECONDARY_ENGINE": ("stt", "secondary_engine"),
    "CALLBRIDGE_STT_SILENCE_TIMEOUT_S": ("stt", "silence_timeout_s"),
    "CALLBRIDGE_STT_ROLL_MARGIN_S": ("stt", "roll_margin_s"),
    "CALLBRIDGE_ASSEMBLYAI_MAX_SESSION_S": ("assemblyai", "max_session_s"),
    "DEEPGRAM_API_KEY": ("deepgram", "api_key"),
    "CALLBRIDGE_DEEPGRAM_URL": ("deepgram", "url"),
    "CALLBRIDGE_DEEPGRAM_KEEPALIVE_S": ("deepgram", "keepalive_s"),
    "ASSEMBLYAI_API_KEY": ("assemblyai", "api_key"),
    "CALLBRIDGE_ASSEMBLYAI_URL": ("assemblyai", "url"),
    "TELNYX_API_KEY": ("stt", "api_key"),
    "CALLBRIDGE_STT_ENGINE": ("stt", "transcription_engine"),
    "CALLBRIDGE_STT_INTERIM_RESULTS": ("stt", "interim_results"),
    "CALLBRIDGE_LOCAL_STT_MODEL": ("local_stt", "model"),
    "CALLBRIDGE_LOCAL_STT_WORKERS": ("local_stt", "workers"),
    "CALLBRIDGE_LOCAL_STT_MAX_SESSIONS": ("local_stt", "max_sessions"),
    "CALLBRIDGE_WEBHOOK_URLS": ("webhooks", "urls"),
    "CALLBRIDGE_WEBHOOK_SECRET": ("webhooks", "secret"),
    "CALLBRIDGE_WEBHOOK_ALLOW_HTTP": ("webhooks", "allow_insecure_http"),
    "CALLBRIDGE_WEBHOOK_ALLOW_PRIVATE": ("webhooks", "allow_private_networks"),
    "CALLBRIDGE_WEBHOOK_RETRY_SCHEDULE": ("webhooks", "retry_schedule_s"),
    "CALLBRIDGE_WEBHOOK_TTL_S": ("webhooks", "ttl_s"),
    "CALLBRIDGE_OUTBOX_PATH": ("outbox", "path"),
    "CALLBRIDGE_OUTBOX_MAX_EVENTS": ("outbox", "max_events"),
    "CALLBRIDGE_OUTBOX_RETENTION_DAYS": ("outbox", "retention_days"),
    "CALLBRIDGE_LOG_LEVEL": ("logging", "level"),
    "CALLBRIDGE_LOG_FORMAT": ("logging", "format"),
}
SECRET_KEYS: Final = {("stt", "api_key"), ("webhooks", "secret"), ("server", "admin_token"),
                      ("deepgram", "api_key"), ("assemblyai", "api_key"),
                      ("ingress_auth", "twilio_auth_token"), ("ingress_auth", "bearer_token"),
                      ("ingress_auth", "exotel_basic"), ("ingress_auth", "audiohook_keys"),
                      ("ingress_auth", "stream_token")}
SECRET_NAMES: Final = {("stt", "api_key"): "TELNYX_API_KEY",
                       ("webhooks", "secret"): "CALLBRIDGE_WEBHOOK_SECRET",
                       ("server", "admin_token"): "CALLBRIDGE_ADMIN_TOKEN",
                       ("ingress_auth", "audiohook_keys"): "CALLBRIDGE_AUDIOHOOK_KEYS",
                       ("ingress_auth", "exotel_basic"): "CALLBRIDGE_EXOTEL_BASIC"}

T = TypeVar("T")


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build validated settings from the file (if any) and the environment."""
    env = os.environ if environ is None else environ
    given_as = "--config" if path else "CALLBRIDGE_CONFIG"
    path = path or env.get("CALLBRIDGE_CONFIG") or None
    raw: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    if path is not None:
        raw = _read_file(Path(path), given_as)
        for section, values in raw.items():
            for key in values:
                origin[(section, key)] = f"{section}.{key}"
                if (section, key) in SECRET_KEYS:
                    raise ConfigError(f"{section}.{key}", "secrets are read from the "
                                      "environment only; remove it from the file")
    for variable, (section, key) in ENVIRONMENT.items():
        if variable in env and env[variable] != "":
            raw.setdefault(section, {})[key] = env[variable]
            origin[(section, key)] = variable
    settings = _build(raw, origin, env)
    _validate(settings, origin)
    return settings


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
        if section not in SECTIONS:
            raise ConfigError(section, f"unknown section; expected one of {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(section, "must be a table")
    return data


SECTIONS: Final[Mapping[str, type[Any]]] = {
    "server": ServerSettings,
    "audio": AudioSettings,
    "stt": SttSettings,
    "local_stt": LocalSttSettings,
    "deepgram": DeepgramSettings,
    "assemblyai": AssemblyAISettings,
    "webhooks": WebhookSettings,
    "outbox": OutboxSettings,
    "compliance": ComplianceSettings,
    "ingress_auth": IngressAuthSettings,
    "speakers": SpeakerSettings,
    "live": LiveSettings,
    "logging": LoggingSettings,
}


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
        secret_env = item.get("secret_env", "CALLBRIDGE_WEBHOOK_SECRET")
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
        unknown = set(item) - {"engine", "language", "path", "parameters"}
        if unknown:
            raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown setting")
        parameters = item.get("parameters", {})
        values = [item.get(k, "") for k in ("engine", "language", "path")]
        if not all(isinstance(v, str) for v in values) or not isinstance(parameters, dict) \
                or not all(isinstance(v, str) for v in parameters.values()):
            raise ConfigError(name, "engine, language and path are strings; parameters a "
                              "table of strings")
        engine, language, route_path = values
        routes.append(EngineRouteSettings(engine, language, route_path,
                                          tuple(sorted(parameters.items()))))
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
    def name(section: str, key: str) -> str:
        default = SECRET_NAMES.get((section, key), f"{section}.{key}")
        return origin.get((section, key), default)

    def check(ok: bool, section: str, key: str, problem: str) -> None:
        if not ok:
            raise ConfigError(name(section, key), problem)

    s = settings
    check(1 <= s.server.port <= 65535, "server", "port", "must be 1-65535")
    check(1024 <= s.server.max_message_bytes <= 16 * 1024 * 1024, "server",
          "max_message_bytes", "must be 1024-16777216")
    check(s.server.max_calls >= 1, "server", "max_calls", "must be at least 1")
    check(0.5 <= s.server.start_timeout_s <= 120, "server", "start_timeout_s",
          "must be 0.5-120 (seconds)")
    check(1 <= s.server.max_pending_streams <= 100_000, "server", "max_pending_streams",
          "must be 1-100000")
    check(0 <= s.server.max_pending_per_address <= 100_000, "server",
          "max_pending_per_address", "must be 0-100000 (0: no cap per address)")
    check(1 <= s.server.header_timeout_s <= 600, "server", "header_timeout_s",
          "must be 1-600 (seconds)")
    check(s.server.duplicate_call_id in ("refuse", "separate"), "server", "duplicate_call_id",
          "must be refuse or separate")
    check(0 <= s.server.drain_s <= 3600, "server", "drain_s", "must be 0-3600 (seconds)")
    check(s.server.event_loop in ("auto", "asyncio", "uvloop"), "server", "event_loop",
          "must be auto, asyncio or uvloop")
    check(60 <= s.live.token_ttl_s <= 86400, "live", "token_ttl_s", "must be 60-86400 (seconds)")
    check(0 <= s.live.backlog_bytes <= 16 * 1024 * 1024, "live", "backlog_bytes",
          "must be 0-16777216")
    check(16 <= s.live.viewer_buffer <= 10000, "live", "viewer_buffer", "must be 16-10000")
    check(1 <= s.live.max_viewers <= 1000, "live", "max_viewers", "must be 1-1000")
    check(1 <= s.live.keepalive_s <= 300, "live", "keepalive_s", "must be 1-300 (seconds)")
    check(0 <= s.live.retain_s <= 3600, "live", "retain_s", "must be 0-3600 (seconds)")
    check(20 <= s.audio.chunk_ms <= 1000, "audio", "chunk_ms", "must be 20-1000 (ms)")
    check(0 <= s.audio.reorder_window_frames <= 50, "audio", "reorder_window_frames",
          "must be 0-50")
    check(0 <= s.audio.max_gap_fill_ms <= 60000, "audio", "max_gap_fill_ms", "must be 0-60000")
    check(s.audio.chunk_ms <= s.audio.max_buffer_ms <= 60000, "audio", "max_buffer_ms",
          "must be at least chunk_ms and at most 60000")
    check(s.stt.url == "" or s.stt.url.startswith(("ws://", "wss://")), "stt", "url",
          "must be a ws:// or wss:// URL, or empty")
    check(s.stt.transcription_engine in TELNYX_ENGINES, "stt", "transcription_engine",
          f"must be one of {', '.join(TELNYX_ENGINES)} (case-sensitive)")
    check(s.stt.endpointing == "" or s.stt.endpointing == "false"
          or s.stt.endpointing.isdigit(), "stt", "endpointing",
          "must be a number of milliseconds or \"false\"")
    check(s.stt.connect_timeout_s > 0, "stt", "connect_timeout_s", "must be positive")
    check(0 <= s.stt.close_grace_s <= 60, "stt", "close_grace_s", "must be 0-60 (seconds)")
    check(1000 <= s.stt.replay_ms <= 300000, "stt", "replay_ms", "must be 1000-300000")
    engines = ("telnyx", "deepgram", "assemblyai")
    check(s.stt.engine in engines, "stt", "engine", "must be telnyx, deepgram or assemblyai")
    check(s.stt.secondary_engine in ("", *engines) and s.stt.secondary_engine != s.stt.engine,
          "stt", "secondary_engine", "must be another of telnyx, deepgram, assemblyai, or empty")
    check(all(o in ("engine", "language") for o in s.stt.call_options), "stt", "call_options",
          "may list engine and language")
    for n, engine_route in enumerate(s.stt.routes):
        if engine_route.engine and engine_route.engine not in (s.stt.engine,
                                                               s.stt.secondary_engine):
            raise ConfigError(f"stt.routes[{n}]", f"engine {engine_route.engine!r} is neither "
                              "stt.engine nor stt.secondary_engine")
    check(s.stt.silence_timeout_s >= 0, "stt", "silence_timeout_s", "must be >= 0 (0: off)")
    check(s.stt.roll_margin_s >= 0, "stt", "roll_margin_s", "must be >= 0")
    used = {s.stt.engine, s.stt.secondary_engine}
    if "deepgram" in used:
        check(s.deepgram.url.startswith(("ws://", "wss://")), "deepgram", "url",
              "must be a ws:// or wss:// URL")
        dg_host = urlsplit(s.deepgram.url).hostname or ""
        check(bool(s.deepgram.api_key) or is_loopback_host(dg_host), "deepgram", "api_key",
              "DEEPGRAM_API_KEY must be set: deepgram.url is not on this machine")
    if "assemblyai" in used:
        check(s.assemblyai.url.startswith(("ws://", "wss://")), "assemblyai", "url",
              "must be a ws:// or wss:// URL")
        aai_host = urlsplit(s.assemblyai.url).hostname or ""
        check(bool(s.assemblyai.api_key) or is_loopback_host(aai_host), "assemblyai",
              "api_key", "ASSEMBLYAI_API_KEY must be set: assemblyai.url is not on this machine")
    check(0.1 <= s.deepgram.keepalive_s <= 9, "deepgram", "keepalive_s",
          "must be 0.1-9 (Deepgram closes after 10 s without audio)")
    check(1 <= s.stt.ping_interval_s <= 300, "stt", "ping_interval_s", "must be 1-300")
    check(s.webhooks.timeout_s > 0, "webhooks", "timeout_s", "must be positive")
    check(s.webhooks.ttl_s > 0, "webhooks", "ttl_s", "must be positive")
    check(1 <= s.webhooks.max_in_flight <= 256, "webhooks", "max_in_flight", "must be 1-256")
    check(1 <= s.webhooks.max_call_targets <= 10_000, "webhooks", "max_call_targets",
          "must be 1-10000")
    check(bool(s.webhooks.retry_schedule_s)
          and all(0.01 <= step <= 86400 for step in s.webhooks.retry_schedule_s),
          "webhooks", "retry_schedule_s", "must be steps of 0.01-86400 seconds")
    check(s.webhooks.partial_max_age_s > 0, "webhooks", "partial_max_age_s", "must be positive")
    check(1000 <= s.outbox.max_events <= 100_000_000, "outbox", "max_events",
          "must be 1000-100000000")
    check(s.outbox.retention_days >= 0, "outbox", "retention_days", "must be >= 0")
    check(bool(s.outbox.path), "outbox", "path", "must be a file path")
    check(s.webhooks.drain_timeout_s >= 0, "webhooks", "drain_timeout_s", "must be >= 0")
    check(s.compliance.dtmf in ("drop", "masked"), "compliance", "dtmf",
          "must be drop or masked")
    check(0.1 <= s.compliance.hold_s <= 10, "compliance", "hold_s", "must be 0.1-10 (seconds)")
    for entry in s.compliance.custom_patterns:
        custom_pattern(entry, name("compliance", "custom_patterns"))
    if s.server.admin_token:
        check(len(s.server.admin_token.reveal()) >= 16, "server", "admin_token",
              "must be at least 16 characters")
    auth = s.ingress_auth
    if auth.audiohook_keys:
        try:
            parse_audiohook_keys(auth.audiohook_keys.reveal())
        except ValueError:
            raise ConfigError(name("ingress_auth", "audiohook_keys"), "expected comma-separated "
                              "api_key:base64_client_secret pairs") from None
    if auth.exotel_basic:
        check(":" in auth.exotel_basic.reveal(), "ingress_auth", "exotel_basic",
              "expected user:password")
    check(auth.twilio_public_url == "" or auth.twilio_public_url.startswith("wss://"),
          "ingress_auth", "twilio_public_url", "must start with wss:// (as Twilio dials it)")
    check(s.logging.level in LOG_LEVELS, "logging", "level", f"must be one of {LOG_LEVELS}")
    check(s.logging.format in LOG_FORMATS, "logging", "format", f"must be one of {LOG_FORMATS}")
    for url in s.webhooks.urls:
        problem = check_webhook_url(url, allow_insecure_http=s.webhooks.allow_insecure_http,
                                    allow_private=s.webhooks.allow_private_networks)
        check(problem is None, "webhooks", "urls", f"{redact_url(url)}: {problem}")
    if s.webhooks.secret:
        check(decode_webhook_secret(s.webhooks.secret) is not None, "webhooks", "secret",
              "must be whsec_ followed by base64 of 24-64 random bytes")
    names = [t.name for t in s.webhooks.all_targets()]
    for n, target in enumerate(s.webhooks.targets):
        where = f"webhooks.targets[{n}]"
        if names.count(target.name) > 1:
            raise ConfigError(where, f"target name {target.name!r} is used twice")
        problem = check_webhook_url(target.url,
                                    allow_insecure_http=s.webhooks.allow_insecure_http,
                                    allow_private=s.webhooks.allow_private_networks)
        if problem is not None:
            raise ConfigError(where, f"{redact_url(target.url)}: {problem}")
        if decode_webhook_secret(target.secret) is None:
            raise ConfigError(target.secret_env, f"the secret of target {target.name!r} must be "
                              "whsec_ followed by base64 of 24-64 random bytes")
        for pattern in target.events:
            if not any(fnmatch(t.value, pattern) for t in EventKinds):
                raise ConfigError(where, f"event filter {pattern!r} matches no event type")
    for n, route in enumerate(s.webhooks.routes):
        for target_name in route.targets:
            if target_name not in names:
                raise ConfigError(f"webhooks.routes[{n}]", f"unknown target {target_name!r}")
    for entry in s.webhooks.call_url_allowlist:
        problem = check_webhook_url(entry, allow_insecure_http=s.webhooks.allow_insecure_http,
                                    allow_private=s.webhooks.allow_private_networks)
        if problem is None and urlsplit(entry).query:
            problem = "must not have a query string (entries match scheme, host, port, path)"
        check(problem is None, "webhooks", "call_url_allowlist",
              f"{redact_url(entry)}: {problem}")
    stt_host = urlsplit(s.stt.url).hostname or ""
    check(bool(s.stt.api_key) or not s.stt.url or is_loopback_host(stt_host), "stt", "api_key",
          "TELNYX_API_KEY must be set: stt.url is not on this machine")
    check(s.local_stt.model in ("whisper-tiny.en", "pocketsphinx"), "local_stt", "model",
          "must be whisper-tiny.en or pocketsphinx")
    check(1 <= s.local_stt.beam_size <= 5, "local_stt", "beam_size", "must be 1-5")
    check(1 <= s.local_stt.port <= 65535 or s.local_stt.port == 0, "local_stt", "port",
          "must be 0-65535")
    check(0 <= s.local_stt.workers <= 64, "local_stt", "workers",
          "must be 0-64 (0: one per CPU)")
    check(0 <= s.local_stt.max_sessions <= 1000, "local_stt", "max_sessions",
          "must be 0-1000 (0: 8 per recognition worker)")
    check(100 <= s.local_stt.endpointing_ms <= 10000, "local_stt", "endpointing_ms",
          "must be 100-10000")
    check(200 <= s.local_stt.partial_every_ms <= 10000, "local_stt", "partial_every_ms",
          "must be 200-10000")
    check(1000 <= s.local_stt.max_utterance_ms <= 60000, "local_stt", "max_utterance_ms",
          "must be 1000-60000")
    if s.webhooks.urls:
        check(bool(s.webhooks.secret), "webhooks", "secret",
              "webhook URLs are set, so CALLBRIDGE_WEBHOOK_SECRET must be set to sign them")


class SttTarget(enum.Enum):
    """Where a bridge's legs are transcribed."""

    TELNYX = "telnyx"  # the Telnyx service (a key is set)
    CONFIGURED = "configured"  # stt.url as given (a local server or an emulator)
    EMBEDDED = "embedded"  # no key, no URL: the bridge starts the embedded recognizer


def uses_telnyx_protocol(settings: Settings) -> bool:
    return "telnyx" in (settings.stt.engine, settings.stt.secondary_engine)


def stt_target(settings: Settings) -> SttTarget:
    """Where the Telnyx-protocol engine goes: an explicit URL, Telnyx with a key, else the
    embedded recognizer (only started when the Telnyx engine is in use)."""
    if settings.stt.url:
        return SttTarget.CONFIGURED
    return SttTarget.TELNYX if settings.stt.api_key else SttTarget.EMBEDDED


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
                value = [{"targets": list(r.targets), "path": r.path,
                          "parameters": sorted(k for k, _ in r.parameters)} for r in value]
            view[f"{section}.{f.name}"] = value
    return view


def override(settings: Settings, section: str, **changes: Any) -> Settings:
    """A copy of ``settings`` with some values of one section replaced (for the CLI)."""
    return replace(settings, **{section: replace(getattr(settings, section), **changes)})


