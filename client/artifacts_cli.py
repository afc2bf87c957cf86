"""``python orchestrator.py artifacts ...``: a service's versions, signing an artifact, making a key pair.

    artifacts SERVICE [--json]
    artifacts sign --artifact web-2.0.0.yaml --key release.key [--key-id release] [--out signed.yaml]
    artifacts keygen --key-id release [--out-dir .]

Signing needs no cluster: it reads the artifact file (the same YAML as ``deploy --artifact``), computes the
sha256 of its ``path`` when it has one (refusing a different digest already written in it), and adds an
ed25519 ``signature`` made with the private key; the public key goes under ``trustedKeys`` in
enterprise_config.yaml. A private key protected by a password takes it from $ORCH_SIGNING_KEY_PASSWORD.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.driver import read_journal
from engine.artifacts import (
    ArtifactEntry,
    ArtifactRegistry,
    digest_path,
    load_private_key,
    private_key_pem,
    public_key_pem,
    sign,
)
from engine.models import Artifact

PASSWORD_ENV = "ORCH_SIGNING_KEY_PASSWORD"


def artifacts_command(words: list[str], config: str | None) -> int:
    if words[:1] == ["sign"]:
        return _sign(_sign_parser().parse_args(words[1:]))
    if words[:1] == ["keygen"]:
        return _keygen(_keygen_parser().parse_args(words[1:]))
    listing = argparse.ArgumentParser(prog="orchestrator.py artifacts", description=__doc__)
    listing.add_argument("service")
    listing.add_argument("--json", action="store_true")
    args = listing.parse_args(words)
    entries = ArtifactRegistry(read_journal(config)).versions(args.service)
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
    else:
        print("\n".join(_show(e) for e in entries) or f"no artifact of {args.service} in the journal")
    return 0


def _show(entry: ArtifactEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.registered_at))
    build = entry.build or {}
    built = " ".join(f"{k}={v}" for k, v in build.items() if v) or "-"
    checks = " ".join(f"{k}={v}" for k, v in entry.verification.items() if k != "deployment") or "-"
    live = ", ".join(entry.live_in) or "nowhere"
    return (
        f"{entry.version:<12} live in {live:<24} sha256 {(entry.sha256 or '-')[:16]:<16} "
        f"signed by {entry.signed_by or '-':<10} source {entry.source}\n"
        f"    registered {when} by {entry.registered_by}; build {built}; checks {checks}; "
        f"{len(entry.deployments)} deployment(s)"
    )


def _sign_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator.py artifacts sign", description=__doc__)
    parser.add_argument("--artifact", required=True, help="the artifact's YAML file")
    parser.add_argument("--key", required=True, help="the ed25519 private key (PEM or OpenSSH)")
    parser.add_argument("--key-id", help="its name under trustedKeys (default: the key file's name)")
    parser.add_argument("--out", help="write the signed artifact here (default: print it)")
    return parser


def _sign(args: argparse.Namespace) -> int:
    data = yaml.safe_load(Path(args.artifact).read_text(encoding="utf-8")) or {}
    artifact = Artifact.model_validate(data)
    if artifact.path:
        digest = digest_path(artifact.path)
        if artifact.sha256 and artifact.sha256 != digest:
            raise ValueError(
                f"sha256: the file says {artifact.sha256}, but {artifact.path} hashes to {digest}"
            )
        artifact = artifact.model_copy(update={"sha256": digest})
    password = os.environ.get(PASSWORD_ENV)
    key = load_private_key(Path(args.key).read_bytes(), password.encode() if password else None)
    key_id = args.key_id or Path(args.key).stem
    signed = sign(artifact, key, key_id)
    text = yaml.safe_dump(
        signed.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=False
    )
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(
            f"{args.out}: {signed.name} {signed.version} sha256 {signed.sha256} signed with key {args.key_id}"
        )
    else:
        print(text, end="")
    return 0


def _keygen_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator.py artifacts keygen", description=__doc__)
    parser.add_argument("--key-id", required=True, help="the key's name under trustedKeys")
    parser.add_argument("--out-dir", default=".", help="where KEY_ID.key (private) and KEY_ID.pub go")
    return parser


def _keygen(args: argparse.Namespace) -> int:
    folder = Path(args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{args.key_id}.key", folder / f"{args.key_id}.pub"
    if private.exists():
        raise ValueError(f"{private} exists already: not overwriting a key")
    key = Ed25519PrivateKey.generate()
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(private_key_pem(key))
    public.write_text(public_key_pem(key), encoding="utf-8")
    indented = "".join(f"    {line}\n" for line in public_key_pem(key).splitlines())
    print(f"private key: {private} (keep it secret)\npublic key: {public}\n")
    print(f"add to enterprise_config.yaml:\ntrustedKeys:\n  {args.key_id}: |\n{indented}", end="")
    return 0
