"""Thaw: the portable core. Function authors import from here.

This package imports only the standard library, msgspec and anyio, so it runs
unchanged in Pyodide and on edge nodes (a test guards this).
"""

if __name__ != "thaw":  # the folder runtime/ is the package thaw; never importable as itself
    raise ImportError(
        f"Thaw's core is imported as 'thaw', not {__name__!r}: write 'import thaw' "
        "(install the project with pip install -e . so that the name exists)"
    )

from typing import TYPE_CHECKING

from thaw._errors import (
    BatchInvalid,
    CallerError,
    ClaimCheckFailed,
    ConfigError,
    ContractError,
    DeadlineExceeded,
    FunctionError,
    KeyExists,
    MalformedPayload,
    ObjectNotFound,
    Rejected,
    RetryLater,
    RuntimeFault,
    ThawError,
    WrongRevision,
)
from thaw._event import Event, Ok, Outcome, Reject, Retry
from thaw.backbone._claims import ClaimCheck, decode_claim, delete_claim, get_claim, put_claim
from thaw.declarations._app import App
from thaw.declarations._batch_types import Batch, BatchRef
from thaw.declarations._changes import KvChange, ObjectChange
from thaw.declarations._context import Context
from thaw.declarations._policy import Access, Backoff, CanaryPolicy, Idempotency, RetryPolicy
from thaw.declarations._slo import Age, Availability, Completion, Latency
from thaw.declarations._triggers import Cors, Webhook, http, kv, objects, schedule, stream, subject
from thaw.invocation._fanout import Gathered, fan_out

if TYPE_CHECKING:
    from thaw.host._schedule import Tick

# The distribution's version, written here rather than read from the installed metadata:
# importing importlib.metadata costs a new process about as much as Python's own start
# (benchmarks/host_boot.py), and a copy without metadata (the edge bundle) knows it too.
# tests/test_version.py keeps it equal to pyproject.toml's.
__version__ = "0.1.0"

__all__ = [
    "Access",
    "Age",
    "App",
    "Availability",
    "Backoff",
    "Batch",
    "BatchInvalid",
    "BatchRef",
    "CallerError",
    "CanaryPolicy",
    "ClaimCheck",
    "ClaimCheckFailed",
    "Completion",
    "ConfigError",
    "Context",
    "ContractError",
    "Cors",
    "DeadlineExceeded",
    "Event",
    "Gathered",
    "FunctionError",
    "Idempotency",
    "KeyExists",
    "KvChange",
    "Latency",
    "MalformedPayload",
    "ObjectChange",
    "ObjectNotFound",
    "Ok",
    "Outcome",
    "Reject",
    "Rejected",
    "Retry",
    "RetryLater",
    "RetryPolicy",
    "RuntimeFault",
    "ThawError",
    "Tick",
    "Webhook",
    "WrongRevision",
    "decode_claim",
    "delete_claim",
    "fan_out",
    "get_claim",
    "http",
    "kv",
    "objects",
    "put_claim",
    "schedule",
    "stream",
    "subject",
]


if not TYPE_CHECKING:  # hidden from mypy, so that a misspelt name stays a type error

    def __getattr__(name: str) -> object:
        # Tick is defined beside the scheduler, which loads the invoker and
        # asyncio: importing it on first use keeps ``import thaw`` as light as it was.
        if name == "Tick":
            from thaw.host._schedule import Tick

            return Tick
        raise AttributeError(f"module 'thaw' has no attribute {name!r}")
