"""Where a deployment's wall time goes: time inside platform calls, measured by a thin proxy."""

from __future__ import annotations

import time
from typing import Any

from engine.platform import PlatformAdapter


class TimedAdapter:
    """Forwards every call to the adapter and adds its duration to ``seconds``."""

    def __init__(self, adapter: PlatformAdapter) -> None:
        self._adapter = adapter
        self.platform = adapter.platform
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._adapter, name)
        if not callable(attribute):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed
