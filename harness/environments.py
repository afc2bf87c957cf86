"""The integration tests' environments, as plain context managers and builders.

One piece of code per environment (a Docker engine, two SSH daemons, a Prometheus, a Kubernetes namespace
with its controller, a moto server with dummy credentials) and per scenario environment of a platform:
the pytest fixtures wrap them (``with env(...) as x: yield x``) and benchmarks/platforms.py uses them as
they are, so the benchmark runs on exactly the tests' environments. Re-exported by
tests/integration/environments.py, where the tests import them from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import docker
import prometheus_client
from kubernetes import client
from moto.server import ThreadedMotoServer

from adapters import create_platform, remove_targets
from adapters.docker_backend import LABEL_ENVIRONMENT, LABEL_SERVICE
from adapters.http_probe import HttpSmokeTester
from adapters.kubernetes_platform import KubernetesPlatform
from adapters.lambda_platform import LambdaPlatform
from adapters.localhost import is_same_process, port_is_free, process_start_time
from engine.journal import Journal
from engine.models import Artifact, PlatformConfig, Target
from engine.platform import PlatformAdapter
from engine.supervision import SupervisionSettings, SupervisorStateManager
from examples.traffic import TrafficGenerator
from harness.k8s_emulator import FakeController, KubeEmulator
from harness.scenarios import ScenarioEnv
from harness.simulated_traffic import LiveInvocations, LiveTraffic

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SERVICE = REPO / "examples" / "sample_service.py"
SAMPLE_IMAGE = "local/sample-service:1"
DEADLINE_S = 30.0


# --------------------------------------------------------------------------------------------
# Waiting, HTTP and ports
# --------------------------------------------------------------------------------------------
def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def closed_port() -> int:
    """A port nothing listens on (bound by the system, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_block(count: int, low: int = 20000, high: int = 30000) -> int:
    """A first port such that ``count`` consecutive ports are free now."""
    for _ in range(200):
        first = low + closed_port() % (high - low - count)
        if all(port_is_free("127.0.0.1", port) for port in range(first, first + count)):
            return first
    raise AssertionError(f"no {count} consecutive free ports found")


# --------------------------------------------------------------------------------------------
# Processes left behind
# --------------------------------------------------------------------------------------------
def processes_under(folder: Path) -> list[int]:
    """Pids of live processes whose working directory is inside ``folder`` (the replicas' cwd)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and (cwd == str(folder) or cwd.startswith(f"{folder}/")):
            found.append(int(entry.name))
    return found


def recorded_processes(folder: Path, key: str | None = None) -> list[tuple[int, int]]:
    """(pid, start time) of processes recorded in a state folder's JSON files (HAProxy: top level)."""
    found: list[tuple[int, int]] = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile, or half-written: the adapter's removal decides
            continue
        records = data.get(key, []) if key else [data]
        found += [(int(r["pid"]), int(r["start_time"])) for r in records if "pid" in r]
    return found


def router_process(state_dir: Path, platform_type: str, target: Target) -> tuple[int, int]:
    """(pid, start time) of a target's HAProxy, as its router recorded them under a platform's stateDir."""
    data = json.loads((state_dir / platform_type / "haproxy" / f"{target.key}.json").read_text())
    return int(data["pid"]), int(data["start_time"])


def serves(address: str) -> bool:
    """The service answers 200 through its router (at the root path)."""
    try:
        return http_get(address + "/", timeout=1.0)[0] == 200
    except (OSError, urllib.error.URLError):
        return False


@contextmanager
def supervising(journal: Journal, settings: SupervisionSettings) -> Iterator[SupervisorStateManager]:
    """The supervisor's rounds over a journal's live targets in a background thread, as DO-001 runs them."""
    manager = SupervisorStateManager(journal, create_platform, settings, actor="test-supervisor")
    stop = threading.Event()
    thread = threading.Thread(target=manager.run, args=(stop,), name="test-supervisor", daemon=True)
    thread.start()
    try:
        yield manager
    finally:
        stop.set()
        thread.join(60)
        manager.close()


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_surviving(processes: list[tuple[int, int]]) -> list[int]:
    """Kill the recorded processes that still run (same pid, same start time); returns their pids."""
    alive = [pid for pid, start in processes if is_same_process(pid, start)]
    kill_pids(alive)
    return alive


# --------------------------------------------------------------------------------------------
# Platforms behind HAProxy (local, docker, vm): live HTTP traffic, removal through the adapter
# --------------------------------------------------------------------------------------------
def sample_env(version: str, faulty: bool) -> dict[str, str]:
    """What the scenarios' revisions read: their version, and a faulty one fails half of its requests."""
    return {"VERSION": version, "ERROR_RATE": "0.5" if faulty else "0"}


def sample_process(service: str, version: str, faulty: bool) -> Artifact:
    """examples/sample_service.py as a process."""
    return Artifact(
        name=service,
        version=version,
        command=[sys.executable, str(SAMPLE_SERVICE)],
        env=sample_env(version, faulty),
    )


def sample_container(service: str, version: str, faulty: bool, image: str = SAMPLE_IMAGE) -> Artifact:
    """The sample service as an image: ours (built by cluster/start_docker.sh) unless ``image`` is given."""
    env = sample_env(version, faulty)
    return Artifact(name=service, version=version, source=f"docker://{image}", env=env)


@contextmanager
def live_traffic(adapter: PlatformAdapter, target: Target) -> Iterator[TrafficGenerator]:
    address = adapter.traffic(target).address
    adapter.close()
    traffic = TrafficGenerator(address + "/", rps=40, threads=4, max_seconds=300).start()
    try:
        yield traffic
    finally:
        counts = traffic.stop()
        assert TrafficGenerator.total(counts) > 0


def local_scenario_config(state_dir: Path) -> PlatformConfig:
    """The local platform as the scenarios configure it (ports of their own)."""
    settings = {
        "stateDir": str(state_dir),
        "frontendPortRange": [19500, 19999],
        "replicaPortRange": [45000, 47999],
    }
    return PlatformConfig(type="local", settings=settings)


def routed_scenario_env(
    config: PlatformConfig, artifact: Callable[[str, str, bool], Artifact], journal_dir: Path, **options: Any
) -> ScenarioEnv:
    """A scenario environment on a platform behind HAProxy: live HTTP traffic, smoke requests."""
    return ScenarioEnv(
        make_adapter=lambda: create_platform(config),
        platform=config,
        artifact=artifact,
        traffic=live_traffic,
        journal_dir=journal_dir,
        smoke=HttpSmokeTester(),
        **options,
    )


def remove_through_adapter(config: PlatformConfig, targets: list[Target], check_gone: bool = False) -> None:
    """Every revision and the router of each target, removed through a new adapter, router first
    (adapters.remove_targets); with ``check_gone``, checked gone through another."""
    remove_targets(config, targets)
    if check_gone:
        platform: Any = create_platform(config)
        try:
            assert all(platform.list_revisions(target) == [] for target in targets)
        finally:
            platform.close()


# --------------------------------------------------------------------------------------------
# Docker: the engine, and its own view of a target's containers
# --------------------------------------------------------------------------------------------
def docker_scenario_config(
    state_dir: Path, frontend_ports: list[int], replica_ports: list[int]
) -> PlatformConfig:
    """The docker platform as the scenarios configure it."""
    settings = {
        "stateDir": str(state_dir),
        "frontendPortRange": frontend_ports,
        "replicaPortRange": replica_ports,
        "routerSlots": 16,
        "stopTimeout": 2,
    }
    return PlatformConfig(type="docker", settings=settings)


@contextmanager
def docker_engine_started() -> Iterator[Any]:
    """Start the engine and build the images (cluster/start_docker.sh) if need be; yields a client."""
    try:
        result = subprocess.run(
            ["bash", str(REPO / "cluster" / "start_docker.sh")],
            capture_output=True,
            text=True,
            # Below pytest's per-test timeout, so that a stuck script fails with its own message.
            timeout=480,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        output = f"{expired.stdout!r}\n{expired.stderr!r}"
        raise RuntimeError(f"cluster/start_docker.sh did not finish in 480 s:\n{output}") from None
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise RuntimeError(f"cluster/start_docker.sh failed ({result.returncode}):\n{output}")
    engine = docker.from_env()
    try:
        yield engine
    finally:
        engine.close()


def dockerd_processes() -> set[tuple[int, int]]:
    """(pid, start time) of every running dockerd."""
    found: set[tuple[int, int]] = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "dockerd":
                start = process_start_time(int(entry.name))
                if start is not None:
                    found.add((int(entry.name), start))
    return found


def stop_docker(engines: set[tuple[int, int]]) -> None:
    """Stop these dockerds (SIGTERM: each removes its own pid file); wait up to 30 s until they are gone."""
    for pid, start in engines:
        if is_same_process(pid, start):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(is_same_process(*engine) for engine in engines) and time.monotonic() < deadline:
        time.sleep(0.2)
    running = [pid for pid, start in engines if is_same_process(pid, start)]
    if running:
        raise RuntimeError(f"dockerd {running} did not stop within 30 s")


def labelled_containers(service: str, environment: str) -> list[Any]:
    """The engine's own view (not the adapter's) of the containers of one target."""
    engine = docker.from_env()
    try:
        selector = {"label": [f"{LABEL_SERVICE}={service}", f"{LABEL_ENVIRONMENT}={environment}"]}
        return list(engine.containers.list(all=True, filters=selector))
    finally:
        engine.close()


def remove_containers(names: list[str]) -> None:
    engine = docker.from_env()
    try:
        for name in names:
            engine.containers.get(name).remove(force=True)
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------
# VM: two SSH daemons on loopback as hosts
# --------------------------------------------------------------------------------------------
HOSTS = ("host-a", "host-b")


class SshHosts:
    def __init__(self, folder: Path, base_port: int) -> None:
        self.folder = folder
        self.ports = [base_port + index for index in range(len(HOSTS))]
        self.client_key = folder / "client_key"
        self.known_hosts = folder / "known_hosts"

    def settings(self, roots: Path, replica_port: int, **extra: Any) -> dict[str, Any]:
        hosts = [
            {
                "name": name,
                "address": "127.0.0.1",
                "port": port,
                "user": "root",
                "keyFile": str(self.client_key),
                "root": str(roots / name),
            }
            for name, port in zip(HOSTS, self.ports, strict=True)
        ]
        return {
            "hosts": hosts,
            "knownHostsFile": str(self.known_hosts),
            "replicaPort": replica_port,
            "portsPerHost": 10,
            "connectTimeout": 5,
            "stopTimeout": 5,
            **extra,
        }

    def scenario_config(
        self, roots: Path, state_dir: Path, replica_port: int, frontend_ports: list[int]
    ) -> PlatformConfig:
        """The vm platform as the scenarios configure it: 50 replica ports per host."""
        settings = self.settings(roots, replica_port)
        settings.update(
            stateDir=str(state_dir),
            portsPerHost=50,
            frontendPortRange=frontend_ports,
            routerSlots=16,
            stopTimeout=3,
        )
        return PlatformConfig(type="vm", settings=settings)


def stop_daemons(hosts: SshHosts) -> None:
    for port in hosts.ports:
        pid_file = hosts.folder / f"sshd-{port}.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
    # Nothing listens any more; connections the daemons closed may linger in TIME_WAIT for a minute.
    wait_for(
        "the SSH daemons to stop",
        lambda: all(port_is_free("127.0.0.1", port, reuse_address=True) for port in hosts.ports),
        timeout=10,
    )


@contextmanager
def ssh_daemons(folder: Path) -> Iterator[SshHosts]:
    """Two SSH daemons on loopback (cluster/start_sshd.sh), stopped again on the way out."""
    hosts = SshHosts(folder, free_port_block(len(HOSTS)))
    try:
        result = subprocess.run(
            [
                "bash",
                str(REPO / "cluster" / "start_sshd.sh"),
                str(folder),
                str(len(HOSTS)),
                str(hosts.ports[0]),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"cluster/start_sshd.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        yield hosts
    finally:
        stop_daemons(hosts)


# --------------------------------------------------------------------------------------------
# Kubernetes: Prometheus, a namespace with its Deployment controller, the scenario environment
# --------------------------------------------------------------------------------------------
PROMETHEUS_START_S = 30.0
METRICS_SELECTOR = 'namespace="{namespace}",service="{service}",revision="{revision}"'


@dataclass
class Prometheus:
    url: str
    requests: prometheus_client.Counter
    latency: prometheus_client.Histogram  # seconds, by the same labels but ``code``


@contextmanager
def prometheus_server(folder: Path, labels: list[str], wait_scraped: bool = True) -> Iterator[Prometheus]:
    """A real Prometheus scraping a prometheus-client exporter (``http_requests`` and the histogram
    ``http_request_duration_seconds``) on loopback every 0.5 s."""
    registry = prometheus_client.CollectorRegistry()
    requests = prometheus_client.Counter("http_requests", "requests served", labels, registry=registry)
    latency = prometheus_client.Histogram(
        "http_request_duration_seconds",
        "time to answer",
        [x for x in labels if x != "code"],
        registry=registry,
    )
    exporter_port = closed_port()
    exporter, exporter_thread = prometheus_client.start_http_server(exporter_port, "127.0.0.1", registry)
    try:
        with prometheus_scraping(folder, {"app": [f"127.0.0.1:{exporter_port}"]}, wait_scraped) as url:
            yield Prometheus(url, requests, latency)
    finally:
        exporter.shutdown()
        exporter_thread.join(5)


@contextmanager
def prometheus_scraping(
    folder: Path, jobs: dict[str, list[str]], wait_scraped: bool = True, interval: str = "500ms"
) -> Iterator[str]:
    """A real Prometheus on loopback scraping ``jobs`` (job name -> host:port targets); yields its URL once
    it has scraped the first job (or at once without ``wait_scraped``)."""
    prometheus_port = closed_port()
    config = folder / "prometheus.yml"
    scrapes = [{"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()]
    config.write_text(json.dumps({"global": {"scrape_interval": interval}, "scrape_configs": scrapes}))
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        if wait_scraped:
            _wait_scraped(url, process, next(iter(jobs)))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_scraped(url: str, process: subprocess.Popen[bytes], job: str) -> None:
    deadline = time.monotonic() + PROMETHEUS_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}")
        if _scraped(url, job):
            return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus at {url} did not scrape the exporter within {PROMETHEUS_START_S}s")


def _scraped(url: str, job: str) -> bool:
    """Ready is not enough: service discovery delays the first scrape by up to 5 s after the start."""
    query = urllib.parse.urlencode({"query": f'up{{job="{job}"}} == 1'})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=2) as response:
            return bool(json.loads(response.read()).get("data", {}).get("result"))
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


@dataclass
class Cluster:
    """One namespace on the emulator and the controller that plays the Deployment controller there."""

    emulator: KubeEmulator
    namespace: str
    controller: FakeController
    apps: client.AppsV1Api

    def deployments(self) -> list[dict[str, Any]]:
        response = self.apps.list_namespaced_deployment(self.namespace, _preload_content=False)
        return list(json.loads(response.data).get("items", []))


@contextmanager
def kube_cluster(emulator: KubeEmulator, prefix: str) -> Iterator[Cluster]:
    """A new namespace with a controller in the background; the caller checks ``controller.errors``."""
    namespace = emulator.new_namespace(prefix)
    controller = FakeController(emulator, namespace).start(interval_s=0.1)
    api = emulator.api_client()
    try:
        yield Cluster(emulator, namespace, controller, client.AppsV1Api(api))
    finally:
        controller.stop()
        api.close()


def image_artifact(service: str, version: str, faulty: bool) -> Artifact:
    """An image the Kubernetes emulator never pulls: one name per service and version."""
    return sample_container(service, version, faulty, image=f"registry.test/{service}:{version}")


def kubernetes_scenario_env(
    cluster: Cluster, prometheus: Prometheus, folder: Path, **options: Any
) -> ScenarioEnv:
    """The scenarios on the emulator: simulated live traffic counted in Prometheus."""
    settings = {
        "host": cluster.emulator.url,
        "namespace": cluster.namespace,
        "metricsUrl": prometheus.url,
        "metricsSelector": METRICS_SELECTOR,
        "splitReadyTimeout": 20,
        "retryBackoff": 0.05,
    }

    def live(adapter: PlatformAdapter, target: Target) -> LiveTraffic:
        return LiveTraffic(adapter, target, cluster, prometheus.requests)

    return ScenarioEnv(
        make_adapter=lambda: KubernetesPlatform(folder / "state", settings),
        platform=PlatformConfig(type="kubernetes", settings=settings),
        artifact=image_artifact,
        traffic=live,
        journal_dir=folder,
        settle=cluster.controller.settle,
        deadline_s=120.0,
        **options,
    )


# --------------------------------------------------------------------------------------------
# Lambda: a moto server with dummy credentials, zip artifacts, the scenario environment
# --------------------------------------------------------------------------------------------
REGION = "us-east-1"
RUN = secrets.token_hex(3)
FUNCTION_NAME = "{service}-{environment}-" + RUN
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
OTHER_CREDENTIAL_SOURCES = (
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


class Moto:
    """The running server and the settings that reach it."""

    def __init__(self, url: str, role_arn: str) -> None:
        self.url = url
        self.role_arn = role_arn

    def settings(self, **extra: Any) -> dict[str, Any]:
        base = {"endpointUrl": self.url, "roleArn": self.role_arn, "region": REGION, "maxAttempts": 2}
        return {**base, **extra}

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION)


@contextmanager
def dummy_aws_credentials(folder: Path) -> Iterator[None]:
    """Dummy credentials only, and no shared config or metadata that could bring a real one in."""
    empty = str(folder / "none")
    wanted = {**DUMMY_CREDENTIALS, "AWS_CONFIG_FILE": empty, "AWS_SHARED_CREDENTIALS_FILE": empty}
    saved = {name: os.environ.get(name) for name in [*wanted, *OTHER_CREDENTIAL_SOURCES]}
    os.environ.update(wanted)
    for name in OTHER_CREDENTIAL_SOURCES:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def moto_server(folder: Path, role_name: str) -> Iterator[Moto]:
    """A moto server on loopback under dummy credentials, with an IAM role for the functions.

    moto keeps its state per process, not per server: a caller whose functions could meet another moto
    server's in the same process gives its role and functions names of their own.
    """
    with dummy_aws_credentials(folder):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = f"http://{host}:{port}"
            iam = boto3.client("iam", endpoint_url=url, region_name=REGION)
            role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
            yield Moto(url, role)
        finally:
            server.stop()


def zip_for(path: Path, version: str) -> Path:
    """A tiny handler whose code depends on the version; a fixed timestamp keeps the bytes stable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("app.py", date_time=(1980, 1, 1, 0, 0, 0))
        archive.writestr(info, f"def handler(event, context):\n    return {{'version': '{version}'}}\n")
    path.write_bytes(buffer.getvalue())
    return path


def zip_artifacts(folder: Path) -> Callable[[str, str, bool], Artifact]:
    def artifact(service: str, version: str, faulty: bool) -> Artifact:
        path = zip_for(folder / f"{service}-{version}.zip", version)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        env = sample_env(version, faulty)
        return Artifact(name=service, version=version, source=str(path), sha256=digest, env=env)

    return artifact


def lambda_scenario_env(aws: Moto, folder: Path, **options: Any) -> ScenarioEnv:
    """The scenarios on the moto server: simulated invocations published to CloudWatch."""
    settings = aws.settings(functionName=FUNCTION_NAME)

    def live(adapter: PlatformAdapter, target: Target) -> LiveInvocations:
        assert isinstance(adapter, LambdaPlatform)
        return LiveInvocations(adapter, target, aws)

    return ScenarioEnv(
        make_adapter=lambda: LambdaPlatform(folder / "state", settings),
        platform=PlatformConfig(type="lambda", settings=settings),
        artifact=zip_artifacts(folder),
        traffic=live,
        journal_dir=folder,
        deadline_s=120.0,
        **options,
    )
