"""A bounded load of signed payment webhooks on a running ``thaw serve examples/payment_webhook``.

    python benchmarks/payment_load.py --port 8000 --seconds 30 --connections 4

Each connection POSTs signed ``payment.succeeded`` events to ``/webhooks/payments``
over keep-alive, back to back, until ``--seconds`` or ``--max`` requests have gone
(whichever first). ``--bad-share`` of them carry a wrong signature (rejected, 401),
``--duplicate-share`` repeat an earlier event id (the stream drops the duplicate).
Loopback only; prints what it sent and the answers' status counts (JSON with --json).
The secret is ``PAYMENT_WEBHOOK_SECRET`` as for the host (the example's development
secret when unset). This drives docs/cost.md's worked example; it is not a benchmark
against peers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.payment_webhook import signatures
from examples.payment_webhook.capabilities import DEV_SECRET, SECRET_ENV

CUSTOMERS = ("cus_LOAD0001", "cus_LOAD0002", "cus_LOAD0003", "cus_LOAD0004")


def payment(number: int, run: str) -> bytes:
    event = {
        "id": f"evt_{run}{number:07d}",
        "type": "payment.succeeded",
        "created": "2026-12-04T12:00:00Z",
        "payment_id": f"pay_{run}{number:07d}",
        "amount": 1_000 + 37 * (number % 5000),
        "currency": "EUR",
        "customer": CUSTOMERS[number % len(CUSTOMERS)],
    }
    return json.dumps(event).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max", type=int, default=1_000_000, help="requests at most")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--duplicate-share", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    secret = os.environ.get(SECRET_ENV, "").split(",")[0] or DEV_SECRET
    run = f"L{int(time.time()) % 100000:05d}"
    numbers = iter(range(args.max))
    lock = threading.Lock()
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + args.seconds

    def worker(index: int) -> None:
        rng = random.Random(args.seed + index)
        connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        seen: Counter[str] = Counter()
        try:
            while time.monotonic() < deadline:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    break
                if number > 10 and rng.random() < args.duplicate_share:
                    number = rng.randrange(number)  # a provider's retry of an earlier event
                body = payment(number, run)
                signature = signatures.sign(secret, int(time.time()), body)
                if rng.random() < args.bad_share:
                    signature = signatures.sign("whsec_wrong", int(time.time()), body)
                headers = {"Content-Type": "application/json", "Webhook-Signature": signature}
                try:
                    connection.request("POST", "/webhooks/payments", body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    seen[str(response.status)] += 1
                except (OSError, http.client.HTTPException):
                    seen["error"] += 1
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        finally:
            connection.close()
            with lock:
                statuses.update(seen)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    sent = sum(statuses.values())
    result = {
        "seconds": round(elapsed, 2),
        "requests": sent,
        "per_second": round(sent / elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{sent} requests in {elapsed:.1f} s ({sent / elapsed:.1f}/s): {result['statuses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
