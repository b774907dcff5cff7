"""``thaw serve --trust-key``: a host that requires signed snapshots serves a signed one
and refuses unsigned, altered or foreign-signed ones with one line naming the cause."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from nats_fixtures import wait_line

from thaw.adapters.process.build import build_snapshot
from thaw.adapters.trust import generate_key_files, load_private_key, sign_snapshot

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0

APP = """
from thaw import App, http

app = App("trusted")


@app.capability(http("GET", "/hi"))
async def hi() -> str:
    return "hi"
"""


def serve(tmp_path: Path, target: Path, *keys: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(target)]
    command += ["--backbone", "memory", "--no-http", "--state-dir", str(tmp_path / "state")]
    for key in keys:
        command += ["--trust-key", str(key)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
    )


def refused(process: subprocess.Popen[str]) -> str:
    _out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 1, err
    assert "Traceback" not in err
    return err


def test_only_snapshots_signed_by_a_trusted_key_are_served(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(textwrap.dedent(APP))
    snapshot = tmp_path / "app.snap"
    build_snapshot(str(tmp_path / "app" / "app.py"), str(snapshot))
    ours = generate_key_files(tmp_path / "ours")
    theirs = generate_key_files(tmp_path / "theirs")

    err = refused(serve(tmp_path, snapshot, Path(ours.public_path)))
    assert "snapshot_unsigned" in err
    err = refused(serve(tmp_path, tmp_path / "app" / "app.py", Path(ours.public_path)))
    assert "snapshot_unsigned" in err  # what serve builds from source is unsigned too

    sign_snapshot(snapshot, load_private_key(theirs.private_path))
    assert "snapshot_signature_invalid" in refused(
        serve(tmp_path, snapshot, Path(ours.public_path))
    )

    sign_snapshot(snapshot, load_private_key(ours.private_path))
    process = serve(tmp_path, snapshot, Path(ours.public_path))
    try:
        wait_line(process, "thaw: serving app trusted", limit=WAIT)
    finally:
        process.terminate()
        process.communicate(timeout=WAIT)

    blob = bytearray(snapshot.read_bytes())
    blob[-3] ^= 0x01  # one bit of the payload
    snapshot.write_bytes(bytes(blob))
    assert "snapshot_invalid" in refused(serve(tmp_path, snapshot, Path(ours.public_path)))

    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key at all")
    err = refused(serve(tmp_path, snapshot, garbage))
    assert "key_file_invalid" in err and "not a key at all" not in err
