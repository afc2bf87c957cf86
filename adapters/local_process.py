"""Replicas as plain processes on this machine: the embedded default platform ('local').

Each replica runs ``artifact.command`` with ``PORT``, ``REVISION`` and ``REPLICA_INDEX`` in its environment.
Processes are started through a short-lived shell launcher (a double fork, in a new session) so that they
outlive the process that asked for them: Ray kills the children of a dead actor's worker. What runs is
recorded per target in a JSON state file (pid, start time from /proc, port), so that a new instance, after a
crash or in another process, finds the replicas again and never confuses a reused pid with its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.cgroups import CgroupLimiter, group_folders
from adapters.localhost import (
    ParsedFileCache,
    file_lock,
    is_same_process,
    memory_available,
    port_is_free,
    process_start_time,
    reserve_port,
    tail_file,
    wait_gone,
    write_json_atomic,
)
from engine.models import Artifact, ReplicaResources, Target
from engine.platform import (
    CapacityPool,
    PlatformCapabilities,
    PlatformError,
    Replica,
    Resource,
    RevisionSpec,
    TransientPlatformError,
)
from engine.secrets import runtime_env

PLATFORM = "local"
DEFAULT_PORT_RANGE = (20000, 29999)
LOCK_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0
LAUNCH_TIMEOUT_S = 10.0
MAX_LOG_BYTES = 5 * 1024 * 1024

# A replica is started by /bin/sh in the background, in a new session (setsid); sh prints the replica's pid
# and exits at once, which leaves the replica to PID 1. A double fork without a Python interpreter: about 2 ms
# of CPU instead of about 60. Everything is an argument, never interpolated: $1 the log file, $2 the working
# folder, then the command. A background command of a shell without job control is no process group leader,
# so setsid runs it in a new session without forking again: $! is the replica itself. $3 lists the
# cgroup.procs files the launcher joins first (space-separated, maybe none): the replica starts in its limits.
_LAUNCHER = (
    'log=$1; cd "$2" || exit 97; for f in $3; do echo $$ >"$f" || exit 96; done; shift 3; '
    'setsid "$@" </dev/null >>"$log" 2>&1 & echo $!'
)
_SHELL = "/bin/sh"


class ReplicaRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    revision: str
    index: int
    port: int
    pid: int
    start_time: int = Field(description="Clock ticks after boot, /proc/<pid>/stat field 22")
    health_path: str = "/health"
    command: list[str] = Field(default_factory=list)
    fingerprint: str = ""
    log_file: str = ""
    cgroups: list[str] = Field(default_factory=list, description="Its control group folders, if limited")


class TargetState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    replicas: list[ReplicaRecord] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Processes: identity by pid + start time, stop with a bounded grace period
# --------------------------------------------------------------------------------------------


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the replica's whole session (it is the group leader), so a shell wrapper's children go too."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_processes(processes: list[tuple[int, int]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every (pid, start time) still ours, SIGKILL what is left after ``grace_s``."""
    alive = [(pid, start) for pid, start in processes if is_same_process(pid, start)]
    for pid, _ in alive:
        _signal_group(pid, signal.SIGTERM)
    alive = wait_gone(alive, grace_s)
    for pid, _ in alive:
        _signal_group(pid, signal.SIGKILL)
    wait_gone(alive, 1.0)


# --------------------------------------------------------------------------------------------
# Files: atomic JSON writes, a lock per target (threads and processes), log tails
# --------------------------------------------------------------------------------------------


def _artifact_fingerprint(artifact: Artifact, confined: bool = False) -> str:
    """What a running replica was started from: a change means it must be restarted. Whether it is confined
    counts (a process joins its groups when it starts); the limits' values do not (they change in place)."""
    parts: list[object] = [
        artifact.command,
        artifact.working_dir,
        sorted(artifact.env.items()),
        sorted(artifact.secret_env.items()),
    ]
    payload = json.dumps([*parts, "confined"] if confined else parts)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------
