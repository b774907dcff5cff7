"""Trust in snapshots: the revision id recomputed on decode, ed25519 signatures required
by a verifier, key files, and the ``thaw snapshot keygen | sign | verify`` commands."""

from __future__ import annotations

import argparse
import marshal
import os
import shutil
import stat
import struct
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from snapshot_apps import build, write_app

from thaw.adapters.cli import command as cli
from thaw.adapters.cli.snapshot_trust import add_trust_options, verifier_from
from thaw.adapters.trust import (
    MAX_KEY_FILE,
    KeyFileError,
    Verifier,
    generate_key_files,
    key_id,
    load_private_key,
    load_public_key,
    sign_snapshot,
    verify_snapshot,
)
from thaw.snapshots._format import (
    FORMAT_VERSION,
    MAGIC,
    Manifest,
    SnapshotError,
    SnapshotPayload,
    SnapshotResealed,
    SnapshotSignatureInvalid,
    SnapshotUnsigned,
    current_magic,
    decode_snapshot,
    encode_snapshot,
    read_header,
    revision_id,
    signing_message,
    with_signature,
)
from thaw.snapshots._revision import load_revision


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test app, built once (a child Python) and copied for each test."""
    root = tmp_path_factory.mktemp("built")
    return build(root, write_app(root / "src"))


@pytest.fixture
def snapshot(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "app.snap"
    shutil.copyfile(built, copy)
    return copy


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A trusted key pair: (private key file, public key file)."""
    files = generate_key_files(tmp_path / "trusted")
    return Path(files.private_path), Path(files.public_path)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THAW_SIGNING_KEY_FILE", "THAW_TRUSTED_KEYS"):
        monkeypatch.delenv(name, raising=False)


def _header_and_body(blob: bytes) -> tuple[dict[str, Any], bytes]:
    _, _, length = struct.unpack_from(">8sHI", blob)
    header = msgspec.json.decode(blob[14 : 14 + length])
    return header, blob[14 + length :]


def _assemble(header: dict[str, Any], body: bytes) -> bytes:
    encoded = msgspec.json.encode(header)
    return struct.pack(">8sHI", MAGIC, FORMAT_VERSION, len(encoded)) + encoded + body


def _transplant_signature(signed: bytes, other: bytes) -> bytes:
    """``other`` (an unsigned snapshot) with ``signed``'s signature and key id."""
    signature, _ = _header_and_body(signed)
    header, body = _header_and_body(other)
    header.update(signature=signature["signature"], key_id=signature["key_id"])
    return _assemble(header, body)


def _with_state_source(payload: SnapshotPayload, source: bytes) -> SnapshotPayload:
    modules = [
        msgspec.structs.replace(m, source=source) if m.name == "greeter.state" else m
        for m in payload.modules
    ]
    return msgspec.structs.replace(payload, modules=modules)


# -- the revision id, recomputed ---------------------------------------------------------


def test_a_built_snapshot_decodes_and_its_unsigned_header_has_no_signature_fields(
    snapshot: Path,
) -> None:
    blob = snapshot.read_bytes()
    payload = decode_snapshot(blob)
    header, _ = _header_and_body(blob)
    assert set(header) == {"payload_length", "payload_sha256", "revision"}  # as before
    assert read_header(blob).revision == payload.revision
    assert not read_header(blob).signed


