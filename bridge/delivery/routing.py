"""Routing: which webhook targets a call's events go to, and the per-call targets' lifetime.

A call gets every matching route's targets, else the ``default`` ones, plus a per-call URL
from its custom parameters when that URL lies under an entry of
``webhooks.call_url_allowlist`` and passes the request-forgery guard. At most
``webhooks.max_call_targets`` per-call targets exist at once; one is retired once nothing is
pending for it and no live call names it, so URLs chosen by peers cannot pile up.

No I/O here: the router tells its owner when a target appears or is dropped at its bound
(``on_added``, ``on_dropped``), and keeps the target rows the outbox must record or forget
until the outbox writer takes them (``take_target_changes``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import structlog

from bridge.config import DEFAULT_TARGET, WebhookSettings, decode_webhook_secret
from bridge.delivery.targets import CALL_TARGET_PREFIX, PER_CALL_LABEL, Target
from bridge.delivery.webhooks import endpoint_for_logs
from bridge.events import EventType, OutboundEvent
from bridge.security import Endpoint, check_webhook_url, endpoint_of

log = structlog.get_logger("bridge.delivery")

REFUSAL_LOG_EVERY_S: Final = 60.0  # refused per-call URLs: one log line per minute at most
# Per-call targets sign with the main webhook secret; this names its variable, not a secret.
PER_CALL_SECRET_ENV: Final = "CALLBRIDGE_WEBHOOK_SECRET"  # noqa: S105

TargetRow = tuple[str, str, str]  # (name, url, secret_env) as the outbox records a target


class Router:
    """The targets by name, and the rules that give a call its targets."""

    def __init__(self, hooks: WebhookSettings, *, on_added: Callable[[Target], None],
                 on_dropped: Callable[[list[str]], None]) -> None:
        """``on_added`` starts a new per-call target's delivery; ``on_dropped`` stops the
        delivery of idle per-call targets dropped to make room (nothing is in flight)."""
        self.hooks = hooks
        self.targets: dict[str, Target] = {}
        for configured in hooks.all_targets():
            key = decode_webhook_secret(configured.secret) or b""
            self.targets[configured.name] = Target(configured.name, configured.url, key,
                                                   configured.secret_env, configured.events)
        self._on_added = on_added
        self._on_dropped = on_dropped
        self._allowlist = [entry for entry in map(endpoint_of, hooks.call_url_allowlist)
                           if isinstance(entry, Endpoint)]
        self._to_record: list[TargetRow] = []  # new per-call targets, not in the outbox yet
        self._to_forget: list[str] = []  # retired targets whose rows the outbox still has
        self._refused_call_urls = 0
        self._refusal_logged_at = -REFUSAL_LOG_EVERY_S

    def route(self, path: str, parameters: Mapping[str, str]) -> tuple[str, ...]:
        """The targets of a call: every matching route's, else ``default``; plus a per-call
        URL from the custom parameters when the allow-list and the forgery guard accept it."""
        names: list[str] = []
        for route in self.hooks.routes:
            if route.path and route.path != path:
                continue
            if all(parameters.get(k) == v for k, v in route.parameters):
                names += [n for n in route.targets if n not in names]
        if not names:
            names = [t.name for t in self.hooks.all_targets()
                     if t.name == DEFAULT_TARGET or t.name.startswith(f"{DEFAULT_TARGET}-")]
        url = parameters.get(self.hooks.call_url_parameter)
        if url:
            name = self._call_target(url)
            if name is not None and name not in names:
                names.append(name)
        return tuple(names)

    def wanting(self, event: OutboundEvent) -> list[Target]:
        """The targets of ``event`` that exist and want its type (disabled ones included)."""
        kind = str(event.type)
        return [self.targets[name] for name in event.targets
                if name in self.targets and self.targets[name].wants(kind)]

    def stored_targets(self, event: OutboundEvent) -> tuple[str, ...]:
        """The targets an event is stored for: those that want it and are not disabled."""
        return tuple(target.name for target in self.wanting(event) if not target.disabled)

    def call_published(self, event: OutboundEvent) -> None:
        """Note that the call of ``event`` is live for its per-call targets (a stored
        ``call.ended`` ends that, in ``call_ended``)."""
        if event.type is EventType.CALL_ENDED:
            return
        for name in event.targets:
            target = self.targets.get(name)
            if target is not None and target.per_call:
                target.live.add(event.call_id)

    def call_ended(self, event: OutboundEvent) -> None:
        for name in event.targets:
            if name in self.targets:
                self.targets[name].live.discard(event.call_id)

    def pending_by_label(self) -> dict[str, int]:
        """Deliveries waiting, per target name for configured targets and under one
        ``per_call`` label for all per-call targets (their URLs are no metric labels)."""
        counts: dict[str, int] = {}
        for target in self.targets.values():
            label = PER_CALL_LABEL if target.per_call else target.name
            counts[label] = counts.get(label, 0) + sum(target.pending.values())
        return counts

    # -- per-call targets ---------------------------------------------------------------------

    def call_url_problem(self, url: str) -> str | None:
        """Why a per-call URL may not be used, or None: it must pass the request-forgery
        checks and lie under an allow-list entry (same scheme, host and port after
        normalisation; the entry's path segments as its prefix)."""
        problem = check_webhook_url(url, allow_insecure_http=self.hooks.allow_insecure_http,
                                    allow_private=self.hooks.allow_private_networks)
        if problem is not None:
            return problem
        endpoint = endpoint_of(url)
        if isinstance(endpoint, str) or not any(endpoint.within(entry)
                                                for entry in self._allowlist):
            return "not under an entry of webhooks.call_url_allowlist"
        return None

    def add_call_target(self, name: str, url: str) -> Target:
        """A per-call target under ``name`` (for one a previous run recorded: already
        judged by ``call_url_problem``)."""
        key = decode_webhook_secret(self.hooks.secret) or b""
        target = Target(name, url, key, PER_CALL_SECRET_ENV)
        self.targets[name] = target
        return target

    def detach_idle(self, names: Iterable[str]) -> list[str]:
        """Take idle per-call targets out of ``targets`` and return their names: their
        workers fetch nothing more from here on, and their owner stops them."""
        retired: list[str] = []
        for name in names:
            target = self.targets.get(name)
            if target is None or not target.per_call or not target.idle:
                continue
            del self.targets[name]
            target.disabled = "retired"
            retired.append(name)
        if retired:
            log.debug("per-call webhook targets retired", targets=len(retired))
            gone = set(retired)  # not recorded yet: then they never need to be
            self._to_record = [row for row in self._to_record if row[0] not in gone]
        return retired

    def take_target_changes(self) -> tuple[list[TargetRow], list[str]]:
        """The target rows to record and the names to forget since the last call, for the
        outbox writer's next batch (recorded before any event that names them)."""
        changes = self._to_record, self._to_forget
        self._to_record, self._to_forget = [], []
        return changes

    def _call_target(self, url: str) -> str | None:
        name = CALL_TARGET_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:16]
        if name in self.targets:
            return name
        problem = self.call_url_problem(url)
        if problem is None and self._call_targets_full():
            problem = "webhooks.max_call_targets per-call targets are in use"
        if problem is not None:
            self._refuse_call_url(url, problem)
            return None
        target = self.add_call_target(name, url)
        self._on_added(target)
        self._to_record.append((name, url, target.secret_env))
        return name

    def _call_targets_full(self) -> bool:
        """Whether the per-call targets are at their bound, after retiring idle ones that a
        call was routed to but never published for (its start failed after routing)."""
        per_call = [t.name for t in self.targets.values() if t.per_call]
        if len(per_call) < self.hooks.max_call_targets:
            return False
        retired = self.detach_idle(per_call)
        self._on_dropped(retired)
        self._to_forget += retired
        return sum(t.per_call for t in self.targets.values()) >= self.hooks.max_call_targets

    def _refuse_call_url(self, url: str, problem: str) -> None:
        """Log a refused per-call URL, at most once per ``REFUSAL_LOG_EVERY_S``: calls chosen
        by a peer must not be able to flood the log."""
        self._refused_call_urls += 1
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSAL_LOG_EVERY_S:
            return
        self._refusal_logged_at = now
        log.warning("per-call webhook URL refused; the call keeps its configured targets",
                    url=endpoint_for_logs(url)[:200], reason=problem,
                    refused_so_far=self._refused_call_urls)
