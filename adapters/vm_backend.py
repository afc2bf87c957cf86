"""Replicas of revisions on plain hosts (VMs) reached over SSH; ``RoutedPlatform`` puts HAProxy in front.

Model, per host and per target (service x environment), under the host's ``root``::

    {root}/{service}.{environment}/releases/{revision}/   one release folder per revision
        release.json   manifest: command, env, port, health path, deployment id, sha256 ...
        run.sh         the launcher; records "pid starttime" in replica.pid, then execs the command
        app/           the artifact's working_dir, uploaded over SFTP (when the artifact has one)
        replica.pid    "pid starttime" of the running process (start time from /proc/<pid>/stat)
        replica.log    the process's stdout and stderr
    {root}/{service}.{environment}/current -> releases/{revision}    the newest deployed release
    {root}/{service}.{environment}/previous -> releases/{revision}   the one before (for switch_back)
    {root}/ports/{port}/owner   port claims ("{service}.{environment}/{revision}"), made with an atomic mkdir

(``service.environment``, not ``service-environment``: names may hold '-', so that could be two targets.)

Scheme: a host runs ONE replica of a revision; replica index = host index, so a revision with ``replicas=N``
runs on the first N hosts (more replicas than hosts is refused). Host ``i`` takes its replica ports from
``replicaPort + i * portsPerHost`` on (a separate range per host, so that several "hosts" sharing a machine,
as in the tests, never collide); the port chosen is recorded in the release's manifest on that host.

The truth lives on the hosts: every read lists the release folders and checks the recorded pid against
``/proc/<pid>/stat`` (same start time, not a zombie), so a new instance of this class finds everything again.
Processes are started with ``setsid -f`` and outlive the SSH session. Health checks are the router's job.

Settings (camelCase): ``hosts`` (list of ``{name, address, port=22, user, keyFile, root}``),
``connectTimeout`` (s, 10), ``commandTimeout`` (s, 60), ``replicaPort`` (9100), ``portsPerHost`` (100),
``stopTimeout`` (s, 10), ``retries`` (3), ``strictHostKeys`` (true) and ``knownHostsFile``
(default ``~/.ssh/known_hosts``).
With ``strictHostKeys`` true (the default) a host whose key is not in the known hosts file is refused
('host key not trusted'); only ``strictHostKeys: false`` accepts unknown keys (paramiko's AutoAddPolicy, in
memory only) -- meant for throwaway test hosts. Hosts need bash, setsid and /proc (any Linux).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import paramiko
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from engine.models import Target
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

PLATFORM = "vm"
# Revision ids become folder names on the hosts (and arguments of rm -rf): only the Artifact.revision form.
_REVISION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_T = TypeVar("_T")

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


class HostSettings(BaseModel):
    """One host; unknown keys are refused so that a typo does not silently fall back to a default."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(default_factory=getpass.getuser)
    key_file: str | None = None
    root: str = "/opt/deploy-orchestrator"

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


