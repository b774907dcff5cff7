"""Core NATS request/reply for ``subject`` triggers, as a NATS micro-style service.

``open_subject_services(invoker, client)`` subscribes each capability's ``subject``
trigger (queue group ``trigger.queue``, else the app name, so several hosts share
the load) and answers every request with the capability's Outcome: ``Ok`` -> the
encoded result; ``Reject``/``Retry`` -> an empty-headed error reply in the NATS
micro convention (``Nats-Service-Error`` with a message safe to show,
``Nats-Service-Error-Code`` with Thaw's stable code) and a problem-details body.
Never a traceback: the reasons go through ``thaw.lowlevel.problem``, which hides
a function's own exception text on server faults.

Invariants: at most ``concurrency`` (the capability's limit, else
``max_in_flight``) requests of one endpoint run at once; the next message is
taken from the subscription only when a slot is free, so excess waits in the
subscription's buffer, not in unbounded tasks. A request's deadline is its
arrival plus the capability timeout, so time spent waiting for a slot counts.
The service also answers the micro discovery subjects (``$SRV.PING|INFO|STATS``,
all, by name, by id) with the app as the service. The block is entered only once
the server has every subscription (``wait_subscribed``), so a request sent as soon
as the services are announced finds its responder.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from thaw import Event, Outcome, Reject
from thaw._errors import PayloadTooLarge
from thaw.adapters.nats.connection import wait_subscribed
from thaw.backbone._rules import header_block_size
from thaw.lowlevel import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    MSG_ID_HEADER,
    TRACEPARENT_HEADER,
    Capability,
    CapabilityInvoker,
    SubjectTrigger,
    parse_traceparent,
    service_reply,
)

__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "EndpointStatistics",
    "SubjectServices",
    "open_subject_services",
    "service_reply",
]

log = logging.getLogger("thaw.nats.services")
DEFAULT_MAX_IN_FLIGHT = 256
_SRV = "$SRV"
_PING_TYPE = "io.nats.micro.v1.ping_response"
_INFO_TYPE = "io.nats.micro.v1.info_response"
_STATS_TYPE = "io.nats.micro.v1.stats_response"
# "traceparent: 00-<32 hex>-<16 hex>-01\r\n", and the block's frame if it is the only one
_TRACEPARENT_ROOM = len("traceparent: ") + 55 + 2 + 12


class EndpointStatistics(msgspec.Struct, frozen=True):
    name: str
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    processing_time: int  # nanoseconds, in all
    average_processing_time: int
    last_error: str
    in_flight: int


class _Endpoint:
    def __init__(
        self, capability: Capability, trigger: SubjectTrigger, queue: str, slots: int
    ) -> None:
        self.capability = capability
        self.subject = trigger.subject
        self.queue = queue
        self.slots = slots
        self.requests = 0
        self.errors = 0
        self.nanoseconds = 0
        self.last_error = ""
        self.in_flight = 0

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(
            name=self.capability.name,
            subject=self.subject,
            queue_group=self.queue,
            num_requests=self.requests,
            num_errors=self.errors,
            processing_time=self.nanoseconds,
            average_processing_time=self.nanoseconds // self.requests if self.requests else 0,
            last_error=self.last_error,
            in_flight=self.in_flight,
        )


class SubjectServices:
    """An app's ``subject`` capabilities served on a connection (``open_subject_services``)."""

    def __init__(
        self,
        invoker: CapabilityInvoker,
        endpoints: list[_Endpoint],
        *,
        version: str,
        description: str,
    ) -> None:
        self.invoker = invoker
        self.name = invoker.app.name
        self.id = uuid.uuid4().hex
        self.version = version
        self.description = description
        self.started = datetime.now(UTC)
        self._endpoints = endpoints
        self._busy = 0
        self._idle = anyio.Event()

    def _begin(self, endpoint: _Endpoint) -> None:
        endpoint.in_flight += 1
        self._busy += 1

    def _end(self, endpoint: _Endpoint) -> None:
        endpoint.in_flight -= 1
        self._busy -= 1
        if not self._busy:
            self._idle.set()
            self._idle = anyio.Event()

    async def wait_idle(self) -> None:
        """Wait until no request is in flight."""
        if self._busy:
            await self._idle.wait()

    def statistics(self) -> dict[str, EndpointStatistics]:
        return {e.capability.name: e.statistics() for e in self._endpoints}

    def _identity(self, kind: str) -> dict[str, Any]:
        return {"type": kind, "name": self.name, "id": self.id, "version": self.version}

    def ping(self) -> dict[str, Any]:
        return {**self._identity(_PING_TYPE), "metadata": {}}

    def info(self) -> dict[str, Any]:
        endpoints = [
            {
                "name": e.capability.name,
                "subject": e.subject,
                "queue_group": e.queue,
                "metadata": {},
            }
            for e in self._endpoints
        ]
        return {
            **self._identity(_INFO_TYPE),
            "description": self.description,
            "endpoints": endpoints,
            "metadata": {},
        }

    def stats(self) -> dict[str, Any]:
        endpoints = []
        for endpoint in self._endpoints:
            numbers = msgspec.to_builtins(endpoint.statistics())
            numbers.pop("in_flight")
            endpoints.append({**numbers, "data": None})
        started = self.started.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return {
            **self._identity(_STATS_TYPE),
            "started": started,
            "endpoints": endpoints,
            "metadata": {},
        }

    async def _serve(self, client: Client, endpoint: _Endpoint, subscription: Subscription) -> None:
        slots = anyio.Semaphore(endpoint.slots)
        messages = subscription.messages
        async with anyio.create_task_group() as group:
            while True:
                await slots.acquire()
                try:
                    message = await messages.__anext__()
                except StopAsyncIteration:
                    slots.release()
                    return
                deadline = self.invoker.clock.now() + endpoint.capability.spec.policy.timeout
                self._begin(endpoint)  # counted from here, so a drain waits for it
                group.start_soon(self._answer, client, endpoint, message, deadline, slots)

    async def _answer(
        self,
        client: Client,
        endpoint: _Endpoint,
        message: Msg,
        deadline: float,
        slots: anyio.Semaphore,
    ) -> None:
        started = time.perf_counter_ns()
        endpoint.requests += 1
        try:
            headers: Mapping[str, str] = message.headers or {}
            event = Event(
                id=headers.get(MSG_ID_HEADER) or uuid.uuid4().hex,
                data=message.data,
                subject=message.subject,
                headers=dict(headers),
                deadline=deadline,
                traceparent=headers.get(TRACEPARENT_HEADER, ""),
            )
            outcome = await endpoint.capability(event)
            body, reply_headers = _fitting_reply(outcome, client.max_payload, message.reply)
            if reply_headers:
                endpoint.errors += 1
                endpoint.last_error = f"{reply_headers[ERROR_CODE_HEADER]}: "
                endpoint.last_error += reply_headers[ERROR_HEADER]
            if message.reply:
                trace = parse_traceparent(event.traceparent)
                if trace is not None:
                    reply_headers[TRACEPARENT_HEADER] = trace.traceparent
                try:
                    await client.publish(message.reply, body, headers=reply_headers or None)
                except NatsError as error:  # the requester is gone or the connection is down
                    log.warning("no reply to %s for %s: %s", message.reply, event.id, error)
        finally:
            self._end(endpoint)
            endpoint.nanoseconds += time.perf_counter_ns() - started
            slots.release()


