"""Scale: how the orchestrator's throughput and admission grow with the number of services, on a Ray cluster
of three nodes, with its journal in SQLite and in PostgreSQL.

The set-up is the one of tests/integration/test_several_nodes.py, from ``harness/``: a head and two worker
nodes started on this machine with ``ray start`` (TLS on every gRPC link, token auth), a PostgreSQL of the
run's own reached over TLS (verify-full), and the Kubernetes platform on kmock's API emulator with a
Deployment controller played by this process (every Deployment becomes ready at once), so that the platform's
own time is small and what is measured is the orchestrator's: admission, runners spread over the nodes,
journal writes.

For each journal backend, one orchestrator (its own Ray namespace, journal and Kubernetes namespace) grows
through the numbers of services in ``--sizes``: at each size S, the services it does not have yet get their
first revision (burst ``first``), then all S services get a rolling update of 2 replicas at once (burst
``update``, the headline: S deployments with S services live). A burst submits every deployment at once; at
most ``--concurrency`` run (the product's ``maxConcurrentDeployments``, 10 by default), the rest wait in
FIFO order. Per burst:
- deployments_per_min: the deployments over the time from the first submission to the last terminal event.
- admission_latency_p50_s / _p95_s: submitted -> admitted, from the journal's events (queue wait included).
- admission_handoff_p50_s / _p95_s: admitted minus the later of submitted and the moment a slot was free
  for it (the end of the deployment that freed it): the queue's own delay, without the wait for a slot.
- deployment_duration_p50_s: admitted -> finished.
- journal_writes_per_s: chained journal events appended per second over the burst (each is one transaction
  that also rewrites the deployment's snapshot row; lease renewals and runner records come on top), and
  journal_writes_per_deployment.
- preparation_p50_s: admitted -> planned (runner start or reuse, artifact checks, reading the platform).
- runners_per_node_max: the most runner actors seen alive at once on each node (sampled every 5 s).
``growth`` gives, per backend and burst, each figure at the largest size over the same figure at the smallest.

SQLite on several nodes works here only because every node runs on this machine and opens the same file; on
separate machines the journal must be PostgreSQL (see README, "On several nodes"). The JSON says so.

Writes benchmarks/results/scale.json (commit, arguments, time, figures); exits 1 when a deployment fails, is
lost (no terminal event by the deadline) or ends more than once.
    python3 benchmarks/scale.py                     # sizes 10,30,100, both backends, concurrency 10
    python3 benchmarks/scale.py --short             # sizes 2,4 at concurrency 2: the CI-sized form
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from engine.config import write_isolated_config  # noqa: E402
from engine.models import Artifact, Phase  # noqa: E402
from engine.state import EventKind  # noqa: E402
from harness.k8s_emulator import FakeController, KubeEmulator  # noqa: E402
from harness.postgres import PostgresServer, postgres_server  # noqa: E402
from harness.ray_cluster import RayCluster, ray_cluster  # noqa: E402

ENVIRONMENT = "development"
PLATFORM = "kube"
STRATEGY = {"type": "rolling", "replicas": 2}
SHARED_FILESYSTEM_NOTE = (
    "SQLite on several nodes works here only because all three nodes run on this machine and open the same "
    "file; nodes on separate machines need the PostgreSQL journal."
)
OUT = REPO / "benchmarks" / "results" / "scale.json"
SUBMITTED, ADMITTED, PLANNED, FINISHED = (
    EventKind.SUBMITTED, EventKind.ADMITTED, EventKind.PLANNED, EventKind.FINISHED,
)  # fmt: skip
MILESTONES = frozenset({SUBMITTED, ADMITTED, FINISHED})


@dataclass
class Run:
    """One orchestrator on one journal backend, grown through the sizes, with everything of its own."""

    backend: str
    sizes: list[int]
    concurrency: int
    folder: str
    config: str
    journal: str  # a SQLite path, or a file: reference to PostgreSQL's URL
    deadline_s: float  # per burst of the largest size; smaller bursts get a share of it (at least 300 s)

    def burst_deadline(self, deployments: int) -> float:
        return max(300.0, self.deadline_s * deployments / max(self.sizes))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,30,100", help="numbers of services, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql", help="journal backends, comma-separated")
    parser.add_argument("--concurrency", type=int, default=10, help="maxConcurrentDeployments")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes beside the head")
    parser.add_argument("--deadline-s", type=float, default=900.0, help="per burst, for the largest size")
    parser.add_argument("--short", action="store_true", help="sizes 2,4 at concurrency 2 (CI)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (journals, configuration)")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # internal: one backend, as a driver
    args = parser.parse_args(argv)
    if args.short:
        args.sizes, args.concurrency = "2,4", 2
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of numbers")
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backend_list) - {"sqlite", "postgresql"}
    if unknown or not args.backend_list:
        parser.error(f"--backends: {sorted(unknown) or 'none'}: use sqlite and/or postgresql")
    if not args.size_list or min(args.size_list) < 1 or args.concurrency < 1:
        parser.error("--sizes and --concurrency must be positive")
    if args.size_list != sorted(set(args.size_list)):
        parser.error(f"--sizes: {args.sizes!r} must grow (the orchestrator keeps its services)")
    return args


# ------------------------------------------------------------------------------------------------ parent
def commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def journal_of(backend: str, folder: Path, pg: PostgresServer | None) -> dict[str, Any]:
    """The ``journal`` section: a SQLite file in the cell's folder, or a new PostgreSQL database whose URL
    (with its password) is in a 0600 file every node reads (the nodes share this machine's filesystem)."""
    if backend == "sqlite":
        return {"path": str(folder / "journal.db")}
    assert pg is not None
    secret = folder / "journal-url"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pg.create_database())
    return {"backend": "postgresql", "url": f"file:{secret}"}


