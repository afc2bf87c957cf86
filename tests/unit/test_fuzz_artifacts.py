"""Fuzzing artifacts: the Artifact model, digests, ed25519 signatures, public keys and scanner reports
(engine/artifacts.py). Bad input is a ValidationError or ValueError naming the field, or a failed check whose
evidence says why; never another exception. A signature covers what it says it covers."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.artifacts import (
    SEVERITIES,
    check_digest,
    check_signature,
    digest_path,
    judge_scan,
    load_private_key,
    load_public_key,
    path_digests,
    public_key_pem,
    sign,
)
from engine.models import Artifact, ArtifactSignature
from tests.unit.fuzzing import FEW, FUZZ, assert_clear, garbage, mutations

KEY = Ed25519PrivateKey.generate()
TRUSTED = {"release": public_key_pem(KEY)}
VALID: dict[str, Any] = {
    "name": "web",
    "version": "2.0.0",
    "source": "registry.example.com/web:2.0.0",
    "sha256": "a" * 64,
    "command": ["python3", "app.py"],
    "env": {"MODE": "fast"},
    "metadata": {"team": "payments"},
    "build": {"commit": "abc123", "builtAt": "2026-11-29T10:00:00Z", "builder": "ci"},
}
SIGNED = sign(Artifact.model_validate(VALID), KEY, "release")
# What the signature covers (engine.artifacts.signing_payload) and what it does not.
COVERED = {"name": "web2", "version": "2.0.1", "source": "evil/web", "sha256": "b" * 64, "command": ["sh"]}
UNCOVERED = {"env": {"MODE": "slow"}, "metadata": {"team": "other"}, "health_path": "/ready"}


@given(st.data())
@FUZZ
@example({"name": "Web"})
@example({"version": "-1"})
@example({"sha256": "A" * 64})
@example({"env": {"DB_PASSWORD": "x"}})
@example({"secretEnv": {"TOKEN": "plain"}})
def test_a_mutated_artifact_validates_or_names_the_field(change: Any) -> None:
    data = {**VALID, **change} if isinstance(change, dict) else change.draw(mutations(VALID))[3]
    try:
        artifact = Artifact.model_validate(data)
    except ValidationError as error:
        assert_clear(str(error))
        assert all(problem["loc"] for problem in error.errors()), error.errors()
        return
    assert artifact.revision and len(artifact.revision) <= 40


@given(st.sampled_from(sorted(COVERED)))
@FEW
def test_changing_a_covered_field_breaks_the_signature(field: str) -> None:
    changed = SIGNED.model_copy(update={field: COVERED[field]})
    check = check_signature(changed, TRUSTED, required=True)
    assert check.failed and "does not verify" in check.evidence, check
    assert check_signature(SIGNED, TRUSTED, required=True).status == "passed"


@given(st.sampled_from(sorted(UNCOVERED)))
@FEW
def test_where_it_runs_is_not_covered_by_the_signature(field: str) -> None:
    changed = SIGNED.model_copy(update={field: UNCOVERED[field]})
    assert check_signature(changed, TRUSTED, required=True).status == "passed"


@given(
    st.text(min_size=1, max_size=200),
    st.text(min_size=1, max_size=100),
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=120), max_size=2),
)
@FUZZ
@example("not base64!", "release", TRUSTED)
@example(base64.b64encode(b"x" * 64).decode(), "release", TRUSTED)
@example("AAAA", "release", {"release": "ssh-foo AAAA"})  # an unsupported key type: was UnsupportedAlgorithm
@example("AAAA", "release", {"release": "-----BEGIN PRIVATE KEY-----"})
def test_a_garbage_signature_or_key_fails_the_check_with_a_reason(
    value: str, key_id: str, trusted: dict[str, str]
) -> None:
    artifact = SIGNED.model_copy(update={"signature": ArtifactSignature(key_id=key_id, value=value)})
    check = check_signature(artifact, trusted, required=True)
    assert check.failed, check
    assert key_id in check.evidence


@given(st.one_of(st.text(max_size=300), st.sampled_from(["ssh-rsa AAAA", "ssh-ed25519 !!", "file:/nope"])))
@FUZZ
@example("ssh-foo AAAA")  # an unsupported key type: was cryptography's UnsupportedAlgorithm
@example("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
def test_a_garbage_public_key_is_a_value_error(text: str) -> None:
    try:
        load_public_key(text)
    except ValueError as error:
        assert_clear(str(error))
        assert len(text) < 8 or text.strip() not in str(error)  # the text is never echoed


@given(st.binary(max_size=300))
@FEW
@example(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
def test_a_garbage_private_key_is_a_value_error(data: bytes) -> None:
    try:
        load_private_key(data)
    except ValueError as error:
        assert_clear(str(error))
    else:
        raise AssertionError("garbage loaded as a private key")


def _reports() -> st.SearchStrategy[bytes]:
    finding = st.fixed_dictionaries(
        {},
        optional={
            "id": garbage,
            "severity": st.one_of(st.sampled_from([*SEVERITIES, "HIGH", "unknown"]), garbage),
            "VulnerabilityID": garbage,
            "Severity": garbage,
        },
    )
    shaped = st.one_of(
        st.fixed_dictionaries({"vulnerabilities": st.lists(st.one_of(finding, garbage), max_size=4)}),
        st.fixed_dictionaries(
            {
                "Results": st.lists(
                    st.one_of(
                        garbage,
                        st.fixed_dictionaries(
                            {"Vulnerabilities": st.one_of(garbage, st.lists(finding, max_size=3))}
                        ),
                    ),
                    max_size=3,
                )
            }
        ),
        garbage,
    )
    return st.one_of(shaped.map(lambda report: json.dumps(report).encode()), st.binary(max_size=80))


@given(st.integers(-1, 255), _reports(), st.binary(max_size=60), st.sampled_from(SEVERITIES))
@FUZZ
@example(0, b'{"Results": [[1]]}', b"", "high")  # was AttributeError: 'list' object has no attribute 'get'
@example(0, b'{"Results": [{"Vulnerabilities": 5}]}', b"", "high")  # was TypeError: int is not iterable
@example(0, b"\xff", b"\xff", "low")
def test_any_scanner_report_is_judged_never_raised(
    exit_code: int, report: bytes, stderr: bytes, fail_on: str
) -> None:
    check = judge_scan(exit_code, report, stderr, fail_on, 0.5)
    assert check.name == "vulnerability-scan" and check.evidence
    if exit_code != 0:
        assert check.failed, check  # a failing scanner never passes


@given(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), st.binary(max_size=200))
@FEW
def test_a_digest_passes_only_for_its_own_content(claimed: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "artifact.bin"
        file.write_bytes(content)
        artifact = Artifact(name="web", version="1", path=str(file), sha256=claimed)
        check = check_digest(artifact, path_digests, required=True)
        assert (check.status == "passed") == (claimed == digest_path(file)), check
        missing = artifact.model_copy(update={"path": str(Path(folder) / "gone")})
        gone = check_digest(missing, path_digests, required=True)
        assert gone.failed and "gone" in gone.evidence, gone
