"""Settings: the documented file, environment overrides, and one clear error per bad value."""

from dataclasses import fields
from pathlib import Path

import pytest

from bridge.config import MEDIA_DIALECTS, Secret, describe, load_settings
from bridge.errors import ConfigError
from bridge.web.media import ENDPOINTS

SECRET = "whsec_" + "Y2FsbGJyaWRnZS10ZXN0LXNlY3JldC0zMi1ieXRlcyE="
LOCAL = {"CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/v2/speech-to-text/transcription"}


def test_the_shipped_config_file_loads_and_matches_the_defaults() -> None:
    notices: list[str] = []
    shipped = load_settings(Path(__file__).parents[2] / "config" / "callbridge.toml",
                            environ={"TELNYX_API_KEY": "k"}, warn=notices.append)
    assert shipped == load_settings(environ={"TELNYX_API_KEY": "k"})
    assert notices == []  # it uses no deprecated key


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\n[audio]\nchunk_ms = 40\n'
                    '[telnyx]\nkeyterms = ["Telnyx", "SIP"]\n')
    settings = load_settings(path, environ={
        **LOCAL, "CALLBRIDGE_SERVER_PORT": "9100",
        "CALLBRIDGE_WEBHOOKS_URLS": "https://a.example/h, http://127.0.0.1:8/h",
        "CALLBRIDGE_WEBHOOKS_SECRET": SECRET,
        "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true"})
    assert settings.server.port == 9100
    assert settings.audio.chunk_ms == 40
    assert settings.telnyx.keyterms == ("Telnyx", "SIP")
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
    ({"CALLBRIDGE_TELNYX_URL": "https://api.telnyx.com"}, "CALLBRIDGE_TELNYX_URL"),
    ({"CALLBRIDGE_TELNYX_URL": "wss://api.telnyx.com/v2/speech-to-text/transcription"},
     "TELNYX_API_KEY"),
    ({"CALLBRIDGE_STT_ENGINE": "Deepgrm"}, "CALLBRIDGE_STT_ENGINE"),
    ({"CALLBRIDGE_STT_ENGINE": "deepgram", "CALLBRIDGE_DEEPGRAM_URL": "wss://dg.example/"},
     "DEEPGRAM_API_KEY"),
    ({"CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE": "deepgram"},
     "CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE"),
    ({"CALLBRIDGE_SERVER_PORT": "http"}, "CALLBRIDGE_SERVER_PORT"),
    ({"CALLBRIDGE_WEBHOOK_URLS": "ftp://x.example/"}, "CALLBRIDGE_WEBHOOK_URLS"),
    ({"CALLBRIDGE_WEBHOOK_URLS": "http://hooks.example/x"}, "CALLBRIDGE_WEBHOOK_URLS"),
    ({"CALLBRIDGE_WEBHOOK_URLS": "https://h.example/x"}, "CALLBRIDGE_WEBHOOKS_SECRET"),
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
    ("[webhooks]\nurls = 'https://a.example/'\n", "CALLBRIDGE_WEBHOOKS_SECRET"),
    ("[telnyx]\napi_key = 'KEY'\n", "telnyx.api_key"),
    ("[stt]\ntranscription_engine = 'deepgram'\n", "stt.transcription_engine"),
    ("[telnyx]\ntranscription_engine = 'deepgram'\n", "telnyx.transcription_engine"),
    ("[audio]\nchunk_ms = 2000\n", "audio.chunk_ms"),
    # A recording route without the artifact store: the route that asks for it is named.
    ("[[stt.routes]]\npath = '/streams/twilio'\n[[stt.routes]]\npath = '/streams/telnyx'\n"
     "recording = true\n", "stt.routes[1].recording"),
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
    assert view["telnyx.api_key"] == "set" and view["webhooks.secret"] == "set"
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


def test_the_engine_registry_and_the_session_classes_name_the_same_engines() -> None:
    from bridge.config import ENGINES, SECTIONS
    from bridge.stt.engines import SESSIONS

    assert set(ENGINES) == set(SESSIONS) == {"telnyx", "deepgram", "assemblyai"}
    for spec in ENGINES.values():
        names = {f.name for f in fields(SECTIONS[spec.section])}
        assert {"url", "api_key"} <= names
        assert not spec.session_limit_key or spec.session_limit_key in names


