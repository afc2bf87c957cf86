"""Webhooks at a deployment's gates, and the notifications sent after the fact (no Ray here).

The hook types and their meaning follow Flagger's webhooks:

- ``confirm-rollout``: before the candidate is scaled up. Anything but 2xx holds the deployment there.
- ``pre-rollout``: before the candidate gets traffic (or, blue-green, before it is validated). A failure
  (after the hook's own retries) rolls the deployment back.
- ``rollout``: before each analysis step. A failure holds the step and is retried; ``consecutiveFailures``
  failures in a row roll back, as failed analysis windows do.
- ``confirm-traffic-increase``: before each weight increase short of promotion; holds until 2xx.
- ``confirm-promotion``: before the promotion (the steps that end on 100% for the candidate); holds until
  2xx.
- ``post-rollout``, ``rollback``, ``event``: notifications (after the deployment ended, when a rollback
  starts, for every journal event); a failure is logged and counted, it changes nothing.

A held gate is bounded by the deployment's deadlines: a confirm-* hold by ``maxPauseDuration`` (as a person's
pause is), a rollout hold by ``progressDeadline``; past it the deployment rolls back with the reason. Each
gate's answer is journaled (a HOOK event) when it changes, so ``status`` shows what a deployment waits for and
a new runner after a crash keeps the hold's start.

Gates are called from the reconciler through ``StepGate`` (the runner injects ``WebhookGate``); the
notifications are sent by the dispatcher (engine/dispatch.py), which reads the journal after a durable
cursor. The HTTP call itself is the adapter's (adapters/webhooks.py), behind ``WebhookSender``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field

from engine.journal import Journal
from engine.models import (
    GATE_HOOKS,
    DeploymentRequest,
    HookType,
    Model,
    RollbackTrigger,
    Strategy,
    StrategyType,
    Webhook,
)
from engine.secrets import value_or_reference
from engine.state import (
    DeploymentState,
    Event,
    EventKind,
    Role,
    Step,
    StepKind,
    _promotion_tail_start,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
HOOK_ACTOR = "hooks"


class WebhookSender(Protocol):
    """One HTTP POST of a JSON body; returns the status code. Raises OSError (TimeoutError included) when no
    answer came."""

    def post(self, url: str, body: bytes, timeout_s: float) -> int: ...


class Delivery(Model):
    """What came of calling a hook: its last answer and how many attempts it took."""

    ok: bool
    status: int | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def answer(self) -> str:
        if self.status is not None:
            return f"HTTP {self.status}"
        return self.error or "no answer"


def _retryable(status: int | None) -> bool:
    """No answer, a server error or throttling: worth another attempt. Another 4xx is an answer."""
    return status is None or status >= 500 or status == 429


def deliver(
    hook: Webhook,
    payload: dict[str, Any],
    sender: WebhookSender,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST ``payload`` to the hook, with up to ``retries`` more attempts and exponential back-off.

    Errors name the hook, never its URL (which may hold a secret)."""
    try:
        url = value_or_reference(f"hooks.{hook.name}.url", hook.url)
    except ValueError as error:
        return Delivery(ok=False, attempts=0, error=str(error))
    body = json.dumps(payload, default=str, separators=(",", ":")).encode()
    status: int | None = None
    problem: str | None = None
    attempt = 0
    for attempt in range(1, hook.retries + 2):
        try:
            status, problem = sender.post(url, body, hook.timeout / 1000), None
        except TimeoutError:
            status, problem = None, f"no answer within {hook.timeout / 1000:g}s"
        except OSError as failure:
            status, problem = None, f"{type(failure).__name__}: {failure.strerror or 'connection failed'}"
        except ValueError as failure:  # the resolved URL is not one (from an env: or file: reference)
            return Delivery(ok=False, attempts=attempt, error=f"hooks.{hook.name}.url: {failure}")
        if status is not None and 200 <= status < 300:
            return Delivery(ok=True, status=status, attempts=attempt)
        if attempt <= hook.retries and _retryable(status):
            sleep(min(MAX_BACKOFF_S, hook.backoff / 1000 * 2 ** (attempt - 1)))
        else:
            break
    return Delivery(ok=False, status=status, attempts=attempt, error=problem)


