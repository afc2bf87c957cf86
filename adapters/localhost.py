"""State kept on this machine by the adapters that run things here (processes, HAProxy): process identity,
atomic files, locks shared by threads and processes, ports. Not an adapter: a toolbox they share."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import select
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

from engine.locks import flock_within, open_lock_file, unlock
from engine.platform import PlatformError, TransientPlatformError

LOCK_TIMEOUT_S = 10.0


def process_start_time(pid: int) -> int | None:
    """Start time of a live process, or None when it is gone (a zombie counts as gone)."""
    if pid <= 0:
        return None
    try:  # a bare descriptor: supervision asks this of every process it watches, every second
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    # The command name may contain spaces and parentheses: the fields that follow start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_same_process(pid: int, start_time: int) -> bool:
    """True when ``pid`` still is the process that started at ``start_time`` (not a reused pid)."""
    return start_time > 0 and process_start_time(pid) == start_time


def wait_gone(processes: list[tuple[int, int]], timeout_s: float) -> list[tuple[int, int]]:
    """Wait until every (pid, start time) has exited, at most ``timeout_s``; returns the ones still running.

    The kernel wakes the wait when a process exits (a pidfd per process: a stopped replica is seen gone at
    once, not at the next tick of a poll); a process no pidfd can be opened for is checked every 20 ms."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    watched: dict[int, tuple[int, int]] = {}
    polled: list[tuple[int, int]] = []
    poller = select.poll()
    try:
        for process in processes:
            try:
                fd = os.pidfd_open(process[0])
            except OSError:  # gone already (checked below), or no pidfd on this kernel
                fd = -1
            # Checked after opening: the pidfd then refers to this very process, not to a reused pid.
            if not is_same_process(*process):
                if fd >= 0:
                    os.close(fd)
            elif fd >= 0:
                watched[fd] = process
                poller.register(fd, select.POLLIN)
            else:
                polled.append(process)
        while (watched or polled) and (remaining := deadline - time.monotonic()) > 0:
            wait_s = min(remaining, 0.02) if polled else remaining
            for fd, _ in poller.poll(wait_s * 1000):
                poller.unregister(fd)
                os.close(fd)
                del watched[fd]
            polled = [process for process in polled if is_same_process(*process)]
        return [*watched.values(), *polled]
    finally:
        for fd in watched:
            os.close(fd)


