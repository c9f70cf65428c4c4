"""The calls and captions pages in a real headless Chromium, driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them, or
skips these tests with its reason in ``CALLBRIDGE_TEST_SKIP_BROWSER`` when it cannot).
The screenshot of the captions page is kept in ``test-artifacts/`` (or
``$CALLBRIDGE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bridge.events import Track
from tests.conftest import BridgeFactory
from tests.e2e.test_cluster import ADMIN as CLUSTER_ADMIN
from tests.e2e.test_cluster import _cluster_env
from tests.support.admin import TOKEN, start_call, token_for
from tests.support.audio import pcm_program, ulaw
from tests.support.proxy import CuttableProxy
from tests.support.redis_server import RedisServer
from tests.support.speech import AGENT_LIVE, CALLER_LIVE

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("CALLBRIDGE_TEST_ARTIFACTS", "test-artifacts"))
# A quiet start, so the page is open before anyone speaks.
LEAD_IN = pcm_program(("silence", 3000))


def _find(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"none of {', '.join(names)} is installed: scripts/test.sh installs Debian's "
                "chromium and chromium-driver")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A headless Chromium; skipped, with the reason, when the test command could not get one
    (``CALLBRIDGE_TEST_SKIP_BROWSER`` holds the reason), and a failure when simply missing."""
    reason = os.environ.get("CALLBRIDGE_TEST_SKIP_BROWSER")
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=900,800", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options,
                              service=Service(_find("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: webdriver.Chrome, what: str, within_s: float = 30) -> None:
    """Until ``what`` (a JavaScript expression) is true in the page."""
    WebDriverWait(driver, within_s, poll_frequency=0.1).until(
        lambda d: d.execute_script(f"return Boolean({what});"))


def _status(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.ID, "status").text)


def _screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    return shot


def _bubbles(driver: webdriver.Chrome) -> list[tuple[str, str, str, str]]:
    """(leg, speaker, state, text) of each bubble, top to bottom."""
    return [(b.get_attribute("data-leg") or "",
             b.find_element(By.CSS_SELECTOR, ".speaker").text,
             "final" if "final" in (b.get_attribute("class") or "") else "partial",
             b.find_element(By.CSS_SELECTOR, ".text").text)
            for b in driver.find_elements(By.CSS_SELECTOR, "article.bubble")]


async def test_captions_page_shows_a_live_call_from_the_calls_page(
        bridge_factory: BridgeFactory, browser: webdriver.Chrome) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN,
                                  CALLBRIDGE_TELNYX_INTERIM_RESULTS="true")
    base = f"http://127.0.0.1:{bridge.port}"
    call = start_call(bridge, "CA-page", {Track.INBOUND: ulaw(LEAD_IN + CALLER_LIVE),
                                          Track.OUTBOUND: ulaw(LEAD_IN + AGENT_LIVE)})
    await bridge.wait_for_log("call started", call_id="CA-page")

    # the calls page lists the call; its link opens the captions with a fresh token
    await asyncio.to_thread(browser.get, f"{base}/calls#token={TOKEN}")
    await asyncio.to_thread(_wait, browser,
                            "document.querySelector('tr[data-call-id=\"CA-page\"] a')")
    await asyncio.to_thread(_screenshot, browser, "calls-page.png")
    assert not await asyncio.to_thread(  # the token came with the link: no form to fill in
        browser.execute_script, "return document.getElementById('login').offsetHeight")
    assert "token" not in await asyncio.to_thread(lambda: browser.current_url)  # hidden
    link = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR,
                                   'tr[data-call-id="CA-page"] a.captions')
    await asyncio.to_thread(link.click)
    await asyncio.to_thread(_wait, browser, "location.pathname === '/captions/CA-page'")
    await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'live'")

    # partials are shown while people speak, in the speaker's own bubble
    await asyncio.to_thread(_wait, browser, "document.querySelector('article.partial')")
    # then every utterance settles into one final bubble: partials were updated in place
    await asyncio.to_thread(_wait, browser,
                            "document.querySelectorAll('article.final').length === 3")
    await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'ended'")
    assert (await call).close_code == 1000
    bubbles = await asyncio.to_thread(_bubbles, browser)
    assert sorted(bubbles) == [
        ("inbound", "Caller", "final", "tone 400 hertz"),
        ("inbound", "Caller", "final", "tone 700 hertz"),
        ("outbound", "Agent", "final", "tone 1000 hertz"),
    ]
    inbound = [b for b in bubbles if b[0] == "inbound"]
    assert [b[3] for b in inbound] == ["tone 400 hertz", "tone 700 hertz"]  # in order
    sides = await asyncio.to_thread(browser.execute_script, """
        return [...document.querySelectorAll('article.bubble')].map(
            b => [b.dataset.leg, getComputedStyle(b).alignSelf]);""")
    assert {tuple(s) for s in sides} == {("inbound", "flex-start"), ("outbound", "flex-end")}
    assert "call ended" in await asyncio.to_thread(_status, browser)
    await asyncio.to_thread(_screenshot, browser, "captions-page.png")
    log = await asyncio.to_thread(browser.get_log, "browser")
    errors = [entry for entry in log if entry["level"] == "SEVERE"]
    assert errors == []  # no script error, nothing refused by the page's policy


