"""The ``nats`` backbone factory the core finds by name (``thaw.backbones`` entry point).

``open_backbone(url, state_dir=...)`` is what ``thaw dev``/``thaw serve --backbone
nats`` call: with a URL it connects to that server or cluster; without one it
starts an embedded nats-server with JetStream on a free loopback port, keeping
its data under ``<state_dir>/nats`` so streams and consumers survive restarts,
says where it is, and stops it when the block ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from thaw import ConfigError
from thaw.adapters.nats.backbone import open_jetstream_backbone
from thaw.adapters.nats.connection import JetStreamOptions
from thaw.adapters.nats.server import open_embedded_server
from thaw.lowlevel import Backbone

__all__ = ["open_backbone"]

log = logging.getLogger("thaw.nats")


@asynccontextmanager
async def open_backbone(
    url: str | None = None, *, state_dir: str = ".thaw", **options: Any
) -> AsyncIterator[Backbone]:
    """A JetStream backbone at ``url``, or on an embedded server when ``url`` is None.

    ``options`` are ``JetStreamOptions`` fields (``user``, ``password``, ``token``,
    ``creds_file``, ``nkeys_seed_file``, ``tls_*_file``, timeouts, ``replicas``).
    """
    try:
        settings = msgspec.convert(options, JetStreamOptions)
    except msgspec.ValidationError as error:
        raise ConfigError(f"invalid NATS option: {error}") from error
    if url is not None:
        async with open_jetstream_backbone(url, options=settings) as backbone:
            yield backbone
        return
    data_dir = os.path.join(state_dir, "nats")
    os.makedirs(data_dir, exist_ok=True)
    async with open_embedded_server(data_dir=data_dir) as server:
        log.info("started nats-server at %s (JetStream data in %s)", server.url, data_dir)
        async with open_jetstream_backbone(server.url, options=settings) as backbone:
            yield backbone
