"""The local platform for real: sample services as processes behind a real HAProxy, on 127.0.0.1.

Every test gets its own state directory and its own port ranges; the teardown removes every revision and the
router and then asserts that no process is left behind.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from adapters.haproxy import HAProxyRouter, parse_show_stat
from adapters.local_process import LocalProcessBackend
from adapters.localhost import is_same_process
from adapters.routed import RoutedPlatform
from engine.models import Artifact, Target
from engine.platform import PlatformError, RevisionSpec
from tests.integration.contract import ContractEnv, PlatformContract, deploy, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_SERVICE = ROOT / "examples" / "sample_service.py"
_BLOCKS = itertools.count()
# As long as two failed checks took with a 1 s check timeout (3 to 4 s), well short of what they take with
# the router's 2 s (5 to 6 s).
FROZEN_S = 4.0


def port_settings() -> dict[str, object]:
    """Port ranges of their own for each test (and each pytest process), so that tests never collide."""
    block = (next(_BLOCKS) + os.getpid()) % 90
    return {
        "replicaPortRange": [21000 + block * 100, 21000 + block * 100 + 99],
        "frontendPortRange": [18000 + block * 10, 18000 + block * 10 + 9],
        "stopGraceSeconds": 3,
    }


def make_platform(state_dir: Path, settings: dict[str, object]) -> RoutedPlatform:
    return RoutedPlatform(
        LocalProcessBackend(state_dir / "processes", settings), HAProxyRouter(state_dir / "haproxy", settings)
    )


def sample_artifact(version: str, **env: str) -> Artifact:
    return Artifact(
        name="shop",
        version=version,
        command=[sys.executable, str(SAMPLE_SERVICE)],
        env={"VERSION": version, **env},
    )


def recorded_processes(state_dir: Path, target: Target | None = None) -> list[tuple[int, int]]:
    """(pid, start time) of every replica and router recorded under the state directory (of one target)."""
    name = f"{target.key}.json" if target else "*.json"
    found: list[tuple[int, int]] = []
    for path in (state_dir / "processes").glob(name):
        found += [(r["pid"], r["start_time"]) for r in json.loads(path.read_text())["replicas"]]
    for path in (state_dir / "haproxy").glob(name):
        data = json.loads(path.read_text())
        found.append((data["pid"], data["start_time"]))
    return found


def alive(processes: list[tuple[int, int]]) -> list[int]:
    return [pid for pid, start in processes if is_same_process(pid, start)]


def tear_down(platform: RoutedPlatform, target: Target, state_dir: Path) -> None:
    """Remove everything through the adapter, then make sure (and force) that nothing is left running."""
    seen = recorded_processes(state_dir, target)
    try:
        for status in platform.list_revisions(target):
            platform.remove_revision(target, status.revision)
        platform.router.remove_frontend(target)
    finally:
        leftovers = sorted(set(alive(seen + recorded_processes(state_dir, target))))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert leftovers == [], f"processes left behind: {leftovers}"


@pytest.fixture
def local_env(tmp_path: Path) -> Iterator[tuple[RoutedPlatform, Target, Path]]:
    state_dir = tmp_path / "state"
    platform = make_platform(state_dir, port_settings())
    target = Target(service="shop", environment="test")
    yield platform, target, state_dir
    tear_down(platform, target, state_dir)


class TestLocalContract(PlatformContract):
    @pytest.fixture
    def contract_env(self, tmp_path: Path) -> Iterator[ContractEnv]:
        state_dir = tmp_path / "state"
        settings = port_settings()
        platform = make_platform(state_dir, settings)
        target = Target(service="shop", environment="contract")
        yield ContractEnv(
            adapter=platform,
            target=target,
            make_artifact=sample_artifact,
            reopen=lambda: make_platform(state_dir, settings),
            ready_timeout_s=20.0,
        )
        tear_down(platform, target, state_dir)


# --------------------------------------------------------------------------------------------
# Traffic through the real HAProxy
# --------------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    version: str


def request(address: str, path: str = "/", timeout_s: float = 5.0) -> Answer:
    parts = urlsplit(address)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return Answer(response.status, response.getheader("X-Version") or "")
    finally:
        connection.close()


def send(address: str, count: int) -> list[Answer]:
    return [request(address, f"/item/{i}") for i in range(count)]


def deploy_pair(
    platform: RoutedPlatform, target: Target, stable_env: dict[str, str], canary_env: dict[str, str]
) -> tuple[str, str]:
    env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact, ready_timeout_s=20.0)
    for version, extra in (("1.0.0", stable_env), ("2.0.0", canary_env)):
        spec = RevisionSpec(target=target, artifact=sample_artifact(version, **extra), replicas=1)
        platform.ensure_revision(spec)
        wait_ready(env, spec.revision, 1)
    return "1-0-0", "2-0-0"


@contextlib.contextmanager
def live_load(address: str, timeout_s: float = 5.0) -> Iterator[tuple[list[Answer], list[str]]]:
    """Requests one after another to ``address`` until the block ends: (answers, failures) so far."""
    answers: list[Answer] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                answers.append(request(address, timeout_s=timeout_s))
            except OSError as exc:
                failures.append(repr(exc))

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        yield answers, failures
    finally:
        stop.set()
        sender.join(timeout=timeout_s + 5)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_traffic_follows_the_weights(local_env: tuple[RoutedPlatform, Target, Path]) -> None:
    platform, target, _ = local_env
    stable, canary = deploy_pair(platform, target, {}, {})
    state = platform.set_traffic(target, {stable: 80, canary: 20})
    answers = send(state.address, 400)
    versions = Counter(a.version for a in answers)
    assert all(a.status == 200 for a in answers)
    assert 60 <= versions["2.0.0"] <= 100, versions  # 20% of 400 is 80; weighted round robin is exact-ish
    assert versions["1.0.0"] + versions["2.0.0"] == 400
    # The operator views are served by HAProxy itself and never reach a replica.
    assert request(state.address, "/_router/stats").status == 200
    assert request(state.address, "/_router/metrics").status == 200


def test_shifting_weights_fails_no_request(local_env: tuple[RoutedPlatform, Target, Path]) -> None:
    platform, target, _ = local_env
    stable, canary = deploy_pair(platform, target, {}, {})
    address = platform.set_traffic(target, {stable: 100}).address
    with live_load(address) as (answers, failures):

        def answered(more: int) -> None:
            """Requests keep flowing: ``more`` answers (or failures) after this point."""
            seen = len(answers) + len(failures)
            wait_until(lambda: len(answers) + len(failures) >= seen + more, 30, f"{more} more requests")

        for canary_weight in (10, 50, 90, 100, 30, 100):
            platform.set_traffic(target, {stable: 100 - canary_weight, canary: canary_weight})
            answered(10)
        platform.remove_revision(target, stable)  # blue-green's last step: the old revision goes
        answered(20)
    assert failures == []
    assert [a for a in answers if a.status != 200] == []
    assert len(answers) > 50
    assert {a.version for a in answers} == {"1.0.0", "2.0.0"}
    assert answers[-1].version == "2.0.0"


def test_a_replica_frozen_for_seconds_stays_in_service_and_a_hung_one_is_taken_out(
    local_env: tuple[RoutedPlatform, Target, Path],
) -> None:
    """A replica that does not answer for a few seconds (a stalled machine, a long pause) is slow, not gone:
    while it is the only server, HAProxy taking it out answers every request 503. One that stays silent is
    still taken out by its health checks."""
    platform, target, _ = local_env
    env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact, ready_timeout_s=20.0)
    deploy(env, "1.0.0")
    address = platform.set_traffic(target, {"1-0-0": 100}).address
    pid = int(platform.backend.list_replicas(target, "1-0-0")[0].ident)

    def servers_up() -> int:
        return platform.metrics(target)["1-0-0"].servers_up

    def checked_ok() -> bool:
        """HAProxy's own page: a check of the replica passed. Until then its server is in its initial state,
        where a single failed check takes it out."""
        with urllib.request.urlopen(f"{address}/_router/stats;csv", timeout=5) as page:
            rows = parse_show_stat(page.read().decode())
        return any(row.get("check_status") == "L7OK" for row in rows)

    wait_until(checked_ok, 10, "a passed health check of the replica")
    with live_load(address, timeout_s=15.0) as (answers, failures):
        seen_up = []
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_until = time.monotonic() + FROZEN_S
            while time.monotonic() < frozen_until:
                seen_up.append(servers_up())
                time.sleep(0.1)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: len(answers) >= 10, 10, "answers after the replica went on")
    assert failures == [], failures
    assert [a.status for a in answers if a.status != 200] == [], "HAProxy answered for a frozen replica"
    assert seen_up and min(seen_up) == 1, f"the replica was taken out while frozen: {seen_up}"

    os.kill(pid, signal.SIGSTOP)  # silent for good: the checks take it out
    try:
        wait_until(lambda: servers_up() == 0, 15, "HAProxy's checks to take the hung replica out")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: servers_up() == 1, 10, "the replica back in service once it answers")


def test_errors_of_a_bad_revision_show_in_its_metrics_only(
    local_env: tuple[RoutedPlatform, Target, Path],
) -> None:
    platform, target, _ = local_env
    stable, canary = deploy_pair(platform, target, {}, {"ERROR_RATE": "1.0"})
    state = platform.set_traffic(target, {stable: 80, canary: 20})
    answers = send(state.address, 200)
    failed = [a for a in answers if a.status == 500]
    assert failed and {a.version for a in failed} == {"2.0.0"}
    snapshots = platform.metrics(target)
    assert snapshots[canary].errors == snapshots[canary].requests == len(failed)
    assert snapshots[stable].errors == 0
    assert snapshots[stable].requests == 200 - len(failed)
    assert snapshots[stable].servers_up == snapshots[stable].servers_total == 1
    # The canary's slot is reused by the next revision, which starts from zero (HAProxy's counters of a
    # server survive its slot's reuse: they are the new server's baseline).
    platform.set_traffic(target, {stable: 100})
    platform.remove_revision(target, canary)
    spec = RevisionSpec(target=target, artifact=sample_artifact("3.0.0"), replicas=1)
    platform.ensure_revision(spec)
    after = platform.metrics(target)
    assert canary not in after
    assert after[spec.revision].requests == after[spec.revision].errors == 0
    assert after[stable].requests == 200 - len(failed)


def test_readiness_is_checked_for_real(local_env: tuple[RoutedPlatform, Target, Path]) -> None:
    platform, target, _ = local_env
    slow = RevisionSpec(target=target, artifact=sample_artifact("3.0.0", STARTUP_DELAY_MS="1500"), replicas=1)
    status = platform.ensure_revision(slow)
    assert status.running_replicas == 1 and status.ready_replicas == 0
    sick = RevisionSpec(target=target, artifact=sample_artifact("4.0.0", HEALTH_FAIL="1"), replicas=1)
    platform.ensure_revision(sick)
    wait_until(lambda: _ready(platform, target, slow.revision), 15, "the slow revision to become ready")
    sick_status = platform.revision_status(target, sick.revision)
    assert sick_status is not None and sick_status.running_replicas == 1 and sick_status.ready_replicas == 0


def _ready(platform: RoutedPlatform, target: Target, revision: str) -> bool:
    status = platform.revision_status(target, revision)
    return status is not None and status.ready


def test_killed_replica_is_reported_and_restarted(local_env: tuple[RoutedPlatform, Target, Path]) -> None:
    platform, target, _ = local_env
    env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact, ready_timeout_s=20.0)
    deploy(env, "1.0.0", replicas=2)
    address = platform.set_traffic(target, {"1-0-0": 100}).address
    victim = platform.backend.list_replicas(target, "1-0-0")[0]
    os.kill(int(victim.ident), signal.SIGKILL)
    wait_until(
        lambda: not platform.backend.list_replicas(target, "1-0-0")[0].alive,
        5,
        "the killed replica to be seen",
    )
    status = platform.revision_status(target, "1-0-0")
    assert status is not None and status.running_replicas == 1 and not status.ready
    # Users do not notice: HAProxy retries and redispatches to the surviving replica.
    assert all(a.status == 200 for a in send(address, 20))
    platform.ensure_revision(RevisionSpec(target=target, artifact=sample_artifact("1.0.0"), replicas=2))
    restarted = platform.backend.list_replicas(target, "1-0-0")[0]
    assert restarted.alive and restarted.ident != victim.ident
    wait_ready(env, "1-0-0", 2)
    assert platform.traffic(target).weights == {"1-0-0": 100}
    assert all(a.status == 200 for a in send(address, 20))


_CREATOR = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.integration.test_local_platform import make_platform, sample_artifact
from tests.integration.contract import ContractEnv, deploy
from engine.models import Target
platform = make_platform(Path({state!r}), {settings!r})
target = Target(service="shop", environment="test")
env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact, ready_timeout_s=20.0)
deploy(env, "1.0.0", replicas=2)
deploy(env, "2.0.0")
platform.set_traffic(target, {{"1-0-0": 70, "2-0-0": 30}})
"""


