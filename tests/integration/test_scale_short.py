"""The scale benchmark's short form (benchmarks/scale.py --short) runs end to end on a three-node TLS Ray
cluster with both journal backends, and writes the JSON its readers rely on: every deployment of every burst
succeeded once, the figures are there and consistent with each other, the runners ran on more than one node,
and the JSON carries the commit, the arguments, the time and the note on SQLite across nodes.

No figure is compared with a budget here (the machine is shared): the benchmark itself is what exits non-zero
when a deployment fails or is lost, and that exit status is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# A cluster start on a loaded machine takes minutes.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]
REPO = Path(__file__).resolve().parents[2]
FIGURES = {
    "deployments_per_min",
    "admission_latency_p50_s",
    "admission_latency_p95_s",
    "admission_handoff_p50_s",
    "admission_handoff_p95_s",
    "preparation_p50_s",
    "deployment_duration_p50_s",
    "journal_writes_per_s",
    "journal_writes_per_deployment",
}


@pytest.fixture(scope="module")
def scale_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--short", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1400,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "SQLite on several nodes works here only because" in done.stdout
    return dict(json.loads(out.read_text()))


def _check_burst(burst: dict[str, Any], deployments: int) -> None:
    assert burst["deployments"] == burst["completed"] == deployments, burst
    assert burst.keys() >= FIGURES, sorted(FIGURES - burst.keys())
    assert burst["deployments_per_min"] == pytest.approx(deployments / burst["span_s"] * 60, rel=0.02)
    assert 0 <= burst["admission_handoff_p50_s"] <= burst["admission_latency_p50_s"] + 1e-3
    assert burst["admission_latency_p50_s"] <= burst["admission_latency_p95_s"]
    # A first revision or a rolling update journals at least admitted, planned, a step and finished each.
    assert burst["journal_writes_per_deployment"] >= 4, burst
    assert burst["journal_writes_per_s"] == pytest.approx(burst["journal_writes"] / burst["span_s"], rel=0.02)


def test_the_short_form_measures_both_backends_at_both_sizes(scale_json: dict[str, Any]) -> None:
    assert scale_json["problems"] == []
    assert len(scale_json["commit"]) >= 40 and scale_json["started_at"].endswith("Z")
    assert scale_json["arguments"]["short"] is True and scale_json["arguments"]["concurrency"] == 2
    assert scale_json["nodes"] == 3
    assert any("SQLite on several nodes" in note for note in scale_json["notes"])
    cells = {(c["backend"], c["size"]): c for c in scale_json["cells"]}
    assert sorted(cells) == [("postgresql", 2), ("postgresql", 4), ("sqlite", 2), ("sqlite", 4)]
    for (_, size), cell in cells.items():
        assert cell["problems"] == []
        _check_burst(cell["bursts"]["first"], 2)  # 2 new services at each size
        _check_burst(cell["bursts"]["update"], size)
    # The runners are spread over the nodes (round robin over the alive ones) while the bursts run.
    for cell in cells.values():
        for burst in cell["bursts"].values():
            assert len(burst["runners_per_node_max"]) >= 2, burst["runners_per_node_max"]


def test_the_growth_compares_the_largest_size_with_the_smallest(scale_json: dict[str, Any]) -> None:
    cells = {(c["backend"], c["size"]): c for c in scale_json["cells"]}
    for backend in ("sqlite", "postgresql"):
        grown = scale_json["growth"][f"{backend} 2->4"]
        small, large = cells[(backend, 2)]["bursts"]["update"], cells[(backend, 4)]["bursts"]["update"]
        expected = large["deployments_per_min"] / small["deployments_per_min"]
        assert grown["update"]["deployments_per_min"] == pytest.approx(expected, rel=0.01)
        assert set(grown["update"]) == FIGURES
