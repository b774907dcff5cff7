"""``thaw serve --workers N``: several processes on one port, signals, crashes, bad N."""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from thaw.adapters.cli import command as cli
from thaw.adapters.cli.supervise import (
    BACKOFF_MAX,
    RESTART_LIMIT,
    RESTART_WINDOW,
    reserve_port,
    restart_delay,
    worker_count,
)

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")
WAIT = 60.0  # bound on the whole start (N Python processes on a busy 2-core machine)
MAX_CONNECTIONS = 200  # new connections tried before concluding one worker gets them all

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's"
)


# -- pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-1", "65", "10**9", "two", "", " ", "1.5", "9" * 5000])
def test_worker_counts_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        worker_count(text)


def test_worker_counts_in_range() -> None:
    assert [worker_count(t) for t in ("1", "2", "64", " 8 ")] == [1, 2, 64, 8]


@pytest.mark.parametrize("text", ["0", "65", "lots"])
def test_the_cli_names_a_bad_worker_count(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", HELLO, "--backbone", "memory", "--workers", text])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "--workers" in capsys.readouterr().err


def test_restart_delay_backs_off_then_gives_up() -> None:
    now = 1000.0
    assert restart_delay([], now) == 0.5
    assert restart_delay([now - 1], now) == 1.0
    crashes = [now - i for i in range(RESTART_LIMIT - 2)]
    assert restart_delay(crashes, now) is not None
    assert restart_delay([*crashes, now - 0.5], now) is None
    old = [now - RESTART_WINDOW - i for i in range(50)]  # outside the window: forgotten
    assert restart_delay(old, now) == 0.5
    assert all((restart_delay([now] * n, now) or 0) <= BACKOFF_MAX for n in range(RESTART_LIMIT))


@linux_only
def test_reserve_port_resolves_zero_and_fails_on_a_taken_port() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    try:
        port = reserved.getsockname()[1]
        assert port > 0
        plain = socket.socket()
        try:
            plain.bind(("127.0.0.1", port))  # no SO_REUSEPORT: refused while reserved
        except OSError:
            pass
        else:
            pytest.fail("a plain socket bound a reserved port")
        finally:
            plain.close()
    finally:
        reserved.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", taken.getsockname()[1]).close()


# -- end to end --------------------------------------------------------------------------


class Lines:
    """The parent's stdout, read by a thread; ``wait_for`` blocks (bounded) on a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # EOF
            self._changed.notify_all()

    def wait_for(self, needle: str, *, unless: tuple[str, ...] = ()) -> str:
        def wanted(line: str) -> bool:
            return line == "" or (needle in line and not any(u in line for u in unless))

        def found() -> str | None:
            return next((line for line in self.lines if wanted(line)), None)

        with self._changed:
            assert self._changed.wait_for(found, timeout=WAIT), f"no {needle!r} in {self.lines}"
            line = found()
        assert line, f"the parent exited before {needle!r}: {self.lines}"
        return line

    def join(self) -> None:
        self._thread.join(WAIT)


@contextmanager
def serving(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "thaw.adapters.cli",
        "serve",
        HELLO,
        "--http",
        "0",
        *extra,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    lines = Lines(process)
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)
        lines.join()
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def worker_of(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        return int(response.getheader("thaw-worker") or 0)
    finally:
        connection.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@linux_only
@pytest.mark.parametrize("backbone", ["memory", "nats"])
def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path, backbone: str) -> None:
    with serving(tmp_path, "--backbone", backbone, "--workers", "2") as (process, lines):
        line = lines.wait_for("with 2 workers")
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        pids = {int(p) for p in line.split("worker pids: ")[1].rstrip(")\n").split(", ")}
        assert len(pids) == 2 and process.pid not in pids
        seen: set[int] = set()
        for _ in range(MAX_CONNECTIONS):  # each a new connection: the kernel spreads them
            seen.add(worker_of(port))
            if len(seen) == 2:
                break
        assert seen == pids
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        connection.request("POST", "/greet", body=b'{"name": "Ada"}')
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b'{"message":"Hello, Ada!","attempt":1}')
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
    text = "".join(lines.lines)
    assert "SIGTERM: draining 2 workers" in text
    assert text.count("thaw: stopped") == 3  # both workers, then the parent
    assert not [pid for pid in pids if alive(pid)]
    with socket.socket() as probe:  # no SO_REUSEPORT: fails if anything still holds it
        probe.bind(("127.0.0.1", port))


@linux_only
def test_a_crashed_worker_is_reported_and_restarted(tmp_path: Path) -> None:
    with serving(tmp_path, "--backbone", "memory", "--workers", "2") as (process, lines):
        line = lines.wait_for("with 2 workers")
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        pids = [int(p) for p in line.split("worker pids: ")[1].rstrip(")\n").split(", ")]
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        restarted = lines.wait_for(
            "] thaw: serving app hello on", unless=tuple(f"pid {pid}]" for pid in pids)
        )
        new_pid = int(restarted.split(" pid ")[1].split("]")[0])
        assert new_pid not in pids
        seen: set[int] = set()
        for _ in range(MAX_CONNECTIONS):
            seen.add(worker_of(port))
            if len(seen) == 2:
                break
        assert seen == {pids[1], new_pid}
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
        assert process.stderr is not None
        errors = process.stderr.read()
    assert f"(pid {victim}) exited unexpectedly with code -9; restarting" in errors
