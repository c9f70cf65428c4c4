"""Ingress authentication checks, against signatures computed here from the published
algorithms (and the AudioHook test vector from Genesys's documentation)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from bridge.ingress.auth import (
    check_audiohook,
    check_basic,
    check_bearer,
    check_parameter_token,
    check_twilio,
)
from bridge.security import parse_audiohook_keys

API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = base64.b64decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
VECTOR = {
    "User-Agent": "GenesysCloud-AudioHook-Client",
    "Audiohook-Organization-Id": "d7934305-0972-4844-938e-9060eef73d05",
    "Audiohook-Correlation-Id": "e160e428-53e2-487c-977d-96989bf5c99d",
    "Audiohook-Session-Id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
    "X-API-KEY": API_KEY,
    "Signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
    "Signature-Input": 'sig1=("@request-target" "@authority" "audiohook-organization-id" '
                       '"audiohook-session-id" "audiohook-correlation-id" "x-api-key");'
                       'keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
                       'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";'
                       'created=1641013200;expires=3282026430',
}
TARGET, AUTHORITY = "/api/v1/voicebiometrics/ws", "audiohook.example.com"


def check(headers: dict[str, str], now: int = 1641013201,
          keys: dict[str, bytes] | None = None) -> str | None:
    return check_audiohook({API_KEY: SECRET} if keys is None else keys, target=TARGET,
                           authority=AUTHORITY, headers=CIMultiDict(headers), now=now)


def test_the_documented_audiohook_vector_verifies() -> None:
    assert check(VECTOR) is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"Audiohook-Session-Id": "00000000-0000-0000-0000-000000000000"}, "does not match"),
    ({"Signature": "sig1=:AAAAyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"}, "does not match"),
    ({"X-API-KEY": "another-key"}, "unknown X-API-KEY"),
    ({"Signature": ""}, "missing Signature"),
    ({"Signature-Input": VECTOR["Signature-Input"].replace('"x-api-key"', "")},
     "required components"),
])
def test_a_tampered_audiohook_request_is_refused(change: dict[str, str], reason: str) -> None:
    assert reason in (check({**VECTOR, **change}) or "")


def test_an_old_audiohook_signature_is_refused() -> None:
    assert "too old" in (check(VECTOR, now=1641013200 + 60) or "")


def test_a_key_without_secret_accepts_unsigned_requests() -> None:
    assert check({"X-API-KEY": "plain"}, keys={"plain": b""}) is None
    assert parse_audiohook_keys(f"{API_KEY}:TXlT,plain:") == {API_KEY: b"MyS", "plain": b""}
    with pytest.raises(ValueError, match="api_key"):
        parse_audiohook_keys("no-separator")


def test_twilio_signature_from_the_published_algorithm() -> None:
    url, token = "wss://bridge.example.com/streams/twilio", "12345"
    # HMAC-SHA1 of the full URL (no POST parameters on the upgrade), keyed by the auth token
    signature = base64.b64encode(hmac.new(token.encode(), url.encode(),
                                          hashlib.sha1).digest()).decode()
    assert check_twilio(token, url, signature) is None
    assert "does not match" in (check_twilio(token, url.replace("wss", "https"), signature)
                                or "")
    assert check_twilio(token, url, None) == "missing X-Twilio-Signature"


def test_bearer_basic_and_parameter_tokens() -> None:
    assert check_bearer("s3cret-token", "Bearer s3cret-token") is None
    assert check_bearer("s3cret-token", "Bearer nope") == "bearer token does not match"
    assert check_basic("api:tok", "Basic " + base64.b64encode(b"api:tok").decode()) is None
    assert check_basic("api:tok", None) == "missing Authorization"
    assert check_parameter_token("t0ken", "t0ken") is None
    assert check_parameter_token("t0ken", None) == "the stream carries no token parameter"
