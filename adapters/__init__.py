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

from thaw.backbone._registry import announce

# The entry points pyproject.toml registers for these adapters, announced as they are
# imported so that a host finds them without scanning the installed distributions
# (tests/test_registry.py keeps the two equal).
announce("thaw.backbones", {"nats": "thaw.adapters.nats:open_backbone"})
announce(
    "thaw.servers",
    {
        "http": "thaw.adapters.http:open_http_server",
        "subjects": "thaw.adapters.nats.subject_services:open_host_subject_services",
        "http-in-process": "thaw.adapters.http.in_process:open_in_process_http",
    },
)
