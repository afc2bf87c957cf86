"""Waiting for processes to exit (adapters.localhost.wait_gone) and stopping them (stop_processes): real child
processes, no Ray."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from adapters.local_process import stop_processes
from adapters.localhost import is_same_process, process_start_time, wait_gone

SLEEPS = "import time; time.sleep(60)"
IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(60)"
)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        child.kill()
        child.wait(timeout=10)


def start(children: list[subprocess.Popen[str]], code: str = SLEEPS) -> tuple[int, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    children.append(child)
    if code == IGNORES_TERM:  # its handler is in place before it is signalled
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    start_time = process_start_time(child.pid)
    assert start_time is not None
    return child.pid, start_time


def test_a_running_process_is_returned_when_the_time_is_up(children: list[subprocess.Popen[str]]) -> None:
    running = start(children)
    assert wait_gone([running], 0.2) == [running]
    assert is_same_process(*running)


def test_a_process_that_exits_during_the_wait_is_not_returned(children: list[subprocess.Popen[str]]) -> None:
    quick = start(children, "import time; time.sleep(0.3)")
    running = start(children)
    assert wait_gone([quick, running], 2.0) == [running]  # the wait is for every one: the time ran out
    assert not is_same_process(*quick)


def test_a_gone_or_reused_pid_counts_as_gone_at_once(children: list[subprocess.Popen[str]]) -> None:
    pid, start_time = start(children)
    assert wait_gone([(pid, start_time + 1)], 10.0) == []  # same pid, another start time: not that process
    assert wait_gone([(2**22 + 7, 1)], 10.0) == []  # no such pid
    assert wait_gone([], 10.0) == []


def test_stop_processes_terms_then_kills_what_ignores_the_term(children: list[subprocess.Popen[str]]) -> None:
    polite = start(children)
    stubborn = start(children, IGNORES_TERM)
    stop_processes([polite, stubborn], grace_s=0.5)
    assert not is_same_process(*polite) and not is_same_process(*stubborn)
    assert children[0].wait(timeout=10) == -signal.SIGTERM
    assert children[1].wait(timeout=10) == -signal.SIGKILL
