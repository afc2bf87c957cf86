"""What the integration tests need for governance, added to the session's configuration before the queen
starts: a signing key it trusts, the example scanner with an advisory, and helpers to make artifacts."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.artifacts import digest_path, load_private_key, private_key_pem, public_key_pem, sign
from engine.models import Artifact
from examples.quickstart import SAMPLE, sample_artifact

REPO = Path(__file__).resolve().parents[2]
KEY_ID = "test-release"
VULNERABLE = b"pretend this is openssl 1.0.1f (heartbleed)\n"


@dataclass(frozen=True)
class GovernanceKit:
    folder: Path

    @property
    def key(self) -> Ed25519PrivateKey:
        return load_private_key((self.folder / f"{KEY_ID}.key").read_bytes())

    def signed(self, artifact: Artifact, key_id: str = KEY_ID) -> Artifact:
        return sign(artifact, self.key, key_id)

    def artifact(self, service: str, version: str, folder: Path | None = None, **extra: Any) -> Artifact:
        """The sample service as a signed artifact: its file (or a folder holding a copy) hashed."""
        base = sample_artifact(version, service=service)
        if folder is None:
            artifact = base.model_copy(update={"path": str(SAMPLE), "sha256": digest_path(SAMPLE), **extra})
        else:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLE, folder / SAMPLE.name)
            command = [sys.executable, str(folder / SAMPLE.name)]
            update = {"path": str(folder), "sha256": digest_path(folder), "command": command, **extra}
            artifact = base.model_copy(update=update)
        return self.signed(artifact)

    def vulnerable_folder(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "libssl.so").write_bytes(VULNERABLE)
        return folder


def add_governance(config_path: Path, folder: Path) -> GovernanceKit:
    """A trusted key, the example scanner with one advisory (VULNERABLE), written into the configuration."""
    key = Ed25519PrivateKey.generate()
    (folder / f"{KEY_ID}.key").write_bytes(private_key_pem(key))
    advisories = folder / "advisories.json"
    advisory = {
        "id": "CVE-2014-0160",
        "severity": "critical",
        "sha256": hashlib.sha256(VULNERABLE).hexdigest(),
    }
    advisories.write_text(json.dumps({"advisories": [advisory]}))
    data = yaml.safe_load(config_path.read_text())
    data["trustedKeys"] = {KEY_ID: public_key_pem(key)}
    scanner = [
        sys.executable,
        str(REPO / "examples" / "vulnerability_scanner.py"),
        "--advisories",
        str(advisories),
    ]
    data["scanners"] = {"vulnerability": {"command": scanner, "timeout": "60s"}}
    config_path.write_text(yaml.safe_dump(data))
    return GovernanceKit(folder)
