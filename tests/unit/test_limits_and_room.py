"""Which control groups the local platform can use, what it writes there, and the room a Kubernetes quota
leaves, on folder trees and objects made here (the real kernel and emulator are in the integration tier)."""

from __future__ import annotations

from pathlib import Path

from adapters.cgroups import CgroupLimiter
from adapters.kubernetes_platform import _quota_pool
from adapters.localhost import memory_available
from engine.models import ReplicaResources

MiB = 2**20


def fake_v2(root: Path, controllers: str) -> Path:
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers)
    (root / "cgroup.subtree_control").write_text("")
    return root


def self_cgroup(folder: Path, text: str) -> Path:
    path = folder / "self-cgroup"
    path.write_text(text)
    return path


def test_cgroup_v2_with_memory_and_cpu_is_used(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "cg", "cpuset cpu io memory pids")
    (root / "deploy-orchestrator").mkdir()  # the kernel gives every new group these files
    (root / "deploy-orchestrator" / "cgroup.subtree_control").write_text("")
    limiter = CgroupLimiter(root, self_cgroup(tmp_path, "0::/\n"))
    assert limiter.available and limiter.describe() == "cgroup v2 memory and cpu controllers"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu"
    group = root / "deploy-orchestrator" / "web.prod.1-0-0.0"
    procs = limiter.prepare("web.prod.1-0-0.0", ReplicaResources(cpu=0.5, memory=256 * MiB))
    assert procs == [str(group / "cgroup.procs")]
    assert (group / "memory.max").read_text() == str(256 * MiB)
    assert (group / "cpu.max").read_text() == "50000 100000"
    limiter.apply("web.prod.1-0-0.0", ReplicaResources(memory=64 * MiB))
    assert ((group / "memory.max").read_text(), (group / "cpu.max").read_text()) == (
        str(64 * MiB),
        "max 100000",
    )
    assert limiter.prepare("web.prod.1-0-0.1", None) == []  # nothing asked: nothing joined


def test_cgroup_v2_without_controllers_falls_back_to_v1_under_our_own_group(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    fake_v2(root / "unified", "")  # the hybrid layout: v2 mounted, its controllers bound to v1
    (root / "memory" / "sandbox").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    own = self_cgroup(tmp_path, "4:memory:/sandbox\n1:cpu:/\n0::/\n")
    limiter = CgroupLimiter(root, own)
    assert limiter.available and limiter.describe() == "cgroup v1 memory and cpu controllers"
    limiter.prepare("web.prod.1-0-0.0", ReplicaResources(cpu=1.5, memory=MiB))
    memory_group = root / "memory" / "sandbox" / "deploy-orchestrator" / "web.prod.1-0-0.0"
    cpu_group = root / "cpu" / "deploy-orchestrator" / "web.prod.1-0-0.0"
    assert (memory_group / "memory.limit_in_bytes").read_text() == str(MiB)
    assert (cpu_group / "cpu.cfs_quota_us").read_text() == "150000"
    assert (cpu_group / "cpu.cfs_period_us").read_text() == "100000"
    limiter.remove([str(memory_group.parent / "gone"), str(tmp_path / "nothing")])  # absent: no error


def test_no_usable_hierarchy_is_said_plainly(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    fake_v2(root / "unified", "pids")
    limiter = CgroupLimiter(root, self_cgroup(tmp_path, "0::/\n"))
    assert not limiter.available
    assert "offers no memory and cpu controllers (pids)" in limiter.reason
    assert "no cgroup v1 memory and cpu hierarchies" in limiter.reason
    assert limiter.prepare("x", ReplicaResources(memory=MiB)) == []


def test_free_memory_is_the_closer_of_the_host_and_our_own_group(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
    assert memory_available(meminfo, tmp_path / "missing") == 4_000_000 * 1024


def test_a_quota_leaves_the_tightest_of_its_limits() -> None:
    hard = {"requests.memory": "2Gi", "limits.memory": "3Gi", "requests.cpu": "2", "pods": "10"}
    used = {"requests.memory": "1536Mi", "limits.memory": "1Gi", "requests.cpu": "1500m", "pods": "9"}
    pool = _quota_pool("ResourceQuota q in ns", 2, hard, used)
    assert pool.memory_free == 512 * MiB
    assert pool.cpu_free == 0.5
    assert pool.pods_free == 1
    assert pool.disk_free is None  # not limited by this quota
    fresh = _quota_pool("ResourceQuota q in ns", 2, {"limits.memory": "1Gi"}, {})
    assert fresh.memory_free == 2**30  # not counted yet by the quota controller: nothing used
