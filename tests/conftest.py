"""Shared fixtures: every async test runs on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

pytest.register_assert_rewrite("backbone_contract")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# CI machines are shared and noisy: never fail a property test for being slow.
settings.register_profile(
    "thaw", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("thaw")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
