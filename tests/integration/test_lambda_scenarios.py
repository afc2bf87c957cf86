"""The platform scenarios on AWS Lambda: the real engine over the real adapter, on a moto server.

moto cannot invoke functions here (that needs Docker images), so live traffic is simulated where Lambda would
have it: every tick ``LiveInvocations`` (harness/) reads the alias back, splits invocations over
its versions by the alias' routing weights and publishes them to CloudWatch in the scheme Lambda uses for
invocations through a weighted alias (``FunctionName``, ``Resource=<function>:<alias>``, ``ExecutedVersion``);
the adapter's ``metrics()`` reads them back from CloudWatch. A version fails the share of its invocations that
its own ``ERROR_RATE`` environment variable says (read from the version's configuration, as its code would).

A Lambda version is one "replica" whatever is asked (Lambda scales by itself): the scenarios ask for the
default two replicas, and the engine waits for the one version the platform reports (``scales_itself``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.environments import FUNCTION_NAME, RUN, Moto, lambda_scenario_env, moto_server
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """A moto server with dummy credentials only (no shared config or metadata that could leak a real one).

    moto keeps its state per process, not per server: the role and functions get names of their own here so
    that another module's moto server in the same pytest session cannot collide with them.
    """
    with moto_server(tmp_path_factory.mktemp("aws-config"), f"scenarios-{RUN}") as running:
        yield running


class TestLambdaScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, aws: Moto, tmp_path: Path) -> ScenarioEnv:
        return lambda_scenario_env(aws, tmp_path, step_ms=4000)

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
        self._adopts_left_candidate(scenario_env, "sc-adopt")
        assert [revision for _, revision in _published(scenario_env, "sc-adopt")] == ["2-0-0"]


def _function(env: ScenarioEnv, service: str) -> str:
    return FUNCTION_NAME.format(service=service, environment=env.environment)


def _lambda_client(env: ScenarioEnv) -> Any:
    return Moto(env.platform.settings["endpointUrl"], env.platform.settings["roleArn"]).client("lambda")


def _published(env: ScenarioEnv, service: str) -> list[tuple[str, str]]:
    """(version number, revision) of every published version of the service's function, oldest first."""
    listing = _lambda_client(env).list_versions_by_function(FunctionName=_function(env, service))["Versions"]
    return [(v["Version"], v.get("Description", "")) for v in listing if v["Version"] != "$LATEST"]