async def test_calls_page_asks_for_the_token_and_a_bad_captions_link_says_so(
        bridge_factory: BridgeFactory, browser: webdriver.Chrome) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    call = start_call(bridge, "CA-bad-link", {Track.INBOUND: ulaw(LEAD_IN + CALLER_LIVE)})
    await bridge.wait_for_log("call started", call_id="CA-bad-link")
    base = f"http://127.0.0.1:{bridge.port}"
    await asyncio.to_thread(browser.get, f"{base}/calls")  # no token yet: the page asks
    field = await asyncio.to_thread(browser.find_element, By.ID, "token")
    await asyncio.to_thread(field.send_keys, "wrong-token-0123456789\n")
    await asyncio.to_thread(_wait, browser,  # refused: asked again, as an error
                            "document.getElementById('message').className === 'bad'")
    await asyncio.to_thread(field.clear)
    await asyncio.to_thread(field.send_keys, TOKEN + "\n")
    await asyncio.to_thread(_wait, browser,
                            "document.querySelector('tr[data-call-id=\"CA-bad-link\"]')")

    await asyncio.to_thread(browser.get, f"{base}/captions/CA-bad-link#token=1.forged")
    await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'failed'")
    assert "not valid" in await asyncio.to_thread(_status, browser)
    await call


async def test_captions_page_reconnects_after_a_network_cut_and_misses_nothing(
        bridge_factory: BridgeFactory, browser: webdriver.Chrome) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    call = start_call(bridge, "CA-cut", {Track.INBOUND: ulaw(LEAD_IN + CALLER_LIVE),
                                         Track.OUTBOUND: ulaw(LEAD_IN + AGENT_LIVE)})
    await bridge.wait_for_log("call started", call_id="CA-cut")
    captions = (await token_for(bridge, "CA-cut"))["captions_url"]
    async with CuttableProxy(bridge.port) as proxy:
        await asyncio.to_thread(browser.get, f"http://127.0.0.1:{proxy.port}{captions}")
        await asyncio.to_thread(_wait, browser, "document.querySelector('article.final')")
        proxy.refusing = True
        proxy.cut()
        await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'reconnecting'")
        assert "reconnecting" in await asyncio.to_thread(_status, browser)
        proxy.refusing = False
        await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'ended'")
    assert (await call).close_code == 1000
    bubbles = await asyncio.to_thread(_bubbles, browser)
    assert sorted(b[3] for b in bubbles) == ["tone 1000 hertz", "tone 400 hertz",
                                             "tone 700 hertz"]


async def test_captions_page_moves_between_cluster_instances_and_misses_nothing(
        bridge_factory: BridgeFactory, browser: webdriver.Chrome, redis_server: RedisServer,
        tmp_path: Path) -> None:
    holder = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"))
    other = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"))
    call = start_call(holder, "CA-roaming", {Track.INBOUND: ulaw(LEAD_IN + CALLER_LIVE),
                                             Track.OUTBOUND: ulaw(LEAD_IN + AGENT_LIVE)})
    await redis_server.command("XREAD", "BLOCK", "20000", "STREAMS",
                               "callbridge:feed:CA-roaming", "0-0")  # the feed is shared
    status, body = await other.http("POST", "/calls/CA-roaming/token", CLUSTER_ADMIN)
    assert status == 200, body
    captions = json.loads(body)["captions_url"]
    # A load balancer sends the page to the instance without the call, then, after a cut,
    # its reconnection to the one holding it.
    async with CuttableProxy(other.port) as proxy:
        await asyncio.to_thread(browser.get, f"http://127.0.0.1:{proxy.port}{captions}")
        await asyncio.to_thread(_wait, browser, "document.querySelector('article.final')")
        proxy.refusing = True
        proxy.cut()
        await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'reconnecting'")
        proxy.target_port = holder.port
        proxy.refusing = False
        await asyncio.to_thread(_wait, browser, "document.body.dataset.state === 'ended'")
    assert (await call).close_code == 1000
    bubbles = await asyncio.to_thread(_bubbles, browser)
    assert sorted(b[3] for b in bubbles) == ["tone 1000 hertz", "tone 400 hertz",
                                             "tone 700 hertz"]
