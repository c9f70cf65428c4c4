"""The ``[analytics]`` settings: on by default, and a wrong value named as it was written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError

LOCAL = {"CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/v2/speech-to-text/transcription"}


def test_talk_analytics_are_on_by_default_and_can_be_switched_off() -> None:
    assert load_settings(environ=LOCAL).analytics.talk is True
    off = load_settings(environ={**LOCAL, "CALLBRIDGE_ANALYTICS_TALK": "false"})
    assert off.analytics.talk is False


@pytest.mark.parametrize(("text", "setting"), [
    ("[analytics]\nvad_aggressiveness = 4\n", "analytics.vad_aggressiveness"),
    ("[analytics]\nhangover_ms = 10\n", "analytics.hangover_ms"),
    ("[analytics]\nmin_speech_ms = 5000\n", "analytics.min_speech_ms"),
    ("[analytics]\ninterruption_after_ms = -1\n", "analytics.interruption_after_ms"),
    ("[analytics]\ntalk = 'sometimes'\n", "analytics.talk"),
])
def test_a_wrong_analytics_value_names_its_setting(tmp_path: Path, text: str,
                                                   setting: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=LOCAL)
    assert caught.value.setting == setting


def test_a_wrong_variable_is_named_as_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={**LOCAL, "CALLBRIDGE_ANALYTICS_VAD_AGGRESSIVENESS": "9"})
    assert caught.value.setting == "CALLBRIDGE_ANALYTICS_VAD_AGGRESSIVENESS"
