"""The coverage summary that scripts/coverage.sh writes: line and branch coverage per package and per file,
with the commit and the arguments of the run. Exits non-zero when engine/ is under its goal (95% of lines).

    python3 scripts/coverage_summary.py --out benchmarks/results/coverage.json -- tests/unit
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import coverage

PACKAGES = ("engine", "actors", "adapters", "client")
GOALS = {"engine": 95.0}  # percent of lines (the seed's figure); the rest are measured and reported


def _percent(done: int, total: int) -> float | None:
    return round(100.0 * done / total, 1) if total else None


def _figures(files: list[dict[str, Any]]) -> dict[str, Any]:
    lines = sum(f["summary"]["num_statements"] for f in files)
    covered = sum(f["summary"]["covered_lines"] for f in files)
    branches = sum(f["summary"]["num_branches"] for f in files)
    taken = sum(f["summary"]["covered_branches"] for f in files)
    return {
        "files": len(files),
        "lines": lines,
        "covered_lines": covered,
        "line_percent": _percent(covered, lines),
        "branches": branches,
        "covered_branches": taken,
        "branch_percent": _percent(taken, branches),
        "combined_percent": _percent(covered + taken, lines + branches),
    }


def _file_figures(data: dict[str, Any]) -> dict[str, float | None]:
    figures = _figures([data])
    return {"line_percent": figures["line_percent"], "branch_percent": figures["branch_percent"]}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    by_package: dict[str, list[dict[str, Any]]] = {package: [] for package in PACKAGES}
    for name, data in report["files"].items():
        package = Path(name).parts[0]
        if package in by_package:
            by_package[package].append(data)
    return {package: _figures(files) for package, files in by_package.items()}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/coverage.json")
    parser.add_argument("pytest_args", nargs="*", help="what the measured pytest run was given")
    args = parser.parse_args(argv)
    measured = coverage.Coverage()
    measured.load()
    with tempfile.NamedTemporaryFile(suffix=".json") as raw:
        measured.json_report(outfile=raw.name)
        report = json.loads(Path(raw.name).read_text())
    packages = summarise(report)
    files = {name: _file_figures(data) for name, data in sorted(report["files"].items())}
    summary = {
        "commit": _commit(),
        "command": "bash scripts/coverage.sh " + " ".join(args.pytest_args),
        "arguments": args.pytest_args,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": packages,
        "goals": {package: {"line_percent": goal} for package, goal in GOALS.items()},
        "files": files,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    for package, figures in packages.items():
        print(
            f"{package:<9} lines {figures['line_percent']}% ({figures['covered_lines']}/{figures['lines']}), "
            f"branches {figures['branch_percent']}% ({figures['covered_branches']}/{figures['branches']})"
        )
    missed = [
        f"{package}: {packages[package]['line_percent']}% of lines, goal {goal}%"
        for package, goal in GOALS.items()
        if (packages[package]["line_percent"] or 0.0) < goal
    ]
    print(f"summary written to {args.out}")
    for line in missed:
        print(f"coverage goal missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