def make_run(
    args: argparse.Namespace, backend: str, root: Path, emulator: KubeEmulator, namespace: str,
    pg: PostgresServer | None,
) -> Run:  # fmt: skip
    folder = root / backend
    folder.mkdir(parents=True)
    config = write_isolated_config(
        folder,
        namespace=f"scale-{backend}-{secrets.token_hex(3)}",
        concurrency={"maxConcurrentDeployments": args.concurrency},
    )
    data = yaml.safe_load(config.read_text())
    journal = journal_of(backend, folder, pg)
    data["journal"] = journal
    settings = {"host": emulator.url, "namespace": namespace, "retryBackoff": 0.05}
    data["platforms"][PLATFORM] = {"type": "kubernetes", "settings": settings}
    config.write_text(yaml.safe_dump(data))
    location = journal.get("url") or journal["path"]
    return Run(backend, args.size_list, args.concurrency, str(folder), str(config), location, args.deadline_s)


def drive(run: Run, cluster: RayCluster) -> list[dict[str, Any]]:
    """One backend's run in a driver process of its own (a fresh Ray connection in its namespace)."""
    spec = Path(run.folder) / "run.json"
    spec.write_text(json.dumps(asdict(run)))
    env = cluster.client_env(PYTHONPATH=str(REPO), ORCH_HOME=str(Path(run.folder) / "home"))
    env.pop("ORCH_TOKEN", None)
    timeout = sum(2 * run.burst_deadline(size) for size in run.sizes) + 600
    done = subprocess.run([sys.executable, __file__, "--run", str(spec)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    result_file = Path(run.folder) / "result.json"
    cells = json.loads(result_file.read_text()) if result_file.exists() else []
    if done.returncode != 0 or len(cells) != len(run.sizes):
        problem = f"driver exited {done.returncode}: {(done.stderr or done.stdout)[-3000:]}"
        cells.append({"backend": run.backend, "size": None, "problems": [problem]})
    return list(cells)


@contextlib.contextmanager
def controlled(emulator: KubeEmulator) -> Iterator[tuple[str, FakeController]]:
    """A new Kubernetes namespace whose Deployments this process makes ready, as a controller would."""
    namespace = emulator.new_namespace("scale")
    controller = FakeController(emulator, namespace).start(interval_s=0.2)
    try:
        yield namespace, controller
    finally:
        controller.stop()


def run_all(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_server()) if "postgresql" in args.backend_list else None
        emulator = stack.enter_context(KubeEmulator(gateway_api=False))
        node_env = {"ORCH_HOME": str(root / "node-home"), "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        cluster = stack.enter_context(ray_cluster(args.workers, node_env=node_env))
        print(f"cluster of {1 + args.workers} nodes up in {time.monotonic() - started:.0f}s", flush=True)
        for backend in args.backend_list:
            with controlled(emulator) as (namespace, controller):
                results = drive(make_run(args, backend, root, emulator, namespace, pg), cluster)
            if controller.errors:
                results[-1].setdefault("problems", []).append(f"controller: {controller.errors[:3]}")
            for result in results:
                print(summary_line(result), flush=True)
            cells += results
    return cells


def summary_line(result: dict[str, Any]) -> str:
    if result.get("problems"):
        return f"{result['backend']} x{result['size']}: PROBLEMS {result['problems']}"
    parts = [f"{result['backend']} x{result['size']}:"]
    for name, b in result["bursts"].items():
        parts.append(
            f"{name} {b['deployments_per_min']:.1f}/min, admitted p50 {b['admission_latency_p50_s']:.2f}s "
            f"p95 {b['admission_latency_p95_s']:.2f}s, handoff p95 {b['admission_handoff_p95_s']:.3f}s, "
            f"{b['journal_writes_per_s']:.1f} writes/s;"
        )
    return " ".join(parts)


FIGURES = (
    "deployments_per_min", "admission_latency_p50_s", "admission_latency_p95_s", "admission_handoff_p50_s",
    "admission_handoff_p95_s", "preparation_p50_s", "deployment_duration_p50_s", "journal_writes_per_s",
    "journal_writes_per_deployment",
)  # fmt: skip


def growth(cells: list[dict[str, Any]], backends: list[str]) -> dict[str, Any]:
    """Per backend and burst: each figure at the largest size over the smallest (1.0 = flat)."""
    grown: dict[str, Any] = {}
    for backend in backends:
        ok = sorted(
            (c for c in cells if c["backend"] == backend and not c.get("problems")),
            key=lambda c: int(c["size"]),
        )
        if len(ok) < 2:
            continue
        small, large = ok[0], ok[-1]
        key = f"{backend} {small['size']}->{large['size']}"
        grown[key] = {
            burst: {f: ratio(large["bursts"][burst][f], small["bursts"][burst][f]) for f in FIGURES}
            for burst in large["bursts"]
            if burst in small["bursts"]
        }
    return grown


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run:
        return drive_run(Path(args.run))
    root = Path(os.environ.get("SCALE_TMP") or "/tmp") / f"scale-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    started, measured = time.time(), commit()  # the code that runs, whatever is committed meanwhile
    try:
        cells = run_all(args, root)
    finally:
        if not args.keep:  # the journals, and the file with the (by then stopped) PostgreSQL's password
            shutil.rmtree(root, ignore_errors=True)
    problems = [f"{c['backend']} x{c['size']}: {p}" for c in cells for p in c.get("problems", [])]
    arguments = {k: v for k, v in vars(args).items() if k not in ("out", "run", "size_list", "backend_list")}
    result = {
        "benchmark": "scale",
        "commit": measured,
        "arguments": arguments,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "nodes": 1 + args.workers,
        "platform": "kubernetes (kmock API emulator, Deployments made ready by the benchmark)",
        "notes": [SHARED_FILESYSTEM_NOTE],
        "cells": cells,
        "growth": growth(cells, args.backend_list),
        "problems": problems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(SHARED_FILESYSTEM_NOTE)
    print(f"wrote {args.out}; {len(problems)} problem(s)")
    for problem in problems:
        print("PROBLEM:", problem[:2000])
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------------ driver
def drive_run(spec: Path) -> int:
    """In the driver process: start the backend's orchestrator, grow it through the sizes, measure each,
    then remove its actors."""
    import ray

    from client.local import bootstrap_if_new
    from engine.config import load_config
    from engine.journal import Journal
    from orchestrator import DeploymentOrchestrator

    run = Run(**json.loads(spec.read_text()))
    token = bootstrap_if_new(load_config(run.config), run.journal)
    orch = DeploymentOrchestrator(config_path=run.config, token=token)
    journal = Journal(run.journal)
    cells: list[dict[str, Any]] = []
    try:
        warm = orch.warm_up(240)
        for index in range(len(run.sizes)):
            cell = grow_to(orch, journal, run, index)
            cells.append({**cell, "warm_runners": warm})
            (spec.parent / "result.json").write_text(json.dumps(cells))
        if journal.verify_chain() != (True, None):
            cells[-1]["problems"].append("the journal's hash chain does not verify")
    finally:
        remove_actors(orch)
        ray.shutdown()
    (spec.parent / "result.json").write_text(json.dumps(cells))
    return 0


def grow_to(orch: Any, journal: Any, run: Run, index: int) -> dict[str, Any]:
    """The services the orchestrator does not have yet get their first revision, then every service an
    update."""
    size, before = run.sizes[index], ([0, *run.sizes])[index]
    cell: dict[str, Any] = {"backend": run.backend, "size": size, "concurrency": run.concurrency}
    cell["bursts"], cell["problems"] = {}, []
    bursts = {"first": (range(before, size), "1.0.0"), "update": (range(size), f"{index + 2}.0.0")}
    for name, (numbers, version) in bursts.items():
        if numbers:
            figures, problems = run_burst(orch, journal, run, [f"svc-{n:03d}" for n in numbers], version)
            cell["bursts"][name] = figures
            cell["problems"] += [f"{name}: {p}" for p in problems]
    return cell


def run_burst(
    orch: Any, journal: Any, run: Run, services: list[str], version: str
) -> tuple[dict[str, Any], list[str]]:
    before = journal.last_seq()
    ids: list[str] = []
    for service in services:
        image = f"registry.test/{service}:{version}"
        env = {"VERSION": version}
        artifact = Artifact(name=service, version=version, source=f"docker://{image}", env=env)
        ids.append(orch.submit(artifact, STRATEGY, ENVIRONMENT, PLATFORM))
    placement = RunnerPlacement(orch.namespace)
    ended = wait_ended(journal, set(ids), before, run.burst_deadline(len(ids)), placement.sample)
    figures = measure(journal, ids, before, run.concurrency)
    figures["runners_per_node_max"] = placement.most
    return figures, lost_or_failed(journal, ids, ended)


def wait_ended(
    journal: Any, ids: set[str], after_seq: int, deadline_s: float, on_poll: Callable[[], None]
) -> set[str]:
    """The ids with a terminal event, read incrementally from the journal until all have one or the
    deadline passes."""
    ended: set[str] = set()
    seen, deadline = after_seq, time.monotonic() + deadline_s
    while ended != ids and time.monotonic() < deadline:
        for event in journal.events(after_seq=seen):
            seen = event.seq
            if event.kind is EventKind.FINISHED and event.deployment_id in ids:
                ended.add(event.deployment_id)
        if ended != ids:
            on_poll()
            time.sleep(0.5)
    return ended


def lost_or_failed(journal: Any, ids: list[str], ended: set[str]) -> list[str]:
    problems = [
        f"{i}: no terminal event by the deadline ({journal.state(i).status()})" for i in ids if i not in ended
    ]
    for deployment_id in sorted(ended):
        finished = [e for e in journal.events(deployment_id) if e.kind is EventKind.FINISHED]
        phase = journal.state(deployment_id).phase()
        if len(finished) != 1:
            problems.append(f"{deployment_id}: {len(finished)} terminal events")
        if phase is not Phase.SUCCEEDED:
            problems.append(f"{deployment_id}: ended {phase.value}: {finished[-1].data if finished else ''}")
    return problems


def measure(journal: Any, ids: list[str], before: int, concurrency: int) -> dict[str, Any]:
    """The burst's figures from the journal's own timestamps (the queen's and runners' clocks: one
    machine)."""
    times: dict[str, dict[EventKind, float]] = {i: {} for i in ids}
    last_seq = before
    for event in journal.events(after_seq=before):
        last_seq = max(last_seq, event.seq)
        if event.deployment_id in times and event.kind in (*MILESTONES, PLANNED):
            times[event.deployment_id].setdefault(event.kind, event.at)
    done = [t for t in times.values() if t.keys() >= MILESTONES]
    if not done:
        return {"deployments": len(ids), "completed": 0}
    span = max(max(t[FINISHED] for t in done) - min(t[SUBMITTED] for t in done), 1e-6)
    writes = last_seq - before
    return {
        "deployments": len(ids),
        "completed": len(done),
        "span_s": round(span, 2),
        "deployments_per_min": round(len(done) / span * 60, 2),
        "admission_latency_p50_s": percentile([t[ADMITTED] - t[SUBMITTED] for t in done], 50),
        "admission_latency_p95_s": percentile([t[ADMITTED] - t[SUBMITTED] for t in done], 95),
        **handoff(done, concurrency),
        "preparation_p50_s": percentile([t[PLANNED] - t[ADMITTED] for t in done if PLANNED in t], 50),
        "deployment_duration_p50_s": percentile([t[FINISHED] - t[ADMITTED] for t in done], 50),
        "journal_writes": writes,
        "journal_writes_per_s": round(writes / span, 2),
        "journal_writes_per_deployment": round(writes / len(ids), 2),
    }


def handoff(done: list[dict[EventKind, float]], concurrency: int) -> dict[str, float]:
    """Admitted minus the later of submitted and the moment a slot was free: the k-th admission (in order)
    needs the (k - concurrency)-th end when k >= concurrency."""
    admitted = sorted(done, key=lambda t: t[ADMITTED])
    finished = sorted(t[FINISHED] for t in done)
    delays = []
    for k, t in enumerate(admitted):
        free = finished[k - concurrency] if k >= concurrency else 0.0
        delays.append(max(0.0, t[ADMITTED] - max(t[SUBMITTED], free)))
    return {
        "admission_handoff_p50_s": percentile(delays, 50),
        "admission_handoff_p95_s": percentile(delays, 95),
    }


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4)


@dataclass
class RunnerPlacement:
    """The most runner actors seen alive at once on each node during a burst (sampled every few seconds
    while it runs), by the node's own resource name."""

    namespace: str
    every_s: float = 5.0
    most: dict[str, int] = field(default_factory=dict)
    _last: float = 0.0

    def sample(self) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        for node, count in runners_per_node(self.namespace).items():
            self.most[node] = max(count, self.most.get(node, 0))


def runners_per_node(namespace: str) -> dict[str, int]:
    """How many of the namespace's runner actors are alive on each node now."""
    import ray
    from ray._private.state import actors

    from actors.common import named_actors

    names = named_actors(namespace)
    node_names = {
        n["NodeID"]: next((r[5:] for r in n["Resources"] if r.startswith("node-")), n["NodeID"][:8])
        for n in ray.nodes()
    }
    counts: dict[str, int] = {}
    for actor in actors().values():
        if actor["Name"] in names and actor["Name"].startswith("runner-") and actor["State"] == "ALIVE":
            node = node_names.get(actor["Address"]["NodeID"], "?")
            counts[node] = counts.get(node, 0) + 1
    return counts


def remove_actors(orch: Any) -> None:
    """Every actor of the cell's namespace (the queen, domain workers and detached runners): the next cell
    starts on a cluster without them."""
    import ray

    from actors.common import named_actors

    orch.shutdown(stop_ray=False)
    for name in named_actors(orch.namespace):
        with contextlib.suppress(ValueError, ray.exceptions.RayError):
            ray.kill(ray.get_actor(name, namespace=orch.namespace), no_restart=True)


if __name__ == "__main__":
    sys.exit(main())
