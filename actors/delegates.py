"""The reconciler's planning and judging seams, answered by the strategy's domain worker (DO-002 for
blue-green, DO-003 for canary) from a runner's worker thread.

Each call is synchronous (the runner's thread waits, its event loop stays free) and bounded by a short
deadline (5 s: a call answers in about a millisecond, but a loaded machine can delay one by seconds). A
worker that does not answer in time, is gone, or fails is never the candidate's fault and never stalls a
deployment: the same plain function answers in the runner's own process, the judgement says so
(``judged_by``), and the worker is not asked again for a while. Rolling deployments have no domain worker of
their own: they are planned and judged in the runner.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from actors.common import find_actor, worker_name
from engine.judge import Judgement, TriggerResult, WindowInput, evaluate_triggers, judge_window
from engine.models import Strategy, StrategyType, SwitchTrigger
from engine.plans import build_plan
from engine.state import Step

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
RETRY_AFTER_S = 30.0
WORKER_OF = {StrategyType.BLUE_GREEN: "DO-002", StrategyType.CANARY: "DO-003"}


class DomainWorkers:
    """Named domain workers looked up once and asked with a deadline; a failed one is skipped a while."""

    def __init__(
        self, namespace: str, timeout_s: float = CALL_TIMEOUT_S, retry_after_s: float = RETRY_AFTER_S
    ) -> None:
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._handles: dict[str, Any] = {}
        self._skip_until: dict[str, float] = {}
        self.last_failure: dict[str, str] = {}

    def look_up(self, *codes: str) -> None:
        """Keep the handles of those of ``codes`` that run now (the others are looked up when asked)."""
        for code in codes:
            handle = self._handles.get(code) or find_actor(worker_name(code), self.namespace)
            if handle is not None:
                self._handles[code] = handle

    def ask(self, code: str, method: str, *args: Any) -> tuple[Any, str | None]:
        """(answer, None), or (None, why) when the worker did not answer."""
        if time.monotonic() < self._skip_until.get(code, 0.0):
            return None, f"{code} skipped after: {self.last_failure.get(code, '?')}"
        try:
            handle = self._handles.get(code) or ray.get_actor(worker_name(code), namespace=self.namespace)
            self._handles[code] = handle
            return ray.get(getattr(handle, method).remote(*args), timeout=self.timeout_s), None
        except (GetTimeoutError, RayActorError, RayError, ValueError) as error:
            why = f"no answer within {self.timeout_s:g}s" if isinstance(error, GetTimeoutError) else error
            reason = f"{code} did not answer: {str(why)[:200]}"
            log.warning("%s; answering in the runner instead", reason)
            self._handles.pop(code, None)
            self._skip_until[code] = time.monotonic() + self.retry_after_s
            self.last_failure[code] = reason
            return None, reason


class WorkerPlanner:
    """``engine.plans.Planner`` through DO-002/DO-003."""

    def __init__(self, workers: DomainWorkers) -> None:
        self.workers = workers

    def plan(self, strategy: Strategy, has_stable: bool) -> list[Step]:
        code = WORKER_OF.get(strategy.type)
        if code is not None:
            answer, _ = self.workers.ask(code, "plan", strategy, has_stable)
            if answer is not None:
                return list(answer)
        return build_plan(strategy, has_stable)


class WorkerJudge:
    """``engine.judge.WindowJudge`` through DO-002/DO-003."""

    def __init__(self, workers: DomainWorkers) -> None:
        self.workers = workers

    def judge(self, window: WindowInput, strategy: StrategyType) -> Judgement:
        code = WORKER_OF.get(strategy)
        why = "rolling updates are judged in the runner"
        if code is not None:
            answer, why_not = self.workers.ask(code, "judge", window)
            if isinstance(answer, Judgement):
                return answer
            why = why_not or f"{code} gave no judgement"
        judgement = judge_window(window)
        judgement.judged_by = f"runner ({why})"
        return judgement

    def switch(
        self, triggers: list[SwitchTrigger], figures: dict[str, float | str | None]
    ) -> list[TriggerResult]:
        answer, _ = self.workers.ask("DO-002", "switch", triggers, figures)
        if isinstance(answer, list):
            return answer
        return evaluate_triggers(triggers, figures)
