"""The shipped backbone conformance suite (``thaw.testing.BACKBONE_CHECKS``) as pytest tests.

Subclass ``BackboneContract`` in a ``test_*.py`` module and give it a ``harness``
fixture returning a ``thaw.testing.BackboneHarness``: every check then runs as
its own test against that backbone (MemoryBackbone in test_memory_backbone.py,
a real nats-server in test_jetstream_backbone.py).
"""

from __future__ import annotations

import pytest

from thaw._errors import PayloadTooLarge
from thaw.backbone._rules import header_block_size
from thaw.backbone.conformance._harness import make_stream
from thaw.backbone.conformance._suite import BackboneCheck
from thaw.lowlevel import KvConfig
from thaw.testing import BACKBONE_CHECKS, BackboneHarness

__all__ = ["BackboneContract"]


def _name(check: BackboneCheck) -> str:
    return check.__name__.removeprefix("check_")


class BackboneContract:
    """The suite; subclasses provide the ``harness`` fixture."""

    @pytest.mark.anyio
    @pytest.mark.parametrize("check", BACKBONE_CHECKS, ids=_name)
    async def test_conformance(self, harness: BackboneHarness, check: BackboneCheck) -> None:
        await check(harness)

    @pytest.mark.anyio
    async def test_headers_count_toward_max_payload(self, harness: BackboneHarness) -> None:
        """A message is its payload plus its NATS/1.0 header block: what exceeds the
        backbone's max_payload together is refused with payload_too_large before it is
        sent (nats-server would close the connection), and the backbone goes on."""
        backbone = harness.backbone
        limit: int = backbone.max_payload  # type: ignore[attr-defined]
        stream, root = await make_stream(harness, name="sizes")
        headers = {"x-pad": "h" * 200}
        fitting = b"x" * (limit - header_block_size(headers))
        await backbone.publish(f"{root}.a", fitting, headers=headers)
        with pytest.raises(PayloadTooLarge, match="max_payload") as caught:
            await backbone.publish(f"{root}.a", fitting + b"x", headers=headers)
        assert caught.value.code == "payload_too_large"
        with pytest.raises(PayloadTooLarge):  # the message id is a header too
            await backbone.publish(f"{root}.a", fitting, headers=headers, msg_id="m-1")
        with pytest.raises(PayloadTooLarge):
            await backbone.request(f"{root}.rpc", fitting + b"x", headers=headers, timeout=1.0)
        bucket = await backbone.add_kv(KvConfig(bucket=f"{harness.prefix}_sizes"))
        revision = await bucket.put("k", b"v" * limit)  # a plain put sends no headers
        with pytest.raises(PayloadTooLarge):  # the expected-revision header does not fit
            await bucket.update("k", b"v" * limit, last=revision)
        with pytest.raises(PayloadTooLarge):
            await bucket.create("other", b"v" * limit)
        assert (await backbone.publish(f"{root}.a", b"after")).seq == 2
        assert (await backbone.stream_info(stream)).messages == 2
