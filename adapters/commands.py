"""Pipeline commands (build and test stages): a process on this machine, its output in a log file.

The command runs in its own session so that a timeout ends it with everything it started (a test runner's
workers, a shell's children). Its environment is the orchestrator's plus the stage's variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 8192


@dataclass
class CommandResult:
    exit_code: int | None
    timed_out: bool
    log_path: Path
    error: str | None = None

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines of the command's output."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - TAIL_BYTES))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class SubprocessRunner:
    """Runs a command to its end or its timeout; never leaves it running."""

    async def run(
        self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str], timeout_s: float, log_path: Path
    ) -> CommandResult:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=cwd,
                    env={**os.environ, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                log.write(f"cannot start: {error}\n".encode())
                return CommandResult(
                    None, False, log_path, f"{type(error).__name__}: {error.strerror or error}"
                )
            try:
                code = await asyncio.wait_for(process.wait(), timeout=max(0.0, timeout_s))
            except TimeoutError:
                await _kill(process)
                log.write(f"\ntimed out after {timeout_s:g}s: killed\n".encode())
                return CommandResult(None, True, log_path)
            except asyncio.CancelledError:
                await _kill(process)
                raise
        return CommandResult(code, False, log_path)


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), timeout=10)
