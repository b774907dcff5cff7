"""Triggers: where a capability's invocations come from.

Each trigger is a frozen, validated value. Construction fails with a
``ConfigError`` naming the bad part, so a typo in a route or a cron expression
stops the app at import, not at the first event. Triggers whose adapter does
not exist yet are still fully validated; adapters read them at start.
"""

from __future__ import annotations

import math
import re
from typing import Literal, TypeAlias

import msgspec

from thaw._errors import ConfigError
from thaw.backbone._subjects import validate_name, validate_subject
from thaw.declarations._cron import CronSpec, parse_cron

__all__ = [
    "HttpTrigger",
    "Webhook",
    "Cors",
    "SubjectTrigger",
    "StreamTrigger",
    "ScheduleTrigger",
    "ObjectsTrigger",
    "KvTrigger",
    "Trigger",
    "http",
    "subject",
    "stream",
    "schedule",
    "objects",
    "kv",
]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PATH_PARAM_TYPES = frozenset({"str", "int", "float", "uuid", "path"})
_PARAM = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")
MissedTicks = Literal["skip", "run_once"]
DeliverPolicy = Literal["all", "new"]


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """Signature verification of an http route, checked before the capability runs.

    The sender signs ``"<timestamp>.<body>"`` with HMAC-SHA256 and sends
    ``<header>: t=<unix seconds>,v1=<hex digest>``. The secret comes from the
    environment variable ``secret_env`` or the file ``secret_file`` (exactly one),
    read when the server starts; this value names it and never holds it.
    ``tolerance`` bounds the clock skew (seconds). A signature answered with a 2xx
    is refused as a replay until it is stale anyway, or for ``replay_window``
    seconds if that is longer (0: until stale); a failed answer frees it for a retry.
    """

    secret_env: str = ""
    secret_file: str = ""
    header: str = "Webhook-Signature"
    tolerance: float = 300.0
    scheme: Literal["hmac-sha256"] = "hmac-sha256"
    replay_window: float = 0.0

    def __post_init__(self) -> None:
        if bool(self.secret_env) == bool(self.secret_file):
            raise ConfigError("Webhook needs exactly one of secret_env=... or secret_file=...")
        if self.secret_env and not _ENV_NAME.match(self.secret_env):
            raise ConfigError(
                f"Webhook secret_env {self.secret_env!r} is not an environment variable name"
            )
        if not isinstance(self.header, str) or not _HEADER_NAME.match(self.header):
            raise ConfigError(f"Webhook header {self.header!r} is not an HTTP header name")
        if self.scheme != "hmac-sha256":
            raise ConfigError(f"Webhook scheme {self.scheme!r} is not supported (hmac-sha256)")
        for name in ("tolerance", "replay_window"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
                or (name == "tolerance" and value == 0)
            ):
                raise ConfigError(
                    f"Webhook {name} must be a positive number of seconds, got {value!r}"
                )


_ORIGIN = re.compile(
    r"[a-z][a-z0-9+.\-]{0,15}://"  # scheme
    r"(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]{2,45}\])"  # host name, IPv4 or [IPv6]
    r"(?::[1-9][0-9]{0,4})?\Z"  # port
)
MAX_CORS_AGE = 86400


