"""One invocation, Event in and Outcome out: the invoker (the hot path), deadlines, the
Context a function gets, idempotency stores, the retry budget, fan-out and trace context.

Internal: import these names from ``thaw``, ``thaw.lowlevel`` or ``thaw.testing``.
Knows no sockets, NATS or HTTP; adapters drive it with plain Events.
"""
