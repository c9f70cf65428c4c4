"""Webhook URL checks."""

import pytest

from bridge.security import check_webhook_url


@pytest.mark.parametrize("url", ["https://hooks.example.com/callbridge?x=1",
                                 "http://127.0.0.1:8080/hook", "http://localhost/h",
                                 "http://[::1]:9/h"])
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
])
def test_refused_urls_say_why(url: str, problem: str) -> None:
    assert problem in (check_webhook_url(url) or "")


def test_http_can_be_allowed_explicitly() -> None:
    assert check_webhook_url("http://hooks.internal/h", allow_insecure_http=True) is None