def _fitting_reply(outcome: Outcome, limit: int, subject: str) -> tuple[bytes, dict[str, str]]:
    """``service_reply(outcome)``, or a ``payload_too_large`` error reply if it exceeds
    ``limit`` with its headers (the room a traceparent header takes is kept free): a
    reply over the server's max_payload would make nats-server close the connection."""
    body, headers = service_reply(outcome)
    size = len(body) + header_block_size(headers) + _TRACEPARENT_ROOM
    if size <= limit:
        return body, headers
    reason = (
        f"the reply is {size} bytes with its headers; NATS accepts at most {limit} "
        "(max_payload): return less, or raise max_payload on the server"
    )
    log.warning("reply to %s refused: %s", subject, reason)
    return service_reply(Reject(PayloadTooLarge.code, reason))


def _endpoints(invoker: CapabilityInvoker, max_in_flight: int) -> list[_Endpoint]:
    found = []
    for name, capability in invoker.capabilities.items():
        for trigger in capability.spec.triggers:
            if isinstance(trigger, SubjectTrigger):
                queue = trigger.queue or invoker.app.name
                slots = capability.spec.policy.concurrency or max_in_flight
                found.append(_Endpoint(invoker.capability(name), trigger, queue, slots))
    return found


async def _discovery(client: Client, services: SubjectServices) -> list[Subscription]:
    answers: dict[str, Callable[[], dict[str, Any]]] = {
        "PING": services.ping,
        "INFO": services.info,
        "STATS": services.stats,
    }
    subscriptions = []
    for verb, answer in answers.items():

        async def respond(message: Msg, answer: Callable[[], dict[str, Any]] = answer) -> None:
            if message.reply:
                await client.publish(message.reply, json.dumps(answer()).encode())

        for subject in (
            f"{_SRV}.{verb}",
            f"{_SRV}.{verb}.{services.name}",
            f"{_SRV}.{verb}.{services.name}.{services.id}",
        ):
            subscriptions.append(await client.subscribe(subject, cb=respond))
    return subscriptions


