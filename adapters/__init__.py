"""Transport adapters: one package per transport, translating to and from the core.

Adapters map transport events to ``thaw.lowlevel`` calls and Outcomes back to
transport actions; they never decide (the decisions live in the core) and the
dependency points one way only: ``thaw.adapters -> thaw``. uvloop, httptools,
orjson and nats-py are imported here, never in the core (``runtime/``, imported as ``thaw``).
"""

if __name__ != "thaw.adapters":  # the folder adapters/ is thaw.adapters; never importable as itself
    raise ImportError(
        f"Thaw's adapters are imported as 'thaw.adapters', not {__name__!r}: write "
        "'import thaw.adapters' (install the project with pip install -e . so that the name exists)"
    )
