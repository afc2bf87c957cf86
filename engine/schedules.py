"""CodeDeploy-style traffic schedules for Lambda aliases, as plain data.

Names follow AWS SAM's ``DeploymentPreference.Type`` (``Canary10Percent5Minutes``,
``Linear10PercentEvery1Minute``, ``AllAtOnce``); CodeDeploy's own spelling
(``CodeDeployDefault.LambdaCanary10Percent5Minutes``) is accepted too. A schedule is a list of steps
``(weight_percent, hold_ms)``: the candidate gets ``weight_percent`` of the traffic and keeps it for
``hold_ms`` before the next step; the last step is always 100% with no hold. ``strategy_from_steps`` turns the
steps into the orchestrator's strategy dict (see ``engine.models.Strategy``): canary and linear schedules
become a canary strategy, ``AllAtOnce`` a blue-green switch of 100%.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise
from typing import Any

MINUTE_MS = 60_000

Step = tuple[int, int]

_PREFIXES = ("CodeDeployDefault.", "Lambda")
_CANARY = re.compile(r"^Canary(?P<percent>\d{1,2})Percent(?P<minutes>\d{1,4})Minutes?$")
_LINEAR = re.compile(r"^Linear(?P<percent>\d{1,2})PercentEvery(?P<minutes>\d{1,4})Minutes?$")
ACCEPTED_PATTERNS = (
    "Canary<P>Percent<N>Minutes (e.g. Canary10Percent5Minutes)",
    "Linear<P>PercentEvery<N>Minute(s) (e.g. Linear10PercentEvery1Minute)",
    "AllAtOnce",
)


def _unknown(name: str, why: str = "") -> ValueError:
    detail = f" ({why})" if why else ""
    return ValueError(
        f"unknown traffic schedule '{name}'{detail}: accepted are {'; '.join(ACCEPTED_PATTERNS)}, "
        "with P in 1-99 and N >= 1, optionally prefixed with 'CodeDeployDefault.Lambda'"
    )


def _strip_prefixes(name: str) -> str:
    bare = name.strip()
    for prefix in _PREFIXES:
        bare = bare.removeprefix(prefix)
    return bare


def _percent_and_minutes(name: str, match: re.Match[str]) -> tuple[int, int]:
    percent, minutes = int(match.group("percent")), int(match.group("minutes"))
    if not 1 <= percent <= 99:
        raise _unknown(name, f"{percent}% is not in 1-99")
    if minutes < 1:
        raise _unknown(name, "the interval must be at least 1 minute")
    return percent, minutes


def parse_schedule(name: str) -> list[Step]:
    """The steps ``(weight_percent, hold_ms)`` of a named schedule; ValueError for an unknown name."""
    bare = _strip_prefixes(name)
    if bare == "AllAtOnce":
        return [(100, 0)]
    if match := _CANARY.match(bare):
        percent, minutes = _percent_and_minutes(name, match)
        return [(percent, minutes * MINUTE_MS), (100, 0)]
    if match := _LINEAR.match(bare):
        percent, minutes = _percent_and_minutes(name, match)
        # Every step holds the interval; the last one reaches 100% and ends the schedule.
        weights = [min(100, percent * index) for index in range(1, math.ceil(100 / percent) + 1)]
        return [(weight, minutes * MINUTE_MS if weight < 100 else 0) for weight in weights]
    raise _unknown(name)


def _check_steps(steps: list[Step]) -> None:
    if not steps:
        raise ValueError("a schedule needs at least one step")
    weights = [weight for weight, _ in steps]
    if weights[-1] != 100:
        raise ValueError(f"a schedule must end at 100%, these steps end at {weights[-1]}%")
    if any(not 1 <= weight <= 100 for weight in weights):
        raise ValueError(f"step weights must be within 1-100: {weights}")
    if any(later <= earlier for earlier, later in pairwise(weights)):
        raise ValueError(f"step weights must grow strictly: {weights}")
    if any(hold < 0 for _, hold in steps):
        raise ValueError("a step cannot hold for a negative time")


def strategy_from_steps(steps: list[Step]) -> dict[str, Any]:
    """The orchestrator's strategy dict (camelCase, as ``Strategy.model_validate`` takes it) for the steps.

    Only schedules the canary model can express are accepted: a constant increment (the last step may be
    capped at 100) and one hold time for every step but the last.
    """
    _check_steps(steps)
    if len(steps) == 1:
        return {"type": "blue_green", "blueGreen": {"switchTrafficPercentage": 100}}
    weights = [weight for weight, _ in steps]
    holds = {hold for _, hold in steps[:-1]}
    increment = weights[1] - weights[0]
    regular = all(later - earlier == increment for earlier, later in pairwise(weights[:-1]))
    if len(holds) != 1 or not regular or weights[-1] - weights[-2] > increment:
        raise ValueError(f"steps {steps} are not a canary schedule: they need a constant increment and hold")
    hold = holds.pop()
    return {
        "type": "canary",
        "canary": {
            "initialTrafficPercentage": weights[0],
            "stepPercentage": increment,
            "stepDuration": hold,
            "maxSteps": len(steps),
        },
    }


def strategy_for_schedule(name: str) -> dict[str, Any]:
    """The orchestrator's strategy dict for a named schedule, e.g. ``Canary10Percent5Minutes``."""
    return strategy_from_steps(parse_schedule(name))
