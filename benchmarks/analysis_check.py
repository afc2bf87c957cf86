"""The CPU cost of one analysis check, in the process that runs it (a runner's worker thread).

A real local platform (two sample-service processes behind a real HAProxy, live traffic at --rps), a canary
in its analysis step with a long window, and the reconciler called once every --interval-s seconds, as a
runner calls it. Each call's CPU time is that thread's own (``time.thread_time``: the HAProxy and service
processes are not counted; they are not the orchestrator's). A periodic check runs with cold caches, so
the calls are spaced as in production, not back to back.

Also measured once the checks are done: the window's end as the judge sees it (reading the candidate and
the stable revision with their latency samples, thresholds, Mann-Whitney U and the z-test), which happens
once per step, not per check.

``--repo`` runs another checkout's code (e.g. the code before a change) with this same measurement.
Writes benchmarks/results/analysis-check[-LABEL].json (commit, arguments, figures); exits 1 when the mean
CPU per check is over --budget-ms.

    python3 benchmarks/analysis_check.py                       # this checkout
    python3 benchmarks/analysis_check.py --repo /tmp/main --label before
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import inspect
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", default=str(HERE), help="the checkout whose code is measured")
    parser.add_argument("--label", default="", help="suffix of the result file")
    parser.add_argument("--commit", default="", help="the commit measured, when --repo is not a git checkout")
    parser.add_argument("--checks", type=int, default=30)
    parser.add_argument("--interval-s", type=float, default=2.0, help="the product's analysisInterval")
    parser.add_argument("--rps", type=float, default=40.0)
    parser.add_argument("--budget-ms", type=float, default=2.0, help="mean CPU per check allowed")
    parser.add_argument("--profile", action="store_true", help="print where the checks' time goes (cProfile)")
    parser.add_argument(
        "--seed-thresholds",
        action="store_true",
        help="the seed's thresholds (a failure responseTime: every check reads the request log for the p95)",
    )
    return parser.parse_args()


SEED_THRESHOLDS = {
    "successThreshold": {"errorRate": 1, "responseTime": 500, "availability": 99.5, "throughput": 100},
    "failureThreshold": {"errorRate": 5, "responseTime": 2000, "availability": 95, "consecutiveFailures": 3},
}


def _strategy(step_s: float, seed: bool) -> dict[str, Any]:
    canary: dict[str, Any] = {
        "initialTrafficPercentage": 10,
        "stepPercentage": 20,
        "maxSteps": 2,
        "stepDuration": int(step_s * 1000),
        "minRequestCount": 5,
    }
    return {"type": "canary", "replicas": 1, "canary": {**canary, **(SEED_THRESHOLDS if seed else {})}}


def _reconciler(modules: dict[str, Any], journal: Any, deployment_id: str, adapter: Any) -> Any:
    """The reconciler as a runner builds it, with the metric provider where this checkout has one."""
    reconciler_class = modules["DeploymentReconciler"]
    options: dict[str, Any] = {"actor": "bench"}
    if "metrics" in inspect.signature(reconciler_class).parameters:
        options["metrics"] = modules["create_metric_provider"]
    return reconciler_class(journal, deployment_id, lambda _: adapter, **options)


def _submit(modules: dict[str, Any], journal: Any, deployment_id: str, version: str, strategy: Any) -> None:
    request = modules["DeploymentRequest"](
        artifact=modules["Artifact"](
            name="bench",
            version=version,
            command=[sys.executable, str(HERE / "examples" / "sample_service.py")],
            env={"VERSION": version},
        ),
        strategy=modules["Strategy"].model_validate(strategy),
        environment="development",
        platform=modules["config"],
    )
    journal.submit(deployment_id, request, actor="bench")
    journal.append(deployment_id, modules["EventKind"].ADMITTED, {})


def _drive_until(reconciler: Any, done: Any, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        delay = reconciler.reconcile()
        if done():
            return
        time.sleep(min(delay or 0.05, 0.2))
    raise RuntimeError("the deployment did not reach the wanted step in time")


def _measure(args: argparse.Namespace, modules: dict[str, Any], folder: Path) -> dict[str, Any]:
    journal = modules["Journal"](folder / "journal.db")
    adapter = modules["create_platform"](modules["config"])
    target = modules["Target"](service="bench", environment="development")
    first = _reconciler(modules, journal, "first", adapter)
    _submit(modules, journal, "first", "1.0.0", {"type": "rolling", "replicas": 1})
    _drive_until(first, lambda: journal.state("first").outcome is not None)
    traffic = modules["TrafficGenerator"](
        adapter.traffic(target).address + "/", rps=args.rps, threads=4
    ).start()
    try:
        window_s = args.checks * args.interval_s + 60
        _submit(modules, journal, "canary", "2.0.0", _strategy(window_s, args.seed_thresholds))
        canary = _reconciler(modules, journal, "canary", adapter)
        analyzing = modules["StepKind"].ANALYZE

        def in_analysis() -> bool:
            state = journal.state("canary")
            step = state.current_step()
            return step is not None and step.kind is analyzing and state.step_started_at is not None

        _drive_until(canary, in_analysis)
        cpu_ms, wall_ms = [], []
        profiler = cProfile.Profile() if args.profile else None
        for _ in range(args.checks):
            time.sleep(args.interval_s)
            wall, cpu = time.perf_counter(), time.thread_time()
            if profiler is not None:
                profiler.enable()
            canary.reconcile()
            if profiler is not None:
                profiler.disable()
            cpu_ms.append((time.thread_time() - cpu) * 1000)
            wall_ms.append((time.perf_counter() - wall) * 1000)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(40)
        window_end = _window_end_cost(canary, journal)
    finally:
        traffic.stop()
        for revision in adapter.list_revisions(target):
            adapter.remove_revision(target, revision.revision)
        adapter.router.remove_frontend(target)
        adapter.close()
    return {
        "cpu_ms_per_check": {
            "mean": round(statistics.fmean(cpu_ms), 4),
            "median": round(statistics.median(cpu_ms), 4),
            "p90": round(sorted(cpu_ms)[int(0.9 * (len(cpu_ms) - 1))], 4),
        },
        "wall_ms_per_check": {
            "mean": round(statistics.fmean(wall_ms), 4),
            "median": round(statistics.median(wall_ms), 4),
        },
        "cpu_fraction_at_interval": round(statistics.fmean(cpu_ms) / 1000 / args.interval_s, 6),
        **window_end,
    }


def _window_end_cost(reconciler: Any, journal: Any) -> dict[str, Any]:
    """Reading a whole window (both revisions, samples) and judging it: once per step, not per check."""
    window = getattr(reconciler, "window", None)
    if window is None:
        return {}
    from engine.judge import judge_window

    state = journal.state("canary")
    judge_window(window.window_end(state))  # scipy's import is paid once per process, not per window
    cpu = time.thread_time()
    judgement = judge_window(window.window_end(state))
    return {
        "window_end_cpu_ms": round((time.thread_time() - cpu) * 1000, 4),
        "window_end_samples": [
            judgement.candidate.latency_samples,
            (judgement.stable or judgement.candidate).latency_samples,
        ],
        "window_end_verdict": judgement.verdict.value,
    }


_NAMES = {
    "adapters": ("create_platform",),
    "engine.journal": ("Journal",),
    "engine.models": ("Artifact", "DeploymentRequest", "PlatformConfig", "Strategy", "Target"),
    "engine.reconciler": ("DeploymentReconciler",),
    "engine.state": ("EventKind", "StepKind"),
    "examples.traffic": ("TrafficGenerator",),
}


def _modules(repo: str, folder: Path) -> dict[str, Any]:
    """The names the measurement uses, imported from ``repo``'s code."""
    sys.path.insert(0, repo)
    modules: dict[str, Any] = {}
    for module_name, names in _NAMES.items():
        module = importlib.import_module(module_name)
        modules.update({name: getattr(module, name) for name in names})
    modules["create_metric_provider"] = getattr(
        importlib.import_module("adapters"), "create_metric_provider", None
    )
    modules["config"] = modules["PlatformConfig"](
        type="local",
        settings={
            "stateDir": str(folder / "state"),
            "frontendPortRange": [18900, 18999],
            "replicaPortRange": [36000, 36999],
        },
    )
    return modules


def main() -> int:
    args = _parse()
    with tempfile.TemporaryDirectory(prefix="analysis-check-") as tmp:
        modules = _modules(args.repo, Path(tmp))
        figures = _measure(args, modules, Path(tmp))
    commit = subprocess.run(
        ["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    result = {
        "commit": args.commit or commit.stdout.strip() or "(not a git checkout)",
        "repo": args.repo,
        "arguments": {k: v for k, v in vars(args).items() if k != "repo"},
        **figures,
        "budget_ms": args.budget_ms,
    }
    result["within_budget"] = result["cpu_ms_per_check"]["mean"] <= args.budget_ms
    name = f"analysis-check{'-' + args.label if args.label else ''}.json"
    out = HERE / "benchmarks" / "results" / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
