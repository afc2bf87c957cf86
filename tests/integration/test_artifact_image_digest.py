"""An artifact's digest on the docker platform is its image's, read from a real Docker engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from adapters import content_digests
from engine.artifacts import check_digest
from engine.models import Artifact, PlatformConfig
from tests.integration.environments import SAMPLE_IMAGE, docker_engine_started

pytestmark = pytest.mark.integration
DOCKER = PlatformConfig(type="docker")


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    with docker_engine_started() as client:
        yield client


def _image(sha256: str | None, image: str = SAMPLE_IMAGE) -> Artifact:
    return Artifact(name="web", version="1", source=f"docker://{image}", sha256=sha256)


def test_the_image_s_id_is_its_digest_and_another_one_is_refused(engine: Any) -> None:
    image_id = engine.images.get(SAMPLE_IMAGE).id.removeprefix("sha256:")
    digests = content_digests(DOCKER)
    passed = check_digest(_image(image_id), digests, required=True)
    assert passed.status == "passed", passed.evidence
    mismatch = check_digest(_image("0" * 64), digests, required=True)
    assert mismatch.status == "failed"
    assert mismatch.evidence == f"sha256 mismatch: the artifact says {'0' * 64}, its content is {image_id}"


def test_an_image_missing_from_the_engine_fails_its_digest_check(engine: Any) -> None:
    missing = check_digest(_image("0" * 64, "local/not-built-here:1"), content_digests(DOCKER), required=True)
    assert missing.status == "failed"
    assert "image local/not-built-here:1 is not on the Docker engine" in missing.evidence
