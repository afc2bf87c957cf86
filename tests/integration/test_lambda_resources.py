"""Lambda's share of environment resources and TLS, against a moto server: memory and disk per replica become
the published version's MemorySize and EphemeralStorage; what the platform declares about HTTPS depends on
the endpoint it calls (AWS's own: HTTPS with AWS's certificate; a plain-HTTP emulator: none)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.lambda_platform import LambdaPlatform
from engine.models import Artifact, ReplicaResources, Resource, Target
from engine.platform import RevisionSpec
from tests.integration.environments import Moto, moto_server, zip_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("aws-config"), "lambda-resources") as running:
        yield running


def test_memory_and_disk_become_the_versions_configuration(moto: Moto, tmp_path: Path) -> None:
    service = f"res-{int(time.time())}"
    path = zip_for(tmp_path / "app.zip", "1.0.0")
    artifact = Artifact(
        name=service, version="1.0.0", source=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    adapter = LambdaPlatform(tmp_path / "state", moto.settings())
    try:
        resources = ReplicaResources(memory=256 * 2**20, disk=2**30)
        target = Target(service=service, environment="test")
        status = adapter.ensure_revision(
            RevisionSpec(target=target, artifact=artifact, replicas=1, resources=resources)
        )
        function = f"{service}-test"
        versions = moto.client("lambda").list_versions_by_function(FunctionName=function)["Versions"]
        (published,) = [v for v in versions if v.get("Description") == status.revision]
        assert published["MemorySize"] == 256
        assert published["EphemeralStorage"] == {"Size": 1024}
        # A published version is immutable: new limits come with a new revision; impossible ones are refused
        # before it is made.
        path2 = zip_for(tmp_path / "app2.zip", "2.0.0")
        second = artifact.model_copy(
            update={
                "version": "2.0.0",
                "source": str(path2),
                "sha256": hashlib.sha256(path2.read_bytes()).hexdigest(),
            }
        )
        too_small = RevisionSpec(
            target=target, artifact=second, replicas=1, resources=ReplicaResources(memory=64 * 2**20)
        )
        expected = "resources.memory: Lambda takes 128 to 10240 MB, the environment asks for 64 MB"
        with pytest.raises(ValueError, match=re.escape(expected)):
            adapter.ensure_revision(too_small)
        after = moto.client("lambda").list_versions_by_function(FunctionName=function)["Versions"]
        assert [v["Description"] for v in after if v["Version"] != "$LATEST"] == [status.revision]
    finally:
        adapter.close()


def test_what_lambda_declares_about_https_follows_its_endpoint(moto: Moto, tmp_path: Path) -> None:
    emulated = LambdaPlatform(tmp_path / "a", moto.settings()).capabilities
    assert not emulated.serves_tls  # moto is reached over plain HTTP: nothing there is TLS
    assert any("plain HTTP" in note for note in emulated.notes)
    aws = LambdaPlatform(tmp_path / "b", {"region": "eu-west-1"}).capabilities
    assert aws.serves_tls and aws.tls_by_provider and aws.scales_itself
    assert aws.limits == frozenset({Resource.MEMORY, Resource.DISK})
