"""Routing without a loop, a server or a file: targets per call and the per-call bound."""

from __future__ import annotations

from bridge.config import Secret, WebhookSettings
from bridge.delivery.routing import Router
from bridge.delivery.targets import Target
from bridge.events import EventType, make_event

TENANT = "https://tenant.example/hooks"
SECRET = Secret("whsec_" + "Y2FsbGJyaWRnZS1yb3V0aW5nLXRlc3Qtc2VjcmV0ISE=")


class Owner:
    """What the dispatcher does when the router adds or drops a target: here, noted."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.dropped: list[str] = []

    def on_added(self, target: Target) -> None:
        self.added.append(target.name)

    def on_dropped(self, names: list[str]) -> None:
        self.dropped += names


def router(owner: Owner, **changes: object) -> Router:
    hooks = WebhookSettings(urls=("https://hooks.example/all",), secret=SECRET,
                            call_url_allowlist=(TENANT,), **changes)  # type: ignore[arg-type]
    return Router(hooks, on_added=owner.on_added, on_dropped=owner.on_dropped)


def per_call(url: str) -> dict[str, str]:
    return {"callbridge_webhook_url": url}


def test_a_call_url_under_the_allowlist_becomes_a_target_recorded_before_use() -> None:
    owner = Owner()
    routes = router(owner)
    targets = routes.route("/streams/twilio", per_call(f"{TENANT}/acme"))
    assert targets[0] == "default" and targets[1].startswith("call-")
    assert owner.added == [targets[1]]
    assert routes.take_target_changes() == ([(targets[1], f"{TENANT}/acme",
                                              "CALLBRIDGE_WEBHOOK_SECRET")], [])
    assert routes.take_target_changes() == ([], [])  # taken once
    assert routes.route("/streams/twilio", per_call("https://elsewhere.example/h")) == (
        "default",)


def test_at_the_bound_only_targets_without_a_live_call_make_room() -> None:
    owner = Owner()
    routes = router(owner, max_call_targets=2)
    [_, live] = routes.route("/streams/twilio", per_call(f"{TENANT}/1"))
    [_, idle] = routes.route("/streams/twilio", per_call(f"{TENANT}/2"))
    routes.call_published(make_event(EventType.CALL_STARTED, {}, call_id="CA1",
                                     targets=("default", live)))
    [_, third] = routes.route("/streams/twilio", per_call(f"{TENANT}/3"))
    assert owner.dropped == [idle] and set(routes.targets) == {"default", live, third}
    recorded, forgotten = routes.take_target_changes()
    assert [row[0] for row in recorded] == [live, third]  # the dropped one never recorded
    assert forgotten == [idle]
    routes.call_published(make_event(EventType.CALL_STARTED, {}, call_id="CA3",
                                     targets=("default", third)))
    assert routes.route("/streams/twilio", per_call(f"{TENANT}/4")) == ("default",)  # full


def test_a_stored_call_ended_lets_its_per_call_target_retire() -> None:
    owner = Owner()
    routes = router(owner)
    [_, target] = routes.route("/streams/twilio", per_call(f"{TENANT}/1"))
    started = make_event(EventType.CALL_STARTED, {}, call_id="CA1", targets=("default", target))
    routes.call_published(started)
    assert routes.detach_idle([target]) == []
    routes.call_ended(make_event(EventType.CALL_ENDED, {}, call_id="CA1",
                                 targets=("default", target)))
    assert routes.detach_idle([target, "default"]) == [target]  # configured ones stay
    assert set(routes.targets) == {"default"}