# --------------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------------
def last_judgement(events: Iterable[Event]) -> dict[str, Any] | None:
    """The newest analysis judgement (a MEASUREMENT event's data), or None when there is none yet."""
    found = None
    for event in events:
        if event.kind is EventKind.MEASUREMENT:
            found = event.data
    return found


def hook_payload(
    hook_type: HookType,
    state: DeploymentState,
    now: float,
    hook: Webhook | None = None,
    judgement: dict[str, Any] | None = None,
    event: Event | None = None,
) -> dict[str, Any]:
    """The JSON a hook receives: the deployment, its target, revisions (with the versions people gave
    them), weights, phase, the step, the last judgement, and the event for an event hook."""
    status = state.status()
    step = state.current_step()
    payload: dict[str, Any] = {
        "type": hook_type.value,
        "name": hook.name if hook else None,
        "deploymentId": state.deployment_id,
        "service": state.request.target.service,
        "environment": state.request.environment,
        "target": state.request.target.key,
        "strategy": state.request.strategy.type.value,
        "phase": status.phase.value,
        "step": None
        if step is None
        else {
            "index": state.step_index,
            "count": len(state.plan),
            "kind": step.kind.value,
            "label": step.label,
            "weight": step.weight if step.kind is StepKind.SET_WEIGHT else None,
        },
        "stableRevision": status.stable_revision,
        "stableVersion": status.version_of(status.stable_revision) if status.stable_revision else None,
        "candidateRevision": status.candidate_revision,
        "candidateVersion": (
            status.version_of(status.candidate_revision) if status.candidate_revision else None
        ),
        "weights": dict(status.weights),
        "judgement": judgement,
        "rollback": None
        if state.rollback is None
        else {"trigger": state.rollback.trigger.value, "reason": state.rollback.reason},
        "outcome": state.outcome.value if state.outcome else None,
        "message": state.message,
        "metadata": dict(hook.metadata) if hook else {},
        "timestamp": now,
    }
    if event is not None:
        payload["event"] = event_payload(event)
    return payload


def event_payload(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "kind": event.kind.value,
        "at": event.at,
        "actor": event.actor,
        "subject": event.deployment_id,
        "data": event.data,
    }


# --------------------------------------------------------------------------------------------
# Where each gate applies
# --------------------------------------------------------------------------------------------
def gate_types(plan: list[Step], index: int, has_stable: bool) -> list[HookType]:
    """The gating hook types that apply before step ``index`` of ``plan``, in the order they are called."""
    step = plan[index]
    first_deploy = next(
        (i for i, s in enumerate(plan) if s.kind is StepKind.DEPLOY and s.role is Role.CANDIDATE), None
    )
    kinds: list[HookType] = []
    if index == first_deploy:
        kinds.append(HookType.CONFIRM_ROLLOUT)
    if first_deploy is not None and index == first_deploy + 1:
        kinds.append(HookType.PRE_ROLLOUT)
    if step.kind in (StepKind.ANALYZE, StepKind.VALIDATE):
        kinds.append(HookType.ROLLOUT)
    if has_stable and index == _promotion_tail_start(plan):
        kinds.append(HookType.CONFIRM_PROMOTION)
    elif (
        step.kind is StepKind.SET_WEIGHT
        and 0 < step.weight < 100
        and step.weight > _weight_before(plan, index)
    ):
        kinds.append(HookType.CONFIRM_TRAFFIC_INCREASE)
    return kinds


def _weight_before(plan: list[Step], index: int) -> int:
    earlier = [s.weight for s in plan[:index] if s.kind is StepKind.SET_WEIGHT]
    return earlier[-1] if earlier else 0


# --------------------------------------------------------------------------------------------
# The reconciler's seam
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hold:
    """Do not start the step yet: ask again after ``delay`` seconds."""

    delay: float
    reason: str


@dataclass(frozen=True)
class Halt:
    """Roll the deployment back."""

    trigger: RollbackTrigger
    reason: str