def test_processes_survive_their_creator(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    settings = port_settings()
    target = Target(service="shop", environment="test")
    script = _CREATOR.format(root=str(ROOT), state=str(state_dir), settings=settings)
    creator = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    platform = make_platform(state_dir, settings)
    try:
        assert creator.returncode == 0, creator.stderr[-2000:]
        assert len(alive(recorded_processes(state_dir))) == 4  # three replicas and HAProxy
        statuses = {s.revision: s for s in platform.list_revisions(target)}
        assert statuses["1-0-0"].ready_replicas == 2 and statuses["2-0-0"].ready_replicas == 1
        state = platform.traffic(target)
        assert state.weights == {"1-0-0": 70, "2-0-0": 30}
        assert {a.version for a in send(state.address, 20)} == {"1.0.0", "2.0.0"}
    finally:
        tear_down(platform, target, state_dir)


def test_validate_names_a_missing_command(tmp_path: Path) -> None:
    settings = {**port_settings(), "requiredCommands": ["no-such-command-xyz"]}
    platform = make_platform(tmp_path / "state", settings)
    with pytest.raises(PlatformError, match="no-such-command-xyz") as caught:
        platform.validate()
    assert caught.value.platform == "local"
    assert str(tmp_path) in caught.value.endpoint
    target = Target(service="shop", environment="test")
    broken = Artifact(name="shop", version="1.0.0", command=["no-such-command-xyz", "--serve"])
    with pytest.raises(PlatformError, match="no-such-command-xyz"):
        platform.ensure_revision(RevisionSpec(target=target, artifact=broken, replicas=1))
    assert platform.list_revisions(target) == []
    lost = sample_artifact("1.0.0").model_copy(update={"working_dir": str(tmp_path / "no-such-folder")})
    with pytest.raises(PlatformError, match="no-such-folder"):
        platform.ensure_revision(RevisionSpec(target=target, artifact=lost, replicas=1))
    assert platform.list_revisions(target) == []


def test_more_servers_than_router_slots_are_refused_naming_the_setting(tmp_path: Path) -> None:
    """``routerSlots`` bounds the replicas behind one router (32 by default: a free slot is health-checked
    every second too); one more fails the call, naming the setting, and what did start can be removed."""
    state_dir = tmp_path / "state"
    platform = make_platform(state_dir, {**port_settings(), "routerSlots": 2})
    target = Target(service="shop", environment="slots")
    try:
        with pytest.raises(PlatformError, match=r"3 servers do not fit in 2 slots \(setting routerSlots\)"):
            spec = RevisionSpec(target=target, artifact=sample_artifact("1.0.0"), replicas=3)
            platform.ensure_revision(spec)
        platform.remove_revision(target, "1-0-0")
        assert [r.revision for r in platform.list_revisions(target)] == []
    finally:
        tear_down(platform, target, state_dir)


def test_logs_hold_the_replica_output(local_env: tuple[RoutedPlatform, Target, Path]) -> None:
    platform, target, _ = local_env
    env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact, ready_timeout_s=20.0)
    deploy(env, "1.0.0")
    assert "sample-service 1.0.0 listening" in platform.logs(target, "1-0-0")


