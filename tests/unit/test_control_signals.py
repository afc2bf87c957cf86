"""A waiting runner hears of a control request at once, and of one that came while it was busy checking."""

from __future__ import annotations

import asyncio

from engine.control_signals import ControlSignals


def test_a_waiting_runner_returns_as_soon_as_a_control_request_comes() -> None:
    async def scenario() -> tuple[bool, float]:
        signals = ControlSignals()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.ensure_future(signals.wait("d1", 60))
        await asyncio.sleep(0.01)
        signals.signal("d1")
        return await asyncio.wait_for(waiting, 5), loop.time() - started

    woken, _ = asyncio.run(scenario())
    assert woken is True


def test_a_request_during_a_check_is_kept_for_the_next_wait_and_then_consumed() -> None:
    async def scenario() -> list[bool]:
        signals = ControlSignals()
        signals.signal("d1")  # journaled while the runner was checking, not waiting
        return [await signals.wait("d1", 5), await signals.wait("d1", 0.01)]

    assert asyncio.run(scenario()) == [True, False]


def test_requests_are_per_deployment_and_a_wait_without_one_times_out() -> None:
    async def scenario() -> list[bool]:
        signals = ControlSignals()
        signals.signal("other")
        return [await signals.wait("d1", 0.01), await signals.wait("other", 1)]

    assert asyncio.run(scenario()) == [False, True]


def test_a_deployment_s_end_releases_its_pending_wait_and_forgets_it() -> None:
    async def scenario() -> tuple[bool, int]:
        signals = ControlSignals()
        waiting = asyncio.ensure_future(signals.wait("d1", 60))
        await asyncio.sleep(0.01)
        signals.release("d1")
        return await asyncio.wait_for(waiting, 5), signals.pending()

    assert asyncio.run(scenario()) == (True, 0)