GateVerdict = Hold | Halt | None  # None: the step may start


class StepGate(Protocol):
    """Asked by the reconciler before a step starts (see ``WebhookGate``)."""

    def before_step(self, state: DeploymentState, step: Step) -> GateVerdict: ...


def hold_limit_s(hook_type: HookType, strategy: Strategy) -> float:
    """How long a gate may hold: a confirmation as long as a person's pause, a failing rollout hook as long
    as the progress deadline."""
    if hook_type is HookType.ROLLOUT:
        return strategy.progress_deadline / 1000
    return strategy.max_pause_duration / 1000


def consecutive_failures(strategy: Strategy) -> int:
    config = strategy.canary or strategy.blue_green or strategy.rolling
    return config.failure_threshold.consecutive_failures if config is not None else 3


class WebhookGate:
    """Calls the deployment's gating hooks before the steps they guard; journals each answer that changes.

    Each hook of each type that applies is called in turn; the first one that does not pass decides."""

    def __init__(
        self,
        journal: Journal,
        sender: WebhookSender,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        actor: str = HOOK_ACTOR,
    ) -> None:
        self.journal = journal
        self.sender = sender
        self.clock = clock
        self.sleep = sleep
        self.actor = actor
        self._answers: dict[tuple[int, str, str], str] = {}  # last journaled answer per (step, type, hook)
        self._held_since: dict[tuple[int, str, str], float] = {}
        self._failures: dict[tuple[int, str, str], int] = {}

    def before_step(self, state: DeploymentState, step: Step) -> GateVerdict:
        hooks = [h for h in state.request.strategy.webhooks if h.type in GATE_HOOKS]
        if not hooks:
            return None
        events: list[Event] | None = None
        for hook_type in gate_types(state.plan, state.step_index, state.stable_revision is not None):
            for hook in (h for h in hooks if h.type is hook_type):
                if events is None:
                    events = self.journal.events(state.deployment_id)
                payload = hook_payload(hook_type, state, self.clock(), hook, last_judgement(events))
                delivery = deliver(hook, payload, self.sender, self.sleep)
                verdict = self._verdict(state, hook, delivery, events)
                if verdict is not None:
                    return verdict
        return None

    def _verdict(
        self, state: DeploymentState, hook: Webhook, delivery: Delivery, events: list[Event]
    ) -> GateVerdict:
        key = (state.step_index, hook.type.value, hook.name)
        if delivery.ok:
            self._record(state, hook, "passed", delivery)
            self._held_since.pop(key, None)
            self._failures.pop(key, None)
            return None
        what = f"{hook.type.value} hook '{hook.name}' answered {delivery.answer}"
        if hook.type is HookType.PRE_ROLLOUT:
            self._record(state, hook, "failed", delivery)
            return Halt(RollbackTrigger.HOOK, what)
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        if hook.type is HookType.ROLLOUT and failures >= consecutive_failures(state.request.strategy):
            self._record(state, hook, "failed", delivery)
            return Halt(RollbackTrigger.HOOK, f"{what}, {failures} times in a row")
        since = self._since(key, state, hook, delivery, events)
        limit = hold_limit_s(hook.type, state.request.strategy)
        if self.clock() - since > limit:
            self._record(state, hook, "failed", delivery)
            return Halt(RollbackTrigger.DEADLINE, f"{what}: not passed within {limit:g}s")
        return Hold(hook.interval / 1000, what)

    def _since(
        self,
        key: tuple[int, str, str],
        state: DeploymentState,
        hook: Webhook,
        delivery: Delivery,
        events: list[Event],
    ) -> float:
        """When this hold began: journaled at its first answer, so that a new runner keeps it."""
        if key not in self._held_since:
            earlier = [
                e.at
                for e in events
                if e.kind is EventKind.HOOK
                and e.data.get("outcome") == "held"
                and (e.data.get("index"), e.data.get("type"), e.data.get("hook")) == key
            ]
            self._held_since[key] = min(earlier) if earlier else self.clock()
        self._record(state, hook, "held", delivery)
        return self._held_since[key]

    def _record(self, state: DeploymentState, hook: Webhook, outcome: str, delivery: Delivery) -> None:
        key = (state.step_index, hook.type.value, hook.name)
        answer = f"{outcome}:{delivery.answer}"
        if self._answers.get(key) == answer:
            return
        self._answers[key] = answer
        self.journal.append(
            state.deployment_id,
            EventKind.HOOK,
            {
                "hook": hook.name,
                "type": hook.type.value,
                "index": state.step_index,
                "step": state.plan[state.step_index].label,
                "outcome": outcome,
                "answer": delivery.answer,
                "attempts": delivery.attempts,
            },
            actor=self.actor,
        )


