"""Transport adapters: one package per transport, translating to and from the core.

Adapters map transport events to ``runtime.lowlevel`` calls and Outcomes back to
transport actions; they never decide (the decisions live in the core) and the
dependency points one way only: ``adapters -> runtime``. uvloop, httptools,
orjson and nats-py are imported here, never in ``runtime/``.
"""
