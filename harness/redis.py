"""A Redis server of the caller's own on 127.0.0.1 (Debian's ``redis-server``), for Ray's GCS fault tolerance:
the head's GCS keeps the cluster's tables there (``RAY_REDIS_ADDRESS``) and a GCS started again loads them.

Its own folder under /tmp, a free port on loopback, no persistence (the server outlives the Ray head, not the
test), no password (``ray start`` takes one only on its command line, where every process would see it).
``stop`` ends only this server (by the pid it was started with) and removes its folder.

    with redis_server() as redis:
        ray_cluster(head_env={"RAY_REDIS_ADDRESS": redis.address})
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.ports import free_port

START_TIMEOUT_S = 30.0


@dataclass
class RedisServer:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answers(self) -> bool:
        """A PING gets +PONG."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                reply = b""
                deadline = time.monotonic() + 2
                while b"PONG" not in reply and time.monotonic() < deadline:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                return b"+PONG" in reply
        except OSError:
            return False


def start() -> RedisServer:
    folder = Path(tempfile.mkdtemp(prefix="redis", dir="/tmp"))
    port = free_port()
    config = folder / "redis.conf"
    config.write_text(
        f'bind 127.0.0.1\nport {port}\ndir {folder}\nsave ""\nappendonly no\nlogfile {folder / "redis.log"}\n'
    )
    process = subprocess.Popen(
        ["redis-server", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    server = RedisServer(folder, port, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.answers():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(server)
            log = (
                (folder / "redis.log").read_text(errors="replace")[-2000:]
                if (folder / "redis.log").exists()
                else ""
            )
            raise RuntimeError(f"redis-server did not start on port {port}: {log}")
        time.sleep(0.1)
    return server


def stop(server: RedisServer) -> None:
    if server.process.poll() is None:
        server.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(10)
    shutil.rmtree(server.folder, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = start()
    try:
        yield server
    finally:
        stop(server)