class VmSettings(BaseModel):
    """The vm platform's settings; other keys of the shared settings dict (the router's) are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    hosts: list[HostSettings] = Field(min_length=1)
    connect_timeout: float = Field(default=10.0, gt=0)
    command_timeout: float = Field(default=60.0, gt=0)
    replica_port: int = Field(default=9100, ge=1, le=65535)
    ports_per_host: int = Field(default=100, ge=1)
    stop_timeout: float = Field(default=10.0, ge=0)
    retries: int = Field(default=3, ge=1, le=10)
    strict_host_keys: bool = True
    known_hosts_file: str | None = None

    @model_validator(mode="after")
    def _unique_names_and_ports(self) -> VmSettings:
        names = [h.name for h in self.hosts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"vm hosts: duplicate host names {duplicates}")
        last_port = self.replica_port + len(self.hosts) * self.ports_per_host - 1
        if last_port > 65535:
            raise ValueError(f"vm replica ports would reach {last_port}: lower replicaPort or portsPerHost")
        return self


class ReleaseState(BaseModel):
    """One release folder on one host, as read from the host."""

    revision: str
    alive: bool
    pid: int | None
    manifest: dict[str, Any]


class HostState(BaseModel):
    current: str | None = None
    previous: str | None = None
    releases: dict[str, ReleaseState] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The shell side: one script with one function per action, sent with every command (hosts need no agent).
# Exit status 3 means a refusal whose message is on stderr.
# --------------------------------------------------------------------------------------------
_REMOTE_SCRIPT = r"""
set -u
die() { echo "$*" >&2; exit 3; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
link_target() { [ -L "$1/$2" ] && basename "$(readlink "$1/$2")"; return 0; }
swap_link() {  # atomically point $1/$2 at releases/$3 (rename(2) over the old link)
    ln -sfn "releases/$3" "$1/.$2.tmp.$$" && mv -T "$1/.$2.tmp.$$" "$1/$2"
}
alive_pid() {  # print the release's pid when that very process (same start time, not a zombie) runs
    local rec="$1/replica.pid" pid="" start="" st rest
    [ -f "$rec" ] || return 1
    read -r pid start 2>/dev/null <"$rec" || true
    [ -n "$pid" ] || return 1
    st=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    rest=${st##*) }
    set -- $rest
    [ "$1" != Z ] && [ "$1" != X ] && [ "${20}" = "$start" ] && echo "$pid"
}
do_probe() {  # root
    command -v setsid >/dev/null || die "setsid is missing on the host"
    setsid -f true </dev/null >/dev/null 2>&1 || die "setsid -f does not work (util-linux too old?)"
    [ -r /proc/self/stat ] || die "/proc is not readable on the host"
    mkdir -p "$1" 2>/dev/null && [ -w "$1" ] || die "root folder $1 is not writable"
    echo ok
}
do_list() {  # tdir
    local tdir="$1" rel pid rec_pid manifest
    [ -d "$tdir/releases" ] || return 0
    printf 'link\tcurrent\t%s\n' "$(link_target "$tdir" current)"
    printf 'link\tprevious\t%s\n' "$(link_target "$tdir" previous)"
    for rel in "$tdir"/releases/*/; do
        rel=${rel%/}
        # A release being removed meanwhile is skipped (remove renames it away before deleting it).
        manifest=$(tr -d '\n' <"$rel/release.json" 2>/dev/null) && [ -n "$manifest" ] || continue
        pid=$(alive_pid "$rel") || pid=""
        rec_pid=""
        [ -f "$rel/replica.pid" ] && read -r rec_pid _ 2>/dev/null <"$rel/replica.pid"
        printf 'release\t%s\t%s\t%s\t%s\n' "$(basename "$rel")" "${pid:+1}" "$rec_pid" "$manifest"
    done
}
do_prepare() {  # root tdir rev base span owner: make the folders, claim a port, print it
    local root="$1" tdir="$2" rev="$3" base="$4" span="$5" owner="$6" f p
    mkdir -p "$tdir/releases" "$root/ports" || die "cannot create $tdir"
    rm -rf "$tdir/releases/.$rev.staging-"*
    for f in "$root"/ports/*/owner; do
        [ -f "$f" ] && [ "$(cat "$f")" = "$owner" ] && { basename "$(dirname "$f")"; return 0; }
    done
    for ((p = base; p < base + span; p++)); do
        mkdir "$root/ports/$p" 2>/dev/null || continue
        if port_open "$p"; then rmdir "$root/ports/$p"; continue; fi
        echo "$owner" >"$root/ports/$p/owner"
        echo "$p"
        return 0
    done
    die "no free replica port in $base-$((base + span - 1))"
}
do_activate() {  # tdir rev: current -> rev, previous -> what current was
    local tdir="$1" rev="$2" cur
    [ -d "$tdir/releases/$rev" ] || die "release $rev does not exist"
    cur=$(link_target "$tdir" current)
    [ "$cur" = "$rev" ] && return 0
    if [ -n "$cur" ] && [ -d "$tdir/releases/$cur" ]; then swap_link "$tdir" previous "$cur"; fi
    swap_link "$tdir" current "$rev"
}
do_install() {  # tdir rev staging wait_s: move the upload into place (once), make it current, start it
    local tdir="$1" rev="$2" staging="$3"
    if [ ! -d "$tdir/releases/$rev" ]; then mv -T "$staging" "$tdir/releases/$rev" 2>/dev/null; fi
    rm -rf "$staging"
    do_activate "$tdir" "$rev"
    do_start "$tdir/releases/$rev" "$4" >/dev/null
    do_list "$tdir"
}
do_ensure() {  # tdir rev wait_s: start the release unless it runs (exit 4: no such release); list
    do_start "$1/releases/$2" "$3" >/dev/null
    do_list "$1"
}
do_start() {  # rel wait_s: start the release's process unless it runs; print its pid
    local rel="$1" pid i
    pid=$(alive_pid "$rel") && { echo "$pid"; return 0; }
    [ -f "$rel/release.json" ] || { echo "no release at $rel" >&2; exit 4; }
    [ -f "$rel/run.sh" ] || die "release $rel is incomplete (no run.sh)"
    rm -f "$rel/replica.pid"
    setsid -f bash "$rel/run.sh" </dev/null >>"$rel/replica.log" 2>&1
    for ((i = 0; i < $2 * 10; i++)); do
        [ -f "$rel/replica.pid" ] && { read -r pid _ <"$rel/replica.pid"; echo "$pid"; return 0; }
        sleep 0.1
    done
    die "the process of $rel did not start within $2 s"
}
do_stop() {  # rel timeout_s: TERM the process group, KILL after the timeout
    local rel="$1" pid i sig
    for sig in TERM KILL; do
        pid=$(alive_pid "$rel") || break
        kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null
        for ((i = 0; i < $2 * 10 + 1; i++)); do alive_pid "$rel" >/dev/null || break; sleep 0.1; done
    done
    alive_pid "$rel" >/dev/null && die "process $pid of $rel survived SIGKILL"
    rm -f "$rel/replica.pid"
}
do_remove() {  # root tdir rev timeout_s owner; then list
    local root="$1" tdir="$2" rev="$3" rel="$2/releases/$3" cur prev f
    if [ -d "$rel" ]; then
        do_stop "$rel" "$4"
        cur=$(link_target "$tdir" current)
        prev=$(link_target "$tdir" previous)
        if [ "$cur" = "$rev" ]; then
            # current falls back to previous, else to the newest release left
            [ -n "$prev" ] && [ "$prev" != "$rev" ] && [ -d "$tdir/releases/$prev" ] \
                || prev=$(ls -1td "$tdir"/releases/*/ 2>/dev/null | grep -v "/$rev/\$" | head -n 1)
            if [ -n "$prev" ]; then swap_link "$tdir" current "$(basename "$prev")"
            else rm -f "$tdir/current"; fi
            rm -f "$tdir/previous"
        elif [ "$prev" = "$rev" ]; then
            rm -f "$tdir/previous"
        fi
        # Renamed first (atomic, and hidden from listings as a dot folder), then deleted.
        mv -T "$rel" "$tdir/releases/.$rev.removing-$$" && rm -rf "$tdir/releases/.$rev.removing-$$"
    fi
    for f in "$root"/ports/*/owner; do
        [ -f "$f" ] && [ "$(cat "$f")" = "$5" ] && rm -rf "$(dirname "$f")"
    done
    do_list "$tdir"
}
do_switch_back() {  # tdir: swap current and previous; print the revision now current
    local tdir="$1" cur prev
    cur=$(link_target "$tdir" current)
    prev=$(link_target "$tdir" previous)
    [ -n "$prev" ] && [ -d "$tdir/releases/$prev" ] || die "no previous release to switch back to"
    swap_link "$tdir" current "$prev"
    if [ -n "$cur" ] && [ -d "$tdir/releases/$cur" ]; then swap_link "$tdir" previous "$cur"
    else rm -f "$tdir/previous"; fi
    echo "$prev"
}
do_capacity() {  # root: what a new release there can have (memory and cores of the host, disk under root)
    local dir="$1" mem
    while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
    mem=$(free -b 2>/dev/null | awk '/^Mem:/ {print $7}')
    if [ -n "$mem" ]; then printf 'memory_bytes\t%s\n' "$mem"
    else printf 'memory_kb\t%s\n' "$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"; fi
    printf 'disk_kb\t%s\n' "$(df -Pk "$dir" | awk 'NR == 2 {print $4}')"
    printf 'cpus\t%s\n' "$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)"
}
do_logs() {  # rel lines
    [ -f "$1/replica.log" ] && tail -n "$2" "$1/replica.log"
    return 0
}
action="$1"
shift
"do_$action" "$@"
"""

_NO_RELEASE = 4  # exit status of the remote "start"/"ensure" when the release folder does not exist


def _launcher(release_dir: str, workdir: str, command: list[str], env: dict[str, str]) -> str:
    """run.sh: records its own pid and start time (kept across exec), then becomes the service."""
    assignments = " ".join(shlex.quote(f"{key}={value}") for key, value in sorted(env.items()))
    pid_file = shlex.quote(f"{release_dir}/replica.pid")
    return (
        "#!/usr/bin/env bash\n"
        "# Written by the deploy orchestrator; started with setsid -f so it outlives the SSH session.\n"
        "st=$(cat /proc/$$/stat); rest=${st##*) }; set -- $rest\n"
        f'echo "$$ ${{20}}" >{pid_file}.tmp && mv -f {pid_file}.tmp {pid_file}\n'
        'echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] starting pid $$"\n'
        f"cd {shlex.quote(workdir)} || exit 1\n"
        f"exec env {assignments} {shlex.join(command)}\n"
    )


# --------------------------------------------------------------------------------------------
# SSH connections: one pooled client per host, errors sorted into permanent and transient
# --------------------------------------------------------------------------------------------
class _UntrustedHostKey(Exception):
    """The host's key is not in the known hosts file (strict mode)."""


class _RejectUnknownHosts(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UntrustedHostKey(hostname)


_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    socket.timeout,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    EOFError,
)


def _cause(error: BaseException) -> tuple[str, bool]:
    """(cause for the PlatformError, whether retrying may help)."""
    if isinstance(error, _UntrustedHostKey):
        return "host key not trusted (not in the known hosts file)", False
    if isinstance(error, paramiko.BadHostKeyException):
        return "host key does not match the known hosts file", False
    if isinstance(error, paramiko.AuthenticationException):
        return "authentication failed", False
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        inner = list(error.errors.values())
        if inner and all(isinstance(e, ConnectionRefusedError) for e in inner):
            return "connection refused", False
        return f"cannot connect: {error.strerror}", True
    if isinstance(error, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(error, PermissionError | FileNotFoundError | FileExistsError | IsADirectoryError):
        return f"{type(error).__name__}: {error}", False  # from SFTP: the host refuses, retrying won't help
    if isinstance(error, _TRANSIENT_ERRORS):
        return f"{type(error).__name__}: {str(error) or 'timed out'}", True
    if isinstance(error, paramiko.SSHException | OSError):
        # Banner/protocol errors and dropped sessions: a new connection usually works.
        return f"{type(error).__name__}: {error}", True
    return f"{type(error).__name__}: {error}", False


class _HostConnection:
    """A pooled SSH client for one host; reconnects when the transport has died."""

    def __init__(self, host: HostSettings, settings: VmSettings) -> None:
        self.host = host
        self._settings = settings
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def _connect(self) -> paramiko.SSHClient:
        key_file = os.path.expanduser(self.host.key_file) if self.host.key_file else None
        if key_file and not os.path.isfile(key_file):
            raise PlatformError(PLATFORM, self.host.endpoint, f"key file not found: {key_file}")
        client = paramiko.SSHClient()
        if self._settings.strict_host_keys:
            known = self._settings.known_hosts_file or "~/.ssh/known_hosts"
            if os.path.isfile(os.path.expanduser(known)):
                client.load_system_host_keys(os.path.expanduser(known))
            client.set_missing_host_key_policy(_RejectUnknownHosts())
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        timeout = self._settings.connect_timeout
        try:
            client.connect(
                self.host.address,
                port=self.host.port,
                username=self.host.user,
                key_filename=key_file,
                look_for_keys=key_file is None,
                allow_agent=key_file is None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)  # pooled connections sit idle between steps; keep NAT/firewalls open
        return client

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if self._client is None or transport is None or not transport.is_active():
                self.close_unlocked()
                self._client = self._connect()
            return self._client

    def discard(self) -> None:
        with self._lock:
            self.close_unlocked()

    def close_unlocked(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def execute(self, command: str) -> tuple[int, str, str]:
        client = self.client()
        stdin, stdout, stderr = client.exec_command(command, timeout=self._settings.command_timeout)
        stdin.close()
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err


class _HostSession:
    """Runs remote actions on one host with bounded retries of transient failures."""

    def __init__(self, host: HostSettings, settings: VmSettings) -> None:
        self.host = host
        self._settings = settings
        self._connection = _HostConnection(host, settings)

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        last_cause = "unknown error"
        for number in range(self._settings.retries):
            try:
                return attempt()
            except (PlatformError, ValueError):
                raise
            except Exception as error:
                cause, transient = _cause(error)
                self._connection.discard()
                if not transient:
                    raise PlatformError(PLATFORM, self.host.endpoint, cause) from error
                last_cause = cause
                if number + 1 < self._settings.retries:
                    time.sleep(min(2.0, 0.25 * 2**number))
        raise TransientPlatformError(
            PLATFORM, self.host.endpoint, f"{last_cause} (after {self._settings.retries} attempts)"
        )

    def run(self, action: str, *args: str | int | float) -> str:
        """Run one action of the remote script; its output, or PlatformError with its message."""
        return self.run_status(action, *args)[1]

    def run_status(self, action: str, *args: str | int | float, accept: int = 0) -> tuple[int, str]:
        """Like ``run``, but an exit status equal to ``accept`` is returned instead of raised."""
        words = ["bash", "-c", _REMOTE_SCRIPT, "vm-backend", action, *[str(a) for a in args]]
        command = shlex.join(words)
        status, out, err = self._retrying(lambda: self._connection.execute(command))
        if status not in (0, accept):
            message = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
            raise PlatformError(PLATFORM, self.host.endpoint, f"{action}: {message}")
        return status, str(out)

    def with_sftp(self, work: Callable[[paramiko.SFTPClient], _T]) -> _T:
        """``work(sftp)`` with retries; ``work`` must be safe to run again from the start."""

        def attempt() -> _T:
            sftp = self._connection.client().open_sftp()
            try:
                return work(sftp)
            finally:
                sftp.close()

        return self._retrying(attempt)

    def connect(self) -> None:
        self._retrying(self._connection.client)  # connects (and authenticates) unless already connected

    def close(self) -> None:
        self._connection.discard()


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------
class VmBackend:
    """``engine.platform.WorkloadBackend`` for plain hosts reached over SSH (see the module docstring)."""

    platform = PLATFORM

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        # Nothing is kept locally (the hosts hold the truth); the folder is only where a state dir belongs.
        self._state_dir = state_dir
        self._settings = VmSettings.model_validate(settings)
        self._sessions = [_HostSession(host, self._settings) for host in self._settings.hosts]
        self.capabilities = PlatformCapabilities(
            capacity=frozenset(Resource),
            notes=["vm: replicas run unconfined on their hosts (no control groups are set up there)"],
        )

    # ----------------------------------------------------------------------------- paths, names
    @property
    def hosts(self) -> list[HostSettings]:
        return list(self._settings.hosts)

    @staticmethod
    def target_dir(host: HostSettings, target: Target) -> str:
        # "service.environment" (Target.key): '.' is not allowed in names, so two targets never share it.
        return str(PurePosixPath(host.root) / target.key)

    def release_dir(self, host: HostSettings, target: Target, revision: str) -> str:
        return f"{self.target_dir(host, target)}/releases/{revision}"

    @staticmethod
    def _owner(target: Target, revision: str) -> str:
        return f"{target.key}/{revision}"

    def _session(self, host: str | int) -> _HostSession:
        if isinstance(host, int):
            return self._sessions[host]
        for session in self._sessions:
            if session.host.name == host:
                return session
        raise ValueError(f"unknown vm host '{host}': known are {[s.host.name for s in self._sessions]}")

    # ----------------------------------------------------------------------------- WorkloadBackend
    def validate(self) -> None:
        """Every host reachable, authenticating, with a writable root and setsid; before any change."""
        for session in self._sessions:
            session.connect()
            session.run("probe", session.host.root)

    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """Each of the first ``replicas`` hosts runs one new replica: its free memory (``free -b``), its free
        disk under the host's root (``df``) and its cores, read over SSH."""
        count = min(replicas, len(self._sessions))
        return self._on_every_host(lambda index: self._host_capacity(index, 1 if index < count else 0))

    def _host_capacity(self, index: int, replicas: int) -> CapacityPool:
        session = self._sessions[index]
        values: dict[str, int] = {}
        for line in session.run("capacity", session.host.root).splitlines():
            name, _, value = line.partition("\t")
            if value.strip().isdigit():
                values[name] = int(value.strip())
        memory = values.get("memory_bytes", values.get("memory_kb", -1) * 1024)
        if memory < 0 or "disk_kb" not in values:
            raise PlatformError(PLATFORM, session.host.endpoint, "capacity: free memory or disk not readable")
        return CapacityPool(
            name=f"vm host {session.host.name}",
            replicas=replicas,
            memory_free=memory,
            disk_free=values["disk_kb"] * 1024,
            cpus=float(values["cpus"]) if values.get("cpus") else None,
        )

    def ensure_replicas(self, spec: RevisionSpec) -> list[Replica]:
        if not spec.artifact.command:
            raise ValueError(
                f"artifact {spec.artifact.name} {spec.artifact.version} has no command to run on a vm host"
            )
        if spec.replicas > len(self._sessions):
            raise ValueError(
                f"replicas={spec.replicas} exceeds the {len(self._sessions)} vm hosts: "
                "the vm platform runs one replica of a revision per host"
            )

        def ensure(index: int) -> HostState:
            if index < spec.replicas:
                return self._ensure_on_host(index, spec)
            return self._remove_from_host(self._sessions[index], spec.target, spec.revision)

        return self._replicas(self._on_every_host(ensure), spec.revision)

    def list_replicas(self, target: Target, revision: str | None = None) -> list[Replica]:
        return self._replicas(self._host_states(target), revision)

    def _replicas(self, states: list[HostState], revision: str | None) -> list[Replica]:
        replicas: list[Replica] = []
        for index, (session, state) in enumerate(zip(self._sessions, states, strict=True)):
            for release in state.releases.values():
                if revision is None or release.revision == revision:
                    replicas.append(self._replica(index, session.host, release))
        return sorted(replicas, key=lambda r: (r.revision, r.index))

    def remove_revision(self, target: Target, revision: str) -> None:
        _check_revision(revision)
        self._on_every_host(lambda index: self._remove_from_host(self._sessions[index], target, revision))

    def stop_replica(self, target: Target, revision: str, index: int) -> None:
        """Stop the revision's process on host ``index``; the release stays, so ensure starts it again."""
        _check_revision(revision)
        session = self._session(index)
        stop_s = max(1, int(self._settings.stop_timeout))
        session.run("stop", self.release_dir(session.host, target, revision), stop_s)

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        _check_revision(revision)

        def tail(index: int) -> str:
            host = self._sessions[index].host
            text = self._sessions[index].run("logs", self.release_dir(host, target, revision), max(1, lines))
            return f"==> {host.name} ({host.address}) <==\n{text.rstrip()}" if text else ""

        return "\n".join(part for part in self._on_every_host(tail) if part)

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    # ----------------------------------------------------------------------------- releases
    def current_release(self, target: Target, host: str | int) -> str | None:
        """The revision the host's ``current`` link points at."""
        session = self._session(host)
        return self._host_state(session, target).current

    def previous_release(self, target: Target, host: str | int) -> str | None:
        """The revision kept as ``previous`` on the host (what ``switch_back`` returns to)."""
        session = self._session(host)
        return self._host_state(session, target).previous

    def switch_back(self, target: Target) -> dict[str, str]:
        """On every host with a previous release: ``current`` back to it (and its process running).

        Returns host name -> revision now current. Traffic is the router's business, not this.
        """
        switched: dict[str, str] = {}
        for session in self._sessions:
            state = self._host_state(session, target)
            if state.previous is None or state.previous not in state.releases:
                continue
            revision = session.run("switch_back", self.target_dir(session.host, target)).strip()
            session.run("start", self.release_dir(session.host, target, revision), self._start_wait_s)
            switched[session.host.name] = revision
        return switched

    # ----------------------------------------------------------------------------- internals
    @property
    def _start_wait_s(self) -> int:
        return max(5, int(self._settings.command_timeout / 2))

    def _host_state(self, session: _HostSession, target: Target) -> HostState:
        output = session.run("list", self.target_dir(session.host, target))
        return _parse_listing(output, session.host)

    def _host_states(self, target: Target) -> list[HostState]:
        return self._on_every_host(lambda index: self._host_state(self._sessions[index], target))

    def _on_every_host(self, action: Callable[[int], _T]) -> list[_T]:
        """``action(host index)`` on all hosts at once (each SSH command costs a round trip and a shell)."""
        indexes = range(len(self._sessions))
        if len(self._sessions) == 1:
            return [action(0)]
        with ThreadPoolExecutor(max_workers=min(8, len(self._sessions))) as pool:
            return list(pool.map(action, indexes))

    @staticmethod
    def _replica(index: int, host: HostSettings, release: ReleaseState) -> Replica:
        manifest = release.manifest
        return Replica(
            revision=release.revision,
            index=index,
            host=host.address,
            port=int(manifest.get("port", 0)),
            alive=release.alive,
            ident=f"{host.name}:pid-{release.pid}" if release.pid else host.name,
            health_path=str(manifest.get("healthPath", "/health")),
        )

    def _ensure_on_host(self, index: int, spec: RevisionSpec) -> HostState:
        """Start the release's process unless it runs; create the release first when it is missing."""
        session = self._sessions[index]
        target_dir = self.target_dir(session.host, spec.target)
        status, listing = session.run_status(
            "ensure", target_dir, spec.revision, self._start_wait_s, accept=_NO_RELEASE
        )
        if status == _NO_RELEASE:
            listing = self._create_release(index, spec)
        return _parse_listing(listing, session.host)

    def _create_release(self, index: int, spec: RevisionSpec) -> str:
        """Upload into a staging folder, then move it into place and switch ``current`` to it."""
        session = self._sessions[index]
        host = session.host
        target_dir = self.target_dir(host, spec.target)
        base_port = self._settings.replica_port + index * self._settings.ports_per_host
        owner = self._owner(spec.target, spec.revision)
        port = int(
            session.run(
                "prepare",
                host.root,
                target_dir,
                spec.revision,
                base_port,
                self._settings.ports_per_host,
                owner,
            ).strip()
        )
        staging = session.with_sftp(lambda sftp: self._upload_release(sftp, index, spec, port))
        return session.run("install", target_dir, spec.revision, staging, self._start_wait_s)

    def _upload_release(self, sftp: paramiko.SFTPClient, index: int, spec: RevisionSpec, port: int) -> str:
        """Write the release into a fresh staging folder (a retry starts a new one); returns its path."""
        host = self._sessions[index].host
        target_dir = self.target_dir(host, spec.target)
        staging = f"{target_dir}/releases/.{spec.revision}.staging-{uuid.uuid4().hex[:8]}"
        release_dir = self.release_dir(host, spec.target, spec.revision)
        sftp.mkdir(staging)
        workdir = release_dir
        if spec.artifact.working_dir:
            _upload_tree(sftp, Path(spec.artifact.working_dir), f"{staging}/app")
            workdir = f"{release_dir}/app"
        env = {"HOST": host.address, "VERSION": spec.artifact.version, **runtime_env(spec.artifact)}
        env.update(PORT=str(port), REVISION=spec.revision, REPLICA_INDEX=str(index))
        _write_text(sftp, f"{staging}/run.sh", _launcher(release_dir, workdir, spec.artifact.command, env))
        # The manifest goes last: a folder with release.json is a complete release.
        manifest = json.dumps(_manifest(spec, host, port), sort_keys=True)
        _write_text(sftp, f"{staging}/release.json", manifest)
        return staging

    def _remove_from_host(self, session: _HostSession, target: Target, revision: str) -> HostState:
        listing = session.run(
            "remove",
            session.host.root,
            self.target_dir(session.host, target),
            revision,
            max(1, int(self._settings.stop_timeout)),
            self._owner(target, revision),
        )
        return _parse_listing(listing, session.host)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _check_revision(revision: str) -> None:
    if not _REVISION.match(revision):
        raise ValueError(
            f"'{revision}' is not a revision id: use lower-case letters, digits and '-' (Artifact.revision)"
        )


def _manifest(spec: RevisionSpec, host: HostSettings, port: int) -> dict[str, Any]:
    artifact = spec.artifact
    return {
        "service": spec.target.service,
        "environment": spec.target.environment,
        "revision": spec.revision,
        "version": artifact.version,
        "deploymentId": spec.deployment_id,
        "command": artifact.command,
        "env": artifact.env,
        "port": port,
        "healthPath": artifact.health_path,
        "sha256": artifact.sha256,
        "source": artifact.source,
        "workingDir": "app" if artifact.working_dir else None,
        "host": host.name,
        "createdAt": time.time(),
    }


def _parse_listing(output: str, host: HostSettings) -> HostState:
    state = HostState()
    for line in output.splitlines():
        fields = line.split("\t")
        if fields[0] == "link" and len(fields) == 3:
            setattr(state, fields[1], fields[2] or None)
        elif fields[0] == "release" and len(fields) == 5:
            revision, alive, pid, manifest = fields[1], fields[2] == "1", fields[3], fields[4]
            try:
                parsed = json.loads(manifest)
            except json.JSONDecodeError as error:
                raise PlatformError(
                    PLATFORM, host.endpoint, f"release {revision} has a corrupt release.json: {error}"
                ) from error
            state.releases[revision] = ReleaseState(
                revision=revision, alive=alive, pid=int(pid) if pid.isdigit() else None, manifest=parsed
            )
    return state


def _write_text(sftp: paramiko.SFTPClient, path: str, text: str) -> None:
    with sftp.open(path, "w") as handle:
        handle.write(text.encode())


def _upload_tree(sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
    """Copy a folder's files (modes kept; symlinks followed; caches skipped) to the host."""
    if not local.is_dir():
        raise ValueError(f"artifact working_dir {local} is not a folder")
    sftp.mkdir(remote)
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local)
        if "__pycache__" in relative.parts or ".git" in relative.parts:
            continue
        destination = f"{remote}/{relative.as_posix()}"
        if path.is_dir():
            sftp.mkdir(destination)
        elif path.is_file():
            sftp.put(str(path), destination)
            sftp.chmod(destination, stat.S_IMODE(path.stat().st_mode))
