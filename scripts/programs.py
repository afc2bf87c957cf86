"""Every program the tests and benchmarks start, and where each comes from.

``scripts/setup.sh --test`` installs them and then runs this file, which fails naming each missing one; the
test session checks them again before any test runs (tests/conftest.py), so a fresh machine never gets
half a run of confusing errors.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PG_BIN = "/usr/lib/postgresql/15/bin"  # Debian 12's PostgreSQL 15 keeps its server programs off PATH
# program -> (Debian package or pip package that provides it, extra places to look)
PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dockerd": ("apt: docker.io", ("/usr/sbin/dockerd",)),
    "docker": ("apt: docker.io", ()),
    "busybox": ("apt: busybox-static", ("/bin/busybox",)),
    "sshd": ("apt: openssh-server", ("/usr/sbin/sshd",)),
    "ssh-keygen": ("apt: openssh-client", ()),
    "ip": ("apt: iproute2", ("/usr/sbin/ip", "/sbin/ip")),
    "setsid": ("apt: util-linux", ()),
    "prometheus": ("apt: prometheus", ("/usr/bin/prometheus",)),
    "ray": ("pip: ray[default] (scripts/setup.sh)", ()),
    "initdb": ("apt: postgresql", (f"{PG_BIN}/initdb",)),
    "pg_ctl": ("apt: postgresql", (f"{PG_BIN}/pg_ctl",)),
    "postgres": ("apt: postgresql", (f"{PG_BIN}/postgres",)),
    "chromium": ("apt: chromium", ("/usr/bin/chromium",)),
    "redis-server": ("apt: redis-server", ()),
}


def locate(program: str) -> str | None:
    """The program's path, on PATH, beside this Python (pip's scripts) or at a known place."""
    found = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
    if found:
        return found
    return next((p for p in PROGRAMS.get(program, ("", ()))[1] if Path(p).exists()), None)


def missing() -> list[str]:
    """One line per missing program: its name and what provides it."""
    return [f"{name} (from {source})" for name, (source, _) in PROGRAMS.items() if locate(name) is None]


def main() -> int:
    lacking = missing()
    if lacking:
        print("missing programs the tests start:\n  " + "\n  ".join(lacking), file=sys.stderr)
        return 1
    print(f"all {len(PROGRAMS)} programs the tests start are installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