@asynccontextmanager
async def open_subject_services(
    invoker: CapabilityInvoker,
    client: Client,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    version: str = "0.0.0",
    description: str = "",
    drain_timeout: float = 10.0,
) -> AsyncIterator[SubjectServices]:
    """Serve ``invoker``'s ``subject`` capabilities on ``client`` until the block ends.

    Leaving unsubscribes (no new requests), gives in-flight requests ``drain_timeout``
    seconds to answer, then cancels what is left (its requesters time out).
    """
    endpoints = _endpoints(invoker, max_in_flight)
    services = SubjectServices(invoker, endpoints, version=version, description=description)
    subscriptions = [
        await client.subscribe(endpoint.subject, queue=endpoint.queue) for endpoint in endpoints
    ]
    control = await _discovery(client, services)
    await wait_subscribed(client)  # not flush(): its PING can overtake the SUBs
    async with anyio.create_task_group() as group:
        for endpoint, subscription in zip(endpoints, subscriptions, strict=True):
            group.start_soon(services._serve, client, endpoint, subscription)
        try:
            yield services
        finally:
            with anyio.CancelScope(shield=True):
                for subscription in subscriptions + control:
                    await _unsubscribe(client, subscription)
            with anyio.move_on_after(drain_timeout, shield=True):
                await services.wait_idle()
            group.cancel_scope.cancel()


async def _unsubscribe(client: Client, subscription: Subscription) -> None:
    if client.is_closed:
        return
    try:
        await subscription.unsubscribe()
    except Exception:  # already gone (BadSubscriptionError) or the connection is going
        return


@asynccontextmanager
async def open_host_subject_services(host: Any, **options: Any) -> AsyncIterator[Any]:
    """``thaw serve``'s hook (``thaw.servers`` entry point ``subjects``): answer the host's
    ``subject`` triggers on its JetStream connection; nothing on other backbones."""
    from thaw.adapters.nats.backbone import JetStreamBackbone

    backbone = getattr(host, "backbone", None)
    if not isinstance(backbone, JetStreamBackbone):
        yield None
        return
    async with open_subject_services(host.invoker, backbone.client, **options) as services:
        yield services