def write_json_atomic(path: Path, data: str, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` at once: a reader sees the old text or the new, never a part.
    ``durable`` also waits for the disk (fsync), so that the new text survives a crash of the machine; a file
    that is only meaningful while this machine runs (a lease, a reservation) need not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


M = TypeVar("M", bound=BaseModel)
RACY_S = 0.1  # more than the file system's timestamp granularity (one clock tick of the coarse clock)


class ParsedFileCache(Generic[M]):
    """The last parse of each file, reused while the file is unchanged: a read costs one ``stat``.

    State files are replaced atomically (``write_json_atomic``), so a change shows as another inode, size or
    modification time. As git does with its index, a parse is trusted only when the file had not changed for
    ``RACY_S`` before it was read: a write in the same clock tick could otherwise keep all three. Callers must
    not modify what ``read`` returns (it is shared); read uncached to modify."""

    def __init__(self, model: type[M], entries: int = 256, clock: Callable[[], float] = time.time) -> None:
        self._model = model
        self._most = entries
        self._now = clock
        self._entries: dict[str, tuple[tuple[int, int, int], M]] = {}
        self._lock = threading.Lock()

    def read(self, path: Path) -> M | None:
        """The file's model, or None when the file does not exist; ValueError when it does not parse."""
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        key = str(path)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] == signature:
            return hit[1]
        parsed = self._model.model_validate_json(path.read_bytes())
        if self._now() - stat.st_mtime_ns / 1e9 > RACY_S:
            with self._lock:
                if len(self._entries) >= self._most:
                    self._entries.clear()
                self._entries[key] = (signature, parsed)
        return parsed


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: Path, owner: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock shared by threads (a lock per path) and processes (flock), with a deadline.

    ``owner`` names the platform in the TransientPlatformError raised when the deadline passes."""
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    if not thread_lock.acquire(timeout=timeout_s):
        raise TransientPlatformError(owner, str(path), f"lock busy for more than {timeout_s:.0f}s")
    try:
        fd = open_lock_file(path)
        try:
            if not flock_within(fd, timeout_s):
                cause = f"locked by another process for over {timeout_s:.0f}s"
                raise TransientPlatformError(owner, str(path), cause)
            try:
                yield
            finally:
                unlock(fd)
        finally:
            os.close(fd)
    finally:
        thread_lock.release()


def port_is_free(host: str, port: int, reuse_address: bool = False) -> bool:
    """Whether ``port`` can be bound now; ``reuse_address`` ignores sockets lingering in TIME_WAIT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tail_file(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a file, reading at most 256 KiB of its end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


PORT_RESERVATION_S = 120.0


def reserve_port(
    registry: Path,
    port_range: tuple[int, int],
    taken: set[int],
    is_free: Callable[[int], bool],
    owner: str,
    preferred: int | None = None,
) -> int:
    """A free port of the range that no process using the same ``registry`` file handed out in the last
    ``PORT_RESERVATION_S``: a port is free before its replica listens, so concurrent deployments (runners
    are separate processes) would otherwise pick the same one. ``preferred`` first, then random."""
    low, high = port_range
    start = random.randint(low, high)  # from a random port on, round the range (lazily)
    first = [preferred] if preferred is not None and low <= preferred <= high else []
    candidates = itertools.chain(first, range(start, high + 1), range(low, start))
    with file_lock(registry.with_name(registry.name + ".lock"), owner):
        now = time.time()
        recent = _read_reservations(registry).items()
        reserved = {int(port): at for port, at in recent if now - at < PORT_RESERVATION_S}
        for port in candidates:
            if port in taken or (port in reserved and port != preferred) or not is_free(port):
                continue
            reserved[port] = now
            # Reservations last PORT_RESERVATION_S and no replica outlives the machine: no fsync.
            write_json_atomic(registry, json.dumps(reserved), durable=False)
            return port
    # A full range stays full: retrying would not help.
    raise PlatformError(owner, str(registry), f"no free port left in the range {low}-{high}")


def _read_reservations(registry: Path) -> dict[str, float]:
    try:
        data = json.loads(registry.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def memory_available(
    meminfo: Path = Path("/proc/meminfo"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """Bytes this machine can still give to new processes: ``MemAvailable``, or less when this process's own
    memory control group (v1 or v2) has a limit closer than that."""
    available = _meminfo_bytes(meminfo, "MemAvailable")
    headroom = _cgroup_memory_headroom(self_cgroup)
    return min(available, headroom) if headroom is not None else available


def _meminfo_bytes(meminfo: Path, field: str) -> int:
    for line in meminfo.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024  # the kernel writes kB (KiB)
    raise ValueError(f"{meminfo} has no {field}")


def _cgroup_memory_headroom(self_cgroup: Path, root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Limit minus usage of this process's memory group; None when unlimited or unknown."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, controllers, path = ([*line.split(":", 2), "", ""])[:3]
        if "memory" in controllers.split(","):
            files = (root / "memory" / path.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes")
        elif number == "0" and controllers == "":
            files = (root / path.lstrip("/"), "memory.max", "memory.current")
        else:
            continue
        try:
            limit_text = (files[0] / files[1]).read_text().strip()
            usage = int((files[0] / files[2]).read_text().strip())
        except (OSError, ValueError):
            continue
        # v1 writes "unlimited" as a huge number near 2**63; v2 as "max".
        if limit_text != "max" and int(limit_text) < 2**62:
            return max(0, int(limit_text) - usage)
    return None
