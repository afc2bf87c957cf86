"""The platform scenarios on AWS Lambda: the real engine over the real adapter, on a moto server.

moto cannot invoke functions here (that needs Docker images), so live traffic is simulated where Lambda would
have it: every tick ``LiveInvocations`` reads the alias back, splits invocations over its versions by the
alias' routing weights and publishes them to CloudWatch in the scheme Lambda uses for invocations through a
weighted alias (``FunctionName``, ``Resource=<function>:<alias>``, ``ExecutedVersion``); the adapter's
``metrics()`` reads them back from CloudWatch. A version fails the share of its invocations that its own
``ERROR_RATE`` environment variable says (read from the version's configuration, as its code would).

A Lambda version is one "replica" whatever is asked (Lambda scales by itself): the scenarios ask for the
default two replicas, and the engine waits for the one version the platform reports (``scales_itself``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from adapters.lambda_platform import LambdaPlatform
from engine.models import Artifact, Phase, PlatformConfig, Target
from engine.platform import PlatformAdapter, RevisionSpec
from tests.integration.scenarios import ROLLING, PlatformScenarios, ScenarioEnv
from tests.integration.test_lambda_platform import REGION, Moto, _zip_for

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

TICK_S = 0.25
INVOCATIONS_PER_SECOND = 40
DURATION_MS = 12.0
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


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """A moto server with dummy credentials only (no shared config or metadata that could leak a real one).

    moto keeps its state per process, not per server: the role and functions get names of their own here so
    that another module's moto server in the same pytest session cannot collide with them.
    """
    empty = str(tmp_path_factory.mktemp("aws-config") / "none")
    dummy = {**DUMMY_CREDENTIALS, "AWS_CONFIG_FILE": empty, "AWS_SHARED_CREDENTIALS_FILE": empty}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dummy.items():
            patch.setenv(name, value)
        for other_source in OTHER_CREDENTIAL_SOURCES:
            patch.delenv(other_source, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = f"http://{host}:{port}"
            iam = boto3.client("iam", endpoint_url=url, region_name=REGION)
            role = iam.create_role(RoleName=f"scenarios-{RUN}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
            yield Moto(url, role)
        finally:
            server.stop()


def zip_artifacts(folder: Path) -> Callable[[str, str, bool], Artifact]:
    def artifact(service: str, version: str, faulty: bool) -> Artifact:
        path = _zip_for(folder / f"{service}-{version}.zip", version)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        env = {"VERSION": version, "ERROR_RATE": "0.5" if faulty else "0"}
        return Artifact(name=service, version=version, source=str(path), sha256=digest, env=env)

    return artifact


class LiveInvocations:
    """Callers and Lambda's router, simulated: invocations split by alias weights, published to CloudWatch."""

    def __init__(self, adapter: LambdaPlatform, target: Target, aws: Moto) -> None:
        self.adapter, self.target = adapter, target
        self.function = adapter.function_name(target)
        self.alias = adapter.settings.alias_name
        self.lambda_client, self.cloudwatch = aws.client("lambda"), aws.client("cloudwatch")
        self.invoked: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.problems: list[str] = []
        self._carry: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"invocations-{self.function}", daemon=True)

    def __enter__(self) -> LiveInvocations:
        self._safe_tick()  # traffic flows from the start of the block, however short the block
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self.adapter.close()
        if kind is None:  # a failing scenario's own error says more than this
            assert sum(self.invoked.values()) > 0, f"nothing was invoked: {self.problems[-3:]}"

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception as error:  # no alias yet, a version deleted meanwhile: the next tick sees anew
            self.problems.append(repr(error))
            log.warning("simulated invocations of %s: %r", self.function, error)

    def _weights(self) -> dict[str, float]:
        """version -> fraction of invocations, as Lambda routes through the weighted alias."""
        alias = self.lambda_client.get_alias(FunctionName=self.function, Name=self.alias)
        extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights = {str(version): float(weight) for version, weight in extra.items()}
        weights[str(alias["FunctionVersion"])] = 1.0 - sum(weights.values())
        return {version: weight for version, weight in weights.items() if weight > 0}

    def _tick(self) -> None:
        data: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for version, weight in self._weights().items():
            share = self._carry.get(version, 0.0) + INVOCATIONS_PER_SECOND * TICK_S * weight
            count = int(share)
            self._carry[version] = share - count
            if count:
                data += self._invoke(version, count, now)
        if data:
            self.cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=data)

    def _invoke(self, version: str, count: int, now: datetime) -> list[dict[str, Any]]:
        """Exactly ``ERROR_RATE`` of the version's invocations so far fail: no chance in the verdicts."""
        invoked = self.invoked.get(version, 0) + count
        errors = math.floor(invoked * self._error_rate(version)) - self.failed.get(version, 0)
        self.invoked[version], self.failed[version] = invoked, self.failed.get(version, 0) + errors
        dimensions = [
            {"Name": "FunctionName", "Value": self.function},
            {"Name": "Resource", "Value": f"{self.function}:{self.alias}"},
            {"Name": "ExecutedVersion", "Value": version},
        ]
        values = {"Invocations": [float(count)], "Errors": [float(errors)], "Duration": [DURATION_MS] * count}
        return [
            {"MetricName": name, "Dimensions": dimensions, "Values": points, "Timestamp": now}
            for name, points in values.items()
        ]

    def _error_rate(self, version: str) -> float:
        # Read every time: moto, unlike Lambda, gives a deleted newest version's number to the next one.
        config = self.lambda_client.get_function_configuration(FunctionName=self.function, Qualifier=version)
        variables = (config.get("Environment") or {}).get("Variables") or {}
        return float(variables.get("ERROR_RATE") or 0)


class TestLambdaScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, aws: Moto, tmp_path: Path) -> ScenarioEnv:
        settings = aws.settings(functionName=FUNCTION_NAME)

        def live(adapter: PlatformAdapter, target: Target) -> LiveInvocations:
            assert isinstance(adapter, LambdaPlatform)
            return LiveInvocations(adapter, target, aws)

        return ScenarioEnv(
            make_adapter=lambda: LambdaPlatform(tmp_path / "state", settings),
            platform=PlatformConfig(type="lambda", settings=settings),
            artifact=zip_artifacts(tmp_path),
            traffic=live,
            journal_dir=tmp_path,
            step_ms=4000,
            deadline_s=120.0,
        )

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        super().test_runner_crash_resumes_without_duplicates(scenario_env)
        published = _published(scenario_env, "sc-crash")
        of_candidate = [number for number, revision in published if revision == "2-0-0"]
        assert len(of_candidate) == 1, published
        assert [revision for _, revision in published] == ["2-0-0"], published  # and the stable one is gone
        alias = _lambda_client(scenario_env).get_alias(
            FunctionName=_function(scenario_env, "sc-crash"), Name="live"
        )
        assert alias["FunctionVersion"] == of_candidate[0]
        assert not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")

    def test_a_revision_left_by_a_dead_runner_is_adopted(self, scenario_env: ScenarioEnv) -> None:
        """A runner died after publishing the candidate, before journaling it: no second version."""
        harness = self._stable(scenario_env, "sc-adopt")
        leave_candidate(scenario_env, harness.target, "2.0.0")
        with harness.live():
            state = harness.deploy("2.0.0", ROLLING)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert [revision for _, revision in _published(scenario_env, "sc-adopt")] == ["2-0-0"]


def leave_candidate(env: ScenarioEnv, target: Target, version: str) -> None:
    adapter = env.make_adapter()
    try:
        artifact = env.artifact(target.service, version, False)
        adapter.ensure_revision(
            RevisionSpec(target=target, artifact=artifact, replicas=1, deployment_id="dead")
        )
    finally:
        adapter.close()


def _function(env: ScenarioEnv, service: str) -> str:
    return FUNCTION_NAME.format(service=service, environment=env.environment)


def _lambda_client(env: ScenarioEnv) -> Any:
    return Moto(env.platform.settings["endpointUrl"], env.platform.settings["roleArn"]).client("lambda")


def _published(env: ScenarioEnv, service: str) -> list[tuple[str, str]]:
    """(version number, revision) of every published version of the service's function, oldest first."""
    listing = _lambda_client(env).list_versions_by_function(FunctionName=_function(env, service))["Versions"]
    return [(v["Version"], v.get("Description", "")) for v in listing if v["Version"] != "$LATEST"]
