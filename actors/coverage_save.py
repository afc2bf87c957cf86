"""Coverage of the actors' own processes, under ``scripts/coverage.sh`` only.

coverage.py starts in every Python process there (its start-up hook, ``COVERAGE_PROCESS_START``) and saves
at exit. A Ray worker does not exit through Python: Ray ends it with a C-level exit that runs no atexit
handler and no patched ``os._exit``, so everything an actor's process collected was lost (the data files
came back empty). Saving every ``SAVE_INTERVAL_S`` seconds from a daemon thread keeps all but the last
interval. Nothing happens in a process where coverage.py is not running. A process that does exit through
Python (a driver) stops the thread first: saving while the interpreter finalises crashed a driver (SIGSEGV).
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
from typing import Any

SAVE_INTERVAL_S = 2.0
_started = threading.Event()
_stop = threading.Event()
STOP_JOIN_S = 10.0


def running_coverage() -> Any | None:
    """The coverage.py measurement running in this process, or None (coverage.py not even imported)."""
    module = sys.modules.get("coverage")
    if module is None:
        return None
    return module.Coverage.current()


def save_periodically(interval_s: float = SAVE_INTERVAL_S) -> bool:
    """Start the saving thread once per process when coverage.py runs here; whether it runs now."""
    coverage = running_coverage()
    if coverage is None:
        return False
    if not _started.is_set():
        _started.set()
        saver = threading.Thread(target=_save_loop, args=(coverage, interval_s), daemon=True)
        saver.start()
        atexit.register(_stop_saving, saver)  # runs before Ray's and coverage.py's own exit handlers
    return True


def _stop_saving(saver: threading.Thread) -> None:
    _stop.set()
    saver.join(STOP_JOIN_S)


def _save_loop(coverage: Any, interval_s: float) -> None:
    """Until that measurement stops (then coverage.py saves it itself)."""
    while not _stop.wait(interval_s):
        current = running_coverage()
        if current is None or current is not coverage:
            _started.clear()
            return
        with contextlib.suppress(Exception):  # a failed save is retried next time; never an actor's fault
            current.save()
