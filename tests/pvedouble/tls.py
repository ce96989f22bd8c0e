"""A throwaway CA and a server certificate for 127.0.0.1, made at start."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA to trust, and the server's certificate and key."""

    ca: Path
    certificate: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side context presenting the certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, self.key)

        return context


def write_tls_files(directory: Path) -> TLSFiles:
    """Generate a CA and a certificate for 127.0.0.1 and localhost."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pvedouble test CA")
    ca = _builder(ca_name, ca_name, ca_key.public_key(), ca_key.public_key())
    ca = ca.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    ca = ca.add_extension(_usage(cert_sign=True), True)
    ca_certificate = ca.sign(ca_key, hashes.SHA256())

    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _builder(_name("pve1"), ca_name, key.public_key(), ca_key.public_key())
    server = server.add_extension(
        x509.BasicConstraints(ca=False, path_length=None), True
    )
    server = server.add_extension(_usage(cert_sign=False), True)
    server = server.add_extension(x509.SubjectAlternativeName(names), False)
    server = server.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
    )
    certificate = server.sign(ca_key, hashes.SHA256())

    files = TLSFiles(directory / "ca.pem", directory / "pve.pem", directory / "pve.key")
    files.ca.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    return files


def _name(common_name: str) -> x509.Name:
    """Return a subject with just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    """Start a certificate valid from an hour ago for a day."""
    now = dt.datetime.now(dt.UTC)

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), False
        )
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    """Key usage of a CA (signs certificates) or a server (signs handshakes)."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
