"""thaw dev: restart on file changes, with the backbone kept; the watcher's pure parts."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from thaw.adapters.cli import dev as _dev
from thaw.adapters.cli.dev import changed_files, snapshot_files, watched_roots

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "app.py"
WAIT = 60.0


# -- the watcher ------------------------------------------------------------------------


def test_changes_are_additions_removals_and_modifications(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "notes.md").write_text("not watched")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "a.cpython-311.pyc").write_bytes(b"")
    hidden = tmp_path / ".git"
    hidden.mkdir()
    (hidden / "config.py").write_text("")
    before = snapshot_files([tmp_path])
    assert sorted(Path(p).name for p in before) == ["a.py", "data.json"]
    (tmp_path / "a.py").write_text("a = 2\n")
    os.utime(tmp_path / "a.py", ns=(1, 1))  # a different mtime, whatever the clock
    (tmp_path / "b.py").write_text("")
    (tmp_path / "data.json").unlink()
    after = snapshot_files([tmp_path])
    names = [Path(p).name for p in changed_files(before, after)]
    assert names == ["a.py", "b.py", "data.json"]
    assert changed_files(after, snapshot_files([tmp_path])) == []


def test_the_watched_roots_are_the_apps_folder_and_extra_paths(tmp_path: Path) -> None:
    app = tmp_path / "svc" / "app.py"
    app.parent.mkdir()
    app.write_text("")
    assert watched_roots(str(app)) == [app.parent]
    assert watched_roots(str(app.parent), [str(tmp_path)]) == [app.parent, tmp_path]
    assert watched_roots("missing/app.py") == [Path("missing").resolve()]
    assert snapshot_files([tmp_path / "nowhere"]) == {}


def test_a_huge_tree_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dev, "MAX_FILES", 3)
    for index in range(5):
        (tmp_path / f"m{index}.py").write_text("")
    with pytest.raises(ValueError, match="watches more than 3 files"):
        snapshot_files([tmp_path])


@pytest.mark.parametrize("poll", ["0", "-1", "nan", "soon", "61"])
def test_bad_poll_periods_are_refused(poll: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "thaw.adapters.cli", "dev", str(HELLO), "--poll", poll],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert "--poll" in result.stderr


# -- end to end -------------------------------------------------------------------------


class Dev:
    """``thaw dev`` as a subprocess; its output lines arrive on a queue (read by a thread)."""

    def __init__(self, app: Path) -> None:
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "thaw.adapters.cli", "dev", str(app), "--http", "0"),
                *("--backbone", "memory", "--poll", "0.1", "--drain-timeout", "2"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {text!r} in {WAIT}s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line

    def serving_port(self) -> int:
        line = self.wait_for("thaw: serving app")
        return int(line.split("http://127.0.0.1:")[1].split(";")[0])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # ours, by PID
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=WAIT)  # the pipe reaches EOF once the process is gone
        assert self.process.stdout is not None
        self.process.stdout.close()


def greet(port: int) -> tuple[str, int]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/greet", data=b'{"name": "Ada"}', method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode(), int(answer.headers.get("thaw-worker") or 0)


def worker_pid(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        return int(answer.headers["thaw-worker"])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_thaw_dev_reloads_on_a_change_survives_a_broken_save_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    source = HELLO.read_text()
    app.write_text(source)
    dev = Dev(app)
    try:
        dev.wait_for("thaw dev: watching")
        port = dev.serving_port()
        assert '"Hello, Ada!"' in greet(port)[0]
        first = worker_pid(port)

        app.write_text(source.replace('"en": "Hello"', '"en": "Howdy"'))
        dev.wait_for("app.py changed: reloading")
        port = dev.serving_port()
        assert '"Howdy, Ada!"' in greet(port)[0]
        second = worker_pid(port)
        assert second != first and gone(first)

        app.write_text(source + "\nbroken(\n")
        dev.wait_for("thaw dev: the app exited with code 1")
        app.write_text(source)
        port = dev.serving_port()
        assert '"Hello, Ada!"' in greet(port)[0]
        last = worker_pid(port)
    finally:
        dev.stop()
    assert dev.process.returncode == 0
    dev.wait_for("thaw dev: stopped")
    deadline = time.monotonic() + WAIT
    while not gone(last):  # the child was ours: it must be gone once the parent is
        assert time.monotonic() < deadline, f"child {last} still running"
        time.sleep(0.05)
