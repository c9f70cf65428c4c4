"""Ingress authentication at the handshake, through a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

import aiohttp
import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory
from tests.support import dialects
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

SPEECH = pcm_program(("silence", 200), ("tone", 600, 400), ("silence", 500))
TWILIO_TOKEN = "twilio-auth-token-for-tests"
API_KEY, SECRET = "audiohook-key", base64.b64encode(b"audiohook-client-secret-32bytes!").decode()


async def handshake(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_twilio_signatures_are_checked(bridge_factory: BridgeFactory,
                                             receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    url = bridge.url("/streams/twilio")
    assert await handshake(url) == 401
    assert await handshake(url, {"X-Twilio-Signature": "bm9wZQ=="}) == 403
    signed = f"wss://127.0.0.1:{bridge.port}/streams/twilio"  # as Twilio would have dialled
    signature = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), signed.encode(),
                                          hashlib.sha1).digest()).decode()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-signed")
    result = await stream_call(url, build_call(spec), speed=0,
                               headers={"X-Twilio-Signature": signature})
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-signed"))
    failures = bridge.log_events("ingress authentication failed")
    assert [f["reason"] for f in failures] == [
        "missing X-Twilio-Signature",
        "X-Twilio-Signature does not match (is twilio_public_url what Twilio dials?)"]
    assert TWILIO_TOKEN not in "\n".join(bridge.raw_stderr)


async def test_bearer_and_basic_credentials(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_INGRESS_AUTH_BEARER_TOKEN="signalwire-bearer-token",
                                  CALLBRIDGE_INGRESS_AUTH_EXOTEL_BASIC="exo-key:exo-token")
    signalwire = bridge.url("/streams/signalwire")
    assert await handshake(signalwire) == 401
    assert await handshake(signalwire, {"Authorization": "Bearer wrong"}) == 403
    assert await handshake(signalwire,
                           {"Authorization": "Bearer signalwire-bearer-token"}) == 101
    exotel = bridge.url("/streams/exotel")
    basic = "Basic " + base64.b64encode(b"exo-key:exo-token").decode()
    assert await handshake(exotel, {"Authorization": basic}) == 101
    assert await handshake(exotel, {"Authorization": "Basic Zm9vOmJhcg=="}) == 403
    assert await handshake(bridge.url("/streams/twilio")) == 101  # nothing configured there


def audiohook_headers(path: str, authority: str, *, created: int) -> dict[str, str]:
    """Sign like Genesys's client does (HTTP Message Signatures, HMAC-SHA256)."""
    headers = {"audiohook-organization-id": "org-1", "audiohook-session-id": "sess-1",
               "audiohook-correlation-id": "corr-1", "x-api-key": API_KEY}
    components = ["@request-target", "@authority", *headers]
    params = (f'({" ".join(chr(34) + c + chr(34) for c in components)});keyid="{API_KEY}";'
              f'nonce="{base64.b64encode(secrets.token_bytes(18)).decode()}";'
              f'alg="hmac-sha256";created={created};expires={created + 30}')
    lines = [f'"@request-target": {path}', f'"@authority": {authority}']
    lines += [f'"{k}": {v}' for k, v in headers.items()]
    lines.append(f'"@signature-params": {params}')
    digest = hmac.new(base64.b64decode(SECRET), "\n".join(lines).encode(),
                      hashlib.sha256).digest()
    return {**headers, "Signature-Input": f"sig1={params}",
            "Signature": f"sig1=:{base64.b64encode(digest).decode()}:"}


async def test_audiohook_signed_handshake(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_INGRESS_AUTH_AUDIOHOOK_KEYS=f"{API_KEY}:{SECRET}")
    url = bridge.url("/streams/audiohook")
    authority = f"127.0.0.1:{bridge.port}"
    now = int(time.time())
    signed = audiohook_headers("/streams/audiohook", authority, created=now)
    assert await handshake(url, signed) == 101
    assert await handshake(url, signed) == 403  # the same signature again: a replay
    assert await handshake(url, audiohook_headers("/streams/audiohook", authority,
                                                  created=now - 120)) == 403
    assert await handshake(url, {"x-api-key": "someone-else"}) == 403
    assert await handshake(url) == 401


async def test_a_stream_token_parameter_for_platforms_that_sign_nothing(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_INGRESS_AUTH_STREAM_TOKEN="shared-stream-token")
    wrong = dialects.plivo({"inbound": ulaw(SPEECH)}, encoding="audio/x-mulaw", rate=8000,
                           call_id="plivo-bad")
    async with aiohttp.ClientSession() as session, session.ws_connect(
            bridge.url("/streams/plivo")) as ws:
        await ws.send_str(str(wrong[0][1]))
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
    good = dialects.plivo({"inbound": ulaw(SPEECH)}, encoding="audio/x-mulaw", rate=8000,
                          call_id="plivo-good")
    start = json.loads(str(good[0][1]))
    start["extra_headers"] = "tenant=acme;callbridge_token=shared-stream-token"
    good[0] = (0.0, json.dumps(start))
    await stream_call(bridge.url("/streams/plivo"), good, speed=0)
    await receiver.wait_for(receiver.ended("plivo-good"))
    started = receiver.of_call("plivo-good")[0]
    assert started.data["custom_parameters"] == {"tenant": "acme"}  # the token is not passed on
    assert "shared-stream-token" not in "\n".join(bridge.raw_stderr)


async def test_open_ingress_on_a_public_address_is_said_or_refused(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_HOST="0.0.0.0",  # noqa: S104 - the case tested
                                  TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    warning = await bridge.wait_for_log("media endpoints accept streams without a credential "
                                        "on a non-loopback address; anyone who reaches them "
                                        "can open calls (see docs/security.md)")
    assert warning["open"]["telnyx"] == "CALLBRIDGE_INGRESS_AUTH_STREAM_TOKEN"
    assert "twilio" not in warning["open"]  # its signature is checked
    with pytest.raises(RuntimeError, match=r"server\.require_ingress_auth is on") as caught:
        await bridge_factory(CALLBRIDGE_SERVER_HOST="0.0.0.0",  # noqa: S104 - the case tested
                             CALLBRIDGE_SERVER_REQUIRE_INGRESS_AUTH="true")
    assert "Traceback" not in str(caught.value)