def test_changed_sources_under_the_old_revision_are_refused_as_resealed(snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    tampered = _with_state_source(payload, b"loads = 0\nstarted = 0\ncalls = 0\nclient = 1\n")
    resealed = encode_snapshot(tampered)  # header SHA-256 recomputed, old revision claimed
    with pytest.raises(SnapshotResealed) as caught:
        decode_snapshot(resealed, source="evil.snap")
    message = caught.value.message
    assert caught.value.code == "snapshot_resealed"
    assert message.startswith("evil.snap was re-sealed: its content gives revision ")
    assert f"it claims {payload.revision}" in message
    with pytest.raises(SnapshotResealed):
        load_revision(resealed)


@pytest.mark.parametrize("what", ["manifest", "data"])
def test_changed_manifest_or_data_under_the_old_revision_are_refused(
    snapshot: Path, what: str
) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    if what == "manifest":
        manifest = msgspec.structs.replace(payload.manifest, entry_module="greeter.app")
        tampered = msgspec.structs.replace(payload, manifest=manifest)
    else:
        tampered = msgspec.structs.replace(payload, data={"greeter/data/greeting.json": b"{}"})
    with pytest.raises(SnapshotResealed, match="re-sealed"):
        decode_snapshot(encode_snapshot(tampered))


def test_the_build_time_alone_is_not_content(snapshot: Path) -> None:
    payload = decode_snapshot(snapshot.read_bytes())
    manifest = msgspec.structs.replace(payload.manifest, built_at="1999-01-01T00:00:00+00:00")
    again = decode_snapshot(encode_snapshot(msgspec.structs.replace(payload, manifest=manifest)))
    assert again.revision == payload.revision


def test_a_code_only_swap_passes_unsigned_checks_but_not_a_signature(
    snapshot: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    # The documented limit: marshalled code is not in the revision id, so an unsigned
    # snapshot whose code was swapped (sources kept, header re-sealed) still decodes.
    private, public = keys
    sign_snapshot(snapshot, load_private_key(private))
    signed = snapshot.read_bytes()
    payload = decode_snapshot(signed)
    evil = compile("raise RuntimeError('swapped code ran')", "greeter/state.py", "exec")
    modules = [
        msgspec.structs.replace(m, code=marshal.dumps(evil)) if m.name == "greeter.state" else m
        for m in payload.modules
    ]
    swapped = encode_snapshot(msgspec.structs.replace(payload, modules=modules))
    assert decode_snapshot(swapped).revision == payload.revision  # unsigned: not caught
    with pytest.raises(SnapshotError, match="swapped code ran"):
        load_revision(swapped, data_dir=tmp_path / "d")
    # With signatures required, the same swap under the original signature is refused
    # before any code is unmarshalled.
    forged = _transplant_signature(signed, swapped)
    verifier = Verifier.from_files([public])
    with pytest.raises(SnapshotSignatureInvalid) as caught:
        load_revision(forged, verifier=verifier, data_dir=tmp_path / "d")
    assert caught.value.code == "snapshot_signature_invalid"
    assert read_header(signed).key_id in caught.value.message
    # The genuine file loads under the verifier.
    revision = load_revision(snapshot, verifier=verifier, data_dir=tmp_path / "d")
    try:
        assert revision.revision_id == payload.revision
        assert revision.namespace is not None
        assert revision.namespace.modules["greeter.state"].loads == 1
    finally:
        revision.unload()


def test_a_resealed_payload_under_the_original_signature_is_refused_both_ways(
    snapshot: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    sign_snapshot(snapshot, load_private_key(private))
    signed = snapshot.read_bytes()
    tampered = _with_state_source(decode_snapshot(signed), b"loads = 7\n")
    forged = _transplant_signature(signed, encode_snapshot(tampered))
    assert read_header(forged).signed
    with pytest.raises(SnapshotResealed):
        decode_snapshot(forged)  # no verifier: the recomputed revision catches it
    with pytest.raises(SnapshotSignatureInvalid):
        decode_snapshot(forged, verifier=Verifier.from_files([public]))


# -- signatures ----------------------------------------------------------------------------


def test_signing_keeps_the_revision_and_payload_and_the_file_mode(
    snapshot: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    os.chmod(snapshot, 0o640)
    before = snapshot.read_bytes()
    result = sign_snapshot(snapshot, load_private_key(private))
    after = snapshot.read_bytes()
    assert result.revision == decode_snapshot(before).revision
    assert result.key_id == key_id(load_public_key(public))
    assert _header_and_body(after)[1] == _header_and_body(before)[1]  # payload bytes as built
    assert read_header(after).key_id == result.key_id
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o640
    assert [p.name for p in snapshot.parent.iterdir() if p.name.endswith(".tmp")] == []
    verified = verify_snapshot(snapshot, Verifier.from_files([public]))
    assert (verified.revision, verified.key_id, verified.app) == (
        result.revision,
        result.key_id,
        "greeter",
    )


def test_unsigned_is_refused_when_signatures_are_required(
    snapshot: Path, keys: tuple[Path, Path]
) -> None:
    verifier = Verifier.from_files([keys[1]])
    with pytest.raises(SnapshotUnsigned) as caught:
        load_revision(snapshot, verifier=verifier)
    assert caught.value.code == "snapshot_unsigned"
    assert caught.value.message.startswith(f"{snapshot} is not signed")
    assert "\n" not in caught.value.message
    decode_snapshot(snapshot.read_bytes())  # without a verifier it is fine


def test_another_keys_signature_is_refused_and_resigning_replaces_it(
    snapshot: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    other = generate_key_files(tmp_path / "other")
    sign_snapshot(snapshot, load_private_key(other.private_path))
    trusted = Verifier.from_files([public])
    with pytest.raises(SnapshotSignatureInvalid, match=other.key_id):
        decode_snapshot(snapshot.read_bytes(), source=str(snapshot), verifier=trusted)
    with pytest.raises(
        SnapshotSignatureInvalid, match=f"signed by key {other.key_id}.*not trusted"
    ):
        verify_snapshot(snapshot, trusted)
    # A key id that claims the trusted key does not help another key's signature.
    header, body = _header_and_body(snapshot.read_bytes())
    header["key_id"] = trusted.key_ids[0]
    with pytest.raises(SnapshotSignatureInvalid, match="does not verify"):
        decode_snapshot(_assemble(header, body), verifier=trusted)
    both = Verifier.from_files([public, other.public_path])
    assert decode_snapshot(snapshot.read_bytes(), verifier=both)
    sign_snapshot(snapshot, load_private_key(private))
    assert read_header(snapshot.read_bytes()).key_id == trusted.key_ids[0]
    decode_snapshot(snapshot.read_bytes(), verifier=trusted)


def test_a_damaged_or_resealed_snapshot_is_not_signed_and_stays_as_it_was(
    snapshot: Path, keys: tuple[Path, Path]
) -> None:
    key = load_private_key(keys[0])
    payload = decode_snapshot(snapshot.read_bytes())
    resealed = encode_snapshot(_with_state_source(payload, b"loads = 1\n"))
    snapshot.write_bytes(resealed)
    with pytest.raises(SnapshotResealed):
        sign_snapshot(snapshot, key)
    assert snapshot.read_bytes() == resealed
    snapshot.write_bytes(resealed[:-3])
    with pytest.raises(SnapshotError, match="truncated"):
        sign_snapshot(snapshot, key)


@pytest.mark.parametrize(
    ("signature", "key", "match"),
    [
        ("A" * 2000, "ab", "damaged header"),  # longer than any signature
        ("not base64 at all!", "ab", "damaged header"),
        ("QUJDR", "ab", "not valid base64"),  # the right alphabet, a bad length
        ("QUJD", "ab", "does not verify"),  # 3 bytes: no ed25519 signature
        ("", "ab", "not signed"),
        ("QUJD", "ZZ\n\x1b[31m", "damaged header"),  # a key id that is no hex
        ("QUJD", "a" * 500, "damaged header"),
    ],
)
def test_hostile_signature_fields_give_one_line_snapshot_errors(
    snapshot: Path, keys: tuple[Path, Path], signature: str, key: str, match: str
) -> None:
    header, body = _header_and_body(snapshot.read_bytes())
    header.update(signature=signature, key_id=key)
    blob = _assemble(header, body)
    with pytest.raises(SnapshotError, match=match) as caught:
        decode_snapshot(blob, verifier=Verifier.from_files([keys[1]]))
    assert "\n" not in caught.value.message and "\x1b" not in caught.value.message


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = st.sampled_from(["payload_length", "payload_sha256", "revision", "signature", "key_id"])


@given(st.dictionaries(_FIELDS, _JSON | st.text(alphabet="AZaz09+/=", max_size=3000), max_size=5))
def test_header_mutations_give_snapshot_errors_only(mutation: dict[str, Any]) -> None:
    header, body = _header_and_body(_signed_blob())
    header.update(mutation)
    blob = _assemble(header, body)
    for verifier in (None, _VERIFIER[0]):
        refusal = None
        try:
            decode_snapshot(blob, verifier=verifier)
        except SnapshotError as exc:
            refusal = exc.message
        if refusal is not None:
            assert "\n" not in refusal and len(refusal) < 2000
            continue
        # What passes says what was signed: the same revision, signature and payload.
        assert read_header(blob).revision == read_header(_signed_blob()).revision
        if verifier is not None:
            assert read_header(blob).signature == read_header(_signed_blob()).signature


_SIGNED: list[bytes] = []
_VERIFIER: list[Verifier] = []


def _signed_blob() -> bytes:
    """A small signed snapshot made in process (no child), once."""
    if not _SIGNED:
        blob = _tiny()
        key = Ed25519PrivateKey.generate()
        signature = key.sign(signing_message(read_header(blob)))
        _SIGNED.append(with_signature(blob, signature=signature, key_id=key_id(key.public_key())))
        _VERIFIER.append(Verifier([key.public_key()]))
    return _SIGNED[0]


def _tiny() -> bytes:
    manifest = Manifest(
        app="tiny",
        entry_module="tiny",
        app_attribute="app",
        python=sys.version.split()[0],
        implementation=sys.implementation.cache_tag or "",
        magic=current_magic(),
    )
    return encode_snapshot(
        SnapshotPayload(revision=revision_id(manifest, [], {}), manifest=manifest, modules=[])
    )


# -- key files -----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_keygen_writes_a_private_key_0600_and_never_overwrites(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        files = generate_key_files(tmp_path / "signer")
    finally:
        os.umask(old)
    private, public = Path(files.private_path), Path(files.public_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert files.key_id == key_id(load_public_key(public))
    assert len(files.key_id) == 16
    content = private.read_bytes()
    with pytest.raises(KeyFileError, match="exists"):
        generate_key_files(tmp_path / "signer")
    assert private.read_bytes() == content
    public.unlink()
    with pytest.raises(KeyFileError, match="exists"):  # either file stops it
        generate_key_files(tmp_path / "signer")
    assert private.read_bytes() == content


def _pem_secrets(path: Path) -> list[str]:
    """The base64 lines of a PEM file: what must never appear in a message."""
    return [line for line in path.read_text().splitlines() if not line.startswith("-----")]


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "garbage", "oversized", "folder", "private_as_public", "ec", "encrypted"],
)
def test_bad_key_files_are_one_line_errors_without_key_bytes(
    tmp_path: Path, keys: tuple[Path, Path], case: str
) -> None:
    private, public = keys
    path = tmp_path / f"{case}.pem"
    loader = load_public_key
    if case == "empty":
        path.write_bytes(b"\n")
    elif case == "garbage":
        path.write_bytes(os.urandom(300))
    elif case == "oversized":
        path.write_bytes(public.read_bytes() * (MAX_KEY_FILE // 100))
    elif case == "folder":
        path.mkdir()
    elif case == "private_as_public":
        path = private
    elif case == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    elif case == "encrypted":
        key_bytes = load_private_key(private).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
        path.write_bytes(key_bytes)
        loader = load_private_key  # type: ignore[assignment]
    with pytest.raises(KeyFileError) as caught:
        loader(path)
    message = caught.value.message
    assert caught.value.code == "key_file_invalid"
    assert str(path) in message and "\n" not in message
    for secret in _pem_secrets(private):
        assert secret not in message
    if case == "private_as_public":
        assert "private key" in message
    with pytest.raises(KeyFileError):
        load_private_key(public)  # a public key given for signing


def test_a_verifier_needs_a_key() -> None:
    with pytest.raises(KeyFileError, match="at least one"):
        Verifier([])


# -- the command line and the host's options -----------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.usefixtures("clean_env")
def test_cli_keygen_sign_verify_inspect_and_exit_codes(
    snapshot: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = tmp_path / "ci"
    code, out = _run(["snapshot", "keygen", "--out", str(prefix)], capsys)
    assert code == 0 and "key id" in out
    key, pub = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    outputs = [out]

    code, out = _run(["snapshot", "verify", str(snapshot), "--trust", str(pub)], capsys)
    assert code == 1 and "[snapshot_unsigned]" in out
    outputs.append(out)
    code, out = _run(["snapshot", "inspect", str(snapshot)], capsys)
    assert code == 0 and "signature    unsigned" in out

    code, out = _run(["snapshot", "sign", str(snapshot)], capsys)
    assert code == 2 and "--key" in out
    code, out = _run(["snapshot", "sign", str(snapshot), "--key", str(key)], capsys)
    assert code == 0 and "signed" in out
    outputs.append(out)
    kid = read_header(snapshot.read_bytes()).key_id

    code, out = _run(["snapshot", "verify", str(snapshot), "--trust", str(pub)], capsys)
    assert code == 0 and f"signed by trusted key {kid}" in out
    code, out = _run(["snapshot", "inspect", str(snapshot)], capsys)
    assert code == 0 and f"signed by key {kid}" in out
    code, out = _run(["snapshot", "inspect", str(snapshot), "--json"], capsys)
    assert code == 0 and msgspec.json.decode(out)["signature"] == {"key_id": kid}

    code, out = _run(["snapshot", "verify", str(snapshot)], capsys)
    assert code == 2  # no trusted key given
    monkeypatch.setenv("THAW_TRUSTED_KEYS", f"{tmp_path / 'nothing.pub'}:{pub}")
    code, out = _run(["snapshot", "verify", str(snapshot)], capsys)
    assert code == 1 and "[key_file_invalid]" in out and "nothing.pub" in out
    monkeypatch.setenv("THAW_TRUSTED_KEYS", str(pub))
    code, out = _run(["snapshot", "verify", str(snapshot)], capsys)
    assert code == 0
    monkeypatch.setenv("THAW_TRUSTED_KEYS", ":")
    code, out = _run(["snapshot", "verify", str(snapshot)], capsys)
    assert code == 1 and "names no key file" in out

    # The private key given where a public one belongs, and the environment's key file.
    code, out = _run(["snapshot", "verify", str(snapshot), "--trust", str(key)], capsys)
    assert code == 1 and "holds a private key" in out
    outputs.append(out)
    monkeypatch.setenv("THAW_SIGNING_KEY_FILE", str(key))
    code, out = _run(["snapshot", "sign", str(snapshot)], capsys)
    assert code == 0
    outputs.append(out)
    code, out = _run(["snapshot", "sign", str(snapshot), "--key", str(pub)], capsys)
    assert code == 1 and "[key_file_invalid]" in out
    for text in outputs:
        for secret in _pem_secrets(key):
            assert secret not in text


@pytest.mark.usefixtures("clean_env")
def test_verifier_from_the_host_options(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_trust_options(parser)
    assert verifier_from(parser.parse_args([])) is None  # signatures not required
    other = generate_key_files(tmp_path / "other")
    chosen = verifier_from(parser.parse_args(["--trust-key", str(keys[1])]))
    assert chosen is not None and chosen.key_ids == (key_id(load_public_key(keys[1])),)
    monkeypatch.setenv("THAW_TRUSTED_KEYS", f"{keys[1]}:{other.public_path}")
    from_env = verifier_from(parser.parse_args([]))
    assert from_env is not None and len(from_env.key_ids) == 2
    flags_win = verifier_from(parser.parse_args(["--trust-key", other.public_path]))
    assert flags_win is not None and flags_win.key_ids == (other.key_id,)
    with pytest.raises(KeyFileError, match="holds a private key"):
        verifier_from(parser.parse_args(["--trust-key", str(keys[0])]))
