"""Values nested too deeply to encode or decode: a clear Outcome, never a crash.

Not run inside Pyodide: there the JavaScript stack overflows before CPython's
recursion limit, and the fatal error takes the whole runtime down (a known limit
of the edge host, see docs/errors.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from thaw import App, Event, Reject
from thaw.invocation._invoker import Invoker

pytestmark = pytest.mark.anyio


async def test_a_deeply_nested_result_is_result_invalid_not_a_crash() -> None:
    app = App("deep")

    @app.capability(max_result=4096)
    async def nest() -> list[Any]:
        value: list[Any] = []
        for _ in range(100_000):
            value = [value]
        return value

    outcome = await Invoker(app).capability("nest")(Event(id="e"))
    assert isinstance(outcome, Reject) and outcome.code == "result_invalid"
    assert app.capabilities["nest"].policy.max_result == 4096
