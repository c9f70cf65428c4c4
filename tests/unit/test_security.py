"""Webhook URL checks, including the request-forgery guard."""

import pytest

from bridge.security import check_webhook_url, forbidden_address


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
