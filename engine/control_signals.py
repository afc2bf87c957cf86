"""How a runner that waits between its checks hears of a control request at once, without polling.

A runner blocks its main thread while it waits (Ray's core worker checks for signals on that thread every
10 ms, which costs more CPU than the run itself when the thread is idle), so it cannot take calls then. It
waits instead on one pending call to the queen, which answers as soon as a control request (pause, promote,
abort, rollback) is journaled for its deployment, or when the long wait ends. Plain asyncio, in the
queen's event loop.
"""

from __future__ import annotations

import asyncio

# How long one pending call lasts at most: a runner asks again after it (one call per this long when nothing
# happens), and a call left behind by a runner that died ends by then.
CONTROL_WAIT_S = 300.0


class ControlSignals:
    """Per deployment: has a control request been journaled since its runner last heard of one?"""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def signal(self, deployment_id: str) -> None:
        """A control request was journaled: a waiting runner returns now, a later one at once."""
        self._events.setdefault(deployment_id, asyncio.Event()).set()

    async def wait(self, deployment_id: str, wait_s: float) -> bool:
        """True when a control request came (now or since the last wait), False when ``wait_s`` passed."""
        event = self._events.setdefault(deployment_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), max(0.0, min(wait_s, CONTROL_WAIT_S)))
        except TimeoutError:
            return False
        if self._events.get(deployment_id) is event:
            event.clear()
        return True

    def release(self, deployment_id: str) -> None:
        """The deployment ended: a call still pending returns, and nothing is kept for it."""
        event = self._events.pop(deployment_id, None)
        if event is not None:
            event.set()

    def pending(self) -> int:
        return len(self._events)
