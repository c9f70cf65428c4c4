"""Webhook URL checks, including the request-forgery guard."""

from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.security import (
    Endpoint,
    check_webhook_url,
    endpoint_of,
    forbidden_address,
    legacy_numeric_host,
)
from tests.support.receiver import SECRET


@pytest.mark.parametrize("url", ["https://hooks.example.com/callbridge?x=1",
                                 "https://93.184.216.34/h", "https://[2606:4700::1111]/h"])
def test_acceptable_urls(url: str) -> None:
    assert check_webhook_url(url) is None


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://hooks.example.com/", "scheme"),
    ("https:///nohost", "no host"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("https://hooks.example.com/#frag", "fragment"),
    ("http://hooks.example.com/", "plain http"),
    ("https://hooks.example.com:99999/", "not a valid URL"),
    ("https://h.example/" + "a" * 3000, "longer"),
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("https://localhost/h", "loopback"),
    ("https://[::1]/h", "loopback"),
    ("https://10.1.2.3/h", "private"),
    ("https://192.168.0.10/h", "private"),
    ("https://[::ffff:10.0.0.1]/h", "private"),
    ("http://169.254.169.254/latest/meta-data/", "plain http"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("https://0.0.0.0/h", "refused to prevent request forgery"),
])
def test_refused_urls_say_why(url: str, problem: str) -> None:
    assert problem in (check_webhook_url(url) or "")


def test_private_networks_and_http_can_be_allowed_explicitly() -> None:
    assert check_webhook_url("http://127.0.0.1:8080/hook", allow_private=True) is None
    assert check_webhook_url("https://10.1.2.3/h", allow_private=True) is None
    assert check_webhook_url("http://hooks.internal/h", allow_insecure_http=True) is None


@pytest.mark.parametrize(("address", "refused"), [
    ("8.8.8.8", False), ("127.0.0.53", True), ("172.16.5.4", True), ("fe80::1", True),
    ("169.254.169.254", True), ("fd00::1", True), ("2606:4700::1111", False)])
def test_resolved_addresses_are_judged_too(address: str, refused: bool) -> None:
    assert (forbidden_address(address) is not None) is refused


# Hosts that the HTTP client turns into 127.0.0.1, and legacy numeric forms of it.
DISGUISED_LOOPBACK = [
    "http://\u2460\u2461\u2466.0.0.1/hook",  # circled digits
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/hook",  # fullwidth digits
    "http://127\u30020\u30020\u30021/hook",  # ideographic full stops
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://0x7f.1/hook",
    "https://0x7f000001/hook",
]


@pytest.mark.parametrize("url", DISGUISED_LOOPBACK)
def test_hosts_are_judged_as_the_client_normalises_them(url: str) -> None:
    for allow_private in (False, True):
        problem = check_webhook_url(url, allow_insecure_http=True, allow_private=allow_private)
        assert problem is not None
        assert "IP address when normalised" in problem or "legacy numeric" in problem


@pytest.mark.parametrize("url", ["https://exa\u200bmple.com/h", "https://ex ample.com/h",
                                 "https://a..b.example/h"])
def test_hosts_that_do_not_normalise_cleanly_are_refused(url: str) -> None:
    assert "normalise" in (check_webhook_url(url) or "")


def test_an_internationalised_name_is_checked_in_its_idna_form() -> None:
    endpoint = endpoint_of("https://B\u00fccher.example/h")
    assert isinstance(endpoint, Endpoint) and endpoint.host == "xn--bcher-kva.example"
    assert check_webhook_url("https://b\u00fccher.example/h") is None


def test_the_guarding_resolver_refuses_legacy_numeric_hosts_before_resolving() -> None:
    assert legacy_numeric_host("2130706433") and legacy_numeric_host("0x7f.1")
    assert not legacy_numeric_host("127.0.0.1") and not legacy_numeric_host("hooks.example")


@pytest.mark.parametrize(("url", "entry", "within"), [
    ("https://hooks.example.com/a", "https://hooks.example.com/a", True),
    ("https://hooks.example.com/a/b?x=1", "https://hooks.example.com/a", True),
    ("https://hooks.example.com/a/b", "https://hooks.example.com/a/", True),
    ("https://hooks.example.com/ab", "https://hooks.example.com/a", False),
    ("https://hooks.example.com.evil.test/", "https://hooks.example.com", False),
    ("https://hooks.example.com/x", "https://hooks.example.com", True),
    ("https://HOOKS.example.com.:443/x", "https://hooks.example.com", True),
    ("https://hooks.example.com:8443/x", "https://hooks.example.com", False),
    ("http://hooks.example.com/x", "https://hooks.example.com", False),
    ("https://hooks.example.com/a/../b", "https://hooks.example.com/a", False),
    ("https://hooks.example.com/a%2Fb", "https://hooks.example.com/a", False),
    ("https://evil.test/https://hooks.example.com/", "https://hooks.example.com", False),
])
def test_allow_list_entries_match_scheme_host_port_and_whole_path_segments(
        url: str, entry: str, within: bool) -> None:
    endpoint, allowed = endpoint_of(url), endpoint_of(entry)
    assert isinstance(endpoint, Endpoint) and isinstance(allowed, Endpoint)
    assert endpoint.within(allowed) is within


@pytest.mark.parametrize("url", ["http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:8080/hook",
                                 "http://2130706433:8080/hook"])
def test_the_same_checks_run_at_start_up(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/stt",
                               "CALLBRIDGE_WEBHOOKS_URLS": url,
                               "CALLBRIDGE_WEBHOOKS_SECRET": SECRET,
                               "CALLBRIDGE_WEBHOOKS_ALLOW_INSECURE_HTTP": "true",
                               "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true"})
    assert caught.value.setting == "CALLBRIDGE_WEBHOOKS_URLS"


def test_allow_list_entries_are_checked_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[webhooks]\ncall_url_allowlist = ["https://hooks.example.com/a?t=1"]\n')
    with pytest.raises(ConfigError, match="query string"):
        load_settings(path, environ={"CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/stt"})
