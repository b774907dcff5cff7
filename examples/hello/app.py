"""The smallest Thaw app: one capability, reachable over HTTP and from a stream.

Try it:  thaw run examples/hello --capability greet --data '{"name": "Ada"}'
"""

import msgspec

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    Idempotency,
    Rejected,
    RetryPolicy,
    http,
    stream,
)

app = App("hello")

GREETINGS = {"en": "Hello", "fr": "Bonjour", "de": "Hallo", "es": "Hola"}


class Greeting(msgspec.Struct, frozen=True):
    name: str
    language: str = "en"


class Reply(msgspec.Struct, frozen=True):
    message: str
    attempt: int


@app.capability(
    http("POST", "/greet"),
    stream("hello.greet"),
    timeout=1.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, jitter=0.5)),
    idempotency=Idempotency(),
    access=Access(publishes=("hello.greeted",)),
)
async def greet(request: Greeting, ctx: Context) -> Reply:
    """Greet someone in their language; publishes a `hello.greeted` event."""
    word = GREETINGS.get(request.language)
    if word is None:
        raise Rejected(f"no greeting for language {request.language!r}", code="unknown_language")
    if request.name == "Flaky" and ctx.attempt == 1:
        raise ConnectionError("the greeting service hiccupped (fails on the first attempt)")
    message = f"{word}, {request.name}!"
    if ctx.event.subject:  # from a stream: tell the world, with a derived message id
        await ctx.publish("hello.greeted", {"message": message})
    return Reply(message=message, attempt=ctx.attempt)
