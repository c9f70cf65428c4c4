"""The start-up check of SOCKS proxies judges the address each engine really opens."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from bridge.config import Secret, Settings
from bridge.errors import ConfigError
from bridge.stt.engines import check_engine_proxies


@pytest.fixture
def socks_for_the_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SOCKS proxy for everything but this machine, and no python-socks to speak it."""
    for name in ("HTTPS_PROXY", "https_proxy", "WSS_PROXY", "wss_proxy", "WS_PROXY",
                 "ws_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "no_proxy", "socks_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SOCKS_PROXY", "socks5h://127.0.0.1:1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setitem(sys.modules, "python_socks.async_.asyncio", None)


@pytest.mark.usefixtures("socks_for_the_internet")
def test_the_embedded_recognizer_on_this_machine_needs_no_proxy() -> None:
    check_engine_proxies(Settings())  # no key, no URL: the recognizer on 127.0.0.1


@pytest.mark.usefixtures("socks_for_the_internet")
def test_the_telnyx_service_behind_a_socks_proxy_without_python_socks_stops_the_start() -> None:
    settings = Settings()
    with_key = replace(settings, telnyx=replace(settings.telnyx, api_key=Secret("key")))
    with pytest.raises(ConfigError) as raised:
        check_engine_proxies(with_key)
    assert "SOCKS_PROXY" in str(raised.value) and "python-socks" in str(raised.value)
