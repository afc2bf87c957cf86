"""The dispatcher: reads the journal's new events after a durable cursor and sends what they call for
(notification hooks, alerts). No Ray here: a long-lived actor (the queen) calls ``round`` periodically.

The cursor is the journal's own sequence number, kept in the journal's records and advanced after each
batch, so no event is lost after a restart: a batch interrupted by a crash is handled again (notifications
are at least once; their payload carries the event's ``seq`` for receivers that want exactly once, and an
alert already sent is not sent again, see ``alertDedup``). On a journal it has never read, the dispatcher
starts from the newest event: the history before it is not news.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from engine.alerting import Alert, AlertingSettings, RateLimiter, alerts_for, stuck_alert
from engine.audit import AuditTrail
from engine.hooks import ConfiguredWebhook, WebhookSender, deliver, last_judgement, notifications
from engine.journal import Journal, UnknownDeploymentError
from engine.secrets import value_or_reference
from engine.state import DeploymentState, Event, EventKind

log = logging.getLogger(__name__)

CURSOR_RECORD = "dispatch"
SENT_RECORD = "alert"
BATCH = 500
ALERT_OUTCOMES = ("sent", "failed", "deduplicated", "unrouted", "rate_limited")  # what came of an alert
ACTOR = "alerting"


class Notifier(Protocol):
    """Sends one alert to one channel URL; True when the channel took it. Raises ValueError when the URL
    is not one it can send to."""

    def notify(self, url: str, title: str, body: str, severity: str) -> bool: ...


class JournalSentAlerts:
    """When each alert key was last sent, in the journal's records (so deduplication survives restarts)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._cache: dict[str, float] = {r["key"]: float(r["at"]) for r in journal.records(SENT_RECORD)}

    def last_sent(self, key: str) -> float | None:
        return self._cache.get(key)

    def mark_sent(self, key: str, at: float) -> None:
        self._cache[key] = at
        self.journal.put_record(SENT_RECORD, key, {"key": key, "at": at})


class Dispatcher:
    def __init__(
        self,
        journal: Journal,
        hooks: list[ConfiguredWebhook],
        alerting: AlertingSettings,
        sender: WebhookSender,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.journal = journal
        self.hooks = hooks
        self.alerting = alerting
        self.sender = sender
        self.notifier = notifier
        self.clock = clock
        self.sleep = sleep
        self.limiter = RateLimiter(alerting.rate_limit, clock)
        self.sent = JournalSentAlerts(journal)
        self.trail = AuditTrail(journal)
        # ("hook", type, outcome) and ("alert", kind, outcome): what was sent, for the metrics
        self.counts: Counter[tuple[str, str, str]] = Counter()
        if self._cursor() is None:
            head = journal.head()
            self._save_cursor(head[0] if head else 0)

    # ------------------------------------------------------------------------------ cursor
    def _cursor(self) -> int | None:
        records = self.journal.records(CURSOR_RECORD)
        return int(records[0]["seq"]) if records else None

    def _save_cursor(self, seq: int) -> None:
        self.journal.put_record(CURSOR_RECORD, "cursor", {"seq": seq})

    @property
    def cursor(self) -> int:
        return self._cursor() or 0

    # ------------------------------------------------------------------------------ rounds
    def round(self, stuck: bool = True) -> int:
        """Handle the events written since the last round (at most ``BATCH``), then (with ``stuck``) look for
        deployments stuck past their deadline; returns how many events were handled."""
        events = self.journal.events(after_seq=self.cursor)[:BATCH]
        for event in events:
            try:
                self._handle(event)
            except Exception:  # one event's trouble must not stop the others (nor hold the cursor forever)
                log.exception("dispatching event %s (%s) failed", event.seq, event.kind.value)
        if events:
            self._save_cursor(events[-1].seq)
        for state in self.journal.deployments(active_only=True, limit=100_000) if stuck else []:
            alert = stuck_alert(state, self.clock(), self.alerting)
            if alert is not None:
                self.raise_alert(alert)
        return len(events)

    def _state(self, event: Event) -> DeploymentState | None:
        if event.kind is EventKind.AUDIT or ":" in event.deployment_id:
            return None  # audit entries and environment events belong to no deployment
        try:
            return self.journal.state(event.deployment_id)
        except UnknownDeploymentError:
            return None

    def _handle(self, event: Event) -> None:
        state = self._state(event)
        judgement = None
        if state is not None and event.kind in (EventKind.FINISHED, EventKind.ROLLBACK_STARTED):
            judgement = last_judgement(self.journal.events(state.deployment_id))
        for hook, payload in notifications(event, state, self.hooks, self.clock(), judgement):
            delivery = deliver(hook, payload, self.sender, self.sleep)
            self.counts["hook", hook.type.value, "delivered" if delivery.ok else "failed"] += 1
            if not delivery.ok:
                log.warning(
                    "%s hook '%s' for event %s: %s", hook.type.value, hook.name, event.seq, delivery.answer
                )
        for alert in alerts_for(event, state, self.alerting):
            self.raise_alert(alert)

    # ------------------------------------------------------------------------------ alerts
    def raise_alert(self, alert: Alert) -> None:
        """Send an alert to its channels, unless the same one went out within the dedup window."""
        last = self.sent.last_sent(alert.key)
        if last is not None and alert.at - last < self.alerting.dedup_window / 1000:
            self._count(alert, "deduplicated")
            return
        channels = self.alerting.channels_for(alert)
        if not channels:
            self._count(alert, "unrouted")
            return
        delivered: list[str] = []
        failed: list[str] = []
        for name in channels:
            if not self.limiter.allow(name):
                self._count(alert, "rate_limited")
                continue
            held = self.limiter.take_held_back(name)
            body = (alert.body or alert.title) + (
                f"\n({held} more alerts were held back by the rate limit)" if held else ""
            )
            (delivered if self._send(name, alert, body) else failed).append(name)
        if not delivered and not failed:
            return  # every channel was over its limit: the alert is counted, and may come again
        self.sent.mark_sent(alert.key, alert.at)
        self._count(alert, "sent" if delivered else "failed")
        self.trail.record(
            "alert_sent" if delivered else "alert_failed",
            ACTOR,
            subject=alert.subject,
            reason=alert.title,
            kind=alert.kind.value,
            severity=alert.severity.value,
            environment=alert.environment,
            channels=delivered,
            failed=failed or None,
        )

    def _count(self, alert: Alert, outcome: str) -> None:
        self.counts["alert", alert.kind.value, outcome] += 1

    def _send(self, name: str, alert: Alert, body: str) -> bool:
        """One channel, with bounded retries and back-off; errors name the channel, never its URL."""
        title = f"[{alert.severity.value.upper()}] {alert.title}"
        try:
            url = value_or_reference(f"alerting.channels.{name}.url", self.alerting.channels[name].url)
        except ValueError as error:
            log.error("alert channel %s: %s", name, error)
            return False
        for attempt in range(self.alerting.retries + 1):
            try:
                if self.notifier.notify(url, title, body, alert.severity.value):
                    return True
            except ValueError as error:
                log.error("alert channel %s: %s", name, error)
                return False
            if attempt < self.alerting.retries:
                self.sleep(min(30.0, self.alerting.backoff / 1000 * 2**attempt))
        log.error("alert channel %s did not take '%s' after %d attempts", name, alert.title, attempt + 1)
        return False
