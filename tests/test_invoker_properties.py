"""Hostile input at the invoker: whatever the bytes, it answers with an Outcome."""

from __future__ import annotations

import random
from typing import Any

import anyio
import msgspec
from hypothesis import given
from hypothesis import strategies as st

from thaw import App, Context, Event, Ok, Reject, Retry
from thaw.invocation._invoker import Invoker


class Address(msgspec.Struct, frozen=True):
    city: str
    zip: str


class Customer(msgspec.Struct, frozen=True):
    id: int
    name: str
    tags: list[str] = []
    address: Address | None = None
    balance: float = 0.0


app = App("props")


@app.capability(max_payload=4096)
async def strict(customer: Customer) -> dict[str, Any]:
    return {"id": customer.id, "tags": len(customer.tags)}


@app.capability(max_payload=4096)
async def loose(value: Any, ctx: Context) -> Any:
    if isinstance(value, dict) and value.get("explode"):
        raise RuntimeError("asked to explode")
    _ = ctx.trace  # parses the (hostile) traceparent
    return value


@app.capability()
async def raw(data: bytes) -> int:
    return len(data)


invoker = Invoker(app)
OUTCOMES = (Ok, Retry, Reject)


def run(name: str, event: Event) -> object:
    async def call() -> object:
        return await invoker.invoke(name, event)

    return anyio.run(call)


@given(st.binary(max_size=5000))
def test_arbitrary_bytes_always_answer_with_an_outcome(data: bytes) -> None:
    for name in ("strict", "loose", "raw"):
        outcome = run(name, Event(id="x", data=data))
        assert type(outcome) in OUTCOMES
        if name == "strict" and type(outcome) is Reject:
            assert outcome.code in {"payload_malformed", "contract_invalid", "payload_too_large"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_values)
def test_any_json_gets_ok_or_a_contract_reject(value: Any) -> None:
    outcome = run("strict", Event(id="x", data=msgspec.json.encode(value)))
    assert type(outcome) in (Ok, Reject)
    if type(outcome) is Reject:
        assert outcome.code in {"contract_invalid", "payload_too_large"}


@given(
    id=st.text(max_size=200),
    subject=st.text(max_size=200),
    traceparent=st.text(max_size=200),
    attempt=st.integers(min_value=-(2**63), max_value=2**63),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=5),
    value=json_values,
)
def test_hostile_event_fields_never_crash(
    id: str, subject: str, traceparent: str, attempt: int, headers: dict[str, str], value: Any
) -> None:
    event = Event(
        id=id,
        data=msgspec.json.encode(value),
        subject=subject,
        headers=headers,
        attempt=attempt,
        traceparent=traceparent,
    )
    assert type(run("loose", event)) in OUTCOMES


def test_seeded_mutations_of_a_valid_payload() -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    valid = msgspec.json.encode(
        Customer(id=7, name="Ada", tags=["a", "b"], address=Address("Paris", "75001"))
    )
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            position = rng.randrange(len(data) + 1)
            if op < 0.4 and data:
                del data[min(position, len(data) - 1)]
            elif op < 0.8:
                data.insert(position, rng.randrange(256))
            else:
                data = data[:position]
        outcome = run("strict", Event(id="x", data=bytes(data)))
        assert type(outcome) in (Ok, Reject), f"seed={seed} data={bytes(data)!r}"
