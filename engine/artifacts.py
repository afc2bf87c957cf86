"""Artifacts: their digest, signature, source and vulnerability scan, checked before any deploy; and the
artifact registry (the journal's ``artifact`` records) that says what each version is and where it runs.

- Digest: the SHA-256 of the artifact's content: a file's bytes; a folder's manifest (every entry's relative
  path, kind, executable bit and content digest, in sorted order: reproducible whatever the file times,
  owners or walk order); an image's id or repository digest on Docker (read by the Docker adapter).
- Signature: ed25519 over ``signing_payload`` (name, version, source, sha256, command, build), by a key named
  in the configuration's ``trustedKeys``. ``sign`` makes one (``python orchestrator.py artifacts sign``).
- Source: must match an entry of the environment's ``allowedSources``: the same string, a prefix ending in
  '/' or ':', or a shell-style pattern with '*'.
- Scan: the configured scanner command (``scanners.vulnerability``) exits 0 and its JSON report has no
  finding at ``failOn`` severity or above.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field

from engine.journal import Journal
from engine.models import Artifact, ArtifactSignature, Model, Phase, ScannerConfig

ARTIFACT_RECORD = "artifact"
CheckName = Literal["source-allowed", "digest", "signature", "vulnerability-scan"]
CheckStatus = Literal["passed", "failed", "skipped"]
SEVERITIES = ("low", "medium", "high", "critical")
_REPORT_LIMIT = 1_000_000  # bytes of a scanner's report that are read
_SHOWN_FINDINGS = 10

# The digests of an artifact's content where it is deployed (None: there is nothing to hash).
ContentDigests = Callable[[Artifact], list[str] | None]


class Check(Model):
    """One verification of an artifact: passed, failed (the deployment stops) or skipped (not asked)."""

    name: CheckName
    status: CheckStatus
    evidence: str
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _check(name: CheckName, ok: bool, evidence: str, **details: Any) -> Check:
    return Check(name=name, status="passed" if ok else "failed", evidence=evidence, details=details)


def _skipped(name: CheckName, evidence: str) -> Check:
    return Check(name=name, status="skipped", evidence=evidence)


# --------------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------------
def digest_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_folder(folder: Path) -> str:
    """The SHA-256 of a folder's manifest: one line per entry, sorted by relative path."""
    lines: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        base = Path(root)
        for name in sorted([*dirs, *files]):
            entry = base / name
            relative = entry.relative_to(folder).as_posix()
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                lines.append(f"L {relative} {os.readlink(entry)}")
            elif stat.S_ISDIR(mode):
                lines.append(f"D {relative}")
            elif stat.S_ISREG(mode):
                executable = "x" if mode & stat.S_IXUSR else "-"
                lines.append(f"F {relative} {executable} {digest_file(entry)}")
    lines.sort()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def digest_path(path: str | Path) -> str:
    """A file's or a folder's digest; ValueError naming the path when it cannot be read."""
    where = Path(path).expanduser()
    try:
        return digest_folder(where) if where.is_dir() else digest_file(where)
    except OSError as error:
        raise ValueError(f"path: cannot read {where}: {error.strerror}") from error


def path_digests(artifact: Artifact) -> list[str] | None:
    """The content digest of an artifact with a ``path`` (the default ContentDigests)."""
    return [digest_path(artifact.path)] if artifact.path else None


