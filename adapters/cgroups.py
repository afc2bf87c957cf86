"""CPU and memory limits for processes on this machine, through Linux control groups (the local platform).

Not an adapter: a toolbox for ``local_process.py``. Which hierarchy is used is decided once, from what the
kernel mounted and what this process may write:

- cgroup v2 (``/sys/fs/cgroup`` or ``/sys/fs/cgroup/unified``) when its ``cgroup.controllers`` offers
  ``memory`` and ``cpu``: one group per replica under ``deploy-orchestrator/``, ``memory.max``, ``cpu.max``;
- else cgroup v1 when the ``memory`` and ``cpu`` hierarchies are mounted and writable: one group per replica
  in each, under this process's own group (so a sandbox's accounting still covers the replicas),
  ``memory.limit_in_bytes`` and ``cpu.cfs_quota_us``/``cpu.cfs_period_us``;
- else nothing is limited, and ``reason`` says why (read-only file system, no controllers, not root).

A replica joins its groups before it is started (the launcher writes its own pid into ``cgroup.procs`` and
its child inherits them); limits are rewritten in place when the settings change. Disk cannot be limited for
a process this way and never is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.models import ReplicaResources

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_PREFIX = "deploy-orchestrator"
CPU_PERIOD_US = 100_000
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Hierarchy:
    version: int
    memory: Path  # where groups are made for memory (v2: the same folder as cpu)
    cpu: Path


class CgroupLimiter:
    """Per-replica CPU and memory limits; ``hierarchy`` is None (and ``reason`` says why) when impossible."""

    def __init__(self, root: Path = CGROUP_ROOT, self_cgroup: Path = Path("/proc/self/cgroup")) -> None:
        self.root = root
        self.hierarchy, self.reason = _detect(root, self_cgroup)

    @property
    def available(self) -> bool:
        return self.hierarchy is not None

    def describe(self) -> str:
        if self.hierarchy is None:
            return f"not confined: {self.reason}"
        return f"cgroup v{self.hierarchy.version} memory and cpu controllers"

    def prepare(self, group: str, resources: ReplicaResources | None) -> list[str]:
        """Make the replica's groups with the limits in force; returns the ``cgroup.procs`` files the
        launcher joins (none when nothing is limited or limiting is impossible)."""
        if (
            self.hierarchy is None
            or resources is None
            or (resources.cpu is None and resources.memory is None)
        ):
            return []
        folders = self._folders(group)
        for folder in dict.fromkeys(folders):
            folder.mkdir(parents=True, exist_ok=True)
        self.apply(group, resources)
        return [str(folder / "cgroup.procs") for folder in dict.fromkeys(folders)]

    def apply(self, group: str, resources: ReplicaResources) -> None:
        """(Re)write the limits of an existing group: a change takes effect without a restart."""
        hierarchy = self.hierarchy
        if hierarchy is None:
            return
        memory_folder, cpu_folder = self._folders(group)
        if hierarchy.version == 2:
            _write(memory_folder / "memory.max", str(resources.memory) if resources.memory else "max")
            with contextlib.suppress(FileNotFoundError):  # without swap accounting there is no such file
                _write(memory_folder / "memory.swap.max", "0" if resources.memory else "max")
            quota = str(round(resources.cpu * CPU_PERIOD_US)) if resources.cpu else "max"
            _write(cpu_folder / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        _write(memory_folder / "memory.limit_in_bytes", str(resources.memory) if resources.memory else "-1")
        _write(cpu_folder / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(
            cpu_folder / "cpu.cfs_quota_us",
            str(round(resources.cpu * CPU_PERIOD_US)) if resources.cpu else "-1",
        )

    def remove(self, folders: list[str]) -> None:
        """Remove a stopped replica's groups (a group still holding a process stays: rmdir refuses)."""
        for folder in folders:
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def _folders(self, group: str) -> tuple[Path, Path]:
        assert self.hierarchy is not None
        name = _SAFE.sub("-", group)
        return self.hierarchy.memory / name, self.hierarchy.cpu / name


def group_folders(procs_files: list[str]) -> list[str]:
    """The group folders of the ``cgroup.procs`` files a replica joined (what ``remove`` takes)."""
    return [str(Path(path).parent) for path in procs_files]


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _own_path(self_cgroup: Path, controller: str | None) -> str:
    """This process's group in a hierarchy (v1: the line naming ``controller``; v2: the ``0::`` line)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        number, controllers, path = ([*line.split(":", 2), "", ""])[:3]
        names = controllers.split(",")
        if (controller is None and number == "0" and controllers == "") or (
            controller and controller in names
        ):
            return path or "/"
    return "/"


def _detect(root: Path, self_cgroup: Path) -> tuple[Hierarchy | None, str]:
    reasons: list[str] = []
    for unified in (root, root / "unified"):
        controllers_file = unified / "cgroup.controllers"
        if not controllers_file.is_file():
            continue
        offered = set(controllers_file.read_text().split())
        if {"memory", "cpu"} <= offered:
            problem = _prepare_v2(unified)
            if problem is None:
                base = unified / GROUP_PREFIX
                return Hierarchy(2, base, base), ""
            reasons.append(problem)
        else:
            shown = " ".join(sorted(offered)) or "none"
            reasons.append(
                f"the cgroup v2 hierarchy at {unified} offers no memory and cpu controllers ({shown})"
            )
    memory, cpu = root / "memory", _first_dir(root, ("cpu", "cpu,cpuacct", "cpuacct,cpu"))
    if (
        (memory / "memory.limit_in_bytes").is_file()
        and cpu is not None
        and (cpu / "cpu.cfs_quota_us").is_file()
    ):
        memory_base = memory / _own_path(self_cgroup, "memory").lstrip("/") / GROUP_PREFIX
        cpu_base = cpu / _own_path(self_cgroup, "cpu").lstrip("/") / GROUP_PREFIX
        problem = _writable(memory_base) or _writable(cpu_base)
        if problem is None:
            return Hierarchy(1, memory_base, cpu_base), ""
        reasons.append(problem)
    else:
        reasons.append(f"no cgroup v1 memory and cpu hierarchies under {root}")
    return None, "; ".join(reasons)


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)


def _writable(folder: Path) -> str | None:
    """None when a group can be made under ``folder`` (made, then removed again), else why not."""
    probe = folder / f".probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        return f"cannot make control groups under {folder}: {reason}"
    return None


def _prepare_v2(unified: Path) -> str | None:
    """Enable memory and cpu for our subtree (the parent's ``cgroup.subtree_control``)."""
    base = unified / GROUP_PREFIX
    problem = _writable(base)
    if problem:
        return problem
    try:
        for folder in (unified, base):
            enabled = set((folder / "cgroup.subtree_control").read_text().split())
            if not {"memory", "cpu"} <= enabled:
                _write(folder / "cgroup.subtree_control", "+memory +cpu")
    except OSError as exc:
        return f"cannot enable the memory and cpu controllers under {unified}: {exc.strerror or exc}"
    return None
