"""The Lambda adapter against a real moto server over HTTP (invocations need Docker images: not here).

Metrics are published by the tests in the scheme the adapter reads (the one Lambda uses for invocations
through a weighted alias): FunctionName, Resource=<function>:<alias>, ExecutedVersion=<version>.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapters.lambda_platform import LambdaPlatform, build_deterministic_zip
from engine.models import Artifact, Target
from engine.platform import PlatformError, RevisionSpec, TransientPlatformError
from tests.integration.contract import ContractEnv, PlatformContract, deploy
from tests.integration.environments import REGION, Moto, moto_server, zip_for

pytestmark = pytest.mark.integration

_FUNCTION_COUNTER = itertools.count(1)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("aws-config"), "lambda-test") as running:
        yield running


def _artifact_factory(tmp_path: Path, service: str) -> Callable[[str], Artifact]:
    def make_artifact(version: str) -> Artifact:
        path = zip_for(tmp_path / f"{service}-{version}.zip", version)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return Artifact(name=service, version=version, source=str(path), sha256=digest)

    return make_artifact


@pytest.fixture
def contract_env(moto: Moto, tmp_path: Path) -> Iterator[ContractEnv]:
    service = f"fn{next(_FUNCTION_COUNTER)}-{int(time.time())}"
    adapter = LambdaPlatform(tmp_path / "state", moto.settings())
    reopened: list[LambdaPlatform] = []

    def reopen() -> LambdaPlatform:
        fresh = LambdaPlatform(tmp_path / "state-again", moto.settings())
        reopened.append(fresh)
        return fresh

    env = ContractEnv(
        adapter=adapter,
        target=Target(service=service, environment="test"),
        make_artifact=_artifact_factory(tmp_path, service),
        reopen=reopen,
        ready_timeout_s=30.0,
        supports_replicas=False,
    )
    yield env
    adapter.close()
    for fresh in reopened:
        fresh.close()


class TestLambdaContract(PlatformContract):
    pass


# ------------------------------------------------------------------------------------------------------
# Lambda specifics
# ------------------------------------------------------------------------------------------------------
def _function(env: ContractEnv) -> str:
    return f"{env.target.service}-{env.target.environment}"


def _version_of(moto: Moto, function: str, revision: str) -> str:
    versions = moto.client("lambda").list_versions_by_function(FunctionName=function)["Versions"]
    numbers = [v["Version"] for v in versions if v.get("Description") == revision]
    assert len(numbers) == 1, f"revision {revision}: versions {versions}"
    return str(numbers[0])


def _two_revisions(env: ContractEnv) -> tuple[str, str]:
    return deploy(env, "1.0.0").revision, deploy(env, "2.0.0").revision


def test_alias_routes_by_weight_to_the_heavier_version(contract_env: ContractEnv, moto: Moto) -> None:
    env, function = contract_env, _function(contract_env)
    stable, canary = _two_revisions(env)
    state = env.adapter.set_traffic(env.target, {stable: 90, canary: 10})
    alias = moto.client("lambda").get_alias(FunctionName=function, Name="live")
    assert alias["FunctionVersion"] == _version_of(moto, function, stable)
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {_version_of(moto, function, canary): 0.1}
    assert state.address == alias["AliasArn"]
    assert state.address.endswith(f":function:{function}:live")

    env.adapter.set_traffic(env.target, {stable: 30, canary: 70})
    alias = moto.client("lambda").get_alias(FunctionName=function, Name="live")
    assert alias["FunctionVersion"] == _version_of(moto, function, canary)
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {_version_of(moto, function, stable): 0.3}
    assert env.adapter.traffic(env.target).weights == {stable: 30, canary: 70}


def test_only_two_revisions_can_carry_traffic(contract_env: ContractEnv) -> None:
    env = contract_env
    stable, canary = _two_revisions(env)
    third = deploy(env, "3.0.0").revision
    with pytest.raises(ValueError, match="at most two"):
        env.adapter.set_traffic(env.target, {stable: 80, canary: 10, third: 10})
    # A zero weight carries nothing, so it is allowed.
    state = env.adapter.set_traffic(env.target, {stable: 90, canary: 10, third: 0})
    assert state.weights == {stable: 90, canary: 10}


def test_rollback_points_the_alias_back_without_extra_weights(contract_env: ContractEnv, moto: Moto) -> None:
    env, function = contract_env, _function(contract_env)
    stable, canary = _two_revisions(env)
    env.adapter.set_traffic(env.target, {stable: 50, canary: 50})
    env.adapter.set_traffic(env.target, {canary: 80, stable: 20})
    state = env.adapter.set_traffic(env.target, {stable: 100})
    alias = moto.client("lambda").get_alias(FunctionName=function, Name="live")
    assert alias["FunctionVersion"] == _version_of(moto, function, stable)
    assert not alias.get("RoutingConfig", {}).get("AdditionalVersionWeights")
    assert state.weights == {stable: 100}
    assert env.adapter.traffic(env.target).weights == {stable: 100}


def _put_metrics(moto: Moto, function: str, version: str, at: datetime, **values: list[float]) -> None:
    dimensions = [
        {"Name": "FunctionName", "Value": function},
        {"Name": "Resource", "Value": f"{function}:live"},
        {"Name": "ExecutedVersion", "Value": version},
    ]
    data = [
        {"MetricName": name, "Dimensions": dimensions, "Values": points, "Timestamp": at}
        for name, points in values.items()
    ]
    moto.client("cloudwatch").put_metric_data(Namespace="AWS/Lambda", MetricData=data)


def test_metrics_come_from_cloudwatch_per_version(contract_env: ContractEnv, moto: Moto) -> None:
    env, function = contract_env, _function(contract_env)
    stable, canary = _two_revisions(env)
    env.adapter.set_traffic(env.target, {stable: 90, canary: 10})
    now = datetime.now(UTC)
    stable_version, canary_version = _version_of(moto, function, stable), _version_of(moto, function, canary)
    _put_metrics(moto, function, stable_version, now, Invocations=[40, 50], Errors=[0], Duration=[10, 30])
    _put_metrics(moto, function, canary_version, now, Invocations=[10], Errors=[3], Duration=[100, 200, 300])
    # From before the version existed: outside the window that makes the counters cumulative since creation.
    _put_metrics(moto, function, canary_version, now - timedelta(hours=1), Invocations=[1000], Errors=[1000])

    snapshots = env.adapter.metrics(env.target)
    assert set(snapshots) == {stable, canary}
    assert (snapshots[stable].requests, snapshots[stable].errors) == (90, 0)
    assert snapshots[stable].response_time_ms == pytest.approx(20.0)
    assert (snapshots[canary].requests, snapshots[canary].errors) == (10, 3)
    assert snapshots[canary].response_time_ms == pytest.approx(200.0)
    assert snapshots[canary].servers_up == snapshots[canary].servers_total == 1

    _put_metrics(moto, function, canary_version, datetime.now(UTC), Invocations=[5], Errors=[1])
    later = env.adapter.metrics(env.target)
    assert (later[canary].requests, later[canary].errors) == (15, 4)
    assert (later[stable].requests, later[stable].errors) == (90, 0)


def test_no_metric_data_is_zero_requests_and_no_response_time(contract_env: ContractEnv) -> None:
    env = contract_env
    stable = deploy(env, "1.0.0").revision
    snapshot = env.adapter.metrics(env.target)[stable]
    assert (snapshot.requests, snapshot.errors, snapshot.response_time_ms) == (0, 0, None)


def test_sha256_mismatch_is_refused_before_any_change(contract_env: ContractEnv, moto: Moto) -> None:
    env, function = contract_env, _function(contract_env)
    lambda_client = moto.client("lambda")
    wrong = env.make_artifact("1.0.0").model_copy(update={"sha256": "0" * 64})
    with pytest.raises(PlatformError, match="sha256 mismatch") as raised:
        env.adapter.ensure_revision(RevisionSpec(target=env.target, artifact=wrong, replicas=1))
    assert raised.value.platform == "lambda"
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.get_function(FunctionName=function)

    stable = deploy(env, "1.0.0").revision
    before = lambda_client.get_function_configuration(FunctionName=function)
    wrong = env.make_artifact("2.0.0").model_copy(update={"sha256": "f" * 64})
    with pytest.raises(PlatformError, match="sha256 mismatch"):
        env.adapter.ensure_revision(RevisionSpec(target=env.target, artifact=wrong, replicas=1))
    after = lambda_client.get_function_configuration(FunctionName=function)
    assert (after["CodeSha256"], after["Description"]) == (before["CodeSha256"], before["Description"])
    assert [r.revision for r in env.adapter.list_revisions(env.target)] == [stable]


def test_same_revision_with_other_code_is_refused(contract_env: ContractEnv, tmp_path: Path) -> None:
    env = contract_env
    deploy(env, "1.0.0")
    other = zip_for(tmp_path / "other.zip", "something else")
    artifact = env.make_artifact("1.0.0").model_copy(update={"source": str(other), "sha256": None})
    with pytest.raises(PlatformError, match="other code"):
        env.adapter.ensure_revision(RevisionSpec(target=env.target, artifact=artifact, replicas=1))


def test_a_directory_source_is_zipped_deterministically(contract_env: ContractEnv, tmp_path: Path) -> None:
    env = contract_env
    source = tmp_path / "src"
    (source / "lib").mkdir(parents=True)
    (source / "app.py").write_text("def handler(event, context):\n    return 'dir'\n")
    (source / "lib" / "util.py").write_text("VALUE = 1\n")
    digest = hashlib.sha256(build_deterministic_zip(source)).hexdigest()
    artifact = Artifact(name=env.target.service, version="3.1.0", source=str(source), sha256=digest)
    spec = RevisionSpec(target=env.target, artifact=artifact, replicas=1)
    env.adapter.ensure_revision(spec)
    (source / "app.py").touch()  # a new mtime must not change the zip
    env.adapter.ensure_revision(spec)
    assert [r.revision for r in env.adapter.list_revisions(env.target)] == ["3-1-0"]


def test_remove_of_a_revision_carrying_traffic_is_refused(contract_env: ContractEnv) -> None:
    env = contract_env
    stable, canary = _two_revisions(env)
    env.adapter.set_traffic(env.target, {stable: 90, canary: 10})
    for busy in (stable, canary):
        with pytest.raises(ValueError, match=f"{busy}.*carries traffic"):
            env.adapter.remove_revision(env.target, busy)
    assert {r.revision for r in env.adapter.list_revisions(env.target)} == {stable, canary}
    env.adapter.set_traffic(env.target, {stable: 100})
    env.adapter.remove_revision(env.target, canary)
    assert env.adapter.revision_status(env.target, canary) is None
    assert env.adapter.traffic(env.target).weights == {stable: 100}


def test_logs_of_a_revision_come_from_its_version_streams(contract_env: ContractEnv, moto: Moto) -> None:
    env, function = contract_env, _function(contract_env)
    assert env.adapter.logs(env.target, "1-0-0") == ""  # no function, no log group: nothing, no error
    stable, canary = _two_revisions(env)
    assert env.adapter.logs(env.target, stable) == ""  # the log group does not exist yet
    logs = moto.client("logs")
    group = f"/aws/lambda/{function}"
    logs.create_log_group(logGroupName=group)
    now_ms = int(time.time() * 1000)
    for revision in (stable, canary):
        version = _version_of(moto, function, revision)
        stream = f"2026/01/01/[{version}]0123456789abcdef"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        events = [{"timestamp": now_ms + i, "message": f"{revision} line {i}"} for i in range(5)]
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
    text = env.adapter.logs(env.target, canary, lines=3)
    assert text.splitlines()[-1].endswith(f"{canary} line 4")
    assert len(text.splitlines()) == 3
    assert stable not in text


def test_validate_names_lambda_the_endpoint_and_unreachable(moto: Moto, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    adapter = LambdaPlatform(tmp_path, moto.settings(endpointUrl=endpoint, maxAttempts=1, connectTimeout=2))
    try:
        with pytest.raises(PlatformError) as raised:
            adapter.validate()
    finally:
        adapter.close()
    assert raised.value.platform == "lambda"
    assert str(port) in raised.value.endpoint
    assert "unreachable" in raised.value.cause
    assert "lambda" in str(raised.value) and endpoint in str(raised.value)


def test_validate_without_credentials_is_refused(
    moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    adapter = LambdaPlatform(tmp_path, moto.settings())
    try:
        with pytest.raises(PlatformError, match="credentials refused") as raised:
            adapter.validate()
    finally:
        adapter.close()
    assert raised.value.endpoint == moto.url


def test_validate_requires_a_role_to_create_functions(moto: Moto, tmp_path: Path) -> None:
    adapter = LambdaPlatform(tmp_path, {"endpointUrl": moto.url, "region": REGION})
    try:
        with pytest.raises(PlatformError, match="roleArn"):
            adapter.validate()
    finally:
        adapter.close()


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="roleARN"):
        LambdaPlatform(tmp_path, {"roleARN": "arn:aws:iam::123456789012:role/x"})


def test_other_aws_errors_are_permanent_and_name_the_code(moto: Moto, tmp_path: Path) -> None:
    missing_role = "arn:aws:iam::123456789012:role/does-not-exist"
    adapter = LambdaPlatform(tmp_path / "state", moto.settings(roleArn=missing_role))
    target = Target(service=f"fn{next(_FUNCTION_COUNTER)}-badrole", environment="test")
    artifact = _artifact_factory(tmp_path, target.service)("1.0.0")
    try:
        with pytest.raises(PlatformError, match="InvalidParameterValueException") as raised:
            adapter.ensure_revision(RevisionSpec(target=target, artifact=artifact, replicas=1))
    finally:
        adapter.close()
    assert not isinstance(raised.value, TransientPlatformError)
    assert raised.value.endpoint == moto.url


class _ThrottlingHandler(BaseHTTPRequestHandler):
    """Answers every request the way Lambda answers when its rate limit is hit."""

    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        body = json.dumps({"Type": "User", "message": "Rate exceeded"}).encode()
        self.send_response(429)
        self.send_header("x-amzn-ErrorType", "TooManyRequestsException")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_throttling_is_retried_by_botocore_then_transient(moto: Moto, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ThrottlingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    adapter = LambdaPlatform(tmp_path, moto.settings(endpointUrl=endpoint, maxAttempts=3))
    try:
        with pytest.raises(TransientPlatformError, match="TooManyRequestsException") as raised:
            adapter.list_revisions(Target(service="throttled", environment="test"))
    finally:
        adapter.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert _ThrottlingHandler.requests == 3  # botocore's standard mode made every attempt
    assert raised.value.endpoint == endpoint
