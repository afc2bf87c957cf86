"""examples/ci/: each CI/CD integration parses, runs exactly the command the README documents, and lets a
failed pipeline (or a rollback) fail the job."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.cli import _parser
from engine.config import DEFAULT_CONFIG_FILE, load_config

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "examples" / "ci"


def documented_command() -> list[str]:
    """The `ray job submit ... pipeline run` command of the README's Pipelines section."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.DOTALL)
    found = [b for b in blocks if "ray job submit" in b and "pipeline run" in b]
    assert len(found) == 1, "the README documents the CI command once"
    joined = found[0].replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if line.strip().startswith("ray job submit")]
    return shlex.split(line)


def _github(data: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(step["run"], step) for job in data["jobs"].values() for step in job["steps"] if "run" in step]


def _gitlab(data: Any) -> list[tuple[str, dict[str, Any]]]:
    jobs = [job for key, job in data.items() if isinstance(job, dict) and "script" in job]
    return [(line, job) for job in jobs for line in job["script"]]


def _azure(data: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(step["script"], step) for step in data["steps"] if "script" in step]


def _jenkins(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The `sh '...'` steps of a declarative Jenkinsfile (single-quoted: the shell expands the variables)."""
    return [(command, {}) for command in re.findall(r"\bsh\s+'((?:[^'\\]|\\.)*)'", text)]


def commands(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(shell command line, the step or job it is in) of one CI file."""
    if path.name == "Jenkinsfile":
        scripts = _jenkins(path.read_text())
    else:
        data = yaml.safe_load(path.read_text())
        reader = {"github-actions.yml": _github, ".gitlab-ci.yml": _gitlab, "azure-pipelines.yml": _azure}
        scripts = reader[path.name](data)
    return [
        (line.strip(), owner) for script, owner in scripts for line in script.splitlines() if line.strip()
    ]


CI_FILES = ["github-actions.yml", "Jenkinsfile", ".gitlab-ci.yml", "azure-pipelines.yml"]


@pytest.mark.parametrize("name", CI_FILES)
def test_each_ci_file_runs_the_documented_command(name: str) -> None:
    found = commands(CI / name)
    submits = [(line, owner) for line, owner in found if line.startswith("ray job submit")]
    assert len(submits) == 1, found
    line, owner = submits[0]
    assert shlex.split(line) == documented_command()
    # Nothing lets the job go on when the command fails (a failed pipeline or a rollback fails the job).
    for forgiving in ("continue-on-error", "allow_failure", "continueOnError"):
        assert forgiving not in owner
    assert "|| true" not in line and "returnStatus" not in (CI / name).read_text()
    # The artifact is described and signed before it is deployed.
    lines = [line for line, _ in found]
    describe = next(i for i, text in enumerate(lines) if text.startswith("examples/ci/describe_artifact.sh"))
    sign = next(i for i, text in enumerate(lines) if " artifacts sign " in text)
    token = next(i for i, text in enumerate(lines) if "> .orch-token" in text)
    assert describe < sign < lines.index(line) and token < lines.index(line)


def test_the_documented_command_is_one_the_cli_takes() -> None:
    command = documented_command()
    separator = command.index("--")
    assert command[: separator + 1][:3] == ["ray", "job", "submit"]
    assert "--working-dir" in command[:separator]
    python, script, *arguments = command[separator + 1 :]
    assert (python, script) == ("python", "orchestrator.py")
    args = _parser().parse_args(arguments)
    assert (args.cmd, args.pipeline_cmd, args.name) == ("pipeline", "run", "production-pipeline")
    assert args.environments == "development,staging,production"
    assert args.change_id == "$CHANGE_ID" and args.change_summary == "$CHANGE_SUMMARY"
    assert args.token_file == ".orch-token"  # the CI's orchestrator token, written just before
    config = load_config(DEFAULT_CONFIG_FILE)
    assert args.name in config.pipelines
    assert set(args.environments.split(",")) <= set(config.environments)
