"""A secret given to a deployment (a ``secretEnv`` reference, resolved in the replica's environment) and the
caller's token reach where they must and appear nowhere else: not in the journal's files, the audit files,
the CLI's output (status, history, audit export), the platform's state and logs, nor the logs of the
actors (Ray's session log folder)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray

from tests.integration.conftest import REPO, orch_journal

pytestmark = pytest.mark.integration
SAMPLE = REPO / "examples" / "sample_service.py"


def cli(orch: Any, *args: str) -> str:
    env = {**os.environ, "ORCH_CONFIG": str(orch.config_path)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "orchestrator.py", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def files_under(*folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


def test_a_secret_and_the_token_appear_in_no_output(
    orchestrator: Any, orch_home: Path, admin_token: str, tmp_path: Path
) -> None:
    secret = "s3cr3t-" + secrets.token_hex(12)
    secret_file = tmp_path / "db-password"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    seen = tmp_path / "seen"
    artifact = {
        "name": "secretive",
        "version": "1.0.0",
        "command": ["sh", "-c", f'printf %s "$DB_PASSWORD" > {seen}; exec {sys.executable} {SAMPLE}'],
        "secretEnv": {"DB_PASSWORD": f"file:{secret_file}"},
    }
    result = orchestrator.deploy(artifact, {"type": "rolling", "replicas": 1}, "development", timeout_s=120)
    assert result.success, result.status
    assert seen.read_text() == secret  # the replica got it

    outputs = {
        "status": cli(orchestrator, "status", result.deployment_id),
        "history": cli(orchestrator, "history"),
        "audit export": cli(orchestrator, "audit", "export"),
        "audit verify": cli(orchestrator, "audit", "verify"),
    }
    assert f"file:{secret_file}" in outputs["audit export"]  # the reference is recorded, not the value
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    stored = [p for p in files_under(orch_home, session / "logs") if p.name != "token"]
    assert any(p.name.startswith("journal.db") for p in stored)
    assert any("platforms" in p.parts for p in stored) and any(p.suffix == ".log" for p in stored)
    for needle in (secret, admin_token, admin_token.split("_", 2)[2]):
        leaks = [name for name, text in outputs.items() if needle in text]
        leaks += [str(p) for p in stored if needle.encode() in p.read_bytes()]
        assert not leaks, f"{needle[:6]}... found in {leaks}"
    assert orch_journal(orchestrator).state(result.deployment_id).request.artifact.secret_env
