"""A test PKI for the TLS tests against nats-server: a CA made on the spot, certificates.

``make_pki(folder)`` writes ``ca.pem``, ``server.pem``/``server.key`` (for 127.0.0.1
and ``nats.test``), ``client.pem``/``client.key`` (client authentication) and
``other-ca.pem`` (a CA that signed nothing here); ``tls_config`` is the nats-server
``tls { ... }`` block that uses them. Keys are P-256, valid for a day.

``make_operator(folder)`` is decentralized auth in miniature: an operator, a system
account and an account with JetStream (JWTs signed with nkeys), the server
configuration that trusts them (a memory resolver), and ``user.creds`` for a user
of the account, plus ``stranger.creds`` for a user of an account the server does
not know.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_operator", "make_pki", "tls_config"]


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys(prefix: int) -> tuple[bytes, Any, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return seed, pair, pair.public_key.decode()


def _jwt(signer: Any, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = {"jti": _b64(os.urandom(16)), "iat": int(time.time()), **claims}
    payload = _b64(json.dumps(body).encode())
    return f"{header}.{payload}.{_b64(signer.sign(f'{header}.{payload}'.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1}
_UNLIMITED |= {"wildcards": True, "conn": -1, "leaf": -1}


def _account(operator: Any, issuer: str, subject: str, name: str, jetstream: bool) -> str:
    limits = dict(_UNLIMITED)
    if jetstream:
        limits |= {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    nats = {"type": "account", "version": 2, "limits": limits}
    return _jwt(operator, {"iss": issuer, "sub": subject, "name": name, "nats": nats})


def _creds(path: Path, account: Any, account_key: str) -> None:
    seed, _pair, user = _keys(nkeys.PREFIX_BYTE_USER)
    nats = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1}
    token = _jwt(account, {"iss": account_key, "sub": user, "name": "thaw", "nats": nats})
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
    )


def make_operator(folder: Path) -> str:
    """Write ``user.creds`` and ``stranger.creds`` into ``folder``; return the server's
    configuration (operator, system account, memory resolver)."""
    folder.mkdir(parents=True, exist_ok=True)
    _seed, operator, operator_key = _keys(nkeys.PREFIX_BYTE_OPERATOR)
    op_claims = {"type": "operator", "version": 2}
    op_jwt = _jwt(operator, {"iss": operator_key, "sub": operator_key, "nats": op_claims})
    _seed, account, account_key = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _seed, _system, system_key = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _seed, stranger, stranger_key = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    app_jwt = _account(operator, operator_key, account_key, "app", jetstream=True)
    sys_jwt = _account(operator, operator_key, system_key, "SYS", jetstream=False)
    _creds(folder / "user.creds", account, account_key)
    _creds(folder / "stranger.creds", stranger, stranger_key)
    return (
        f"operator: {op_jwt}\nsystem_account: {system_key}\nresolver: MEMORY\n"
        f"resolver_preload: {{ {account_key}: {app_jwt}, {system_key}: {sys_jwt} }}\n"
    )
