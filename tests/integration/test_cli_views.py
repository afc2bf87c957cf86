"""The CLI as a person reads it, without a cluster: the installed ``deploy-orchestrator`` command from another
folder, ``status`` naming revisions by the version people gave them, ``status --watch`` redrawing until the
deployment ends, ``lint`` and the debug logging of the development environment. The journal is written by
real reconciler runs on a fake platform (no Ray needed to read it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import load_config, write_isolated_config
from engine.identity import AccessControl, save_token
from engine.journal import Journal
from engine.models import Phase
from engine.reconciler import DeploymentReconciler
from tests.unit.fakes import FakeClock, FakePlatform, FakeSmoke, drive, submit_admitted

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CANARY: dict[str, Any] = {
    "type": "canary",
    "replicas": 2,
    "canary": {"initialTrafficPercentage": 20, "stepPercentage": 30, "stepDuration": 10_000, "maxSteps": 3},
}


class Home:
    """A configuration, a journal written by reconciler runs, and an admin token in ORCH_HOME."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = write_isolated_config(folder, namespace="orch-cli-views")
        self.clock = FakeClock(start=time.time())
        self.platform = FakePlatform(clock=self.clock)
        self.journal = Journal(load_config(self.config).journal_path(), clock=self.clock.now)
        admin = AccessControl(load_config(self.config), self.journal).bootstrap("admin", by="admin")
        save_token(folder / "token", admin.token)
        self.count = 0
        self.env = {**os.environ, "ORCH_HOME": str(folder), "ORCH_CONFIG": str(self.config)}
        self.env.pop("ORCH_TOKEN", None)
        self.env["PYTHONPATH"] = str(REPO)  # the checkout under test, whichever one is installed editable

    def submit(self, version: str, strategy: dict[str, Any], environment: str = "development") -> str:
        self.count += 1
        return submit_admitted(self.journal, f"web-{self.count}", version, strategy, environment)

    def reconciler(self, deployment_id: str) -> DeploymentReconciler:
        return DeploymentReconciler(
            self.journal, deployment_id, lambda cfg: self.platform, clock=self.clock, smoke=FakeSmoke()
        )

    def run(self, deployment_id: str, until: Any = None) -> Phase:
        return drive(self.reconciler(deployment_id), self.clock, self.journal, deployment_id, until)

    def cli(
        self, *args: str, cwd: Path | None = None, command: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*(command or [sys.executable, str(REPO / "orchestrator.py")]), *args],
            cwd=cwd or REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    made = Home(tmp_path)
    assert made.run(made.submit("1.0.0", {"type": "rolling", "replicas": 2})) is Phase.SUCCEEDED
    return made


def test_the_installed_command_works_from_another_folder(home: Home, tmp_path: Path) -> None:
    deployment = home.submit("2.0.0", CANARY)
    assert home.run(deployment) is Phase.SUCCEEDED
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = shutil.which("deploy-orchestrator")
    assert command is not None, "pyproject.toml's [project.scripts] installs deploy-orchestrator"
    shown = home.cli("status", deployment, cwd=elsewhere, command=[command])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{deployment} web.development succeeded")


def test_people_read_versions_machines_read_both(home: Home) -> None:
    deployment = home.submit("2.0.0", CANARY)
    home.run(deployment, until=lambda s: s.weights.get("2-0-0") == 50)
    text = home.cli("status", deployment)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    assert "[1.0.0=50% 2.0.0=50%]" in first and "2.0.0 replacing 1.0.0" in first
    assert '"weights": {"1.0.0": 50, "2.0.0": 50}' in text.stdout  # the events too
    assert "2-0-0" not in text.stdout and "1-0-0" not in text.stdout
    machine = json.loads(home.cli("status", deployment, "--json").stdout)
    assert machine["weights"] == {"2-0-0": 50, "1-0-0": 50}
    assert machine["versions"] == {"2-0-0": "2.0.0", "1-0-0": "1.0.0"}
    history = home.cli("history")
    assert "[1.0.0=50% 2.0.0=50%]" in history.stdout and "2-0-0" not in history.stdout


