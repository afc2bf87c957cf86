"""HTTPS and per-replica limits on the local platform, at the adapter: real HAProxy, real processes, real
control groups.

- A target served with TLS: HAProxy terminates it with the test CA's server certificate (``bind ... ssl
  crt``); a client that trusts the CA gets the service, a plain-HTTP request to the same port gets no HTTP
  answer, a client trusting another CA is refused; the combined PEM is 0600 and its key is in no state file.
- Per-replica limits: the replica's process runs in a memory and CPU control group with the limits asked
  for, read back from the kernel's files (and, where they exist here, a memory limit that kills).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.cgroups import CgroupLimiter
from adapters.http_probe import HttpSmokeTester, ProbeResult, probe_all
from adapters.routed import RoutedPlatform
from engine.models import ReplicaResources, Target
from engine.platform import PlatformError, RevisionSpec, Serving, TlsMaterial
from tests.integration.environments import wait_for
from tests.integration.test_local_platform import make_platform, port_settings, sample_artifact, tear_down
from tests.tls_certs import CertificateFiles, https_get, make_certificates, plain_http_is_not_served

pytestmark = pytest.mark.integration


@pytest.fixture
def certificates(tmp_path: Path) -> CertificateFiles:
    return make_certificates(tmp_path / "certs")


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[RoutedPlatform, Target, Path]]:
    state_dir = tmp_path / "state"
    platform = make_platform(state_dir, port_settings())
    target = Target(service="shop", environment="secure")
    yield platform, target, state_dir
    tear_down(platform, target, state_dir)


def wait_ready(platform: RoutedPlatform, target: Target, revision: str, replicas: int) -> None:
    def ready() -> bool:
        status = platform.revision_status(target, revision)
        return status is not None and status.ready and status.desired_replicas == replicas

    wait_for(f"{revision} to be ready", ready)


LIMIT_FILES = ("memory.max", "cpu.max", "memory.limit_in_bytes", "cpu.cfs_quota_us", "cpu.cfs_period_us")


def read_limits(folders: list[Path]) -> dict[str, str]:
    """The limit files the kernel keeps for the replica's groups (v1 or v2), as written there now."""
    return {
        name: (folder / name).read_text().strip()
        for folder in folders
        for name in LIMIT_FILES
        if (folder / name).exists()
    }


def tls_of(certificates: CertificateFiles) -> Serving:
    material = TlsMaterial(
        certificate=str(certificates.certificate), key=str(certificates.key), ca=str(certificates.ca)
    )
    return Serving(tls=material)


async def probe_pair(url: str, certificates: CertificateFiles) -> tuple[ProbeResult, ProbeResult]:
    (trusted,) = await probe_all([url], 5.0, str(certificates.ca))
    (untrusted,) = await probe_all([url], 5.0, str(certificates.other_ca))
    return trusted, untrusted


def test_tls_frontend_serves_https_only(
    local: tuple[RoutedPlatform, Target, Path], certificates: CertificateFiles
) -> None:
    platform, target, state_dir = local
    serving = tls_of(certificates)
    spec = RevisionSpec(target=target, artifact=sample_artifact("1.0.0"), replicas=1, serving=serving)
    platform.ensure_revision(spec)
    wait_ready(platform, target, "1-0-0", 1)
    state = platform.set_traffic(target, {"1-0-0": 100})
    assert state.address.startswith("https://127.0.0.1:"), state.address
    port = int(state.address.rsplit(":", 1)[1])

    assert https_get(port, certificates.ca) == (200, "1.0.0")
    assert plain_http_is_not_served(port)  # the port speaks TLS only: no HTTP answer to plain HTTP
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, certificates.other_ca)

    # Our own clients verify the certificate against the environment's CA: the smoke tester, the monitors.
    base = f"https://127.0.0.1:{port}"
    assert HttpSmokeTester(ca_file=str(certificates.ca)).smoke([base], "/health", 4) == (4, 0)
    assert HttpSmokeTester(ca_file=str(certificates.other_ca)).smoke([base], "/health", 4) == (0, 4)
    trusted, untrusted = asyncio.run(probe_pair(f"{base}/health", certificates))
    assert trusted.healthy and trusted.status == 200
    assert not untrusted.healthy and "certificate verify failed" in (untrusted.error or "").lower()

    pem = state_dir / "haproxy" / f"{target.key}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    key_text = certificates.key.read_text().strip().splitlines()[1]  # a line of the key's base64
    for path in (state_dir / "haproxy").iterdir():
        if path.suffix in (".json", ".cfg"):
            assert key_text not in path.read_text(), f"key material in {path.name}"
    assert json.loads((state_dir / "haproxy" / f"{target.key}.json").read_text())["tls_pem"] == str(pem)

    # Turning TLS off again reloads the same port to plain HTTP.
    platform.ensure_revision(spec.model_copy(update={"serving": Serving()}))
    assert platform.traffic(target).address == f"http://127.0.0.1:{port}"
    assert not plain_http_is_not_served(port)
    assert not pem.exists()


