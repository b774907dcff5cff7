"""A test PKI for the TLS tests against nats-server: a CA made on the spot, certificates.

``make_pki(folder)`` writes ``ca.pem``, ``server.pem``/``server.key`` (for 127.0.0.1
and ``nats.test``), ``client.pem``/``client.key`` (client authentication) and
``other-ca.pem`` (a CA that signed nothing here); ``tls_config`` is the nats-server
``tls { ... }`` block that uses them. Keys are P-256, valid for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_pki", "tls_config"]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    names: list[x509.GeneralName] = (),  # type: ignore[assignment]
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (ca[0].subject, ca[1]) if ca else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(folder: Path) -> Path:
    """Write the CA, server, client and other-CA files into ``folder``; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _issue("thaw test CA", ca_key, None)
    _write(folder / "ca", ca, ca_key)
    server_key = _key()
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("nats.test"),
    ]
    server = _issue(
        "nats.test", server_key, (ca, ca_key), names=names, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    _write(folder / "server", server, server_key)
    client_key = _key()
    client = _issue("thaw", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(folder / "client", client, client_key)
    other_key = _key()
    _write(folder / "other-ca", _issue("another CA", other_key, None), other_key)
    return folder


def tls_config(pki: Path, *, verify: bool) -> str:
    """The nats-server ``tls`` block: ``verify`` asks clients for a certificate (mTLS)."""
    cert, key, ca = (json.dumps(str(pki / name)) for name in ("server.pem", "server.key", "ca.pem"))
    return (
        f"tls {{ cert_file: {cert}, key_file: {key}, ca_file: {ca}, "
        f"verify: {'true' if verify else 'false'}, timeout: 5 }}"
    )
