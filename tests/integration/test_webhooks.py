"""Durable delivery against real receivers and a real SQLite outbox file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from bridge.config import OutboxSettings, Secret, Settings, TargetSettings, WebhookSettings
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.delivery.outbox import Outbox
from bridge.delivery.retry import Outcome
from bridge.events import EventType, OutboundEvent, make_event
from bridge.security import AddressBlocked, GuardedResolver
from tests.support.outbox_file import query
from tests.support.receiver import SECRET, WebhookReceiver


def event(n: int, call: str = "CA1", kind: EventType = EventType.TRANSCRIPT_FINAL,
          targets: tuple[str, ...] = ("default",)) -> OutboundEvent:
    return make_event(kind, {"call_id": call, "leg": "inbound", "speaker": "caller",
                             "sequence": n, "text": f"t{n}"},
                      call_id=call, leg="inbound", targets=targets)


def settings(tmp_path: Path, urls: tuple[str, ...] = (), **changes: object) -> Settings:
    outbox = OutboxSettings(path=str(tmp_path / "outbox.db"),
                            max_events=int(changes.pop("max_events", 100_000)))  # type: ignore[call-overload]
    values: dict[str, object] = {"urls": urls, "secret": Secret(SECRET),
                                 "retry_schedule_s": (0.05, 0.1), "timeout_s": 2.0,
                                 "drain_timeout_s": 5.0, "allow_private_networks": True}
    return Settings(webhooks=WebhookSettings(**(values | changes)),  # type: ignore[arg-type]
                    outbox=outbox)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def finals(receiver: WebhookReceiver, call: str = "CA1") -> list[int]:
    return [e.data["sequence"] for e in receiver.events if e.data["call_id"] == call]


def rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    return query(tmp_path / "outbox.db", sql)


async def test_events_are_stored_then_delivered_signed_and_in_order(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    async with DurableDispatcher(settings(tmp_path, (receiver.url,)), http) as dispatcher:
        outcomes = [dispatcher.publish(event(n)) for n in range(1, 31)]
        assert await asyncio.gather(*outcomes) == [Outcome.DELIVERED] * 30
    assert finals(receiver) == list(range(1, 31))
    assert receiver.bad_signatures == 0
    assert rows(tmp_path, "SELECT COUNT(*) FROM events") == [(0,)]  # retention 0: gone


async def test_a_receiver_that_fails_for_a_while_gets_every_final_once_in_order(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [503, 503, 500, 502]
    async with DurableDispatcher(settings(tmp_path, (receiver.url,)), http) as dispatcher:
        outcomes = [dispatcher.publish(event(n)) for n in range(1, 11)]
        assert set(await asyncio.gather(*outcomes)) == {Outcome.DELIVERED}
        assert dispatcher.stats.retried == 4
    assert finals(receiver) == list(range(1, 11))
    assert len({e.webhook_id for e in receiver.events}) == 10


async def test_a_retry_holds_back_its_own_call_only(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_calls = {"CA-slow": [503] * 3}
    async with DurableDispatcher(settings(tmp_path, (receiver.url,),
                                          retry_schedule_s=(0.5,)), http) as dispatcher:
        slow = [dispatcher.publish(event(n, "CA-slow")) for n in range(1, 4)]
        fast = [dispatcher.publish(event(n, "CA-fast")) for n in range(1, 4)]
        await asyncio.gather(*fast)
        assert finals(receiver, "CA-fast") == [1, 2, 3]
        assert finals(receiver, "CA-slow") == []  # still retrying its first event
        await asyncio.gather(*slow)
    assert finals(receiver, "CA-slow") == [1, 2, 3]


async def test_retry_after_is_honoured(tmp_path: Path, receiver: WebhookReceiver,
                                       http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [429]
    receiver.retry_after = "1"
    loop = asyncio.get_running_loop()
    async with DurableDispatcher(settings(tmp_path, (receiver.url,)), http) as dispatcher:
        started = loop.time()
        assert await dispatcher.publish(event(1)) is Outcome.DELIVERED
        assert loop.time() - started >= 1.0  # the schedule alone would wait 0.05 s


async def test_client_errors_dead_letter_at_once_and_the_call_goes_on(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [422]
    async with DurableDispatcher(settings(tmp_path, (receiver.url,)), http) as dispatcher:
        assert await dispatcher.publish(event(1)) is Outcome.REJECTED
        assert await dispatcher.publish(event(2)) is Outcome.DELIVERED
    assert receiver.attempts == 2 and finals(receiver) == [2]
    assert rows(tmp_path, "SELECT state, last_status FROM deliveries") == [("dead", 422)]


async def test_a_slow_receiver_past_the_timeout_is_retried_with_the_same_id(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.delay_s = [1.0]
    async with DurableDispatcher(settings(tmp_path, (receiver.url,), timeout_s=0.3),
                                 http) as dispatcher:
        first = event(1)
        assert await dispatcher.publish(first) is Outcome.DELIVERED
        assert await dispatcher.publish(event(2)) is Outcome.DELIVERED
        await receiver.wait_for(lambda events: len(events) >= 3)
    # the slow attempt completed late at the receiver: a duplicate it can recognise
    assert [e.webhook_id for e in receiver.events].count(first.id) == 2
    assert finals(receiver) == [1, 2, 1] or finals(receiver) == [1, 1, 2]


async def test_gone_disables_the_target_and_dead_letters_its_events(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [410]
    with capture_logs() as logs:
        async with DurableDispatcher(settings(tmp_path, (receiver.url,)), http) as dispatcher:
            first = dispatcher.publish(event(1))
            assert await first is Outcome.FAILED
            assert await dispatcher.publish(event(2)) is Outcome.DELIVERED  # no target left
            assert dispatcher.targets["default"].disabled
            assert dispatcher.stats.targets_disabled == 1
    assert receiver.attempts == 1
    assert any("410 Gone" in line["event"] for line in logs)
    assert rows(tmp_path, "SELECT disabled_reason IS NOT NULL FROM targets") == [(1,)]


async def test_two_targets_one_down_the_other_unaffected(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession,
        refused_port: int) -> None:
    dead_url = f"http://127.0.0.1:{refused_port}/hook"
    config = settings(tmp_path, (), targets=(
        TargetSettings("up", receiver.url, Secret(SECRET)),
        TargetSettings("down", dead_url, Secret(SECRET))), retry_schedule_s=(30.0,),
                      drain_timeout_s=0.5)
    async with DurableDispatcher(config, http) as dispatcher:
        for n in range(1, 6):
            dispatcher.publish(event(n, targets=("up", "down")))
        await receiver.wait_for(lambda events: len(events) == 5)
        assert finals(receiver) == [1, 2, 3, 4, 5]
    outbox = Outbox(tmp_path / "outbox.db")  # read after the dispatcher stopped
    by_target = {row["target"]: row for row in outbox.status()}
    outbox.close()
    assert by_target["down"]["retrying"] == 1 and by_target["down"]["pending"] == 4
    assert by_target["up"]["pending"] == 0 and by_target["up"]["retrying"] == 0


async def test_a_restart_delivers_what_was_stored_and_closes_open_calls(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession,
        refused_port: int) -> None:
    dead_url = f"http://127.0.0.1:{refused_port}/hook"
    first_run = settings(tmp_path, (dead_url,), retry_schedule_s=(60.0,), drain_timeout_s=0.2)
    async with DurableDispatcher(first_run, http) as dispatcher:
        started = make_event(EventType.CALL_STARTED,
                             {"call_id": "CA1", "stream_id": "MZ1", "provider": "twilio",
                              "leg": None, "speaker": None, "custom_parameters": {}},
                             call_id="CA1", targets=("default",))
        dispatcher.publish(started)
        for n in (1, 2):
            dispatcher.publish(event(n))
    # The receiver comes back at another address: point the same target there.
    async with DurableDispatcher(settings(tmp_path, (receiver.url,)), http):
        await receiver.wait_for(lambda events: any(e.type == "call.completed" for e in events))
    assert [e.type for e in receiver.events] == [
        "call.started", "transcript.final", "transcript.final", "call.ended", "call.completed"]
    ended, completed = receiver.events[-2].data, receiver.events[-1].data
    assert completed["rebuilt"] is True and completed["reason"] == "bridge_restart"
    assert ended["reason"] == "bridge_restart"
    assert ended["legs"] == [{"leg": "inbound", "speaker": "caller", "text": "t1 t2",
                              "transcripts": 2}]


async def test_a_full_outbox_raises_an_alarm_and_refuses(
        tmp_path: Path, http: aiohttp.ClientSession, refused_port: int) -> None:
    dead_url = f"http://127.0.0.1:{refused_port}/hook"
    with capture_logs() as logs:
        async with DurableDispatcher(settings(tmp_path, (dead_url,), max_events=3,
                                              retry_schedule_s=(60.0,), drain_timeout_s=0.1),
                                     http) as dispatcher:
            outcomes = [dispatcher.publish(event(n)) for n in range(1, 6)]
            done = await asyncio.gather(*outcomes[3:])
            assert done == [Outcome.FAILED, Outcome.FAILED]
            assert dispatcher.stats.outbox_rejected == 2
    alarms = [line for line in logs if line["event"].startswith("ALARM")]
    assert len(alarms) == 1 and alarms[0]["reason"] == "the outbox is full (outbox.max_events)"
    assert rows(tmp_path, "SELECT COUNT(*) FROM events") == [(3,)]


async def test_partials_go_at_once_but_never_overtake_a_waiting_final(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [503]
    async with DurableDispatcher(settings(tmp_path, (receiver.url,),
                                          retry_schedule_s=(0.3,)), http) as dispatcher:
        final = dispatcher.publish(event(1))
        await asyncio.sleep(0.1)  # the first attempt has failed; the final waits to retry
        dispatcher.publish(event(2, kind=EventType.TRANSCRIPT_PARTIAL))
        assert dispatcher.stats.partials_dropped == 1
        assert await final is Outcome.DELIVERED
        dispatcher.publish(event(2, kind=EventType.TRANSCRIPT_PARTIAL))
        await receiver.wait_for(lambda events: len(events) == 2)
    assert [e.type for e in receiver.events] == ["transcript.final", "transcript.partial"]


REFUSED = "per-call webhook URL refused; the call keeps its configured targets"


@pytest.mark.parametrize(("url", "reason"), [
    ("https://evil.example.net/x", "not under an entry of webhooks.call_url_allowlist"),
    ("https://tenant.example.com.evil.test/hooks/1",
     "not under an entry of webhooks.call_url_allowlist"),
    ("https://tenant.example.com/hooksevil", "not under an entry of webhooks.call_url_allowlist"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
])
async def test_per_call_urls_need_the_allow_list_and_pass_the_forgery_guard(
        tmp_path: Path, http: aiohttp.ClientSession, url: str, reason: str) -> None:
    config = settings(tmp_path, ("https://hooks.example.com/a",), allow_private_networks=False,
                      call_url_allowlist=("https://tenant.example.com/hooks",
                                          "https://169.254.169.254/"))
    with capture_logs() as logs:
        async with DurableDispatcher(config, http) as dispatcher:
            ok = dispatcher.route("/streams/twilio", {
                "callbridge_webhook_url": "https://tenant.example.com/hooks/1"})
            refused = dispatcher.route("/streams/twilio", {"callbridge_webhook_url": url})
    assert ok[0] == "default" and ok[1].startswith("call-")
    assert refused == ("default",)
    [refusal] = [line for line in logs if line["event"] == REFUSED]
    assert reason in refusal["reason"]


async def test_per_call_urls_that_normalise_to_loopback_never_reach_it(
        tmp_path: Path, receiver: WebhookReceiver) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    disguised = [f"http://\u2460\u2461\u2466.0.0.1:{port}/hook",
                 f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/hook",
                 f"http://127\u30020\u30020\u30021:{port}/hook",
                 f"http://2130706433:{port}/hook", f"http://0177.0.0.1:{port}/hook",
                 f"http://127.1:{port}/hook", f"http://0x7f.1:{port}/hook"]
    # Entries written the same ways: a string prefix would have let every URL through.
    config = settings(tmp_path, (), allow_private_networks=False, allow_insecure_http=True,
                      call_url_allowlist=tuple(url.rsplit("/", 1)[0] for url in disguised))
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private=False))
    async with (aiohttp.ClientSession(connector=connector) as session,
                DurableDispatcher(config, session) as dispatcher):
        outcomes = []
        for n, url in enumerate(disguised):
            targets = dispatcher.route("/streams/twilio", {"callbridge_webhook_url": url})
            assert targets == ()
            outcomes.append(dispatcher.publish(event(1, call=f"CA{n}", targets=targets)))
        await asyncio.gather(*outcomes)
    assert receiver.attempts == 0


async def test_a_retry_after_of_zero_forever_gets_a_bounded_number_of_attempts(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [503] * 1_000_000
    receiver.retry_after = "0"
    window_s, first_step = 1.0, 0.2
    async with DurableDispatcher(settings(tmp_path, (receiver.url,),
                                          retry_schedule_s=(first_step,),
                                          drain_timeout_s=0.0), http) as dispatcher:
        dispatcher.publish(event(1))
        await asyncio.sleep(window_s)  # a window to count attempts in, not a synchronisation
    # The floor allows window/first_step + 1 = 6; a loop honouring "0" makes thousands.
    assert 2 <= receiver.attempts <= 15


async def test_names_that_resolve_to_private_addresses_are_refused_at_connect() -> None:
    resolver = GuardedResolver(allow_private=False)
    try:
        with pytest.raises(AddressBlocked, match="loopback"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()


async def test_routes_pick_targets_by_path_and_parameters(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    from bridge.config import RouteSettings

    config = settings(tmp_path, ("https://hooks.example.com/all",), targets=(
        TargetSettings("acme", "https://acme.example.com/h", Secret(SECRET),
                       events=("transcript.*",)),
        TargetSettings("audit", "https://audit.example.com/h", Secret(SECRET))),
        routes=(RouteSettings(("acme",), parameters=(("tenant", "acme"),)),
                RouteSettings(("audit",), path="/streams/telnyx")))
    async with DurableDispatcher(config, http) as dispatcher:
        assert dispatcher.route("/streams/twilio", {"tenant": "acme"}) == ("acme",)
        assert dispatcher.route("/streams/telnyx", {"tenant": "acme"}) == ("acme", "audit")
        assert dispatcher.route("/streams/twilio", {"tenant": "other"}) == ("default",)
        assert dispatcher.targets["acme"].wants("transcript.final")
        assert not dispatcher.targets["acme"].wants("call.ended")


async def test_a_per_call_url_receives_the_calls_events_and_is_remembered(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    config = settings(tmp_path, (), call_url_allowlist=(receiver.url.rsplit("/", 1)[0],))
    async with DurableDispatcher(config, http) as dispatcher:
        targets = dispatcher.route("/streams/twilio", {"callbridge_webhook_url": receiver.url})
        assert len(targets) == 1 and targets[0].startswith("call-")
        assert await dispatcher.publish(event(1, targets=targets)) is Outcome.DELIVERED
    assert finals(receiver) == [1]
    assert rows(tmp_path, "SELECT url FROM targets WHERE name LIKE 'call-%'") == [
        (receiver.url,)]


async def test_distinct_per_call_urls_leave_a_bounded_number_of_targets_and_series(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    calls, wave, limit = 5000, 100, 20
    config = settings(tmp_path, (), max_call_targets=limit,
                      call_url_allowlist=(receiver.url,))
    def target_tasks() -> int:
        return sum(task.get_name().startswith(("webhook ", "partials "))
                   for task in asyncio.all_tasks())

    with capture_logs() as logs:
        async with DurableDispatcher(config, http) as dispatcher:
            accepted = 0
            for first in range(0, calls, wave):
                started = []
                for n in range(first, first + wave):
                    url = f"{receiver.url}?tenant=t{n}"
                    targets = dispatcher.route("/streams/twilio",
                                               {"callbridge_webhook_url": url})
                    accepted += bool(targets)
                    started.append((f"CA{n}", targets))
                    dispatcher.publish(event(0, f"CA{n}", EventType.CALL_STARTED, targets))
                per_call = [t for t in dispatcher.targets.values() if t.per_call]
                assert len(per_call) <= limit
                # Two tasks per live target, and those of the last wave's targets that are
                # still being retired: bounded by the limit, whatever the number of calls.
                assert target_tasks() <= 4 * limit
                assert set(dispatcher.pending_by_label()) <= {"per_call"}
                await asyncio.gather(*(dispatcher.publish(event(1, call, EventType.CALL_ENDED,
                                                                targets))
                                       for call, targets in started))
            assert [t for t in dispatcher.targets.values() if t.per_call] == []
            assert dispatcher.pending_by_label() == {}
    # Retired targets free their places: far more calls than the limit had their own URL.
    assert accepted == limit * (calls // wave)
    assert len(receiver.events) == 2 * accepted
    assert rows(tmp_path, "SELECT COUNT(*) FROM targets WHERE name LIKE 'call-%'") == [(0,)]
    assert len([line for line in logs if line["event"] == REFUSED]) == 1


async def test_only_per_call_targets_with_something_to_deliver_come_back_at_start(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    config = settings(tmp_path, (), call_url_allowlist=(receiver.url,), drain_timeout_s=0.0)
    receiver.fail_calls["CA2"] = [503] * 1000
    async with DurableDispatcher(config, http) as dispatcher:
        done = dispatcher.route("/streams/twilio", {"callbridge_webhook_url": receiver.url})
        waiting = dispatcher.route("/streams/twilio",
                                   {"callbridge_webhook_url": receiver.url + "?n=2"})
        assert await dispatcher.publish(event(1, "CA1", EventType.CALL_ENDED,
                                              done)) is Outcome.DELIVERED
        dispatcher.publish(event(1, "CA2", EventType.CALL_ENDED, waiting))
        assert set(dispatcher.targets) == set(waiting)  # the first is retired already
    assert rows(tmp_path, "SELECT name FROM targets") == [(waiting[0],)]
    async with DurableDispatcher(config, http) as dispatcher:
        assert set(dispatcher.targets) == set(waiting)
        assert dispatcher.pending_by_label() == {"per_call": 1}


async def test_per_call_targets_routed_for_calls_that_never_started_do_not_hold_places(
        tmp_path: Path, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    config = settings(tmp_path, (), max_call_targets=2, call_url_allowlist=(receiver.url,))
    async with DurableDispatcher(config, http) as dispatcher:
        for n in range(2):  # routed, then the call failed before publishing anything
            assert dispatcher.route("/streams/twilio",
                                    {"callbridge_webhook_url": f"{receiver.url}?n={n}"})
        live = dispatcher.route("/streams/twilio", {"callbridge_webhook_url": receiver.url})
        assert live and list(dispatcher.targets) == list(live)
        assert await dispatcher.publish(event(1, "CA9", EventType.CALL_STARTED,
                                              live)) is Outcome.DELIVERED
    assert rows(tmp_path, "SELECT name FROM targets") == [(live[0],)]
