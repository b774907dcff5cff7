"""Thaw: the portable core. Function authors import from here.

This package imports only the standard library, msgspec and anyio, so it runs
unchanged in Pyodide and on edge nodes (a test guards this).
"""

from ._app import App
from ._changes import KvChange, ObjectChange
from ._context import Context
from ._errors import (
    CallerError,
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
from ._event import Event, Ok, Outcome, Reject, Retry
from ._fanout import Gathered, fan_out
from ._policy import Access, Backoff, Idempotency, RetryPolicy
from ._triggers import Cors, Webhook, http, kv, objects, schedule, stream, subject

__version__ = "0.1.0"

__all__ = [
    "Access",
    "App",
    "Backoff",
    "CallerError",
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
    "Webhook",
    "WrongRevision",
    "fan_out",
    "http",
    "kv",
    "objects",
    "schedule",
    "stream",
    "subject",
]
