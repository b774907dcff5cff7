"""The backbone contract (messaging and state: streams, consumers, KV, object stores,
request/reply), the rules every backbone enforces, provisioning from capability specs,
dead-letter tooling, and choosing a backbone by name.

The in-process MemoryBackbone lives beside it in ``memory/``; JetStream lives in
``thaw.adapters.nats``. Internal: import these names from ``thaw.lowlevel`` or ``thaw.testing``.
"""
