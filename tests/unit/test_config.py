"""Settings: the documented file, environment overrides, and one clear error per bad value."""

from pathlib import Path

import pytest

from bridge.config import Secret, describe, load_settings
from bridge.errors import ConfigError

SECRET = "whsec_" + "Y2FsbGJyaWRnZS10ZXN0LXNlY3JldC0zMi1ieXRlcyE="
LOCAL = {"CALLBRIDGE_STT_URL": "ws://127.0.0.1:9/v2/speech-to-text/transcription"}


def test_the_shipped_config_file_loads_and_matches_the_defaults() -> None:
    shipped = load_settings(Path(__file__).parents[2] / "config" / "callbridge.toml",
                            environ={"TELNYX_API_KEY": "k"})
    assert shipped == load_settings(environ={"TELNYX_API_KEY": "k"})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\n[audio]\nchunk_ms = 40\n'
                    '[stt]\nkeyterms = ["Telnyx", "SIP"]\n')
    settings = load_settings(path, environ={
        **LOCAL, "CALLBRIDGE_PORT": "9100", "CALLBRIDGE_WEBHOOK_URLS": "https://a.example/h, "
        "http://127.0.0.1:8/h", "CALLBRIDGE_WEBHOOK_SECRET": SECRET,
        "CALLBRIDGE_WEBHOOK_ALLOW_PRIVATE": "true"})
    assert settings.server.port == 9100
    assert settings.audio.chunk_ms == 40
    assert settings.stt.keyterms == ("Telnyx", "SIP")
    assert settings.webhooks.urls == ("https://a.example/h", "http://127.0.0.1:8/h")
    assert settings.webhooks.secret.reveal() == SECRET


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[speakers]\ninbound = 'customer'\n")
    settings = load_settings(environ={**LOCAL, "CALLBRIDGE_CONFIG": str(path)})
    assert settings.speakers.inbound == "customer"


@pytest.mark.parametrize(("environ", "setting"), [
    ({"CALLBRIDGE_PORT": "http"}, "CALLBRIDGE_PORT"),
    ({"CALLBRIDGE_PORT": "70000"}, "CALLBRIDGE_PORT"),
    ({"CALLBRIDGE_CHUNK_MS": "10"}, "CALLBRIDGE_CHUNK_MS"),
    ({"CALLBRIDGE_STT_URL": "https://api.telnyx.com"}, "CALLBRIDGE_STT_URL"),
    ({"CALLBRIDGE_STT_URL": "wss://api.telnyx.com/v2/speech-to-text/transcription"},
     "TELNYX_API_KEY"),
    ({"CALLBRIDGE_STT_ENGINE": "deepgram"}, "CALLBRIDGE_STT_ENGINE"),
    ({"CALLBRIDGE_WEBHOOK_URLS": "ftp://x.example/"}, "CALLBRIDGE_WEBHOOK_URLS"),
    ({"CALLBRIDGE_WEBHOOK_URLS": "http://hooks.example/x"}, "CALLBRIDGE_WEBHOOK_URLS"),
    ({"CALLBRIDGE_WEBHOOK_URLS": "https://h.example/x"}, "CALLBRIDGE_WEBHOOK_SECRET"),
    ({"CALLBRIDGE_WEBHOOK_SECRET": "hunter2"}, "CALLBRIDGE_WEBHOOK_SECRET"),
    ({"CALLBRIDGE_LOG_LEVEL": "loud"}, "CALLBRIDGE_LOG_LEVEL"),
    ({"CALLBRIDGE_EVENT_LOOP": "trio"}, "CALLBRIDGE_EVENT_LOOP"),
    ({"CALLBRIDGE_LIVE_TOKEN_TTL_S": "5"}, "CALLBRIDGE_LIVE_TOKEN_TTL_S"),
    ({"CALLBRIDGE_MAX_CALLS": "0"}, "CALLBRIDGE_MAX_CALLS"),
    ({"CALLBRIDGE_CONFIG": "/nonexistent/callbridge.toml"}, "CALLBRIDGE_CONFIG"),
    ({"CALLBRIDGE_CONFIG": "/"}, "CALLBRIDGE_CONFIG"),  # a directory
])
def test_a_wrong_value_names_its_setting(environ: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={**LOCAL, **environ})
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"invalid setting {setting}: ")


@pytest.mark.parametrize(("text", "setting"), [
    ("[server]\nport = 'x'\n", "server.port"),
    ("[server]\nprot = 1\n", "server.prot"),
    ("[srever]\n", "srever"),
    ("[stt]\napi_key = 'KEY'\n", "stt.api_key"),
    ("[webhooks]\nurls = 'https://a.example/'\n", "CALLBRIDGE_WEBHOOK_SECRET"),
    ("[audio]\nchunk_ms = 2000\n", "audio.chunk_ms"),
    ("not toml [", "--config"),
])
def test_a_wrong_file_value_names_its_setting(tmp_path: Path, text: str, setting: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=LOCAL)
    assert caught.value.setting == setting


def test_a_directory_given_as_the_settings_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ=LOCAL)
    assert caught.value.setting == "--config"
    assert str(caught.value) == (f"invalid setting --config: {tmp_path} is a directory, "
                                 "not a settings file")


def test_secrets_never_show_in_reprs_or_descriptions() -> None:
    settings = load_settings(environ={**LOCAL, "TELNYX_API_KEY": "KEY123secret",
                                      "CALLBRIDGE_WEBHOOK_SECRET": SECRET})
    assert "KEY123secret" not in repr(settings) and SECRET not in repr(settings)
    view = describe(settings)
    assert view["stt.api_key"] == "set" and view["webhooks.secret"] == "set"
    assert "KEY123secret" not in str(view)
    assert str(Secret("x")) == "Secret('**********')"


def test_engine_routes_and_per_call_choices(tmp_path: Path) -> None:
    from bridge.stt.engines import Engines

    path = tmp_path / "c.toml"
    path.write_text('[stt]\nsecondary_engine = "deepgram"\ncall_options = ["engine", "language"]\n'
                    '[[stt.routes]]\npath = "/streams/plivo"\nengine = "deepgram"\n'
                    'language = "es-US"\n'
                    '[[stt.routes]]\nparameters = { tenant = "acme" }\nlanguage = "fr-FR"\n')
    settings = load_settings(path, environ={**LOCAL, "DEEPGRAM_API_KEY": "k"})
    engines = Engines(settings, lambda: "ws://127.0.0.1:9/")
    assert engines.for_call({}, "/streams/plivo") == ("deepgram", {"language": "es-US"})
    assert engines.for_call({"tenant": "acme"}, "/streams/twilio") == (
        "telnyx", {"language": "fr-FR"})
    assert engines.for_call({"callbridge_engine": "deepgram",
                             "callbridge_language": "de-DE"}, "/streams/twilio") == (
        "deepgram", {"language": "de-DE"})
    assert engines.for_call({"callbridge_engine": "nonsense",
                             "callbridge_language": "x; drop"}, "/x") == ("telnyx", {})
    path.write_text('[[stt.routes]]\nengine = "assemblyai"\n')
    with pytest.raises(ConfigError, match="neither"):
        load_settings(path, environ=LOCAL)
