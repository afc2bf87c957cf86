"""The peer baseline: a minimal canary controller in one plain Python process (no Ray, no journal).

It drives one canary per service against the services' HAProxy (the same ones the orchestrator drives), as
a small script of its own would: launch the new revision's replicas, put them in free server slots and set
weights through the runtime API, read the statistics every analysis interval and judge the error rate, step
the weight up, and promote (the old servers go to maintenance). One thread, one loop over all services per
interval.

Input: a JSON plan written by benchmarks/overhead.py; output: one JSON line on stdout with its own CPU time
(getrusage of this process: its replicas are separate processes it never waits for), the runtime API
connections it made, and each canary's outcome and duration. The benchmark stops the replicas it reports
(``replica_pids``).
    python3 benchmarks/peer_controller.py plan.json
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

BACKEND = "be"
READY_TIMEOUT_S = 60.0


@dataclass
class Canary:
    service: str
    socket_path: str
    stable: list[str] = field(default_factory=list)  # server names (s1, s2, ...) serving the stable revision
    new: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    step: int = 0
    step_started: float = 0.0
    baseline: tuple[int, int] = (0, 0)
    failures: int = 0
    started: float = 0.0
    ended: float = 0.0
    outcome: str = ""


class Peer:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.cli_connections = 0
        self.replica_pids: list[int] = []

    def cli(self, socket_path: str, command: str) -> str:
        self.cli_connections += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(socket_path)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def launch(self, canary: Canary) -> None:
        for _ in range(self.plan["replicas"]):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            env = {**os.environ, "PORT": str(port), "VERSION": self.plan["version"]}
            process = subprocess.Popen(
                [sys.executable, self.plan["sample"]],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.replica_pids.append(process.pid)
            canary.ports.append(port)

    def wait_ready(self, canary: Canary) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for port in canary.ports:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{canary.service}: replica on port {port} never became ready")
                time.sleep(0.1)

    def place(self, canary: Canary) -> None:
        """The new replicas go into free slots; the slots serving now are the stable ones."""
        state = self.cli(canary.socket_path, f"show servers state {BACKEND}").splitlines()
        header = next(line for line in state if line.startswith("# be_id")).lstrip("# ").split()
        free: list[str] = []
        for line in state:
            values = line.split()
            if len(values) != len(header) or line.startswith("#"):
                continue
            row = dict(zip(header, values, strict=True))
            in_maint = int(row["srv_admin_state"]) & 0x01
            if in_maint or row["srv_uweight"] == "0":
                free.append(row["srv_name"])
            else:
                canary.stable.append(row["srv_name"])
        canary.new = free[: len(canary.ports)]
        commands = []
        for name, port in zip(canary.new, canary.ports, strict=True):
            commands += [
                f"set server {BACKEND}/{name} addr 127.0.0.1 port {port}",
                f"set server {BACKEND}/{name} weight 0",
                f"set server {BACKEND}/{name} state ready",
            ]
        self.cli(canary.socket_path, ";".join(commands))

    def weigh(self, canary: Canary, percent: int) -> None:
        commands = [f"set server {BACKEND}/{name} weight {percent}" for name in canary.new]
        commands += [f"set server {BACKEND}/{name} weight {100 - percent}" for name in canary.stable]
        self.cli(canary.socket_path, ";".join(commands))

    def counts(self, canary: Canary) -> tuple[int, int]:
        """Responses and 5xx of the new servers so far."""
        text = self.cli(canary.socket_path, f"show stat {BACKEND} 4 -1")
        lines = text.splitlines()
        header = lines[0].lstrip("# ").split(",")
        total = errors = 0
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") in canary.new:
                codes = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
                total += sum(int(row.get(c) or 0) for c in codes)
                errors += int(row.get("hrsp_5xx") or 0)
        return total, errors

    def percent(self, step: int) -> int:
        settings = self.plan["canary"]
        return int(min(100, settings["initialTrafficPercentage"] + step * settings["stepPercentage"]))

    def check(self, canary: Canary, now: float) -> None:
        """One analysis: the error rate over the current step so far; a step ends after its duration."""
        settings = self.plan["canary"]
        total, errors = self.counts(canary)
        requests, failed = total - canary.baseline[0], errors - canary.baseline[1]
        if requests >= settings["minRequestCount"]:
            breach = 100.0 * failed / requests > settings["failureThreshold"]["errorRate"]
            canary.failures = canary.failures + 1 if breach else 0
            if canary.failures >= settings["failureThreshold"]["consecutiveFailures"]:
                self.weigh(canary, 0)
                self.end(canary, "rolled_back", now)
                return
        if now - canary.step_started < settings["stepDuration"] / 1000:
            return
        canary.step += 1
        if canary.step >= settings["maxSteps"]:
            self.promote(canary, now)
            return
        self.weigh(canary, self.percent(canary.step))
        canary.step_started, canary.baseline, canary.failures = now, (total, errors), 0

    def promote(self, canary: Canary, now: float) -> None:
        commands = [f"set server {BACKEND}/{name} weight 100" for name in canary.new]
        for name in canary.stable:
            commands += [f"set server {BACKEND}/{name} state maint", f"set server {BACKEND}/{name} weight 0"]
        self.cli(canary.socket_path, ";".join(commands))
        self.end(canary, "succeeded", now)

    def end(self, canary: Canary, outcome: str, now: float) -> None:
        canary.outcome, canary.ended = outcome, now

    def run(self) -> dict[str, Any]:
        canaries = [Canary(service=s["service"], socket_path=s["socket"]) for s in self.plan["services"]]
        for canary in canaries:
            canary.started = time.time()
            self.launch(canary)
        for canary in canaries:
            self.wait_ready(canary)
            self.place(canary)
            self.weigh(canary, self.percent(0))
            canary.step_started = time.time()
            canary.baseline = self.counts(canary)
        interval = self.plan["canary"]["analysisInterval"] / 1000
        deadline = time.monotonic() + self.plan["timeout_s"]
        while any(not c.outcome for c in canaries) and time.monotonic() < deadline:
            time.sleep(interval)
            for canary in canaries:
                if not canary.outcome:
                    self.check(canary, time.time())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "cli_connections": self.cli_connections,
            "replica_pids": self.replica_pids,
            "canaries": [
                {"service": c.service, "outcome": c.outcome or "timed_out", "duration_s": c.ended - c.started}
                for c in canaries
            ],
        }


def main(argv: list[str]) -> int:
    with open(argv[0]) as source:
        plan = json.load(source)
    print(json.dumps(Peer(plan).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
