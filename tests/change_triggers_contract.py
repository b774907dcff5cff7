"""The shipped change-trigger suite (``thaw.testing.CHANGE_TRIGGER_CHECKS``) as pytest tests.

Subclass ``ChangeTriggerContract`` and give it an ``env`` fixture returning a
``thaw.testing.ChangeEnv``: every check then runs as its own test on that
backbone (MemoryBackbone in test_change_triggers.py, a real nats-server in
test_nats_change_triggers.py). The helpers the backbone-specific tests use
(``Seen``, ``uploads_app``) come from the same module as the checks.
"""

from __future__ import annotations

import pytest

from thaw.host._trigger_checks import ChangeTriggerCheck, Seen, uploads_app
from thaw.testing import CHANGE_TRIGGER_CHECKS, ChangeEnv

__all__ = ["ChangeEnv", "ChangeTriggerContract", "Seen", "uploads_app"]


def _name(check: ChangeTriggerCheck) -> str:
    return check.__name__.removeprefix("check_")


class ChangeTriggerContract:
    """The scenarios; subclasses provide the ``env`` fixture."""

    @pytest.mark.anyio
    @pytest.mark.parametrize("check", CHANGE_TRIGGER_CHECKS, ids=_name)
    async def test_conformance(self, env: ChangeEnv, check: ChangeTriggerCheck) -> None:
        await check(env)
