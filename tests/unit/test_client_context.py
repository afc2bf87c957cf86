"""The TLS client context of probes and smoke tests (adapters/tls_files.py): made once per CA file and
process while the file is unchanged, made again when it changes, and a bad file named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.tls_files import TlsFileError, client_context
from tests.tls_certs import make_certificates


def test_one_context_serves_while_the_ca_file_is_unchanged(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    first = client_context(str(files.ca))
    assert client_context(str(files.ca)) is first
    assert client_context(f"file:{files.ca}") is first
    assert client_context(None) is client_context(None)
    assert client_context(str(files.other_ca)) is not first


def test_a_rotated_ca_file_gets_a_new_context_that_trusts_it(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    ca = tmp_path / "ca.pem"
    shutil.copyfile(files.other_ca, ca)
    before = client_context(str(ca))
    shutil.copyfile(files.ca, tmp_path / "new.pem")
    (tmp_path / "new.pem").replace(ca)  # rotated the way a deployment tool writes it: a new file
    after = client_context(str(ca))
    assert after is not before
    issuers = {dict(item[0] for item in c["subject"])["commonName"] for c in after.get_ca_certs()}
    expected = {
        dict(item[0] for item in c["subject"])["commonName"]
        for c in client_context(str(files.ca)).get_ca_certs()
    }
    assert issuers == expected


def test_a_missing_or_bad_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsFileError, match=r"nowhere\.pem"):
        client_context(str(tmp_path / "nowhere.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(TlsFileError, match=r"bad\.pem"):
        client_context(str(bad))
