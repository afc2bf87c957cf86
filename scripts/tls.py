"""Certificates for encrypted links: a private CA and certificates it signs (Ray's gRPC TLS, PostgreSQL).

Used by the test fixtures (a three-node Ray cluster with ``RAY_USE_TLS=1``, PostgreSQL with ``ssl=on``) and by
the KubeRay manifests' init container, which signs a certificate for its own pod's address with the CA that a
Kubernetes Secret holds:

    python -m scripts.tls ca DIR                                  # DIR/ca.crt, DIR/ca.key
    python -m scripts.tls cert CA_DIR OUT_DIR NAME [--ip IP] [--dns NAME]   # OUT_DIR/NAME.crt, NAME.key

Keys are written owner-readable only (PostgreSQL refuses a key that others can read).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=VALID_DAYS)
    )


def make_ca(folder: Path, common_name: str = "deploy-orchestrator CA") -> CertPair:
    """A self-signed CA: ``folder/ca.crt`` and ``folder/ca.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )  # fmt: skip
    cert = _validity(builder).sign(key, hashes.SHA256())
    pair = CertPair(folder / "ca.crt", folder / "ca.key")
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def make_cert(
    ca: CertPair, folder: Path, name: str, ips: list[str] | None = None, dns: list[str] | None = None
) -> CertPair:
    """A certificate signed by ``ca`` for the given addresses, usable by servers and clients (Ray's gRPC
    peers present the same certificate in both roles)."""
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key}: not an EC private key")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in (dns or [])]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (ips or [])]
    if not names:
        raise ValueError("a certificate needs at least one --ip or --dns name")
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    cert = _validity(builder).sign(ca_key, hashes.SHA256())
    pair = CertPair(folder / f"{name}.crt", folder / f"{name}.key")
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.tls", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ca = sub.add_parser("ca", help="make a CA in DIR")
    ca.add_argument("dir", type=Path)
    cert = sub.add_parser("cert", help="sign a certificate with the CA in CA_DIR")
    cert.add_argument("ca_dir", type=Path)
    cert.add_argument("out_dir", type=Path)
    cert.add_argument("name")
    cert.add_argument("--ip", action="append", default=[])
    cert.add_argument("--dns", action="append", default=[])
    args = parser.parse_args(argv)
    if args.cmd == "ca":
        print(make_ca(args.dir).cert)
        return 0
    pair = CertPair(args.ca_dir / "ca.crt", args.ca_dir / "ca.key")
    print(make_cert(pair, args.out_dir, args.name, args.ip, args.dns).cert)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
