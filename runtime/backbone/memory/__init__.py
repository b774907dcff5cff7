"""MemoryBackbone: the in-process backbone with JetStream's semantics, on an injected clock.

It passes the same conformance suite as the JetStream backbone (``thaw.testing``).
Internal: import ``MemoryBackbone`` from ``thaw.testing``.
"""