def test_a_crashed_router_comes_back_with_its_port_and_weights(
    local_env: tuple[RoutedPlatform, Target, Path],
) -> None:
    platform, target, state_dir = local_env
    stable, canary = deploy_pair(platform, target, {}, {})
    before = platform.set_traffic(target, {stable: 70, canary: 30})
    router = json.loads(next((state_dir / "haproxy").glob("*.json")).read_text())
    os.kill(router["pid"], signal.SIGKILL)
    wait_until(lambda: platform.traffic(target).weights == {}, 5, "the router to be seen dead")
    platform.ensure_revision(RevisionSpec(target=target, artifact=sample_artifact("2.0.0"), replicas=1))
    after = platform.traffic(target)
    assert after == before
    assert {a.version for a in send(after.address, 20)} == {"1.0.0", "2.0.0"}


def test_a_new_health_path_reloads_the_router_without_failing_requests(
    local_env: tuple[RoutedPlatform, Target, Path],
) -> None:
    platform, target, state_dir = local_env
    env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact, ready_timeout_s=20.0)
    deploy(env, "1.0.0")
    address = platform.set_traffic(target, {"1-0-0": 100}).address
    router_file = next((state_dir / "haproxy").glob("*.json"))
    first_pid = json.loads(router_file.read_text())["pid"]
    moved = sample_artifact("2.0.0").model_copy(update={"health_path": "/ready"})
    platform.ensure_revision(RevisionSpec(target=target, artifact=moved, replicas=1))
    wait_ready(env, "2-0-0", 1)
    assert json.loads(router_file.read_text())["pid"] == first_pid  # mixed paths: the first one stays
    platform.set_traffic(target, {"1-0-0": 50, "2-0-0": 50})
    answers: list[Answer] = []
    sender = threading.Thread(target=lambda: answers.extend(send(address, 300)))
    sender.start()
    platform.set_traffic(target, {"2-0-0": 100})
    platform.remove_revision(target, "1-0-0")  # now every revision checks /ready: a seamless reload
    sender.join(timeout=60)
    state = json.loads(router_file.read_text())
    assert state["pid"] != first_pid and state["health_path"] == "/ready"
    assert len(answers) == 300 and {a.status for a in answers} == {200}
    assert platform.traffic(target).weights == {"2-0-0": 100}
    assert platform.metrics(target)["2-0-0"].requests > 0


