"""The load and success-rate benchmarks in their short forms, each run as a user runs it (a subprocess with
its own embedded Ray, journal and ports): exit status 0 and every check of the JSON it writes.

The full forms (100 deployments each) are run by hand; their figures are in benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration  # in the CI run: about 100 s for both (an idle 2-core machine)

REPO = Path(__file__).resolve().parents[2]
# Bounds, not budgets: about two minutes each on an idle machine, but Ray's own start took several minutes
# (and was tried again) at the load averages of 40-70 this shared machine reached.
RUN_TIMEOUT_S = 1700
TEST_TIMEOUT_S = RUN_TIMEOUT_S + 100


def run_benchmark(script: str, output: Path, *arguments: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_HOME", "ORCH_TOKEN", "ORCH_CONFIG")}
    env.pop("RAY_ADDRESS", None)  # the benchmark's own embedded Ray, never a cluster found in the environment
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--output", str(output), *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert output.exists(), f"{script} wrote no result (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(output.read_text())
    assert done.returncode == 0, f"{script} exit {done.returncode}: {json.dumps(result, indent=1)[:6000]}"
    assert result["commit"] and result["arguments"] and result["time"]
    return result


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_load_short_form(tmp_path: Path) -> None:
    result = run_benchmark(
        "load.py",
        tmp_path / "load.json",
        *("--deployments", "20", "--services", "10"),
        *("--frontend-ports", "16600:16699", "--replica-ports", "52000:52499"),
    )
    assert result["checks"] == {
        "max_running_within_limit": True,
        "fifo_per_target": True,
        "one_active_per_target": True,
        "all_terminal": True,
        "none_lost": True,
        "all_succeeded": True,
    }
    [run] = result["repetitions"]
    assert run["submitted"] == run["terminal"] == 20
    assert run["outcomes"] == {"succeeded": 20}
    assert 1 <= run["max_running"] <= run["limit"] == 10  # the product's default limit
    latency = run["admission_latency_s"]
    assert 0 <= latency["p50"] <= latency["p95"]
    assert run["deployments_per_minute"] > 0


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_success_rate_short_form(tmp_path: Path) -> None:
    result = run_benchmark(
        "success_rate.py",
        tmp_path / "success_rate.json",
        *("--count", "10", "--bad", "3", "--kills", "2", "--services", "5"),
        *("--progress-deadline", "20", "--step-seconds", "5"),
        *("--frontend-ports", "16700:16799", "--replica-ports", "52500:52999"),
    )
    assert all(result["checks"].values()), result["checks"]
    assert result["correct_share"] >= 0.99 and result["zombies"] == 0 and result["lost"] == 0
    assert result["availability"] >= 0.999, result["traffic"]  # with what the client saw, and when
    rows = result["deployments"]
    assert len(rows) == 10
    bad = {r["kind"] for r in rows if r["kind"] != "good"}
    assert len(bad) == 3, bad  # three different kinds of bad candidate
    assert all(r["outcome"] == "succeeded" for r in rows if r["kind"] == "good")
    assert all(r["outcome"] in ("rolled_back", "failed") for r in rows if r["kind"] != "good")
    assert result["kills"]["fired"] == 2, result["kills"]  # both kills landed on a live actor
    assert result["traffic"]["requests"] > 100  # the outside client saw the deployments
