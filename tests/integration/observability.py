"""An orchestrator of its own for the observability tests: alerting routed to a real HTTP receiver and a real
SMTP server, an event hook, its Prometheus exporter scraped (with Ray's metrics) by a real Prometheus.

It runs beside the session's orchestrator (another namespace, its own journal, token and ports), so that its
configuration (alerting, hooks, a short audit checkpoint interval) changes nothing for the other tests.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.config import load_config, write_isolated_config
from engine.identity import AccessControl
from engine.journal import Journal
from tests.integration.conftest import _remove_everything, free_port
from tests.integration.environments import prometheus_scraping
from tests.receiver import Mailbox, Receiver, http_receiver, smtp_server

ENV = "development"


@dataclass
class Observed:
    orch: Any
    receiver: Receiver
    mailbox: Mailbox
    prometheus: str
    exporter: str
    config: Path
    token: str
    started: float

    def journal(self) -> Journal:
        return Journal(self.orch.journal_path)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a list of series)."""
        return prometheus_api(self.prometheus, "query", {"query": expr})

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> list[dict[str, Any]]:
        return prometheus_api(
            self.prometheus, "query_range", {"query": expr, "start": start, "end": end, "step": step}
        )

    def wait_query(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait (bounded) until Prometheus has scraped a sample that makes ``expr`` non-empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"no data for {expr} within {timeout:g}s")


def prometheus_api(url: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def alerting_config(receiver: Receiver, mailbox: Mailbox) -> dict[str, Any]:
    port = receiver.url.rsplit(":", 1)[1]
    mail = (
        f"mailto://127.0.0.1:{mailbox.port}?from=orchestrator@example.com&to=oncall@example.com&mode=insecure"
    )
    return {
        "channels": {
            "siem": {"url": f"json://127.0.0.1:{port}/alerts"},
            "chat": {"url": f"mmost://127.0.0.1:{port}/chat"},
            "mail": {"url": mail},
        },
        "routes": [
            {
                "environments": ["*"],
                "severities": ["critical", "warning"],
                "channels": ["siem", "chat", "mail"],
            }
        ],
        "dedupWindow": "10m",
        "backoff": "200ms",
    }


def _configure(folder: Path, receiver: Receiver, mailbox: Mailbox, exporter: int) -> Path:
    config = write_isolated_config(
        folder,
        (19600, 19699),
        (46000, 46999),
        namespace=f"orch-observe-{os.getpid()}",
        prometheus_port=exporter,
    )
    data = yaml.safe_load(config.read_text())
    data["alerting"] = alerting_config(receiver, mailbox)
    data["hooks"] = [{"name": "siem-events", "type": "event", "url": receiver.url + "/events", "retries": 1}]
    data["audit"]["checkpointInterval"] = "5s"
    config.write_text(yaml.safe_dump(data))
    return config


def _admin_token(config: Path) -> str:
    loaded = load_config(config)
    return AccessControl(loaded, Journal(loaded.journal_path())).bootstrap("observer", by="observer").token


@contextmanager
def observed_orchestrator(folder: Path) -> Iterator[Observed]:
    import ray

    from orchestrator import DeploymentOrchestrator

    exporter = free_port()
    with http_receiver() as receiver, smtp_server() as mailbox:
        config = _configure(folder, receiver, mailbox, exporter)
        token = _admin_token(config)
        orch = DeploymentOrchestrator(config_path=config, num_cpus=2, token=token)
        ray_metrics = next(n["MetricsExportPort"] for n in ray.nodes() if n.get("Alive"))
        jobs = {"orchestrator": [f"127.0.0.1:{exporter}"], "ray": [f"127.0.0.1:{ray_metrics}"]}
        try:
            with prometheus_scraping(folder, jobs) as prometheus:
                yield Observed(
                    orch,
                    receiver,
                    mailbox,
                    prometheus,
                    f"http://127.0.0.1:{exporter}",
                    config,
                    token,
                    time.time(),
                )
        finally:
            _remove_everything(orch)
            orch.shutdown(stop_ray=False)