def check_digest(artifact: Artifact, content: ContentDigests, required: bool) -> Check:
    if artifact.sha256 is None:
        if required:
            return _check("digest", False, "no sha256 digest given, and this environment requires one")
        return _skipped("digest", "no sha256 digest given")
    try:
        actual = content(artifact)
    except ValueError as error:
        return _check("digest", False, f"the content cannot be read: {error}")
    if not actual:
        return _check(
            "digest",
            False,
            "nothing to hash: give the artifact's path (a file or folder), or an image on docker",
        )
    expected = artifact.sha256
    if expected in actual:
        return _check("digest", True, f"sha256 {expected} matches the content", sha256=expected)
    return _check(
        "digest",
        False,
        f"sha256 mismatch: the artifact says {expected}, its content is {actual[0]}",
        expected=expected,
        actual=actual[0],
    )


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------
def signing_payload(artifact: Artifact) -> bytes:
    """What a signature covers: what the artifact is and what runs, not where it is deployed."""
    covered = artifact.model_dump(
        mode="json", include={"name", "version", "source", "sha256", "command", "build"}
    )
    return json.dumps(covered, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(artifact: Artifact, private_key: Ed25519PrivateKey, key_id: str) -> Artifact:
    if artifact.sha256 is None:
        raise ValueError("sha256: an artifact is signed with its digest: give path or sha256 first")
    value = base64.b64encode(private_key.sign(signing_payload(artifact))).decode("ascii")
    return artifact.model_copy(update={"signature": ArtifactSignature(key_id=key_id, value=value)})


def load_private_key(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """An ed25519 private key from PEM (PKCS#8) or OpenSSH format."""
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key: Any = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"not a readable private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the key is {type(key).__name__}, not ed25519")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_public_key(text: str) -> Ed25519PublicKey:
    """An ed25519 public key: PEM, OpenSSH ('ssh-ed25519 AAAA...'), 32 raw bytes in base64, or file:/path
    to one of these. ValueError says what is wrong (never echoing the text)."""
    value = text.strip()
    if "PRIVATE KEY" in value:
        raise ValueError("this is a private key: only public keys belong in the configuration")
    if value.startswith("file:"):
        try:
            value = Path(value.removeprefix("file:")).expanduser().read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read {value.removeprefix('file:')}: {error.strerror}") from None
    try:
        if value.startswith("-----BEGIN"):
            key: Any = serialization.load_pem_public_key(value.encode())
        elif value.startswith("ssh-"):
            key = serialization.load_ssh_public_key(value.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as error:  # 'ssh-foo ...': not a key type
        raise ValueError(f"not an ed25519 public key (PEM, ssh-ed25519 or base64): {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"the key is {type(key).__name__}, not ed25519")
    return key


def check_signature(artifact: Artifact, trusted: Mapping[str, str], required: bool) -> Check:
    signature = artifact.signature
    if signature is None:
        if required:
            return _check("signature", False, "the artifact is not signed, and this environment requires it")
        return _skipped("signature", "the artifact is not signed")
    if signature.key_id not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        return _check("signature", False, f"key '{signature.key_id}' is not trusted here (trusted: {known})")
    try:
        raw = base64.b64decode(signature.value, validate=True)
        load_public_key(trusted[signature.key_id]).verify(raw, signing_payload(artifact))
    except (InvalidSignature, binascii.Error, ValueError):
        return _check(
            "signature",
            False,
            f"the signature does not verify with key '{signature.key_id}': the artifact or its signature "
            "was changed, or it was signed with another key",
        )
    return _check(
        "signature", True, f"ed25519 signature by key '{signature.key_id}' verified", key=signature.key_id
    )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def source_allowed(source: str, allowed: Sequence[str]) -> bool:
    for entry in allowed:
        if source == entry or (entry.endswith(("/", ":")) and source.startswith(entry)):
            return True
        if "*" in entry and fnmatch.fnmatchcase(source, entry):
            return True
    return False


def check_source(artifact: Artifact, allowed: Sequence[str]) -> Check:
    if not allowed:
        return _skipped("source-allowed", "no allowedSources configured: any source is accepted")
    if source_allowed(artifact.source, allowed):
        return _check(
            "source-allowed", True, f"source '{artifact.source}' is allowed", source=artifact.source
        )
    return _check(
        "source-allowed",
        False,
        f"source '{artifact.source}' is not on the allowed list ({', '.join(allowed)})",
        source=artifact.source,
    )


# --------------------------------------------------------------------------------------------
# Vulnerability scans
# --------------------------------------------------------------------------------------------
def run_scanner(artifact: Artifact, scanner: ScannerConfig, working_dir: str | None = None) -> Check:
    """Run the scanner once (bounded by its timeout); its exit status and report decide."""
    with tempfile.TemporaryDirectory(prefix="scan-") as folder:
        report_file = Path(folder) / "report.json"
        values = _scan_values(artifact, report_file)
        argv = [_fill(part, values) for part in scanner.command]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **scanner.env,
            **{f"ARTIFACT_{key.upper()}": value for key, value in values.items() if key != "report"},
            "SCAN_REPORT": str(report_file),
        }
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                cwd=scanner.working_dir or working_dir,
                env=env,
                capture_output=True,
                timeout=scanner.timeout / 1000,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _check(
                "vulnerability-scan", False, f"the scanner did not finish within {scanner.timeout / 1000:g}s"
            )
        except OSError as error:
            return _check(
                "vulnerability-scan", False, f"the scanner could not start ({argv[0]}): {error.strerror}"
            )
        report = (
            report_file.read_bytes()[:_REPORT_LIMIT] if report_file.exists() else done.stdout[:_REPORT_LIMIT]
        )
    return judge_scan(done.returncode, report, done.stderr, scanner.fail_on, time.monotonic() - started)


def _scan_values(artifact: Artifact, report: Path) -> dict[str, str]:
    return {
        "name": artifact.name,
        "version": artifact.version,
        "source": artifact.source,
        "digest": artifact.sha256 or "",
        "path": artifact.path or "",
        "report": str(report),
    }


def _fill(part: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        part = part.replace("{" + key + "}", value)
    return part


def judge_scan(exit_code: int, report: bytes, stderr: bytes, fail_on: str, seconds: float) -> Check:
    """A scan passes when the scanner exits 0, its report is JSON it understands and no finding is at
    ``fail_on`` or above. No report is a failure, never a silent pass."""
    try:
        findings = _findings(json.loads(report or b"null"))
    except ValueError as error:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return _check(
            "vulnerability-scan",
            False,
            f"the scanner (exit {exit_code}) gave no usable report: {error}; {detail[0][:200]}".rstrip("; "),
            exit_code=exit_code,
        )
    threshold = SEVERITIES.index(fail_on)
    blocking = [
        f for f in findings if f["severity"] in SEVERITIES and SEVERITIES.index(f["severity"]) >= threshold
    ]
    counts = {
        level: sum(1 for f in findings if f["severity"] == level)
        for level in {f["severity"] for f in findings}
    }
    shown = ", ".join(f"{f['id']} ({f['severity']})" for f in blocking[:_SHOWN_FINDINGS])
    details = {
        "exit_code": exit_code,
        "counts": counts,
        "blocking": blocking[:_SHOWN_FINDINGS],
        "seconds": round(seconds, 3),
    }
    if blocking:
        more = f" and {len(blocking) - _SHOWN_FINDINGS} more" if len(blocking) > _SHOWN_FINDINGS else ""
        return _check(
            "vulnerability-scan",
            False,
            f"{len(blocking)} finding(s) at {fail_on} or above: {shown}{more}",
            **details,
        )
    if exit_code != 0:
        return _check("vulnerability-scan", False, f"the scanner exited with status {exit_code}", **details)
    total = sum(counts.values())
    return _check(
        "vulnerability-scan", True, f"scanned: {total} finding(s), none at {fail_on} or above", **details
    )


def _findings(report: Any) -> list[dict[str, str]]:
    """Findings of our own format ({"vulnerabilities": [{id, severity}]}) or Trivy's JSON."""
    if not isinstance(report, dict):
        raise ValueError("the report is not a JSON object")
    if isinstance(report.get("vulnerabilities"), list):
        items = report["vulnerabilities"]
    elif isinstance(report.get("Results"), list):
        items = _trivy_items(report["Results"])
    else:
        raise ValueError("the report has neither 'vulnerabilities' nor Trivy's 'Results'")
    found = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("a finding is not a JSON object")
        ident = item.get("id") or item.get("VulnerabilityID") or "?"
        severity = str(item.get("severity") or item.get("Severity") or "unknown").lower()
        found.append({"id": str(ident)[:100], "severity": severity})
    return found


def _trivy_items(results: list[Any]) -> list[Any]:
    """The findings of Trivy's ``Results`` (each result a JSON object with a list of ``Vulnerabilities``)."""
    items: list[Any] = []
    for index, result in enumerate(results):
        if not result:
            continue
        if not isinstance(result, dict):
            raise ValueError(f"Results[{index}] is not a JSON object")
        found = result.get("Vulnerabilities") or []
        if not isinstance(found, list):
            raise ValueError(f"Results[{index}].Vulnerabilities is not a list")
        items.extend(found)
    return items


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
class ArtifactEntry(Model):
    """One version of a service as registered, and where it runs now (from the journal)."""

    name: str
    version: str
    source: str
    sha256: str | None = None
    build: dict[str, Any] | None = None
    signed_by: str | None = None
    registered_at: float
    registered_by: str
    verification: dict[str, str] = Field(default_factory=dict, description="check -> status, last deploy")
    live_in: list[str] = Field(default_factory=list, description="environments where it serves now")
    deployments: list[str] = Field(default_factory=list)


class ArtifactConflict(ValueError):
    """A version registered before with another digest: versions are immutable."""


class ArtifactRegistry:
    def __init__(self, journal: Journal, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.clock = clock

    @staticmethod
    def key(artifact: Artifact) -> str:
        return f"{artifact.name}@{artifact.version}"

    def conflict(self, artifact: Artifact) -> str | None:
        """Why this artifact contradicts the version registered before, if it does."""
        known = self.journal.record(ARTIFACT_RECORD, self.key(artifact))
        if known and known.get("sha256") and artifact.sha256 and known["sha256"] != artifact.sha256:
            return (
                f"artifact: {artifact.name} {artifact.version} was registered with sha256 {known['sha256']}; "
                f"this one has {artifact.sha256}: give the new content a new version"
            )
        return None

    def register(self, artifact: Artifact, by: str) -> None:
        """Record a version (once; a later digest fills one registered without it)."""
        now = self.clock()

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is not None and (current.get("sha256") or not artifact.sha256):
                return current
            return _entry_of(artifact, now, by).model_dump(mode="json", exclude={"live_in", "deployments"})

        self.journal.update_record(ARTIFACT_RECORD, self.key(artifact), change)

    def record_verification(self, artifact: Artifact, deployment_id: str, checks: Sequence[Check]) -> None:
        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            fresh = _entry_of(artifact, self.clock(), "runner").model_dump(
                mode="json", exclude={"live_in", "deployments"}
            )
            entry = dict(current or fresh)
            entry["verification"] = {c.name: c.status for c in checks} | {"deployment": deployment_id}
            return entry

        self.journal.update_record(ARTIFACT_RECORD, self.key(artifact), change)

    def versions(self, service: str) -> list[ArtifactEntry]:
        """Every version of a service (oldest first), registered or seen in a deployment, with where it is
        live now: the environments whose newest successful deployment of the service is that version."""
        live: dict[str, str] = {}
        seen: dict[str, list[str]] = {}
        first: dict[str, ArtifactEntry] = {}
        for state in self.journal.deployments(limit=100_000):
            artifact = state.request.artifact
            if artifact.name != service:
                continue
            seen.setdefault(artifact.version, []).append(state.deployment_id)
            first.setdefault(
                artifact.version, _entry_of(artifact, state.submitted_at, state.request.requested_by)
            )
            if state.outcome is Phase.SUCCEEDED:
                live[state.request.environment] = artifact.version
        for record in self.journal.records(ARTIFACT_RECORD):
            if record.get("name") == service:
                fields = {k: v for k, v in record.items() if k in ArtifactEntry.model_fields}
                first[str(record["version"])] = ArtifactEntry.model_validate(fields)
        entries = [
            entry.model_copy(
                update={
                    "live_in": sorted(env for env, v in live.items() if v == version),
                    "deployments": seen.get(version, []),
                }
            )
            for version, entry in first.items()
        ]
        return sorted(entries, key=lambda e: e.registered_at)


def _entry_of(artifact: Artifact, at: float, by: str) -> ArtifactEntry:
    return ArtifactEntry(
        name=artifact.name,
        version=artifact.version,
        source=artifact.source,
        sha256=artifact.sha256,
        build=artifact.build.model_dump(mode="json") if artifact.build else None,
        signed_by=artifact.signature.key_id if artifact.signature else None,
        registered_at=at,
        registered_by=by,
    )