class Cors(msgspec.Struct, frozen=True, kw_only=True):
    """Cross-origin access to an http route from browser front ends (the Fetch CORS protocol).

    ``origins`` are exact ``scheme://host[:port]`` values in lower case (what browsers
    send in ``Origin``), or ``("*",)`` for any origin, which cannot be combined with
    ``credentials=True``. ``methods`` are advertised to preflights (default: the
    route's own method, which a non-empty tuple must include); ``headers`` are the
    request headers a page may send beyond the CORS-safelisted ones; ``expose`` the
    response headers its scripts may read; ``max_age`` how long (seconds, at most a
    day) a browser may cache a preflight answer.
    """

    origins: tuple[str, ...]
    methods: tuple[str, ...] = ()
    headers: tuple[str, ...] = ("content-type",)
    expose: tuple[str, ...] = ()
    max_age: int = 600
    credentials: bool = False

    def __post_init__(self) -> None:
        origins = self.origins
        if not isinstance(origins, tuple) or not origins:
            raise ConfigError("Cors origins must be a non-empty tuple of origins, or ('*',)")
        if "*" in origins:
            if len(origins) != 1:
                raise ConfigError("Cors origins: '*' stands alone, not beside named origins")
            if self.credentials:
                raise ConfigError(
                    "Cors origins=('*',) with credentials=True is refused (browsers refuse it "
                    "too): name the origins that may send credentials"
                )
        else:
            for origin in origins:
                if not isinstance(origin, str) or not _ORIGIN.match(origin):
                    raise ConfigError(
                        f"Cors origin {str(origin)[:100]!r} is not scheme://host[:port] in lower "
                        "case (no path, no trailing slash; 'null' is never allowed)"
                    )
            if len(set(origins)) != len(origins):
                raise ConfigError("Cors origins repeat an origin")
        for method in self.methods:
            if method not in HTTP_METHODS:
                raise ConfigError(
                    f"Cors method {str(method)[:20]!r} is not one of "
                    f"{', '.join(sorted(HTTP_METHODS))} (upper case)"
                )
        for field in ("headers", "expose"):
            for name in getattr(self, field):
                if not isinstance(name, str) or not _HEADER_NAME.match(name):
                    raise ConfigError(f"Cors {field}: {str(name)[:80]!r} is not a header name")
        age = self.max_age
        if not isinstance(age, int) or isinstance(age, bool) or not 0 <= age <= MAX_CORS_AGE:
            raise ConfigError(f"Cors max_age must be an int of seconds in 0..86400, got {age!r}")
        if not isinstance(self.credentials, bool):
            raise ConfigError(f"Cors credentials must be a bool, got {self.credentials!r}")


MAX_ROUTE_BODY = 1024 * 1024 * 1024  # no route takes more than 1 GiB in one body


class HttpTrigger(msgspec.Struct, frozen=True, tag="http"):
    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()  # (name, type) in path order
    enqueue: str | None = None  # async intake: publish to this subject, answer 202
    webhook: Webhook | None = None  # verify the request's signature first
    cors: Cors | None = None  # answer browsers' cross-origin preflights and requests
    max_body: int | None = None  # this route's body limit; None: the server's and max_payload


class SubjectTrigger(msgspec.Struct, frozen=True, tag="subject"):
    subject: str
    queue: str = ""


class StreamTrigger(msgspec.Struct, frozen=True, tag="stream"):
    subject: str
    stream: str | None = None  # None: the stream that captures the subject
    durable: str | None = None  # None: "<app>-<capability>"
    # New fields keep defaults so manifests of older snapshots decode (msgspec evolution).
    bind: bool = False  # True: ``stream`` exists and is someone else's: checked, never changed
    ack_wait: float | None = None  # None: the host's default (30 s)
    max_ack_pending: int | None = None  # None: twice the capability's concurrency, or 1000
    deliver: DeliverPolicy = "all"  # "new": only messages stored after the consumer exists


class ScheduleTrigger(msgspec.Struct, frozen=True, tag="schedule"):
    cron: CronSpec
    timezone: str = "UTC"
    missed: MissedTicks = "skip"


class ObjectsTrigger(msgspec.Struct, frozen=True, tag="objects"):
    bucket: str
    deletes: bool = False  # also run (with deleted=True) when an object is deleted


class KvTrigger(msgspec.Struct, frozen=True, tag="kv"):
    bucket: str
    key: str = ">"


Trigger: TypeAlias = (
    HttpTrigger | SubjectTrigger | StreamTrigger | ScheduleTrigger | ObjectsTrigger | KvTrigger
)


