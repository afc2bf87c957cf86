"""Hooks, alerts, metrics and dashboards on a real orchestrator: real canaries of the sample service under
live traffic, a real HTTP receiver and SMTP server, a real Prometheus scraping the exporter and Ray's
metrics, the queen killed in the middle of a deployment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.common import QUEEN_NAME, find_actor
from engine.identity import AccessDenied
from engine.models import Artifact, Phase
from engine.state import EventKind
from examples.traffic import TrafficGenerator
from tests.integration.conftest import canary, free_port, sample_artifact
from tests.integration.observability import ENV, Observed, observed_orchestrator

pytestmark = pytest.mark.integration
SERVICE = "shop"
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_ENV = "ORCH_CONSOLE_SCREENSHOT"  # set to docs/console.png to refresh the README's screenshot


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    with observed_orchestrator(tmp_path_factory.mktemp("observed")) as running:
        yield running


@pytest.fixture(scope="module")
def traffic(observed: Observed) -> Iterator[TrafficGenerator]:
    first = observed.orch.deploy(revision("1.0.0"), {"type": "rolling", "replicas": 1}, ENV, timeout_s=120)
    assert first.success, first.status
    generator = TrafficGenerator(first.status.address + "/", rps=40, threads=4, max_seconds=600).start()
    try:
        yield generator
    finally:
        generator.stop()


def revision(version: str, error_rate: float = 0.0, committed_ago_s: float = 3600.0) -> Artifact:
    artifact = sample_artifact(SERVICE, version, error_rate)
    metadata = {**artifact.metadata, "commitTime": str(time.time() - committed_ago_s)}
    return artifact.model_copy(update={"metadata": metadata})


def hooks(observed: Observed, **paths: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{kind}-check",
            "type": kind.replace("_", "-"),
            "url": observed.receiver.url + path,
            "interval": "1s",
        }
        for kind, path in paths.items()
    ]


def wait_status(observed: Observed, deployment_id: str, predicate: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = observed.orch.status(deployment_id)
        if predicate(status):
            return status
        assert not status.phase.terminal, f"ended early: {status}"
        time.sleep(0.2)
    raise AssertionError(f"{deployment_id} did not get there within {timeout:g}s")


def test_confirm_promotion_holds_a_real_canary_until_the_hook_says_yes(
    observed: Observed, traffic: TrafficGenerator
) -> None:
    receiver = observed.receiver
    receiver.answer("/confirm", 503)
    strategy = {
        **canary(1500, 2),
        "webhooks": hooks(observed, confirm_promotion="/confirm", post_rollout="/post"),
    }
    deployment = observed.orch.submit(revision("2.0.0"), strategy, ENV)
    held = wait_status(observed, deployment, lambda s: "waiting for confirm-promotion" in s.message)
    assert held.phase is Phase.PROGRESSING and held.step_name == "deploy candidate x2"
    assert held.weights == {"2-0-0": 50, "1-0-0": 50}  # held at the last canary weight, not promoted
    time.sleep(3)  # three more calls, still 503: still held
    assert observed.orch.status(deployment).weights == {"2-0-0": 50, "1-0-0": 50}
    receiver.answer("/confirm", 200)
    result = observed.orch.wait(deployment, timeout_s=120)
    assert result.success, result.status
    calls = receiver.at("/confirm")
    assert len(calls) >= 4 and calls[-1].json()["weights"] == {"2-0-0": 50, "1-0-0": 50}
    assert calls[-1].json()["judgement"]["verdict"] == "success"
    (post,) = receiver.wait_for("/post")
    body = post.json()
    assert body["outcome"] == "succeeded" and body["deploymentId"] == deployment
    assert body["candidateVersion"] is None and body["stableVersion"] == "2.0.0"  # promoted: 2.0.0 is stable
    held_events = [e.data for e in observed.journal().events(deployment) if e.kind is EventKind.HOOK]
    assert [e["outcome"] for e in held_events] == ["held", "passed"]


def test_a_faulty_canary_rolls_back_and_alerts_every_channel(
    observed: Observed, traffic: TrafficGenerator
) -> None:
    receiver = observed.receiver
    strategy = {
        **canary(3000, 3),
        "webhooks": hooks(observed, rollback="/rollback", post_rollout="/post-bad"),
    }
    result = observed.orch.deploy(revision("3.0.0", error_rate=0.5), strategy, ENV, timeout_s=120)
    assert result.status.phase is Phase.ROLLED_BACK, result.status
    (rollback,) = receiver.wait_for("/rollback")
    assert rollback.json()["rollback"]["trigger"] == "metrics"
    assert rollback.json()["candidateVersion"] == "3.0.0"
    (post,) = receiver.wait_for("/post-bad")
    assert post.json()["outcome"] == "rolled_back"
    assert post.json()["judgement"]["verdict"] == "failure"
    title = "[WARNING] Deployment rolled back: shop 3.0.0 in development"
    alerts = [r.json() for r in receiver.wait_for("/alerts", 2)]
    assert {a["title"] for a in alerts} == {
        title,
        "[WARNING] Performance threshold breached: shop 3.0.0 in development",
    }
    chat = [r.json()["text"] for r in receiver.wait_for("/hooks/chat", 2)]
    assert any(text.startswith(title) for text in chat)
    mails = observed.mailbox.wait_for(2)
    assert title in [m["Subject"] for m in mails]
    sent = [
        e.data["kind"]
        for e in observed.journal().events(result.deployment_id)
        if e.kind is EventKind.AUDIT and e.data["action"] == "alert_sent"
    ]
    assert sent == ["performance_breach", "deployment_rolled_back"]


def test_no_event_is_lost_when_the_queen_dies(observed: Observed, traffic: TrafficGenerator) -> None:
    """The event hook gets every event of a deployment during which the queen (the dispatcher's host) was
    killed: the restarted queen goes on from the journal's durable cursor."""
    deployment = observed.orch.submit(revision("4.0.0"), canary(2000, 2), ENV)
    wait_status(observed, deployment, lambda s: s.step_index >= 2)
    queen = find_actor(QUEEN_NAME, observed.orch.namespace)
    ray.kill(queen, no_restart=False)
    result = observed.orch.wait(deployment, timeout_s=180)
    assert result.success, result.status
    journaled = [e.seq for e in observed.journal().events(deployment)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        delivered = {r.json()["event"]["seq"] for r in observed.receiver.at("/events")}
        if set(journaled) <= delivered:
            break
        time.sleep(0.5)
    assert set(journaled) - delivered == set()
    # The metrics, computed again from the journal by the new queen, still count what came before.
    scraped = urllib.request.urlopen(observed.exporter + "/metrics", timeout=5).read().decode()
    rolled_back = 'environment="development",outcome="rolled_back",strategy="canary"'
    assert f"orchestrator_deployments_finished_total{{{rolled_back}}} 1.0" in scraped


def test_metrics_in_prometheus_match_the_journal(observed: Observed, traffic: TrafficGenerator) -> None:
    states = observed.journal().deployments(limit=1000)
    succeeded = sum(1 for s in states if s.phase() is Phase.SUCCEEDED)
    assert succeeded >= 3

    def one(expr: str) -> float:
        (series,) = observed.wait_query(expr)
        return float(series["value"][1])

    assert (
        one(f'sum(orchestrator_deployments_finished_total{{environment="{ENV}",outcome="succeeded"}})')
        == succeeded
    )
    assert one('orchestrator_rollbacks_total{trigger="metrics"}') == 1
    assert one(f'orchestrator_deployment_success_ratio{{environment="{ENV}"}}') == succeeded / (succeeded + 1)
    live = observed.wait_query(f'orchestrator_traffic_weight_percent{{service="{SERVICE}"}}')
    assert [(s["metric"]["version"], s["metric"]["revision"], s["value"][1]) for s in live] == [
        ("4.0.0", "4-0-0", "100")
    ]
    assert 3600 <= one(f'orchestrator_dora_lead_time_median_seconds{{environment="{ENV}"}}') < 3600 + 600
    assert one(f'orchestrator_dora_change_failure_rate{{environment="{ENV}"}}') == 1 / (succeeded + 1)
    assert one(f'orchestrator_dora_time_to_restore_median_seconds{{environment="{ENV}"}}') < 30
    assert one('orchestrator_hook_gate_answers_total{type="confirm-promotion",outcome="held"}') == 1
    assert one('orchestrator_alerts_sent_total{kind="deployment_rolled_back"}') == 1
    assert one("orchestrator_deployments_queued") == 0
    assert one(f'sum(orchestrator_analysis_judgements_total{{environment="{ENV}"}})') >= 4
    assert one("histogram_quantile(0.5, sum by (le) (orchestrator_deployment_duration_seconds_bucket))") > 0
    # The same figures through Ray's metrics (the Ray dashboard's metrics view reads these).
    ray_total = observed.wait_query(
        f'sum(ray_orchestrator_deployments_finished_total{{environment="{ENV}",outcome="succeeded"}})',
        timeout=90,
    )
    assert float(ray_total[0]["value"][1]) >= 1


def test_every_dashboard_panel_returns_data(observed: Observed, traffic: TrafficGenerator) -> None:
    """Each panel's PromQL, as Grafana would send it, over the time this module's run took."""
    with pytest.raises(AccessDenied):  # a refusal, so that the compliance dashboard's panel has one to show
        intruder = observed.orch.issue_token("mallory")
        type(observed.orch)(config_path=observed.config, token=intruder).submit(
            revision("9.9.9"), "canary", "production"
        )
    observed.wait_query("orchestrator_access_refusals_total")
    observed.wait_query("orchestrator_audit_checkpoint_age_seconds")
    time.sleep(3)  # two more scrapes: rate() and histogram panels need two samples in their window
    empty = []
    dashboards = sorted((REPO / "cluster" / "grafana").glob("*.json"))
    assert [d.stem for d in dashboards] == [
        "compliance-status",
        "deployment-overview",
        "environment-health",
        "performance",
    ]
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            exprs = [t["expr"].replace("$environment", ".*") for t in panel["targets"]]
            if not any(observed.query_range(e, observed.started, time.time()) for e in exprs):
                empty.append(f"{path.stem}: {panel['title']}: {exprs}")
    assert empty == []


# --------------------------------------------------------------------------------------------
# The web console, in a real headless Chromium
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def console(observed: Observed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python orchestrator.py console`` as a person starts it, joined to the test's Ray cluster."""
    port = free_port()
    log = tmp_path_factory.mktemp("console") / "console.log"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "ORCH_CONFIG": str(observed.config),
    }
    env.pop("ORCH_TOKEN", None)
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "orchestrator.py", "console", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        else:
            raise AssertionError(f"the console did not start: {log.read_text()[-2000:]}")
        yield url, log
    finally:
        process.terminate()
        process.wait(30)


def test_the_console_follows_a_canary_live_and_aborts_it(
    observed: Observed, traffic: TrafficGenerator, console: tuple[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, log = console
    alice, victor = observed.orch.issue_token("alice"), observed.orch.issue_token("victor")
    answers: list[Any] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.on("response", lambda answer: answers.append(answer))
        page.goto(url)
        sign_in(page, victor)
        expect(page.locator("#who")).to_have_text("signed in as victor", timeout=60_000)
        deployment = observed.orch.as_caller(alice).submit(revision("5.0.0"), canary(12_000, 3), ENV)
        page.click(f'#deployment-rows tr[data-id="{deployment}"]', timeout=60_000)  # it appeared live
        candidate = page.locator('#weights .weight[data-version="5.0.0"] .value')
        expect(candidate).to_have_text(re.compile(r"^[1-9]\d?%$"), timeout=90_000)
        first = candidate.inner_text()
        # A refusal from the actors, shown as they worded it: victor's token is revoked meanwhile.
        observed.orch.revoke_token(person="victor")
        page.click('button[data-action="pause"]')
        expect(page.locator("#banner")).to_contain_text("refused: pause refused", timeout=30_000)
        assert observed.orch.status(deployment).phase is Phase.PROGRESSING
        page.click("#signout")
        sign_in(page, alice)
        expect(page.locator("#who")).to_have_text("signed in as alice", timeout=60_000)
        moved = re.compile(rf"^(?!{first}$)[1-9]\d?%$")
        expect(candidate).to_have_text(moved, timeout=90_000)  # the weights moved: live, without a reload
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        status = observed.orch.status(deployment)
        stable = page.locator(
            f'#weights .weight[data-version="{status.version_of(status.stable_revision)}"] .value'
        )
        expect(page.locator('#charts .chart[data-metric="errorRate"] circle').first).to_be_visible()
        expect(page.locator("#steps li.current")).to_have_count(1)
        expect(page.locator("#judgements tr").first).to_contain_text("success")
        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot), full_page=True)
        page.fill("#reason", "console test: stop it")
        page.click('button[data-action="abort"]')
        expect(page.locator("#detail-phase")).to_have_text("aborted", timeout=90_000)
        expect(stable).to_have_text("100%")
        expect(page.locator("#detail-message")).to_contain_text("console test: stop it")
        expect(page.locator(f'#deployment-rows tr[data-id="{deployment}"] .phase')).to_have_text("aborted")
        bodies = [
            a.text() for a in answers if "/api/stream" not in a.url and a.request.method in ("GET", "POST")
        ]
        browser.close()
    assert shot.stat().st_size > 30_000
    if os.environ.get(SCREENSHOT_ENV):
        (REPO / os.environ[SCREENSHOT_ENV]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, REPO / os.environ[SCREENSHOT_ENV])
    requested = [e for e in observed.journal().events(deployment) if e.kind is EventKind.ROLLBACK_REQUESTED]
    assert [(e.actor, e.data["trigger"], e.data["reason"]) for e in requested] == [
        ("alice", "abort", "console test: stop it")
    ]
    assert observed.orch.status(deployment).phase is Phase.ABORTED
    for secret in (alice, victor):  # never echoed back, never logged
        assert all(secret not in body for body in bodies)
        assert secret not in log.read_text()


def sign_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
