"""Claim checks on a real nats-server (the JetStream object store, chunked data)."""

from __future__ import annotations

import pytest
from claims_contract import ClaimsContract
from nats_fixtures import JetStreamHarness, jetstream_harness, nats_server  # noqa: F401

from thaw.adapters.nats import JetStreamBackbone


class TestJetStreamClaims(ClaimsContract):
    @pytest.fixture
    def backbone(self, jetstream_harness: JetStreamHarness) -> JetStreamBackbone:  # noqa: F811
        return jetstream_harness.backbone