def test_the_engine_registry_drives_the_session_limit_and_the_key_check() -> None:
    from bridge.stt.engines import Engines

    settings = load_settings(environ={**LOCAL, "CALLBRIDGE_STT_SECONDARY_ENGINE": "assemblyai",
                                      "ASSEMBLYAI_API_KEY": "k",
                                      "CALLBRIDGE_ASSEMBLYAI_MAX_SESSION_S": "60"})
    engines = Engines(settings, lambda: "ws://127.0.0.1:9/")
    assert engines.max_session_s("assemblyai") == 60.0
    assert engines.max_session_s("telnyx") == 0.0
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={**LOCAL, "CALLBRIDGE_STT_SECONDARY_ENGINE": "assemblyai"})
    assert caught.value.setting == "ASSEMBLYAI_API_KEY"


def test_every_setting_has_one_variable_under_the_scheme() -> None:
    from bridge.config import ENVIRONMENT, FILE_ONLY, SECTIONS, variable_for

    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if (section, f.name) not in FILE_ONLY:
                assert ENVIRONMENT[variable_for(section, f.name)] == (section, f.name)
    # settings that had no variable before the scheme have one now
    settings = load_settings(environ={**LOCAL, "CALLBRIDGE_LOCAL_STT_BEAM_SIZE": "3",
                                      "CALLBRIDGE_TELNYX_MODEL": "nova-2",
                                      "CALLBRIDGE_SPEAKERS_INBOUND": "customer"})
    assert settings.local_stt.beam_size == 3
    assert settings.telnyx.model == "nova-2"
    assert settings.speakers.inbound == "customer"


def test_no_old_variable_name_is_also_a_new_one() -> None:
    from bridge.config import DEPRECATED_VARIABLES, ENVIRONMENT

    assert not set(DEPRECATED_VARIABLES) & set(ENVIRONMENT)
    assert set(DEPRECATED_VARIABLES.values()) <= set(ENVIRONMENT)


# A value for each old variable that differs from the default, and what it needs beside it.
OLD_SAMPLES: dict[str, tuple[str, dict[str, str]]] = {
    "CALLBRIDGE_HOST": ("0.0.0.0", {}),  # noqa: S104 - a value under test, nothing binds
    "CALLBRIDGE_PORT": ("9100", {}),
    "CALLBRIDGE_DRAIN_S": ("5", {}),
    "CALLBRIDGE_ADMIN_TOKEN": ("an-admin-token-of-16", {}),
    "CALLBRIDGE_MAX_CALLS": ("7", {}),
    "CALLBRIDGE_START_TIMEOUT_S": ("9", {}),
    "CALLBRIDGE_MAX_PENDING_STREAMS": ("10", {}),
    "CALLBRIDGE_MAX_PENDING_PER_ADDRESS": ("3", {}),
    "CALLBRIDGE_DUPLICATE_CALL_ID": ("separate", {}),
    "CALLBRIDGE_REQUIRE_INGRESS_AUTH": ("true", {}),
    "CALLBRIDGE_HEADER_TIMEOUT_S": ("20", {}),
    "CALLBRIDGE_EVENT_LOOP": ("asyncio", {}),
    "CALLBRIDGE_TWILIO_PUBLIC_URL": ("wss://bridge.example/streams/twilio", {}),
    "CALLBRIDGE_INGRESS_TOKEN": ("bearer", {}),
    "CALLBRIDGE_EXOTEL_BASIC": ("user:pass", {}),
    "CALLBRIDGE_AUDIOHOOK_KEYS": ("key:", {}),
    "CALLBRIDGE_STREAM_TOKEN": ("token", {}),
    "CALLBRIDGE_REDACTION": ("false", {}),
    "CALLBRIDGE_DTMF": ("masked", {}),
    "CALLBRIDGE_CHUNK_MS": ("40", {}),
    "CALLBRIDGE_ENGINE": ("assemblyai", {"ASSEMBLYAI_API_KEY": "k"}),
    "CALLBRIDGE_SECONDARY_ENGINE": ("assemblyai", {"ASSEMBLYAI_API_KEY": "k"}),
    "CALLBRIDGE_STT_URL": ("ws://127.0.0.1:9/x", {}),
    "CALLBRIDGE_STT_INTERIM_RESULTS": ("true", {}),
    "CALLBRIDGE_WEBHOOK_URLS": ("https://hooks.example/a",
                                {"CALLBRIDGE_WEBHOOKS_SECRET": SECRET}),
    "CALLBRIDGE_WEBHOOK_SECRET": (SECRET, {}),
    "CALLBRIDGE_WEBHOOK_ALLOW_HTTP": ("true", {}),
    "CALLBRIDGE_WEBHOOK_ALLOW_PRIVATE": ("true", {}),
    "CALLBRIDGE_WEBHOOK_RETRY_SCHEDULE": ("1,2", {}),
    "CALLBRIDGE_WEBHOOK_TTL_S": ("60", {}),
    "CALLBRIDGE_LOG_LEVEL": ("debug", {}),
    "CALLBRIDGE_LOG_FORMAT": ("json", {}),
}


