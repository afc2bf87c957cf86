"""The contract every platform adapter passes, unchanged.

A platform's test module subclasses ``PlatformContract`` and provides the ``contract_env`` fixture. The env
holds the adapter and the few things only the platform's test can do (build an artifact, play a controller).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from engine.models import Artifact, Target
from engine.platform import PlatformAdapter, RevisionSpec, RevisionStatus


@dataclass
class ContractEnv:
    adapter: PlatformAdapter
    target: Target
    make_artifact: Callable[[str], Artifact]
    # Called on every poll while waiting; a Kubernetes test plays the controller here.
    settle: Callable[[], None] = field(default=lambda: None)
    # A fresh adapter over the same platform state, as after a crash of the process that held the first.
    reopen: Callable[[], PlatformAdapter] | None = None
    ready_timeout_s: float = 60.0
    supports_replicas: bool = True


def wait_ready(env: ContractEnv, revision: str, replicas: int) -> RevisionStatus:
    deadline = time.monotonic() + env.ready_timeout_s
    status: RevisionStatus | None = None
    while time.monotonic() < deadline:
        env.settle()
        status = env.adapter.revision_status(env.target, revision)
        if status is not None and status.ready and status.desired_replicas == replicas:
            return status
        time.sleep(0.2)
    raise AssertionError(f"revision {revision} not ready with {replicas} replicas in time: {status}")


def deploy(env: ContractEnv, version: str, replicas: int = 1) -> RevisionStatus:
    artifact = env.make_artifact(version)
    spec = RevisionSpec(target=env.target, artifact=artifact, replicas=replicas, deployment_id="contract")
    env.adapter.ensure_revision(spec)
    return wait_ready(env, artifact.revision, replicas if env.supports_replicas else 1)


class PlatformContract:
    """Subclass and provide a ``contract_env`` fixture."""

    def test_validate_passes_on_a_reachable_platform(self, contract_env: ContractEnv) -> None:
        contract_env.adapter.validate()

    def test_ensure_revision_is_idempotent(self, contract_env: ContractEnv) -> None:
        env = contract_env
        first = deploy(env, "1.0.0")
        deploy(env, "1.0.0")
        revisions = [r for r in env.adapter.list_revisions(env.target) if r.revision == first.revision]
        assert len(revisions) == 1
        assert revisions[0].ready_replicas == first.ready_replicas

    def test_scale_up_and_down(self, contract_env: ContractEnv) -> None:
        env = contract_env
        if not env.supports_replicas:
            # The platform scales itself: a replica count is accepted and reported as one revision.
            assert deploy(env, "1.0.0", replicas=2).desired_replicas == 1
            return
        deploy(env, "1.0.0", replicas=2)
        status = deploy(env, "1.0.0", replicas=1)
        assert status.desired_replicas == 1
        assert status.running_replicas == 1

    def test_traffic_weights_read_back(self, contract_env: ContractEnv) -> None:
        env = contract_env
        stable = deploy(env, "1.0.0")
        canary = deploy(env, "2.0.0")
        env.adapter.set_traffic(env.target, {stable.revision: 100})
        state = env.adapter.set_traffic(env.target, {stable.revision: 80, canary.revision: 20})
        assert state.weights.get(canary.revision) == 20
        read = env.adapter.traffic(env.target)
        assert read.weights.get(stable.revision) == 80
        assert read.weights.get(canary.revision) == 20
        assert read.address

    def test_weights_must_sum_to_100(self, contract_env: ContractEnv) -> None:
        env = contract_env
        stable = deploy(env, "1.0.0")
        with pytest.raises(ValueError, match="100"):
            env.adapter.set_traffic(env.target, {stable.revision: 50})

    def test_traffic_to_unknown_revision_is_refused(self, contract_env: ContractEnv) -> None:
        env = contract_env
        stable = deploy(env, "1.0.0")
        with pytest.raises(ValueError, match="not-there"):
            env.adapter.set_traffic(env.target, {stable.revision: 50, "not-there": 50})

    def test_metrics_are_keyed_by_revision(self, contract_env: ContractEnv) -> None:
        env = contract_env
        stable = deploy(env, "1.0.0")
        env.adapter.set_traffic(env.target, {stable.revision: 100})
        snapshots = env.adapter.metrics(env.target)
        assert stable.revision in snapshots
        assert snapshots[stable.revision].requests >= 0
        # Asked for one revision: that one's snapshot is there, with the same servers.
        one = env.adapter.metrics(env.target, stable.revision)
        assert one[stable.revision].servers_total == snapshots[stable.revision].servers_total

    def test_remove_is_idempotent(self, contract_env: ContractEnv) -> None:
        env = contract_env
        stable = deploy(env, "1.0.0")
        old = deploy(env, "0.9.0")
        env.adapter.set_traffic(env.target, {stable.revision: 100})
        env.adapter.remove_revision(env.target, old.revision)
        env.adapter.remove_revision(env.target, old.revision)
        assert env.adapter.revision_status(env.target, old.revision) is None
        assert [r.revision for r in env.adapter.list_revisions(env.target)] == [stable.revision]

    def test_state_survives_a_new_adapter_instance(self, contract_env: ContractEnv) -> None:
        env = contract_env
        if env.reopen is None:
            pytest.fail("every platform must be able to reopen its state after a crash")
        stable = deploy(env, "1.0.0")
        canary = deploy(env, "2.0.0")
        env.adapter.set_traffic(env.target, {stable.revision: 90, canary.revision: 10})
        fresh = env.reopen()
        try:
            assert {r.revision for r in fresh.list_revisions(env.target)} == {
                stable.revision,
                canary.revision,
            }
            assert fresh.traffic(env.target).weights == {stable.revision: 90, canary.revision: 10}
            fresh.ensure_revision(
                RevisionSpec(target=env.target, artifact=env.make_artifact("2.0.0"), replicas=1)
            )
            assert len([r for r in fresh.list_revisions(env.target) if r.revision == canary.revision]) == 1
        finally:
            fresh.close()
