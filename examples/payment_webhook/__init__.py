"""payment_webhook: a webhook app with realistic weight (cold-start benchmark, NATS, HTTP).

    thaw list examples/payment_webhook

Modules: ``contracts`` (msgspec Structs and enums), ``signatures`` (HMAC
verification), ``rules`` (fee table and currencies from ``data/currencies.json``),
``ledger`` (pure posting arithmetic), ``capabilities`` (the App).
"""

from .capabilities import app

__all__ = ["app"]