def test_the_samples_cover_every_old_variable() -> None:
    from bridge.config import DEPRECATED_VARIABLES

    assert set(OLD_SAMPLES) == set(DEPRECATED_VARIABLES)


@pytest.mark.parametrize("old", sorted(OLD_SAMPLES))
def test_an_old_variable_still_works_with_one_deprecation_line(old: str) -> None:
    from bridge.config import DEPRECATED_VARIABLES

    new = DEPRECATED_VARIABLES[old]
    value, beside = OLD_SAMPLES[old]
    old_notices: list[str] = []
    by_old = load_settings(environ={old: value, **beside}, warn=old_notices.append)
    new_notices: list[str] = []
    by_new = load_settings(environ={new: value, **beside}, warn=new_notices.append)
    assert by_old == by_new != load_settings(environ=beside, warn=new_notices.append)
    assert old_notices == [f"{old} is deprecated: use {new}"]
    assert new_notices == []


def test_the_new_variable_wins_over_the_old_one_which_still_warns() -> None:
    notices: list[str] = []
    settings = load_settings(environ={"CALLBRIDGE_PORT": "9100", "CALLBRIDGE_SERVER_PORT": "9200"},
                             warn=notices.append)
    assert settings.server.port == 9200
    assert notices == ["CALLBRIDGE_PORT is deprecated: use CALLBRIDGE_SERVER_PORT"]


def test_a_wrong_value_in_an_old_variable_names_that_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"CALLBRIDGE_STT_URL": "https://api.telnyx.com"}, warn=print)
    assert caught.value.setting == "CALLBRIDGE_STT_URL"


def test_the_deprecation_line_goes_to_stderr_by_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    load_settings(environ={"CALLBRIDGE_LOG_LEVEL": "debug"})
    captured = capsys.readouterr()
    assert captured.err == ("callbridge: CALLBRIDGE_LOG_LEVEL is deprecated: use "
                            "CALLBRIDGE_LOGGING_LEVEL\n")
    assert captured.out == ""


def test_stt_engine_with_a_telnyx_engine_name_keeps_its_old_meaning() -> None:
    notices: list[str] = []
    settings = load_settings(environ={**LOCAL, "CALLBRIDGE_STT_ENGINE": "Azure"},
                             warn=notices.append)
    assert settings.telnyx.transcription_engine == "Azure"
    assert settings.stt.engine == "telnyx"
    assert len(notices) == 1
    assert notices[0].startswith("CALLBRIDGE_STT_ENGINE=Azure (a Telnyx engine) is deprecated: "
                                 "use CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE")


def test_stt_engine_with_one_of_our_engines_chooses_the_engine() -> None:
    notices: list[str] = []
    settings = load_settings(environ={**LOCAL, "CALLBRIDGE_STT_ENGINE": "deepgram",
                                      "DEEPGRAM_API_KEY": "k"}, warn=notices.append)
    assert settings.stt.engine == "deepgram"
    assert settings.telnyx.transcription_engine == "Deepgram"
    assert notices == []


