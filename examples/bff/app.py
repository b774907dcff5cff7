"""A backend-for-frontend: one page model assembled from three back-end calls.

``GET /page/{user}`` calls ``profile``, ``orders`` and ``recommendations``
concurrently with a per-call deadline, and answers with what arrived in time: a
late or failing part is left out and named in ``missing``, with ``partial:
true``, so the front end renders the page instead of an error.

The back ends are capabilities of this app and also NATS services (``subject``
triggers on ``bff.<name>``). With ``BFF_BACKENDS=process`` (the default) the page
calls them in process (``ctx.call``); with ``BFF_BACKENDS=nats`` it sends NATS
requests (``ctx.request``), so the back ends can run in other hosts or apps.

Try it: thaw serve examples/bff, then curl 127.0.0.1:8000/page/u1
"""

from __future__ import annotations

import os

import anyio
import msgspec

from thaw import Access, App, Context, Rejected, fan_out, http, subject

app = App("bff")

PART_DEADLINE = 0.15  # seconds each back-end call may take
PARTS = ("profile", "orders", "recommendations")
BACKENDS = os.environ.get("BFF_BACKENDS", "process")
if BACKENDS not in ("process", "nats"):
    raise ValueError(f"BFF_BACKENDS={BACKENDS!r}: use 'process' or 'nats'")
DELAYS: dict[str, float] = {"recommendations": 0.0}  # tests make a back end slow here

USERS = {"u1": ("Ada Lovelace", "gold"), "u2": ("Grace Hopper", "silver")}
ORDERS = {"u1": [("A-1", 1999), ("A-2", 4500)], "u2": []}


class UserRef(msgspec.Struct, frozen=True):
    user: str


class Profile(msgspec.Struct, frozen=True):
    name: str
    tier: str


class Order(msgspec.Struct, frozen=True):
    id: str
    total: int


class Page(msgspec.Struct, frozen=True):
    user: str
    profile: Profile | None
    orders: list[Order] | None
    recommendations: list[str] | None
    partial: bool
    missing: list[str]


@app.capability(subject("bff.profile"), timeout=1.0)
async def profile(ref: UserRef) -> Profile:
    """The user's profile (a back-end service)."""
    found = USERS.get(ref.user)
    if found is None:
        raise Rejected(f"no user {ref.user!r}", code="user_unknown", http_status=404)
    return Profile(*found)


@app.capability(subject("bff.orders"), timeout=1.0)
async def orders(ref: UserRef) -> list[Order]:
    """The user's recent orders (a back-end service)."""
    return [Order(*row) for row in ORDERS.get(ref.user, [])]


@app.capability(subject("bff.recommendations"), timeout=1.0)
async def recommendations(ref: UserRef) -> list[str]:
    """Products to suggest (a slow back-end service)."""
    await anyio.sleep(DELAYS["recommendations"])
    return ["B-7", "C-3"] if ref.user == "u1" else []


@app.capability(http("GET", "/page/{user}"), timeout=1.0, access=Access(requests=("bff.*",)))
async def page(ref: UserRef, ctx: Context) -> Page:
    """The page model: profile, orders and recommendations, partial if one is late."""
    if BACKENDS == "nats":
        calls = {name: ctx.request(f"bff.{name}", ref, timeout=PART_DEADLINE) for name in PARTS}
    else:
        calls = {name: ctx.call(name, ref, timeout=PART_DEADLINE) for name in PARTS}
    gathered = await fan_out(calls)
    if gathered.failed.get("profile") == "user_unknown":
        raise Rejected(f"no user {ref.user!r}", code="user_unknown", http_status=404)
    results = gathered.results
    return Page(
        user=ref.user,
        profile=msgspec.convert(results["profile"], Profile) if "profile" in results else None,
        orders=msgspec.convert(results["orders"], list[Order]) if "orders" in results else None,
        recommendations=results.get("recommendations"),
        partial=gathered.partial,
        missing=gathered.missing,
    )
