"""Trust in snapshots: ed25519 signing keys, signing snapshot files, and the ``Verifier``
a host passes to ``load_revision(verifier=...)`` to require signatures by trusted keys.

Needs the ``sign`` extra (``cryptography``); the core only takes a verifier callable.
"""

from thaw.adapters.trust.ed25519 import (
    MAX_KEY_FILE,
    KeyFileError,
    KeyFiles,
    SignResult,
    Verified,
    Verifier,
    generate_key_files,
    key_id,
    load_private_key,
    load_public_key,
    read_snapshot_file,
    sign_snapshot,
    verify_snapshot,
)

__all__ = [
    "MAX_KEY_FILE",
    "KeyFileError",
    "KeyFiles",
    "SignResult",
    "Verified",
    "Verifier",
    "generate_key_files",
    "key_id",
    "load_private_key",
    "load_public_key",
    "read_snapshot_file",
    "sign_snapshot",
    "verify_snapshot",
]