# --------------------------------------------------------------------------------------------
# Hooks from the configuration file, and notifications
# --------------------------------------------------------------------------------------------
class ConfiguredWebhook(Webhook):
    """A hook in ``enterprise_config.yaml``: for the environments (patterns) and strategies it names."""

    environments: list[str] = Field(default_factory=lambda: ["*"])
    strategies: list[StrategyType] = Field(default_factory=list, description="Empty: every strategy")

    def applies(self, environment: str | None, strategy: StrategyType | None) -> bool:
        if environment is not None and not any(
            fnmatch.fnmatchcase(environment, p) for p in self.environments
        ):
            return False
        if environment is None and "*" not in self.environments:
            return False
        return not self.strategies or strategy is None or strategy in self.strategies

    def as_webhook(self) -> Webhook:
        return Webhook.model_validate(self.model_dump(exclude={"environments", "strategies"}))


def attach_configured(hooks: list[ConfiguredWebhook], request: DeploymentRequest) -> DeploymentRequest:
    """The request with the configured (non-event) hooks that apply to it added to its own, so that the
    journal holds every hook it runs with; a hook of the same name and type already there is kept as is."""
    strategy = request.strategy
    have = {(h.name, h.type) for h in strategy.webhooks}
    extra = [
        h.as_webhook()
        for h in hooks
        if h.type is not HookType.EVENT
        and (h.name, h.type) not in have
        and h.applies(request.environment, strategy.type)
    ]
    if not extra:
        return request
    updated = strategy.model_copy(update={"webhooks": [*extra, *strategy.webhooks]})
    return request.model_copy(update={"strategy": updated})


def notifications(
    event: Event,
    state: DeploymentState | None,
    configured: list[ConfiguredWebhook],
    now: float,
    judgement: dict[str, Any] | None = None,
) -> list[tuple[Webhook, dict[str, Any]]]:
    """The notification hooks an event calls, with their payloads: the configured event hooks (by the
    event's environment), the deployment's own event hooks, its rollback hooks when a rollback starts and
    its post-rollout hooks when it ends."""
    environment = state.request.environment if state else event_environment(event)
    strategy = state.request.strategy.type if state else None
    wanted: list[Webhook] = [
        h.as_webhook() for h in configured if h.type is HookType.EVENT and h.applies(environment, strategy)
    ]
    if state is not None:
        own = state.request.strategy.webhooks
        wanted += [h for h in own if h.type is HookType.EVENT]
        if event.kind is EventKind.ROLLBACK_STARTED:
            wanted += [h for h in own if h.type is HookType.ROLLBACK]
        if event.kind is EventKind.FINISHED:
            wanted += [h for h in own if h.type is HookType.POST_ROLLOUT]
    calls: list[tuple[Webhook, dict[str, Any]]] = []
    for hook in wanted:
        if state is None:
            payload: dict[str, Any] = {"type": hook.type.value, "name": hook.name, "environment": environment}
            payload |= {"event": event_payload(event), "metadata": hook.metadata, "timestamp": now}
            calls.append((hook, payload))
        else:
            calls.append((hook, hook_payload(hook.type, state, now, hook, judgement, event)))
    return calls


def event_environment(event: Event) -> str | None:
    """The environment an event of no deployment concerns, when it names one."""
    if event.deployment_id.startswith("environment:"):
        return event.deployment_id.split(":", 1)[1]
    value = event.data.get("environment")
    return value if isinstance(value, str) else None
