"""Resources and capacity (DO-001): what a deployment will need at its peak, and whether the platform has it.

Plain logic: adapters report the room left where replicas would run (``CapacityPool``), this module compares
it with what the plan needs and says, in one sentence per shortage, what is short and where, for example
``production: needs 2 x 512 MiB memory, host has 300 MiB free``.
"""

from __future__ import annotations

from engine.models import Environment, ReplicaResources
from engine.platform import CapacityPool, PlatformCapabilities, Resource
from engine.quantities import show_bytes, show_cpu
from engine.state import Role, Step, StepKind


def peak_extra_replicas(plan: list[Step], stable_now: int) -> int:
    """The most replicas the plan runs at once beyond the ``stable_now`` already running (and so already
    counted in what the platform reports as used): a canary's full candidate beside the stable one, a rolling
    update's surge only."""
    candidate, stable, peak = 0, stable_now, 0
    for step in plan:
        if step.kind is StepKind.DEPLOY and step.role is Role.CANDIDATE:
            candidate = step.replicas
        elif step.kind is StepKind.DEPLOY:
            stable = step.replicas
        elif step.kind is StepKind.REMOVE_STABLE:
            stable = 0
        peak = max(peak, candidate + stable - stable_now)
    return peak


def shortages(environment: str, need: ReplicaResources, pools: list[CapacityPool]) -> list[str]:
    """One sentence per thing that does not fit, naming the environment, the need and the room left."""
    problems: list[str] = []
    for pool in pools:
        count = pool.replicas
        if count <= 0:
            continue
        if need.memory and pool.memory_free is not None and count * need.memory > pool.memory_free:
            problems.append(
                f"{environment}: needs {count} x {show_bytes(need.memory)} memory, "
                f"{pool.name} has {show_bytes(max(0, pool.memory_free))} free"
            )
        if need.disk and pool.disk_free is not None and count * need.disk > pool.disk_free:
            problems.append(
                f"{environment}: needs {count} x {show_bytes(need.disk)} disk, "
                f"{pool.name} has {show_bytes(max(0, pool.disk_free))} free"
            )
        if need.cpu and pool.cpus is not None and need.cpu > pool.cpus:
            problems.append(
                f"{environment}: needs {show_cpu(need.cpu)} per replica, "
                f"{pool.name} has {show_cpu(pool.cpus)}"
            )
        if need.cpu and pool.cpu_free is not None and count * need.cpu > pool.cpu_free + 1e-9:
            problems.append(
                f"{environment}: needs {count} x {show_cpu(need.cpu)}, "
                f"{pool.name} has {show_cpu(max(0.0, pool.cpu_free))} free"
            )
        if pool.pods_free is not None and count > pool.pods_free:
            problems.append(f"{environment}: needs {count} more pods, {pool.name} allows {pool.pods_free}")
    return problems


def unenforced(need: ReplicaResources, capabilities: PlatformCapabilities, platform: str) -> list[str]:
    """The settings this platform does not enforce per replica, said plainly (journaled as a note)."""
    asked = {
        Resource.CPU: need.cpu is not None,
        Resource.MEMORY: need.memory is not None,
        Resource.DISK: need.disk is not None,
    }
    missing = [
        resource.value for resource, wanted in asked.items() if wanted and resource not in capabilities.limits
    ]
    if not missing:
        return []
    why = "; ".join(capabilities.notes) or "the platform has no per-replica limits"
    return [f"{platform} does not limit {' and '.join(missing)} per replica ({why})"]


def unchecked(need: ReplicaResources, capabilities: PlatformCapabilities, platform: str) -> list[str]:
    """The needs whose room this platform cannot check before a change."""
    asked = {Resource.MEMORY: need.memory, Resource.DISK: need.disk, Resource.CPU: need.cpu}
    missing = [r.value for r, value in asked.items() if value is not None and r not in capabilities.capacity]
    if not missing:
        return []
    return [f"{platform} cannot check free {' and '.join(missing)} before a change"]


def replica_limit_problem(environment: Environment, replicas: int) -> str | None:
    """Why ``replicas`` is outside the environment's replica limits, naming both fields; None when within."""
    limits = environment.resources
    where = f"environments.{environment.name}.resources"
    if limits.max_replicas is not None and replicas > limits.max_replicas:
        return f"strategy.replicas: {replicas} is above {where}.maxReplicas ({limits.max_replicas})"
    if limits.min_replicas is not None and replicas < limits.min_replicas:
        return f"strategy.replicas: {replicas} is below {where}.minReplicas ({limits.min_replicas})"
    return None