class LocalProcessBackend:
    """``WorkloadBackend`` running each replica as a process on this machine."""

    platform = PLATFORM

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        self.state_dir = Path(state_dir)
        self.settings = dict(settings)
        low, high = settings.get("replicaPortRange") or DEFAULT_PORT_RANGE
        self.port_range = (int(low), int(high))
        self.host = str(settings.get("replicaHost", "127.0.0.1"))
        self.stop_grace_s = float(settings.get("stopGraceSeconds", STOP_GRACE_S))
        self._states = ParsedFileCache(TargetState)
        self._paths: dict[str, Path] = {}
        self.limiter = _limiter()
        limits = frozenset({Resource.CPU, Resource.MEMORY}) if self.limiter.available else frozenset()
        notes = [f"local replicas: {self.limiter.describe()}", "local replicas: disk use is not limited"]
        self.capabilities = PlatformCapabilities(
            limits=limits, capacity=frozenset(Resource), notes=notes if limits else notes[:1]
        )

    # ---- public interface ---------------------------------------------------------------
    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """This machine: memory available to new processes, free disk where the replicas' logs go, cores."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return [
            CapacityPool(
                name="host",
                replicas=replicas,
                memory_free=memory_available(),
                disk_free=shutil.disk_usage(self.state_dir).free,
                cpus=float(os.cpu_count() or 1),
            )
        ]

    def validate(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.state_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise self._error(f"state directory {self.state_dir} is not writable: {exc}") from exc
        if not Path("/proc/self/stat").exists():
            raise self._error("/proc is not mounted: process identity cannot be checked")
        for tool in (_SHELL, "setsid"):
            if shutil.which(tool) is None:
                raise self._error(
                    f"'{tool}' not found: replicas are started through it (setsid is util-linux)"
                )
        commands = [str(c) for c in self.settings.get("requiredCommands", [])]
        for state_file in self.state_dir.glob("*.json"):
            commands += [r.command[0] for r in self._read_file(state_file, shared=True).replicas if r.command]
        for command in dict.fromkeys(commands):
            if shutil.which(command) is None:
                raise self._error(f"command '{command}' not found (not executable or not on PATH)")

    def ensure_replicas(self, spec: RevisionSpec) -> list[Replica]:
        self._check_command(spec.artifact)
        fingerprint = _artifact_fingerprint(spec.artifact, self._confined(spec.resources))
        with file_lock(self._lock_path(spec.target), PLATFORM):
            state = self._read(spec.target)
            mine = {r.index: r for r in state.replicas if r.revision == spec.revision}
            keep = [r for r in state.replicas if r.revision != spec.revision]
            to_stop: list[ReplicaRecord] = []
            for index, record in mine.items():
                healthy = is_same_process(record.pid, record.start_time) and record.fingerprint == fingerprint
                if index < spec.replicas and healthy:
                    keep.append(record)
                else:
                    to_stop.append(record)
            running = {r.index for r in keep if r.revision == spec.revision}
            to_start = [i for i in range(spec.replicas) if i not in running]
            for record in keep:  # new limits take effect in place
                if record.revision == spec.revision and record.cgroups and spec.resources is not None:
                    self.limiter.apply(
                        self._group(spec.target, record.revision, record.index), spec.resources
                    )
            self._stop(to_stop)
            previous_ports = {r.index: r.port for r in to_stop}
            started = self._start(spec, to_start, previous_ports, keep, fingerprint)
            state.replicas = sorted(keep + started, key=lambda r: (r.revision, r.index))
            self._write(spec.target, state)
        return [self._replica(r) for r in state.replicas if r.revision == spec.revision]

    def list_replicas(self, target: Target, revision: str | None = None) -> list[Replica]:
        state = self._read(target, shared=True)
        return [self._replica(r) for r in state.replicas if revision is None or r.revision == revision]

    def remove_revision(self, target: Target, revision: str) -> None:
        with file_lock(self._lock_path(target), PLATFORM):
            state = self._read(target)
            doomed = [r for r in state.replicas if r.revision == revision]
            if not doomed:
                return
            self._stop(doomed)
            state.replicas = [r for r in state.replicas if r.revision != revision]
            self._write(target, state)

    def stop_replica(self, target: Target, revision: str, index: int) -> None:
        """Stop one replica's process; its record stays (dead), so the next ensure starts it on its port."""
        with file_lock(self._lock_path(target), PLATFORM):
            doomed = [
                (r.pid, r.start_time)
                for r in self._read(target).replicas
                if r.revision == revision and r.index == index
            ]
            stop_processes(doomed, self.stop_grace_s)

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        """Tail of every replica's output; the files outlive a removed revision for post-mortems."""
        records = {r.index: r for r in self._read(target).replicas if r.revision == revision}
        parts: list[str] = []
        for log_file in sorted(self._log_dir(target).glob(f"{revision}@*.log")):
            index = int(log_file.stem.rsplit("@", 1)[1])
            record = records.get(index)
            if record is None:
                header = f"== replica {index} (removed) =="
            else:
                alive = is_same_process(record.pid, record.start_time)
                header = f"== replica {index} pid {record.pid} port {record.port} alive={alive} =="
            parts.append(header + "\n" + tail_file(log_file, lines))
        return "\n".join(parts)

    def close(self) -> None:
        """Nothing to release: the processes are meant to outlive this instance."""

    def _stop(self, records: list[ReplicaRecord]) -> None:
        stop_processes([(r.pid, r.start_time) for r in records], self.stop_grace_s)
        for record in records:
            self.limiter.remove(record.cgroups)

    def _confined(self, resources: ReplicaResources | None) -> bool:
        return self.limiter.available and resources is not None and bool(resources.cpu or resources.memory)

    @staticmethod
    def _group(target: Target, revision: str, index: int) -> str:
        return f"{target.key}.{revision}.{index}"

    # ---- starting -----------------------------------------------------------------------
    def _start(
        self,
        spec: RevisionSpec,
        indexes: list[int],
        previous_ports: dict[int, int],
        others: list[ReplicaRecord],
        fingerprint: str,
    ) -> list[ReplicaRecord]:
        """Start replicas ``indexes``; a restarted one keeps its port when that port is still free."""
        if not indexes:
            return []
        taken = self._recorded_ports() | {r.port for r in others}
        ports: dict[int, int] = {}
        for index in indexes:
            ports[index] = reserve_port(
                self.state_dir / "ports.reserved",
                self.port_range,
                taken,
                lambda port: port_is_free(self.host, port),
                PLATFORM,
                preferred=previous_ports.get(index),
            )
            taken.add(ports[index])
        log_dir = self._log_dir(spec.target)
        log_dir.mkdir(parents=True, exist_ok=True)
        launches = [self._launch_spec(spec, index, ports[index], log_dir) for index in indexes]
        for index, launch in zip(indexes, launches, strict=True):
            launch["cgroups"] = self.limiter.prepare(
                self._group(spec.target, spec.revision, index), spec.resources
            )
        results = [self._launch(launch) for launch in launches]
        records: list[ReplicaRecord] = []
        errors: list[str] = []
        for index, launch, result in zip(indexes, launches, results, strict=True):
            if "pid" not in result:
                errors.append(f"replica {index}: {result.get('error', 'no pid reported')}")
                continue
            pid = int(result["pid"])
            record = ReplicaRecord(
                revision=spec.revision,
                index=index,
                port=ports[index],
                pid=pid,
                # 0 when it already exited: recorded anyway, so that it is reported dead and restarted.
                start_time=process_start_time(pid) or 0,
                health_path=spec.artifact.health_path,
                command=list(spec.artifact.command),
                fingerprint=fingerprint,
                log_file=str(launch["log"]),
                cgroups=group_folders(launch["cgroups"]),
            )
            records.append(record)
        if errors:
            # Record what did start (so it is found and stopped later), then fail the call.
            self._write(spec.target, TargetState(replicas=others + records))
            raise self._error(f"could not start {spec.revision}: {'; '.join(errors)}")
        return records

    def _launch_spec(self, spec: RevisionSpec, index: int, port: int, log_dir: Path) -> dict[str, Any]:
        artifact = spec.artifact
        env = {**os.environ, **runtime_env(artifact)}
        env.update(PORT=str(port), REVISION=spec.revision, REPLICA_INDEX=str(index))
        log_file = log_dir / f"{spec.revision}@{index}.log"
        with contextlib.suppress(OSError):
            if log_file.stat().st_size > MAX_LOG_BYTES:  # keep one previous file, never grow without bound
                os.replace(log_file, log_file.with_name(log_file.name + ".1"))
        banner = f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting replica {index} on port {port}\n"
        with open(log_file, "a") as handle:
            handle.write(banner)
        return {"command": artifact.command, "cwd": artifact.working_dir, "env": env, "log": str(log_file)}

    def _launch(self, launch: dict[str, Any]) -> dict[str, Any]:
        """Start one replica through the shell launcher: {"pid": n}, or {"error": why}."""
        joins = " ".join(launch.get("cgroups", []))
        argv = [
            _SHELL,
            "-c",
            _LAUNCHER,
            "launcher",
            launch["log"],
            launch["cwd"] or ".",
            joins,
            *launch["command"],
        ]
        try:
            completed = subprocess.run(
                argv,
                env=launch["env"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=LAUNCH_TIMEOUT_S,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientPlatformError(PLATFORM, self._endpoint(), "process launcher timed out") from exc
        except OSError as exc:
            raise self._error(f"cannot run {_SHELL}: {exc}") from exc
        pid = completed.stdout.strip()
        if completed.returncode != 0 or not pid.isdigit():
            return {"error": f"launcher exit {completed.returncode}: {completed.stderr.strip()[-300:]}"}
        return {"pid": int(pid)}

    def _check_command(self, artifact: Artifact) -> None:
        if not artifact.command:
            raise self._error(f"artifact {artifact.name} {artifact.version} has no command to run")
        program = artifact.command[0]
        if os.sep in program and artifact.working_dir and not os.path.isabs(program):
            program = os.path.join(artifact.working_dir, program)
        if shutil.which(program) is None:
            raise self._error(f"command '{artifact.command[0]}' not found (not executable or not on PATH)")

    # ---- state --------------------------------------------------------------------------
    def _state_path(self, target: Target) -> Path:
        if target.key not in self._paths:  # kept: a path join costs more than the stat it is made for
            self._paths[target.key] = self.state_dir / f"{target.key}.json"
        return self._paths[target.key]

    def _lock_path(self, target: Target) -> Path:
        return self.state_dir / f"{target.key}.lock"

    def _log_dir(self, target: Target) -> Path:
        return self.state_dir / "logs" / target.key

    def _read(self, target: Target, shared: bool = False) -> TargetState:
        return self._read_file(self._state_path(target), shared)

    def _read_file(self, path: Path, shared: bool = False) -> TargetState:
        """A target's records; ``shared`` is the last parse while the file is unchanged, read-only."""
        try:
            if shared:
                return self._states.read(path) or TargetState()
            return TargetState.model_validate_json(path.read_text())
        except FileNotFoundError:
            return TargetState()
        except (OSError, ValueError) as exc:
            raise self._error(f"state file {path} is unreadable: {exc}") from exc

    def _write(self, target: Target, state: TargetState) -> None:
        try:
            write_json_atomic(self._state_path(target), state.model_dump_json(indent=1))
        except OSError as exc:
            raise self._error(f"cannot write state file: {exc}") from exc

    def _recorded_ports(self) -> set[int]:
        ports: set[int] = set()
        for path in self.state_dir.glob("*.json"):
            with contextlib.suppress(PlatformError):
                ports |= {r.port for r in self._read_file(path).replicas}
        return ports

    def _replica(self, record: ReplicaRecord) -> Replica:
        return Replica(
            revision=record.revision,
            index=record.index,
            host=self.host,
            port=record.port,
            alive=is_same_process(record.pid, record.start_time),
            ident=str(record.pid),
            health_path=record.health_path,
        )

    def _endpoint(self) -> str:
        return f"{socket.gethostname()}:{self.state_dir}"

    def _error(self, cause: str) -> PlatformError:
        return PlatformError(PLATFORM, self._endpoint(), cause)


_LIMITERS: dict[str, CgroupLimiter] = {}


def _limiter() -> CgroupLimiter:
    """Decided once per process: which control groups this machine lets us use (see adapters/cgroups.py)."""
    if "default" not in _LIMITERS:
        _LIMITERS["default"] = CgroupLimiter()
    return _LIMITERS["default"]
