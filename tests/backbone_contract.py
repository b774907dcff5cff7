"""The shipped backbone conformance suite (``thaw.testing.BACKBONE_CHECKS``) as pytest tests.

Subclass ``BackboneContract`` in a ``test_*.py`` module and give it a ``harness``
fixture returning a ``thaw.testing.BackboneHarness``: every check then runs as
its own test against that backbone (MemoryBackbone in test_memory_backbone.py,
a real nats-server in test_jetstream_backbone.py).
"""

from __future__ import annotations

import pytest

from thaw.backbone.conformance._suite import BackboneCheck
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
