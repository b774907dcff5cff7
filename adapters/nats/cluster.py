"""An embedded JetStream cluster: several nats-server nodes on loopback, routed to each other.

For tests and demos that need replicated streams (stop a node, keep processing).
Each node has its own store directory, server name and route port; all share a
cluster name and list every node's route URL. JetStream clustering needs the
routes before any node starts, so route ports are picked upfront (the only place
Thaw picks a port itself); client ports are still chosen by each server.

"Ready" means more than "every node answers": JetStream has elected its meta
leader and knows enough peers to place a stream with one replica per node, which
``wait_jetstream`` checks by creating and deleting a small in-memory probe stream.

Single nodes can be stopped, killed and started again (``stop_node``,
``kill_node``, ``start_node``) to test fail-over; a node comes back on the same
ports with the same store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from thaw.adapters.nats.server import (
    ClusterSettings,
    EmbeddedServer,
    NatsServerFailed,
    ServerConfig,
    pick_free_ports,
)

__all__ = ["EmbeddedCluster", "open_embedded_cluster"]

_PROBE = "thaw_cluster_probe"
_PROBE_INTERVAL = 0.1  # seconds between placement probes while the cluster forms


class EmbeddedCluster:
    """``size`` nats-server nodes forming one JetStream cluster on ``host``."""

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "thaw",
        base_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.size = size
        self.name = name
        self.host = host
        self._binary = binary
        self._given_dir = None if base_dir is None else os.fspath(base_dir)
        self._base_dir: str | None = None
        self.nodes: list[EmbeddedServer] = []

    def __repr__(self) -> str:
        running = sum(node.running for node in self.nodes)
        return f"<EmbeddedCluster {self.name!r} {running}/{self.size} nodes running>"

    @property
    def urls(self) -> list[str]:
        """Client URLs of the nodes that are running."""
        return [node.url for node in self.nodes if node.running]

    def start(self, *, timeout: float = 20.0) -> None:
        """Start every node and wait until each serves clients (blocking)."""
        deadline = time.monotonic() + timeout
        self._base_dir = self._given_dir or tempfile.mkdtemp(prefix="thaw-nats-cluster-")
        ports = pick_free_ports(self.size, self.host)
        routes = tuple(f"nats-route://{self.host}:{port}" for port in ports)
        self.nodes = [
            EmbeddedServer(
                ServerConfig(
                    host=self.host,
                    store_dir=os.path.join(self._base_dir, f"n{index}"),
                    server_name=f"{self.name}-n{index}",
                    cluster=ClusterSettings(name=self.name, port=port, routes=routes),
                ),
                binary=self._binary,
            )
            for index, port in enumerate(ports)
        ]
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def node_serving(self, url: str) -> int:
        """The index of the node whose client URL is ``url`` (e.g. a client's connected URL)."""
        port = urlsplit(url if "://" in url else f"nats://{url}").port
        for index, node in enumerate(self.nodes):
            if node.running and node.port == port:
                return index
        raise ValueError(f"no running node of {self!r} serves {url}")

    def stop_node(self, index: int, *, timeout: float = 5.0) -> None:
        """Stop one node, as an operator would (SIGTERM, SIGKILL after ``timeout``).

        Its store and ports stay, so ``start_node`` brings the same node back.
        """
        self.nodes[index].stop_process(timeout=timeout)

    def kill_node(self, index: int) -> None:
        """SIGKILL one node, as a crash would; ``start_node`` brings it back."""
        self.nodes[index].kill()

    def start_node(self, index: int, *, timeout: float = 20.0) -> None:
        """Start a stopped node again, on the same client and route ports and store."""
        self.nodes[index].start(timeout=timeout)

    def stop(self) -> None:
        """Stop every node and remove the directories this object created."""
        for node in self.nodes:
            node.stop()
        base_dir, self._base_dir = self._base_dir, None
        if base_dir is not None and self._given_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)

    async def wait_jetstream(self, *, timeout: float = 20.0) -> None:
        """Wait until a stream with one replica per running node can be placed."""
        import nats  # the nats extra; imported here so the launcher works without it
        import nats.errors
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        replicas = len(self.urls)
        client = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=3)
        try:
            js = client.jetstream(timeout=2.0)
            config = StreamConfig(
                name=_PROBE,
                subjects=[f"{_PROBE}.>"],
                num_replicas=replicas,
                storage=StorageType.MEMORY,
            )
            with anyio.fail_after(timeout):
                while True:
                    try:
                        await js.add_stream(config)
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                        await anyio.sleep(_PROBE_INTERVAL)  # meta leader or peers not there yet
                        continue
                    await js.delete_stream(_PROBE)
                    return
        except TimeoutError:
            raise NatsServerFailed(
                f"the JetStream cluster {self.name!r} could not place an R{replicas} stream "
                f"within {timeout} seconds"
            ) from None
        finally:
            await client.close()


@asynccontextmanager
async def open_embedded_cluster(
    size: int = 3,
    *,
    name: str = "thaw",
    base_dir: str | os.PathLike[str] | None = None,
    start_timeout: float = 30.0,
) -> AsyncIterator[EmbeddedCluster]:
    """A JetStream cluster of ``size`` nodes for the duration of the block."""
    cluster = EmbeddedCluster(size, name=name, base_dir=base_dir)
    await anyio.to_thread.run_sync(lambda: cluster.start(timeout=start_timeout))
    try:
        await cluster.wait_jetstream(timeout=start_timeout)
        yield cluster
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cluster.stop)
