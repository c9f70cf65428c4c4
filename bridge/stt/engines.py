"""The engines a bridge can use, by name, and the per-call options they accept.

``stt.engine`` is the primary; ``stt.secondary_engine`` (optional) takes over a leg whose
primary failed fatally or kept failing. A call may pick among these two with the custom
parameter ``callbridge_engine``, and set the options listed in ``stt.call_options`` (such as
``callbridge_language=de-DE``), when the allow-list names them.

Engine names come from the registry ``bridge.config.ENGINES`` (settings section, key,
session limit); ``SESSIONS`` maps the same names to session classes here, since the session
modules import the settings and not the other way round.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from bridge.config import (
    DEFAULT_STT_URL,
    ENGINES,
    Settings,
    SttTarget,
    engine_settings,
    session_limit_s,
    stt_target,
)
from bridge.events import AudioEncoding
from bridge.stt.assemblyai import AssemblyAISession
from bridge.stt.base import EngineSession
from bridge.stt.deepgram import DeepgramSession
from bridge.stt.telnyx import TelnyxSession
from bridge.stt.transport import check_proxy

OPTION_VALUE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")
PARAMETER_PREFIX: Final = "callbridge_"


class SessionClass(Protocol):
    """How every engine's session is built from its settings section."""

    def __call__(self, settings: Any, encoding: AudioEncoding, sample_rate: int = 8000, *,
                 close_grace_s: float = ...) -> EngineSession: ...


# The session class of each engine in the registry (``bridge.config.ENGINES``): the same
# names, checked by a test.
SESSIONS: Final[Mapping[str, SessionClass]] = {
    "telnyx": TelnyxSession,
    "deepgram": DeepgramSession,
    "assemblyai": AssemblyAISession,
}


# Where the embedded recognizer listens (its port is chosen when it starts): what a proxy
# rule is judged against when it stands in for the service.
EMBEDDED_URL: Final = "ws://127.0.0.1/"


def check_engine_proxies(settings: Settings) -> None:
    """Raise ``ConfigError`` when a configured engine would be reached through a SOCKS
    proxy that cannot be spoken (see ``bridge.stt.transport.check_proxy``), judged
    against the address each engine's sessions will really open."""
    for name in settings.stt.in_use():
        if not ENGINES[name].embedded:
            url: str = engine_settings(settings, name).url
        elif stt_target(settings) is SttTarget.EMBEDDED:
            url = EMBEDDED_URL
        else:
            url = settings.telnyx.url or DEFAULT_STT_URL
        check_proxy(url)


class Engines:
    """Opens sessions of the configured engines (see the module docstring)."""

    def __init__(self, settings: Settings, telnyx_url: Callable[[], str]) -> None:
        self.settings = settings
        self._telnyx_url = telnyx_url
        stt = settings.stt
        self.primary = stt.engine
        self.secondary = stt.secondary_engine or None
        self.names = stt.in_use()
        self._reachable: bool | None = None
        self._checked_at = 0.0

    def for_call(self, parameters: Mapping[str, str],
                 path: str = "") -> tuple[str, dict[str, str]]:
        """The engine and the options for a call: the first matching ``stt.routes`` entry
        sets them, then the call's own custom parameters may change what the allow-list
        lets them; anything else in them is ignored."""
        allowed = self.settings.stt.call_options
        chosen = self.primary
        options: dict[str, str] = {}
        for route in self.settings.stt.routes:
            if route.matches(parameters, path):
                chosen = route.engine or chosen
                if route.language:
                    options["language"] = route.language
                break
        for name in allowed:
            value = parameters.get(PARAMETER_PREFIX + name)
            if name != "engine" and value and OPTION_VALUE.match(value):
                options[name] = value
        engine = parameters.get(PARAMETER_PREFIX + "engine")
        if "engine" in allowed and engine in self.names:
            chosen = engine
        return chosen, options

    def open(self, name: str, encoding: AudioEncoding, sample_rate: int,
             options: Mapping[str, str]) -> EngineSession:
        section = replace(engine_settings(self.settings, name), url=self._url(name))
        language = options.get("language")
        if language and "language" in {f.name for f in fields(section)}:
            section = replace(section, language=language)
        return SESSIONS[name](section, encoding, sample_rate,
                              close_grace_s=self.settings.stt.close_grace_s)

    def _url(self, name: str) -> str:
        """The engine's URL; the bridge picks it for the engine the embedded recognizer
        stands in for (the service, or the recognizer it started)."""
        if ENGINES[name].embedded:
            return self._telnyx_url()
        url: str = engine_settings(self.settings, name).url
        return url

    async def reachable(self) -> bool:
        """Whether the primary engine's host accepts a TCP connection (checked at most
        every 10 s; the embedded recognizer is its child process on this machine)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked_at < 10 and self._reachable is not None:
            return self._reachable
        parts = urlsplit(self._url(self.primary))
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            async with asyncio.timeout(2):
                _, writer = await asyncio.open_connection(parts.hostname, port)
            writer.close()
            await writer.wait_closed()
            self._reachable = True
        except (OSError, TimeoutError):
            self._reachable = False
        self._checked_at = loop.time()
        return self._reachable

    def max_session_s(self, name: str) -> float:
        """How long a session of this engine may live (0: no limit)."""
        return session_limit_s(self.settings, name)