def test_stt_engine_in_its_old_meaning_yields_to_the_new_variable() -> None:
    settings = load_settings(environ={**LOCAL, "CALLBRIDGE_STT_ENGINE": "Azure",
                                      "CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE": "Google"},
                             warn=lambda line: None)
    assert settings.telnyx.transcription_engine == "Google"


def test_old_stt_keys_in_the_file_move_to_telnyx_with_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[stt]\ntranscription_engine = "Azure"\nmodel = "m1"\nreplay_ms = 5000\n'
                    '[telnyx]\nmodel = "m2"\n')
    notices: list[str] = []
    settings = load_settings(path, environ=LOCAL, warn=notices.append)
    assert settings.telnyx.transcription_engine == "Azure"
    assert settings.telnyx.model == "m2"  # the new key wins when both are given
    assert settings.stt.replay_ms == 5000  # a generic key stays where it was
    assert notices == [
        "stt.transcription_engine in the settings file is deprecated: use "
        "telnyx.transcription_engine (in a [telnyx] section)",
        "stt.model in the settings file is deprecated: use telnyx.model (in a [telnyx] section)"]


def test_the_new_telnyx_section_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[telnyx]\ntranscription_engine = "Google"\ninterim_results = true\n')
    notices: list[str] = []
    settings = load_settings(path, environ=LOCAL, warn=notices.append)
    assert settings.telnyx.transcription_engine == "Google"
    assert settings.telnyx.interim_results is True
    assert notices == []


def test_a_target_without_its_own_secret_names_the_variable_that_set_the_secret(
        tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[webhooks.targets]]\nname = "crm"\nurl = "https://crm.example/h"\n')
    for variable in ("CALLBRIDGE_WEBHOOK_SECRET", "CALLBRIDGE_WEBHOOKS_SECRET"):
        settings = load_settings(path, environ={**LOCAL, variable: SECRET},
                                 warn=lambda line: None)
        [target] = settings.webhooks.targets
        assert target.secret_env == variable and target.secret.reveal() == SECRET


def test_the_settings_view_shows_engine_routes_and_webhook_routes(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[stt.routes]]\nparameters = { tenant = "acme" }\nlanguage = "fr-FR"\n'
                    '[[webhooks.routes]]\ntargets = ["default"]\npath = "/streams/twilio"\n')
    view = describe(load_settings(path, environ={
        **LOCAL, "CALLBRIDGE_WEBHOOKS_URLS": "https://a.example/h",
        "CALLBRIDGE_WEBHOOKS_SECRET": SECRET}))
    assert view["stt.routes"] == [{"path": "", "parameters": ["tenant"], "engine": "",
                                   "language": "fr-FR"}]
    assert view["webhooks.routes"] == [{"path": "/streams/twilio", "parameters": [],
                                        "targets": ["default"]}]
    assert "acme" not in str(view)


def test_the_dialects_setting_names_exactly_the_media_endpoints() -> None:
    assert sorted(MEDIA_DIALECTS) == sorted(ENDPOINTS)
    served = load_settings(environ={"CALLBRIDGE_SERVER_DIALECTS": "twilio, telnyx"})
    assert served.server.dialects == ("twilio", "telnyx")
    with pytest.raises(ConfigError, match="unknown: sipgate"):
        load_settings(environ={"CALLBRIDGE_SERVER_DIALECTS": "twilio,sipgate"})


@pytest.mark.parametrize("url", ["redis://:top/secret@127.0.0.1:6379/0",
                                 "redis://:top?secret@redis:6379", "redis://:pw@:6379/0"])
def test_a_redis_url_that_cannot_be_read_fails_in_one_line_without_its_password(
        url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"CALLBRIDGE_REDIS_URL": url})
    assert caught.value.setting == "CALLBRIDGE_REDIS_URL"
    assert "secret" not in str(caught.value) and "pw" not in str(caught.value)
