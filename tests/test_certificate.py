"""The bastion's own reading and judging of OpenSSH certificates."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from appliance.certificate import (
    CERT_TYPE_USER,
    MalformedCertificate,
    Offer,
    Rules,
    format_lifetime,
    format_timestamp,
    is_certificate_blob,
    judge,
    parse_certificate,
)
from tests.harness import cert_path, keygen, sign


def _blob(path: Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return keygen(tmp_path / "ca")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return keygen(tmp_path / "id")


def _rules(ca: Path) -> Rules:
    return Rules(ca_key=_blob(ca.with_suffix(".pub")), max_lifetime=8 * 3600, skew=60)


def test_parse_reads_every_field_ssh_keygen_writes(ca: Path, key: Path) -> None:
    sign(
        ca,
        key,
        principals="alice,ops",
        serial=77,
        key_id="alice/r1",
        options=["source-address=10.0.0.0/8"],
    )

    cert = parse_certificate(_blob(cert_path(key)))

    assert cert.serial == 77
    assert cert.cert_type == CERT_TYPE_USER
    assert cert.key_id == "alice/r1"
    assert cert.user == "alice"
    assert cert.principals == ("alice", "ops")
    assert "permit-port-forwarding" in cert.extensions
    assert set(cert.critical_options) == {"source-address"}
    assert cert.signature_algorithm == "ssh-ed25519"
    assert cert.signature_key == _blob(ca.with_suffix(".pub"))


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_parse_reads_ecdsa_and_rsa_certificates(
    ca: Path, tmp_path: Path, kind: str
) -> None:
    key = keygen(tmp_path / kind, kind, 3072 if kind == "rsa" else None)
    sign(ca, key, principals="alice", serial=5)

    assert parse_certificate(_blob(cert_path(key))).serial == 5


def test_a_plain_key_is_not_a_certificate(key: Path) -> None:
    assert not is_certificate_blob(_blob(key.with_suffix(".pub")))
    assert not is_certificate_blob(b"\x00\x00")


def test_truncated_or_padded_blobs_are_malformed(ca: Path, key: Path) -> None:
    blob = _blob(sign(ca, key, principals="alice"))

    with pytest.raises(MalformedCertificate, match="truncated"):
        parse_certificate(blob[:-10])
    with pytest.raises(MalformedCertificate, match="trailing"):
        parse_certificate(blob + b"\x00")


def test_judge_accepts_a_good_certificate(ca: Path, key: Path) -> None:
    cert = parse_certificate(_blob(sign(ca, key, principals="alice")))

    assert judge(cert, Offer("alice", "10.0.0.1", time.time()), _rules(ca)) is None


def test_judge_allows_skew_on_the_start_only(ca: Path, key: Path) -> None:
    now = time.time()
    cert = parse_certificate(
        _blob(sign(ca, key, principals="alice", validity="+30s:+5m"))
    )
    offer = Offer("alice", "10.0.0.1", now)

    assert judge(cert, offer, _rules(ca)) is None
    late = Offer("alice", "10.0.0.1", cert.valid_before)
    assert "expired" in str(judge(cert, late, _rules(ca)))


def test_lifetime_forever_is_refused_and_formats(ca: Path, key: Path) -> None:
    cert = parse_certificate(
        _blob(sign(ca, key, principals="alice", validity="always:forever"))
    )

    reason = judge(cert, Offer("alice", "10.0.0.1", time.time()), _rules(ca))

    assert reason == "the certificate lives forever, longer than the 8h allowed"
    assert format_timestamp(cert.valid_before) == "forever"
    assert format_timestamp(2**62) == f"{2**62} (far future)"
    assert format_lifetime(-5) == "-5s"


def test_sha1_rsa_ca_signature_is_refused(tmp_path: Path, key: Path) -> None:
    rsa_ca = keygen(tmp_path / "rsa_ca", "rsa", 3072)
    cert = parse_certificate(
        _blob(sign(rsa_ca, key, principals="alice", algorithm="ssh-rsa"))
    )

    reason = judge(cert, Offer("alice", "10.0.0.1", time.time()), _rules(rsa_ca))

    assert reason == "the CA signature uses SHA-1 (ssh-rsa), which is refused"


def test_malformed_source_address_is_refused(ca: Path, key: Path) -> None:
    cert = parse_certificate(
        _blob(sign(ca, key, principals="alice", options=["source-address=10.0.0.1/32"]))
    )

    reason = judge(cert, Offer("alice", "not-an-address", time.time()), _rules(ca))

    assert reason == "the certificate's source-address option is malformed"


def test_ssh_keygen_agrees_with_the_parser(ca: Path, key: Path) -> None:
    path = sign(ca, key, principals="alice", serial=123456789, key_id="alice/zz")
    listing = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    cert = parse_certificate(_blob(path))

    assert f"Serial: {cert.serial}" in listing
    assert f'Key ID: "{cert.key_id}"' in listing
