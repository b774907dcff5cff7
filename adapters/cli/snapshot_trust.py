"""``thaw snapshot keygen | sign | verify``, the ``signature`` line of ``thaw snapshot
inspect``, and the trust options of a host (``--trust-key``, ``THAW_TRUSTED_KEYS``).

Key material never reaches argv, stdout or an error message: ``sign`` takes the
private key's *path* (``--key`` or ``THAW_SIGNING_KEY_FILE``), and key-file errors
name the file and the cause only. ``cryptography`` (the ``sign`` extra) is imported
when a command needs it, so ``thaw`` works without it until then.

Exit codes: 0 done (``verify``: the snapshot is sound and signed by a trusted key);
1 refused or failed (``thaw: error [code]: message``); 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from thaw._errors import ConfigError
from thaw.snapshots._format import SnapshotHeader

if TYPE_CHECKING:
    from thaw.adapters.trust import Verifier

__all__ = [
    "SIGNING_KEY_ENV",
    "TRUSTED_KEYS_ENV",
    "add_trust_options",
    "register",
    "signature_summary",
    "trusted_key_paths",
    "verifier_from",
]

SIGNING_KEY_ENV = "THAW_SIGNING_KEY_FILE"
TRUSTED_KEYS_ENV = "THAW_TRUSTED_KEYS"  # colon-separated paths of public key files
_EXIT_OK, _EXIT_USAGE = 0, 2


class SigningUnavailable(ConfigError):
    """Signing or verifying snapshots needs the ``sign`` extra (``cryptography``)."""

    code = "signing_unavailable"


def register(snapshot_commands: Any) -> None:
    """Add ``keygen``, ``sign`` and ``verify`` to the ``thaw snapshot`` subparsers."""
    keygen = snapshot_commands.add_parser(
        "keygen",
        help="make an ed25519 key pair for signing snapshots",
        description="Write a new ed25519 key pair: PREFIX.key (the private key, mode 0600: "
        "keep it where snapshots are built) and PREFIX.pub (give it to hosts). "
        "Existing files are never overwritten.",
    )
    keygen.add_argument("--out", required=True, metavar="PREFIX", help="path prefix of the files")
    keygen.set_defaults(handler=_cmd_keygen)

    sign = snapshot_commands.add_parser(
        "sign",
        help="sign a snapshot file with a private key (rewrites it in place)",
        description="Validate FILE and add an ed25519 signature to its header, rewriting it "
        "atomically; the revision id does not change. The key is read from the file "
        f"--key names, or from ${SIGNING_KEY_ENV}.",
    )
    sign.add_argument("file", metavar="FILE", help="the snapshot to sign")
    sign.add_argument(
        "--key", metavar="KEYFILE", help=f"private key file (default: ${SIGNING_KEY_ENV})"
    )
    sign.set_defaults(handler=_cmd_sign)

    verify = snapshot_commands.add_parser(
        "verify",
        help="check a snapshot fully, and that a trusted key signed it",
        description="Exit 0 if FILE is sound (checksum, revision id, Python) and signed by "
        f"one of the trusted keys; 1 otherwise. Default keys: ${TRUSTED_KEYS_ENV}.",
    )
    verify.add_argument("file", metavar="FILE", help="the snapshot to verify")
    verify.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PUBFILE",
        help="a trusted public key file (repeatable)",
    )
    verify.set_defaults(handler=_cmd_verify)


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    """``--trust-key PUBFILE`` (repeatable) for a command that loads snapshots."""
    parser.add_argument(
        "--trust-key",
        dest="trust_keys",
        action="append",
        default=[],
        metavar="PUBFILE",
        help="require snapshots signed by this public key (repeatable; default: the "
        f"colon-separated paths in ${TRUSTED_KEYS_ENV}; neither: signatures not required)",
    )


def trusted_key_paths(flags: Sequence[str]) -> list[str]:
    """The trusted key files: ``flags`` if any, else ``$THAW_TRUSTED_KEYS`` (unset or
    empty: none). A set variable that names no file is an error, not "trust nothing"."""
    if flags:
        return list(flags)
    value = os.environ.get(TRUSTED_KEYS_ENV, "")
    if not value:
        return []
    paths = [part for part in value.split(":") if part.strip()]
    if not paths:
        raise ConfigError(f"${TRUSTED_KEYS_ENV} is set but names no key file")
    return paths


def verifier_from(args: argparse.Namespace) -> Verifier | None:
    """The host's verifier from ``add_trust_options`` (and the environment); None when no
    key is trusted, i.e. signatures are not required. Bad key files: ``KeyFileError``."""
    paths = trusted_key_paths(getattr(args, "trust_keys", None) or [])
    if not paths:
        return None
    _require_cryptography()
    from thaw.adapters.trust import Verifier

    return Verifier.from_files(paths)


def signature_summary(header: SnapshotHeader) -> str:
    """One line for ``thaw snapshot inspect``: signed by which key, or unsigned."""
    if not header.signed:
        return "unsigned"
    return f"signed by key {header.key_id or '(none named)'} (checked by `thaw snapshot verify`)"


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise SigningUnavailable(
            "signing and verifying snapshots needs cryptography: pip install 'thaw-runtime[sign]'"
        ) from None


def _cmd_keygen(args: argparse.Namespace) -> int:
    _require_cryptography()
    from thaw.adapters.trust import generate_key_files

    files = generate_key_files(args.out)
    print(
        f"wrote {files.private_path} (private key, mode 0600: keep it secret) and "
        f"{files.public_path} (public key for hosts); key id {files.key_id}"
    )
    return _EXIT_OK


def _cmd_sign(args: argparse.Namespace) -> int:
    key_path = args.key or os.environ.get(SIGNING_KEY_ENV, "")
    if not key_path:
        print(
            f"thaw snapshot sign: give the private key file with --key or ${SIGNING_KEY_ENV}",
            file=sys.stderr,
        )
        return _EXIT_USAGE
    _require_cryptography()
    from thaw.adapters.trust import load_private_key, sign_snapshot

    result = sign_snapshot(args.file, load_private_key(key_path))
    print(f"signed {result.path}: revision {result.revision}, key {result.key_id}")
    return _EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    paths = trusted_key_paths(args.trust)
    if not paths:
        print(
            f"thaw snapshot verify: give trusted public keys with --trust or ${TRUSTED_KEYS_ENV}",
            file=sys.stderr,
        )
        return _EXIT_USAGE
    _require_cryptography()
    from thaw.adapters.trust import Verifier, verify_snapshot

    verified = verify_snapshot(args.file, Verifier.from_files(paths))
    print(
        f"{verified.path}: app {verified.app}, revision {verified.revision}, "
        f"signed by trusted key {verified.key_id}"
    )
    return _EXIT_OK
