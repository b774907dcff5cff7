"""Wire header names: every header Thaw reads or writes on HTTP and NATS messages.

A leaf module (it imports nothing), so any layer can name a header without
importing the layer that happens to set it. Values are the exact spellings on
the wire; NATS headers keep their case, HTTP lookups are case-insensitive.
"""

__all__ = [
    "DEAD_LETTER_APP",
    "DEAD_LETTER_ATTEMPTS",
    "DEAD_LETTER_CAPABILITY",
    "DEAD_LETTER_CODE",
    "DEAD_LETTER_MESSAGE",
    "DEAD_LETTER_ORIGINAL_SEQ",
    "DEAD_LETTER_ORIGINAL_STREAM",
    "DEAD_LETTER_ORIGINAL_SUBJECT",
    "DEAD_LETTER_REVISION",
    "DEAD_LETTER_BODY_OMITTED",
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_SIGNATURE_HEADER",
    "KV_OPERATION_HEADER",
    "MSG_ID_HEADER",
    "REPLAY_OF_HEADER",
    "RETRY_AFTER_HEADER",
    "ROLLUP_HEADER",
    "STATUS_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "URL_PATH_HEADER",
    "URL_QUERY_HEADER",
]

# W3C trace context, carried on every hop (HTTP headers, NATS headers, object metadata).
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

# An HTTP request's path parameters (form-encoded) and query string, set by Thaw (a
# client's own are dropped) when the payload is bytes or absent, so they reach
# ``ctx.params`` / ``ctx.query``, across an ``enqueue`` hop too.
URL_PATH_HEADER = "thaw-path"
URL_QUERY_HEADER = "thaw-query"

# JetStream: de-duplication id of a publish; a KV change's operation; a rollup.
MSG_ID_HEADER = "Nats-Msg-Id"
KV_OPERATION_HEADER = "KV-Operation"
ROLLUP_HEADER = "Nats-Rollup"

# NATS services (request/reply): the error of a reply and its code.
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
# Thaw's reply status (ok, retry, reject) and how long to wait before retrying.
STATUS_HEADER = "Thaw-Status"
RETRY_AFTER_HEADER = "Retry-After"

# The event id Thaw gives a message it re-publishes (idempotency keys default to it),
# honoured only with a valid signature (see thaw.host._identity).
EVENT_ID_HEADER = "Thaw-Event-Id"
EVENT_SIGNATURE_HEADER = "Thaw-Event-Signature"

# What a dead letter says about why it is one, and where it came from.
DEAD_LETTER_CODE = "Thaw-Error-Code"
DEAD_LETTER_MESSAGE = "Thaw-Error-Message"
DEAD_LETTER_ATTEMPTS = "Thaw-Attempts"
DEAD_LETTER_ORIGINAL_SUBJECT = "Thaw-Original-Subject"
DEAD_LETTER_ORIGINAL_STREAM = "Thaw-Original-Stream"
DEAD_LETTER_ORIGINAL_SEQ = "Thaw-Original-Seq"
DEAD_LETTER_APP = "Thaw-App"
DEAD_LETTER_CAPABILITY = "Thaw-Capability"
DEAD_LETTER_REVISION = "Thaw-Revision"
# Set (to the body's size in bytes) on a dead letter too large to publish whole: it then
# carries no body and no foreign headers; the original stays at its stream and seq.
DEAD_LETTER_BODY_OMITTED = "Thaw-Body-Omitted"
# Set on a replayed message: the dead-letter sequence it was replayed from.
REPLAY_OF_HEADER = "Thaw-Replay-Of"
