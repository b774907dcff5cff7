"""The backbone conformance suite: JetStream semantics every Backbone must show.

Plain async checks with ``assert`` (no test framework: this is the core), each
taking a ``BackboneHarness``; ``thaw.testing`` exports the list and the runner,
and its docstring says how a third-party backbone runs them. Streams and
consumer provisioning, delivery, and buckets each have their own module.
"""
