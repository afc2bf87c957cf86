"""Certificates and keys on this machine, for the adapters that serve HTTPS and the probes that verify it.

Not an adapter: a toolbox (as ``localhost.py`` is). A key is read only where it is needed, written only with
mode 0600, and never put into an error message, a log line or a return value meant for display: errors name
the file and the problem, never the content.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from engine.platform import TlsMaterial


class TlsFileError(ValueError):
    """A certificate or key that cannot be used; the message names the file and never its content."""


@dataclass(frozen=True)
class ServerPair:
    """A validated certificate chain and its key, as PEM bytes (keep away from logs)."""

    chain: bytes
    key: bytes

    @property
    def combined(self) -> bytes:
        """HAProxy's ``crt`` file: the chain, then the key."""
        return self.chain.rstrip(b"\n") + b"\n" + self.key.rstrip(b"\n") + b"\n"

    @property
    def fingerprint(self) -> str:
        """Changes when either part changes; safe to record (a hash, not the key)."""
        return hashlib.sha256(self.combined).hexdigest()[:16]


def read_reference(reference: str, what: str) -> bytes:
    """The bytes behind a reference: a path, ``file:/path`` or ``env:NAME`` (the PEM text in a variable of
    the process that serves). Errors name the reference, never what is behind it."""
    if reference.startswith("env:"):
        value = os.environ.get(reference[4:])
        if value is None:
            raise TlsFileError(f"the TLS {what} {reference}: the environment variable is not set here")
        return value.encode()
    path = reference.removeprefix("file:")
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def load_server_pair(material: TlsMaterial, now: datetime.datetime | None = None) -> ServerPair:
    """Read and check the certificate and key: both PEM, the key matches the certificate, the certificate is
    valid now. Raises TlsFileError naming the reference."""
    chain = read_reference(material.certificate, "certificate")
    key_bytes = read_reference(material.key, "key")
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise TlsFileError(f"TLS certificate {material.certificate} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        # TypeError: the key is encrypted; HAProxy could not read it without a passphrase either.
        raise TlsFileError(f"TLS key {material.key} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.PEM, public)
    if ours != certificate.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise TlsFileError(f"TLS key {material.key} does not belong to certificate {material.certificate}")
    moment = now or datetime.datetime.now(datetime.UTC)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if not start <= moment <= end:
        raise TlsFileError(
            f"TLS certificate {material.certificate} is valid from {start:%Y-%m-%d} to {end:%Y-%m-%d}, "
            "not now"
        )
    return ServerPair(chain=chain, key=key_bytes)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0600 from the first byte (never readable by others, not even
    briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name against ``ca_file`` (a path or
    ``file:/path``; the system's CAs when None). Kept per process while the file is unchanged: loading a
    CA bundle costs about 25 ms of CPU, and runners and health monitors ask for one per deployment or
    probe round. Callers only read it (a shared context must not be changed)."""
    path = str(Path(ca_file.removeprefix("file:")).expanduser()) if ca_file else None
    try:
        stamp = _file_stamp(path) if path else None
        return _cached_context(path, stamp)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileError(f"cannot use the CA file {ca_file}: {exc}") from None


def _file_stamp(path: str) -> tuple[int, int, int]:
    """What changes when a CA file is replaced or rewritten (a rotated CA gets a new context)."""
    status = os.stat(path)
    return status.st_ino, status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=16)
def _cached_context(path: str | None, stamp: tuple[int, int, int] | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=path)
