"""A real PostgreSQL server of the test's (or benchmark's) own, on 127.0.0.1, reached over TLS.

Debian's PostgreSQL 15 will not run as root: ``initdb`` and ``pg_ctl`` run as the ``postgres`` user in a
folder of their own under /tmp (the pytest folders are root-only). The server takes TCP connections only
with TLS (``hostssl`` lines, no ``host`` line) and a password (SCRAM); clients check its certificate against a
CA made for the run (``sslmode=verify-full``). The superuser is reached through the server's own Unix socket
only, to make and drop databases. ``stop`` ends only this server (its own data folder) and removes it.

    with postgres_server() as pg:
        url = pg.create_database("journal_x")      # postgresql://orch:...@127.0.0.1:PORT/journal_x?sslmode=...
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from harness.ports import free_port
from scripts.programs import PG_BIN
from scripts.tls import make_ca, make_cert

START_TIMEOUT_S = 60
USER = "orch"


@dataclass
class PostgresServer:
    folder: Path
    port: int
    password: str = field(repr=False)  # never in test output
    ca_cert: Path
    tls: bool = True
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres", password: bool = True, sslmode: str = "verify-full") -> str:
        """A client URL over TCP; ``sslmode=disable`` makes a plaintext attempt (a TLS-only server refuses
        it)."""
        secret = f":{self.password}" if password else ""
        query = f"sslmode={sslmode}&sslrootcert={self.ca_cert}" if self.tls else "sslmode=disable"
        if sslmode == "disable":
            query = "sslmode=disable"
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}?{query}"

    def admin(self, **options: Any) -> psycopg.Connection[Any]:
        """The superuser over the server's Unix socket (trusted there only)."""
        return psycopg.connect(
            host=str(self.folder), port=self.port, user="postgres", dbname="postgres", autocommit=True,
            connect_timeout=10, **options,
        )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the test user; returns its client URL."""
        name = name or f"j{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {USER}')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres(args: list[str], timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the ``postgres`` user (it refuses root)."""
    return subprocess.run(
        args, user="postgres", group="postgres", extra_groups=[], capture_output=True, text=True,
        timeout=timeout, check=False, cwd="/",
    )  # fmt: skip


def _checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")


def _configure(server: PostgresServer, durable: bool) -> None:
    """TLS on, TCP only over TLS with a password, the superuser over the socket only."""
    certs = server.folder / "certs"
    ca = make_ca(certs)
    pair = make_cert(ca, certs, "server", ips=["127.0.0.1"], dns=["localhost"])
    shutil.copy(pair.cert, server.data / "server.crt")
    shutil.copy(pair.key, server.data / "server.key")
    server.ca_cert = ca.cert
    tcp = "hostssl" if server.tls else "host"
    (server.data / "pg_hba.conf").write_text(
        f"local all postgres trust\n{tcp} all {USER} 127.0.0.1/32 scram-sha-256\n"
    )
    settings = [
        "listen_addresses = '127.0.0.1'",
        f"port = {server.port}",
        f"unix_socket_directories = '{server.folder}'",
        f"ssl = {'on' if server.tls else 'off'}",
        "ssl_cert_file = 'server.crt'",
        "ssl_key_file = 'server.key'",
        "password_encryption = 'scram-sha-256'",
        "max_connections = 200",
        "shared_buffers = 32MB",
    ]
    if not durable:  # a test server: losing it on a machine crash costs nothing
        settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("\n" + "\n".join(settings) + "\n")


def start(tls: bool = True, durable: bool = False) -> PostgresServer:
    """Initialise and start a server in a new folder under /tmp; ``stop`` it when done."""
    folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the socket path must fit
    entry = pwd.getpwnam("postgres")
    server = PostgresServer(folder, free_port(), secrets.token_urlsafe(18), folder / "certs/ca.crt", tls)
    try:
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        _checked(
            _as_postgres([f"{PG_BIN}/initdb", "-D", str(server.data), "-U", "postgres", "-A", "trust"]),
            "initdb",
        )
        _configure(server, durable)
        for path in [server.data / "server.crt", server.data / "server.key", *server.folder.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        log = server.folder / "server.log"
        _checked(
            _as_postgres(
                [f"{PG_BIN}/pg_ctl", "-D", str(server.data), "-l", str(log), "-w", "-t", "60", "start"]
            ),
            "pg_ctl start",
        )
        with server.admin() as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{server.password}'")
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: PostgresServer) -> None:
    """Stop this server (immediate shutdown; its postmaster killed if pg_ctl cannot) and remove its folder."""
    if (server.data / "postmaster.pid").exists():
        result = _as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "stop"])
        if result.returncode != 0:
            _kill_postmaster(server.data)
    shutil.rmtree(server.folder, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """The postmaster named in this server's own pid file, and only if it still runs from this folder."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        if str(data) in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)


@contextmanager
def postgres_server(tls: bool = True, durable: bool = False) -> Iterator[PostgresServer]:
    server = start(tls, durable)
    try:
        yield server
    finally:
        stop(server)