def test_status_watch_redraws_until_the_deployment_ends(home: Home) -> None:
    deployment = home.submit("2.0.0", CANARY)
    home.run(deployment, until=lambda s: s.weights.get("2-0-0") == 20)
    watcher = subprocess.Popen(
        [sys.executable, str(REPO / "orchestrator.py"), "status", deployment, "--watch", "--interval", "0.2"],
        cwd=REPO,
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def shown(fragment: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(fragment in line for line in list(lines)):
            assert watcher.poll() is None, "".join(lines)
            time.sleep(0.1)
        assert any(fragment in line for line in list(lines)), "".join(lines)

    try:
        shown("traffic  2.0.0        ####                  20%")
        home.run(deployment, until=lambda s: s.weights.get("2-0-0") == 50)
        shown("traffic  2.0.0        ##########            50%")
        assert watcher.poll() is None  # still watching: the deployment has not ended
        assert home.run(deployment) is Phase.SUCCEEDED
        assert watcher.wait(60) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
    reader.join(10)
    out = "".join(lines)
    frames = out.split("-" * 72)
    assert len(frames) >= 3
    assert " -> " in frames[0] and "last judgement" in frames[-2]
    assert "succeeded" in frames[-1] and "2.0.0 is live" in frames[-1]
    assert "2-0-0" not in out


def test_lint_prints_every_problem_with_its_path(home: Home, tmp_path: Path) -> None:
    data = yaml.safe_load(home.config.read_text())
    data["roles"]["security-team"] = []  # production's approvals need one: they could never complete
    data["roles"]["ghosts"] = []
    data["access"]["staging"]["deployer"].append("@ghosts")
    data["platforms"]["docker"]["settings"] = {"replicaPortRange": "many"}
    data["alerting"] = {
        "channels": {"chat": {"url": "json://chat.example.com/hook"}, "spare": {"url": "nothing://x"}},
        "routes": [{"environments": ["prod"], "channels": ["chat"]}],
    }
    data["hooks"] = [
        {"name": "gate", "type": "confirm-promotion", "url": "http://h/", "environments": ["stagging"]}
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    result = home.cli("lint", str(broken))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    expected = [
        "environments.production.approvalWorkflow.approverGroups[1]: error: "
        "group 'security-team' has no members",
        "access.staging.deployer[2]: error: group 'ghosts' has no members",
        "alerting.channels.spare: warning: no route sends alerts to this channel",
        "alerting.channels.spare.url: error: not a notification URL Apprise can send to",
        "alerting.routes[0].environments[0]: warning: 'prod' matches no configured environment",
        "hooks[0].environments[0]: warning: 'stagging' matches no configured environment",
        "platforms.docker.settings.replicaPortRange: error:",
    ]
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert all(line.startswith(f"{broken}: ") for line in lines)
    assert home.cli("lint", str(home.config)).returncode == 0
    unreadable = tmp_path / "typo.yaml"
    unreadable.write_text(yaml.safe_dump({**data, "strategyDefaults": {"canary": {"stepPercentag": 10}}}))
    typo = home.cli("lint", str(unreadable))
    assert typo.returncode == 1
    assert (
        "strategyDefaults.canary.stepPercentag: error: unknown key; did you mean 'stepPercentage'?"
        in typo.stdout
    )


def test_debug_logging_is_on_for_development_only(home: Home) -> None:
    development = home.submit("2.0.0", CANARY)
    staging = home.submit("2.0.0", CANARY, environment="staging")
    assert "DEBUG orchestrator.cli: reading deployment" in home.cli("status", development).stderr
    assert "DEBUG" not in home.cli("status", staging).stderr
    assert "DEBUG" not in home.cli("--no-debug", "status", development).stderr
    assert "DEBUG orchestrator.cli: reading deployment" in home.cli("--debug", "status", staging).stderr