def http(
    method: str,
    path: str,
    *,
    enqueue: str | None = None,
    webhook: Webhook | None = None,
    cors: Cors | None = None,
    max_body: int | None = None,
) -> HttpTrigger:
    """Serve the capability at ``METHOD path``; ``{name}`` or ``{name:int}`` are path parameters.

    ``max_body=BYTES`` is this route's body limit (413 beyond), instead of the smaller
    of the server's ``max_body`` and the capability's ``max_payload``; the server
    refuses to start a route above its ``max_body_cap`` (64 MiB by default).

    With ``enqueue=SUBJECT`` the request is validated, published to that subject
    and answered ``202 Accepted``; the capability then runs from the stream.
    With ``webhook=Webhook(...)`` the request's signature is verified first (401).
    With ``cors=Cors(origins=(...))`` browsers on those origins may call it.
    """
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise ConfigError(f"http method {method!r} is not one of {', '.join(sorted(HTTP_METHODS))}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"http path {path!r} must start with '/'")
    if len(path) > 2048:
        raise ConfigError("http path is longer than 2048 characters")
    params: list[tuple[str, str]] = []
    for match in _PARAM.finditer(path):
        name, _, kind = match.group(1).partition(":")
        kind = kind or "str"
        if not _IDENTIFIER.match(name):
            raise ConfigError(f"http path {path!r}: parameter {name!r} is not an identifier")
        if kind not in PATH_PARAM_TYPES:
            raise ConfigError(
                f"http path {path!r}: parameter type {kind!r} is not one of "
                f"{', '.join(sorted(PATH_PARAM_TYPES))}"
            )
        if any(existing == name for existing, _ in params):
            raise ConfigError(f"http path {path!r}: parameter {name!r} appears twice")
        params.append((name, kind))
    literal = _PARAM.sub("", path)
    if not _PATH_CHARS.match(literal) or "{" in literal or "}" in literal:
        raise ConfigError(f"http path {path!r} has characters that are not allowed in a URL path")
    if enqueue is not None:
        validate_subject(enqueue, wildcards=False)
    if webhook is not None and not isinstance(webhook, Webhook):
        raise ConfigError(f"http webhook={webhook!r} must be a Webhook(...)")
    if cors is not None:
        if not isinstance(cors, Cors):
            raise ConfigError(f"http cors={cors!r} must be a Cors(...)")
        if cors.methods and method.upper() not in cors.methods:
            raise ConfigError(
                f"http {method.upper()} {path}: cors methods {cors.methods} must include "
                "the route's own method"
            )
    whole = isinstance(max_body, int) and not isinstance(max_body, bool)
    if max_body is not None and not (whole and 1 <= max_body <= MAX_ROUTE_BODY):
        raise ConfigError(
            f"http {method.upper()} {path}: max_body={max_body!r} must be a whole number of "
            f"bytes from 1 to {MAX_ROUTE_BODY}"
        )
    return HttpTrigger(method.upper(), path, tuple(params), enqueue, webhook, cors, max_body)


def subject(name: str, *, queue: str = "") -> SubjectTrigger:
    """Answer core NATS requests on ``name`` (request/reply; wildcards allowed)."""
    validate_subject(name, wildcards=True)
    if queue:
        validate_name("queue group", queue)
    return SubjectTrigger(name, queue)


def stream(
    name: str,
    *,
    stream: str | None = None,
    durable: str | None = None,
    bind: bool = False,
    ack_wait: float | None = None,
    max_ack_pending: int | None = None,
    deliver: DeliverPolicy = "all",
) -> StreamTrigger:
    """Consume JetStream messages on subject ``name`` through a durable pull consumer.

    With ``bind=True`` (``stream`` required) the stream belongs to someone else: the
    host never creates or changes it, only checks that it exists and captures
    ``name``. ``ack_wait`` (seconds), ``max_ack_pending`` and ``deliver`` (``"all"``
    or ``"new"``: skip what was stored before the consumer was created) set the
    durable consumer; operators override them per environment (``thaw serve --consumer``).
    """
    validate_subject(name, wildcards=True)
    if stream is not None:
        validate_name("stream", stream)
    if durable is not None:
        validate_name("durable consumer", durable)
    if not isinstance(bind, bool):
        raise ConfigError(f"stream bind={bind!r} must be True or False")
    if bind and stream is None:
        raise ConfigError(f"stream {name!r}: bind=True needs the stream's name (stream='...')")
    check_consumer_options(
        f"stream {name!r}", ack_wait=ack_wait, max_ack_pending=max_ack_pending, deliver=deliver
    )
    return StreamTrigger(name, stream, durable, bind, ack_wait, max_ack_pending, deliver)


MAX_ACK_WAIT = 86400.0  # a day: in-progress heartbeats keep longer work alive
MAX_ACK_PENDING = 1_000_000


def check_consumer_options(
    where: str,
    *,
    ack_wait: object = None,
    max_ack_pending: object = None,
    deliver: object = "all",
) -> None:
    """``ConfigError`` unless these are settings a durable consumer can take (None: default)."""
    if ack_wait is not None and (
        isinstance(ack_wait, bool)
        or not isinstance(ack_wait, int | float)
        or not math.isfinite(ack_wait)
        or not 0 < ack_wait <= MAX_ACK_WAIT
    ):
        raise ConfigError(
            f"{where}: ack_wait={ack_wait!r} must be seconds above 0, at most {MAX_ACK_WAIT:g}"
        )
    if max_ack_pending is not None and (
        isinstance(max_ack_pending, bool)
        or not isinstance(max_ack_pending, int)
        or not 1 <= max_ack_pending <= MAX_ACK_PENDING
    ):
        raise ConfigError(
            f"{where}: max_ack_pending={max_ack_pending!r} must be a whole number "
            f"from 1 to {MAX_ACK_PENDING}"
        )
    if deliver not in ("all", "new") or not isinstance(deliver, str):
        raise ConfigError(f"{where}: deliver={deliver!r} must be 'all' or 'new'")


def schedule(cron: str, *, timezone: str = "UTC", missed: MissedTicks = "skip") -> ScheduleTrigger:
    """Fire on a cron schedule, once per tick across all hosts.

    Each tick is a message on the app's tick stream, run like a ``stream``
    message: a failing run is retried under the capability's ``retry`` policy and
    dead-lettered when it gives up. Ticks are wall-clock times in ``timezone`` and
    follow Vixie cron at daylight-saving changes (see ``thaw.declarations._cron``).
    ``missed`` says what happens to ticks missed while no host ran:
    ``"skip"`` (the default) or ``"run_once"`` (one catch-up run).
    """
    spec = parse_cron(cron)
    if not spec.can_fire():
        raise ConfigError(
            f"schedule cron {cron!r} never fires: none of its months has any of its days"
        )
    if missed not in ("skip", "run_once"):
        raise ConfigError(f"schedule missed={missed!r} must be 'skip' or 'run_once'")
    _validate_timezone(timezone)
    return ScheduleTrigger(spec, timezone, missed)


def objects(bucket: str, *, deletes: bool = False) -> ObjectsTrigger:
    """Run when an object is put into the object-store ``bucket``; the input is an ``ObjectChange``.

    A durable consumer on the bucket's stream delivers every put, retried and
    dead-lettered like a ``stream`` trigger. It starts at the beginning of the
    bucket: uploads made while no host ran (or before the first deploy) are
    processed when a host starts; the latest put of each name is kept, so an
    object replaced twice meanwhile runs once, with its latest info. With
    ``deletes=True`` deletions run too (``ObjectChange.deleted`` is true).
    The host creates the bucket if it does not exist.
    """
    validate_name("object store bucket", bucket)
    if not isinstance(deletes, bool):
        raise ConfigError(f"objects deletes={deletes!r} must be True or False")
    return ObjectsTrigger(bucket, deletes)


def kv(bucket: str, *, key: str = ">") -> KvTrigger:
    """Run when a key matching ``key`` (NATS wildcards) changes in the KV ``bucket``.

    The input is a ``KvChange`` (operation ``PUT``, ``DEL`` or ``PURGE``, the
    revision and the new value). Like ``objects``, the durable consumer starts at
    the beginning of the bucket: on first start every key's latest change runs
    once (a bucket keeps one record per key, so a key changed again before its
    change ran is delivered once, with the latest value), and changes made while
    no host ran are processed when one starts. The host creates the bucket if needed.
    """
    validate_name("kv bucket", bucket)
    validate_subject(key, wildcards=True)
    return KvTrigger(bucket, key)


def _validate_timezone(name: str) -> None:
    if name == "UTC":
        return
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(name)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for hostile names
        raise ConfigError(f"schedule timezone {name!r} is not a known IANA time zone") from exc
