"""Test certificates made with ``cryptography``: a CA, and a server certificate it signs for 127.0.0.1 and
localhost (what HAProxy serves in the TLS tests), plus a second CA that signed nothing of ours (a client that
trusts only it must fail)."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertificateFiles:
    ca: Path  # the CA clients verify against
    certificate: Path  # server certificate for 127.0.0.1 and localhost
    key: Path  # its key (0600)
    other_ca: Path  # a CA that signed nothing here


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _ca(common_name: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def make_certificates(folder: Path, days: int = 2) -> CertificateFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca("orchestrator test CA", days)
    other_cert, _ = _ca("some other CA", days)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    made = CertificateFiles(
        ca=folder / "ca.crt",
        certificate=folder / "server.crt",
        key=folder / "server.key",
        other_ca=folder / "other-ca.crt",
    )
    made.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    made.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    made.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(made.key, key)
    return made


def https_get(port: int, ca: Path, path: str = "/") -> tuple[int, str]:
    """GET https://127.0.0.1:port, verified against ``ca``: (status, the X-Version header)."""
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("X-Version", "")
    finally:
        connection.close()


def plain_http_is_not_served(port: int) -> bool:
    """True when a plain-HTTP request to the port gets no HTTP answer (the port speaks TLS only)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        connection.getresponse()
    except (http.client.HTTPException, OSError):
        return True
    finally:
        connection.close()
    return False
