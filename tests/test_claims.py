"""Claim checks on MemoryBackbone, and decoding hostile ClaimCheck JSON (hypothesis)."""

from __future__ import annotations

import json

import msgspec
import pytest
from claims_contract import ClaimsContract
from hypothesis import given
from hypothesis import strategies as st

from thaw import (
    App,
    ClaimCheck,
    Context,
    ContractError,
    MalformedPayload,
    Ok,
    Reject,
    decode_claim,
    get_claim,
    put_claim,
    subject,
)
from thaw._clock import FakeClock
from thaw.backbone._contract import ObjectStoreConfig
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.testing import invoke

DIGEST = "ab" * 32
VALID = {"bucket": "images", "name": "claims/x1", "size": 10, "sha256": DIGEST, "created": 1e9}


class TestMemoryClaims(ClaimsContract):
    @pytest.fixture
    def backbone(self) -> MemoryBackbone:
        return MemoryBackbone(clock=FakeClock())


def _body(**changes: object) -> bytes:
    fields = {**VALID, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def test_a_valid_claim_decodes() -> None:
    claim = decode_claim(_body(expires=1e9 + 5))
    assert claim == ClaimCheck(
        bucket="images", name="claims/x1", size=10, sha256=DIGEST, created=1e9, expires=1e9 + 5
    )
    assert decode_claim(_body(extra="ignored")).name == "claims/x1"  # newer writers add fields


@pytest.mark.parametrize(
    "changes",
    [
        {"size": "10"},
        {"size": -1},
        {"size": 1 << 40},
        {"size": 10.5},
        {"bucket": 7},
        {"bucket": "a.b"},
        {"bucket": "../x"},
        {"bucket": ""},
        {"name": "../../etc/passwd"},
        {"name": "/etc/passwd"},
        {"name": "a/../b"},
        {"name": "a\\b"},
        {"name": "C:\\x"},
        {"name": ""},
        {"name": "x" * 256},
        {"name": "nul\u0000"},
        {"name": ["a"]},
        {"sha256": "AB" * 32},
        {"sha256": "ab" * 33},
        {"sha256": None},
        {"created": -1},
        {"created": 1e300},
        {"created": "yesterday"},
        {"expires": 1.0},  # before it was created
        {"name": ...},
        {"sha256": ...},
    ],
    ids=repr,
)
def test_hostile_claims_are_refused_naming_the_field(changes: dict[str, object]) -> None:
    with pytest.raises(ContractError, match="invalid claim check") as caught:
        decode_claim(_body(**changes))
    assert caught.value.code == "contract_invalid"


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"[1, 2]", b"null", b" " * 5000])
def test_malformed_or_oversized_json_is_refused(data: bytes) -> None:
    with pytest.raises((MalformedPayload, ContractError)):
        decode_claim(data)


def test_an_oversized_body_is_refused_before_parsing() -> None:
    with pytest.raises(MalformedPayload, match="at most 4096"):
        decode_claim(_body(name="a" * 5000))


_names = st.text(alphabet="ab./\\-_=ü\x00 ", max_size=12)
_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    _names,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "bucket": st.one_of(_json_values, st.sampled_from(["images", "a-b_c"])),
            "name": st.one_of(_json_values, st.sampled_from(["claims/x", "a.b/c"])),
            "size": st.one_of(_json_values, st.integers(0, 1 << 31)),
            "sha256": st.one_of(_json_values, st.just(DIGEST)),
            "created": st.one_of(_json_values, st.floats(0, 2e11)),
            "expires": st.one_of(_json_values, st.floats(0, 2e11)),
        },
    )
)
def test_any_json_object_decodes_to_a_safe_claim_or_a_clear_error(
    fields: dict[str, object],
) -> None:
    try:
        claim = decode_claim(json.dumps(fields).encode())
    except (ContractError, MalformedPayload):
        return  # their codes are contract_invalid / payload_malformed
    segments = claim.name.split("/")
    assert all(segment and not segment.startswith(".") for segment in segments)
    assert "\\" not in claim.name and claim.name.isascii()
    assert 0 <= claim.size <= 1 << 30
    assert claim.expires is None or claim.expires >= claim.created


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_clearly(data: bytes) -> None:
    try:
        decode_claim(data)
    except (ContractError, MalformedPayload):
        pass


@given(
    st.builds(
        ClaimCheck,
        bucket=st.from_regex(r"\A[-_a-zA-Z0-9]{1,20}\Z"),
        name=st.from_regex(r"\A[a-z0-9_=-][a-z0-9._=-]{0,8}(/[a-z0-9_=-][a-z0-9._=-]{0,8}){0,3}\Z"),
        size=st.integers(0, 1 << 30),
        sha256=st.from_regex(r"\A[0-9a-f]{64}\Z"),
        created=st.floats(0, 1e10),
        expires=st.none(),
    )
)
def test_every_valid_claim_round_trips(claim: ClaimCheck) -> None:
    assert decode_claim(msgspec.json.encode(claim)) == claim


@pytest.mark.anyio
async def test_a_capability_takes_a_claim_as_its_payload_and_refuses_a_changed_one() -> None:
    app = App("claims_app")

    @app.capability(subject("images.size"))
    async def size(upload: ClaimCheck, ctx: Context) -> int:
        return len(await get_claim(ctx, upload))

    backbone = MemoryBackbone(clock=FakeClock())
    store = await backbone.add_object_store(ObjectStoreConfig(bucket="uploads"))
    claim = await put_claim(store, b"x" * 5000, name="up/1")
    outcome = await invoke(app, "size", msgspec.json.encode(claim), backbone=backbone)
    assert isinstance(outcome, Ok)
    assert outcome.data == b"5000"
    await store.put("up/1", b"y" * 5000)
    outcome = await invoke(app, "size", msgspec.json.encode(claim), backbone=backbone)
    assert isinstance(outcome, Reject)
    assert outcome.code == "claim_check_failed"
    hostile = msgspec.json.encode({**msgspec.to_builtins(claim), "name": "../secrets"})
    outcome = await invoke(app, "size", hostile, backbone=backbone)
    assert isinstance(outcome, Reject)
    assert outcome.code == "contract_invalid"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "holiday photo.jpg"),
        ("name", "../etc/passwd"),
        ("bucket", "has space"),
        ("size", -1),
        ("sha256", "not-hex"),
        ("created", float("nan")),
    ],
)
def test_a_claim_built_directly_is_checked_like_a_decoded_one(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "bucket": "b",
        "name": "claims/x.jpg",
        "size": 1,
        "sha256": "0" * 64,
        "created": 1.0,
    }
    ClaimCheck(**fields)  # type: ignore[arg-type]
    fields[field] = value
    with pytest.raises(ValueError, match=f"ClaimCheck.{field}"):
        ClaimCheck(**fields)  # type: ignore[arg-type]