def test_a_key_that_does_not_match_is_refused_naming_the_files(
    local: tuple[RoutedPlatform, Target, Path], certificates: CertificateFiles, tmp_path: Path
) -> None:
    platform, target, _ = local
    other = make_certificates(tmp_path / "other")
    serving = Serving(tls=TlsMaterial(certificate=str(certificates.certificate), key=str(other.key)))
    spec = RevisionSpec(target=target, artifact=sample_artifact("1.0.0"), replicas=1, serving=serving)
    with pytest.raises(PlatformError) as raised:
        platform.ensure_revision(spec)
    assert f"TLS key {other.key} does not belong to certificate {certificates.certificate}" in str(
        raised.value
    )
    assert other.key.read_text().splitlines()[1] not in str(raised.value)


def _limiter_or_reason() -> CgroupLimiter:
    return CgroupLimiter()


@pytest.mark.skipif(not _limiter_or_reason().available, reason=_limiter_or_reason().reason or "available")
def test_replicas_run_in_their_control_groups(local: tuple[RoutedPlatform, Target, Path]) -> None:
    platform, target, state_dir = local
    resources = ReplicaResources(cpu=0.25, memory=96 * 2**20)
    spec = RevisionSpec(target=target, artifact=sample_artifact("1.0.0"), replicas=1, resources=resources)
    platform.ensure_revision(spec)
    wait_ready(platform, target, "1-0-0", 1)
    record = json.loads((state_dir / "processes" / f"{target.key}.json").read_text())["replicas"][0]
    folders = [Path(folder) for folder in record["cgroups"]]
    assert folders, "the replica joined no control group"
    pids = {int(pid) for folder in folders for pid in (folder / "cgroup.procs").read_text().split()}
    assert record["pid"] in pids
    limits = read_limits(folders)
    if "memory.max" in limits:  # cgroup v2
        assert limits["memory.max"] == str(96 * 2**20)
        assert limits["cpu.max"] == "25000 100000"
    else:
        assert limits["memory.limit_in_bytes"] == str(96 * 2**20)
        assert (limits["cpu.cfs_quota_us"], limits["cpu.cfs_period_us"]) == ("25000", "100000")

    # New limits apply in place: same process, new values.
    bigger = spec.model_copy(update={"resources": ReplicaResources(cpu=0.5, memory=128 * 2**20)})
    platform.ensure_revision(bigger)
    after = json.loads((state_dir / "processes" / f"{target.key}.json").read_text())["replicas"][0]
    assert after["pid"] == record["pid"]
    values = read_limits(folders)
    assert str(128 * 2**20) in (values.get("memory.max"), values.get("memory.limit_in_bytes"))

    platform.remove_revision(target, "1-0-0")
    assert not any(folder.exists() for folder in folders), "control groups left behind"


@pytest.mark.skipif(not _limiter_or_reason().available, reason=_limiter_or_reason().reason or "available")
def test_a_replica_over_its_memory_limit_is_killed(local: tuple[RoutedPlatform, Target, Path]) -> None:
    """The limit is enforced by the kernel, not only written: a replica that allocates past it dies."""
    platform, target, state_dir = local
    artifact = sample_artifact("1.0.0").model_copy(
        update={"command": ["python3", "-c", "import time; x = bytearray(256 * 2**20); time.sleep(60)"]}
    )
    resources = ReplicaResources(memory=64 * 2**20)
    platform.ensure_revision(RevisionSpec(target=target, artifact=artifact, replicas=1, resources=resources))

    def dead() -> bool:
        status = platform.revision_status(target, "1-0-0")
        return status is not None and status.running_replicas == 0

    wait_for("the kernel to kill the replica over its memory limit", dead, timeout=30)
    log = (state_dir / "processes" / "logs" / target.key / "1-0-0@0.log").read_text()
    assert "MemoryError" not in log  # killed by the kernel, not failed by Python