def test_targets_are_handled_in_parallel(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    platform = make_platform(state_dir, port_settings())
    targets = [Target(service="shop", environment=f"env{i}") for i in range(3)]
    errors: list[BaseException] = []

    def roll_out(target: Target) -> None:
        try:
            env = ContractEnv(adapter=platform, target=target, make_artifact=sample_artifact)
            deploy(env, "1.0.0", replicas=2)
            platform.set_traffic(target, {"1-0-0": 100})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=roll_out, args=(t,)) for t in targets]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        addresses = {platform.traffic(t).address for t in targets}
        ports = {r.port for t in targets for r in platform.backend.list_replicas(t)}
        assert len(addresses) == 3 and len(ports) == 6
        for address in addresses:
            assert [a.status for a in send(address, 5)] == [200] * 5
    finally:
        for target in targets:
            tear_down(platform, target, state_dir)


def test_a_repair_does_not_bring_back_a_target_removed_while_it_ran(
    local_env: tuple[RoutedPlatform, Target, Path],
) -> None:
    """The supervisor's repairs (engine/supervision.py): the router's record is what makes a target ours to
    repair. Removed by another process while the replicas started (no lock is shared between processes), the
    repair stops what it started and brings no router back."""
    platform, target, state_dir = local_env
    spec = RevisionSpec(target=target, artifact=sample_artifact("1.0.0"), replicas=1)
    platform.ensure_revision(spec)
    for pid in alive(recorded_processes(state_dir, target)):
        os.kill(pid, signal.SIGKILL)  # the router and the replica found dead by the supervisor
    remover = make_platform(state_dir, port_settings())  # another process's adapter: its own locks
    starting = platform.backend.ensure_replicas

    def removed_while_starting(wanted: RevisionSpec) -> None:
        starting(wanted)
        remover.remove_revision(target, "1-0-0")
        remover.router.remove_frontend(target)

    platform.backend.ensure_replicas = removed_while_starting  # type: ignore[method-assign]
    assert platform.repair_replicas(spec) is None
    assert platform.repair_router(target, {"1-0-0": 100}) is None
    assert alive(recorded_processes(state_dir)) == [] and platform.router.liveness(target) is None
    assert platform.list_revisions(target) == []
    # Without a removal the same repairs bring it back.
    platform.backend.ensure_replicas = starting  # type: ignore[method-assign]
    platform.ensure_revision(spec)
    for pid in alive(recorded_processes(state_dir, target)):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not platform.router.liveness(target).running, 5, "the router to be seen dead")  # type: ignore[union-attr]
    repaired = platform.repair_replicas(spec)
    assert repaired is not None and repaired.running_replicas == 1
    assert platform.repair_router(target, {"1-0-0": 100}) is not None
    assert platform.router.liveness(target).running  # type: ignore[union-attr]
