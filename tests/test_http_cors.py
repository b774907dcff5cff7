"""CORS: the declaration's validation, the pure decisions, and the server over a socket."""

from __future__ import annotations

import json

import msgspec
import pytest
from test_http_support import RawClient, request, serving

from thaw import App, ConfigError, Cors, http
from thaw.adapters.http.cors import CorsPolicy, actual_headers, is_preflight, preflight

APP_ORIGIN = "https://app.example"


# -- declaring -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"origins": ()}, "non-empty"),
        ({"origins": ("*",), "credentials": True}, "credentials=True is refused"),
        ({"origins": ("*", APP_ORIGIN)}, "stands alone"),
        ({"origins": ("null",)}, "'null' is never allowed"),
        ({"origins": ("https://app.example/",)}, "no trailing slash"),
        ({"origins": ("https://app.example/path",)}, "scheme://host"),
        ({"origins": ("HTTPS://App.Example",)}, "lower"),
        ({"origins": ("app.example",)}, "scheme://host"),
        ({"origins": ("https://app.example:0",)}, "scheme://host"),
        ({"origins": ("https://app.example\r\nx: y",)}, "scheme://host"),
        ({"origins": ("https://" + "a" * 5000,)}, "scheme://host"),
        ({"origins": (APP_ORIGIN, APP_ORIGIN)}, "repeat"),
        ({"origins": (APP_ORIGIN,), "methods": ("get",)}, "upper case"),
        ({"origins": (APP_ORIGIN,), "headers": ("bad header",)}, "not a header name"),
        ({"origins": (APP_ORIGIN,), "expose": ("x\r\n",)}, "not a header name"),
        ({"origins": (APP_ORIGIN,), "max_age": -1}, "max_age"),
        ({"origins": (APP_ORIGIN,), "max_age": 10**9}, "max_age"),
        ({"origins": (APP_ORIGIN,), "max_age": True}, "max_age"),
    ],
)
def test_bad_declarations_are_clear_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Cors(**options)


def test_good_declarations_and_the_route_method_rule() -> None:
    Cors(origins=("http://localhost:5173", "https://[::1]:8443", "https://a.b-c.example"))
    Cors(origins=("*",), max_age=0)
    http("GET", "/page", cors=Cors(origins=(APP_ORIGIN,), methods=("GET", "POST")))
    with pytest.raises(ConfigError, match="must include the route's own method"):
        http("DELETE", "/page", cors=Cors(origins=(APP_ORIGIN,), methods=("GET",)))
    with pytest.raises(ConfigError, match="must be a Cors"):
        http("GET", "/page", cors={"origins": ["*"]})  # type: ignore[arg-type]


def test_a_cors_trigger_round_trips_through_msgspec_with_validation() -> None:
    trigger = http("GET", "/page", cors=Cors(origins=(APP_ORIGIN,)))
    encoded = msgspec.json.encode(trigger)
    assert msgspec.json.decode(encoded, type=type(trigger)) == trigger
    hostile = encoded.replace(APP_ORIGIN.encode(), b"null")
    with pytest.raises((msgspec.ValidationError, ConfigError), match="null"):
        msgspec.json.decode(hostile, type=type(trigger))


# -- deciding (pure) ----------------------------------------------------------------------

POLICY = CorsPolicy(
    Cors(origins=(APP_ORIGIN,), headers=("content-type", "x-token"), max_age=600), "POST"
)
ANY = CorsPolicy(Cors(origins=("*",)), "GET")
CREDENTIALS = CorsPolicy(Cors(origins=(APP_ORIGIN,), credentials=True, expose=("etag",)), "GET")


def asks(origin: str | None, method: str = "POST", headers: str = "") -> dict[str, str]:
    found = {"access-control-request-method": method}
    if origin is not None:
        found["origin"] = origin
    if headers:
        found["access-control-request-headers"] = headers
    return found


@pytest.mark.parametrize(
    ("policy", "origin", "headers", "allowed"),
    [
        (POLICY, APP_ORIGIN, "", APP_ORIGIN),
        (POLICY, APP_ORIGIN, "Content-Type, X-Token", APP_ORIGIN),
        (POLICY, APP_ORIGIN, "accept-language", APP_ORIGIN),  # safelisted
        (POLICY, APP_ORIGIN, "x-other", None),
        (POLICY, "https://evil.example", "", None),
        (POLICY, "https://app.example.evil.example", "", None),
        (POLICY, "http://app.example", "", None),
        (POLICY, "null", "", None),
        (POLICY, APP_ORIGIN + "\r\nset-cookie: a=b", "", None),
        (POLICY, APP_ORIGIN + " ", "", None),
        (POLICY, "https://" + "a" * 100_000, "", None),
        (POLICY, None, "", None),
        (ANY, "https://anyone.example", "", "*"),
        (ANY, "null", "", "*"),
        (ANY, "x" * 100_000, "", None),
        (CREDENTIALS, APP_ORIGIN, "", APP_ORIGIN),
    ],
)
def test_preflight_decisions(
    policy: CorsPolicy, origin: str | None, headers: str, allowed: str | None
) -> None:
    decision = preflight(policy, asks(origin, headers=headers))
    sent = dict(decision.headers)
    if allowed is None:
        assert decision.refused
        assert not any(name.startswith("access-control") for name in sent)
        response = decision.response()
        assert response.status == 403
        assert b"cors_refused" in response.body
        if origin is not None:
            assert origin[:40].encode() not in response.body or origin == "null"
        assert not any(name.startswith("access-control") for name, _ in response.headers)
    else:
        assert not decision.refused
        assert sent["access-control-allow-origin"] == allowed
        assert "Origin" in sent["vary"]
        assert decision.response().status == 204


def test_preflight_answer_lists_methods_headers_age_and_credentials() -> None:
    sent = dict(preflight(POLICY, asks(APP_ORIGIN)).headers)
    assert sent["access-control-allow-methods"] == "POST"
    assert sent["access-control-allow-headers"] == "content-type, x-token"
    assert sent["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in sent
    with_credentials = dict(preflight(CREDENTIALS, asks(APP_ORIGIN, "GET")).headers)
    assert with_credentials["access-control-allow-credentials"] == "true"
    assert with_credentials["access-control-allow-methods"] == "GET, HEAD"


def test_actual_request_headers() -> None:
    assert dict(actual_headers(POLICY, APP_ORIGIN)) == {
        "access-control-allow-origin": APP_ORIGIN,
        "vary": "Origin",
    }
    assert actual_headers(POLICY, "https://evil.example") == (("vary", "Origin"),)
    assert actual_headers(POLICY, None) == (("vary", "Origin"),)
    assert dict(actual_headers(CREDENTIALS, APP_ORIGIN)) == {
        "access-control-allow-origin": APP_ORIGIN,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "etag",
        "vary": "Origin",
    }
    assert dict(actual_headers(ANY, "https://x.example"))["access-control-allow-origin"] == "*"


def test_is_preflight() -> None:
    assert is_preflight("OPTIONS", asks(APP_ORIGIN))
    assert not is_preflight("OPTIONS", {"origin": APP_ORIGIN})
    assert not is_preflight("OPTIONS", {"access-control-request-method": "GET"})
    assert not is_preflight("POST", asks(APP_ORIGIN))


# -- serving ------------------------------------------------------------------------------


class Note(msgspec.Struct):
    text: str


def cors_app() -> App:
    app = App("cors")

    @app.capability(
        http("POST", "/notes", cors=Cors(origins=(APP_ORIGIN,), headers=("content-type",)))
    )
    async def add_note(note: Note) -> dict[str, str]:
        return {"saved": note.text}

    @app.capability(http("GET", "/plain"))
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.mark.anyio
async def test_preflight_and_actual_requests_over_a_socket() -> None:
    async with serving(cors_app()) as server, RawClient.connect(server.port) as client:
        preflight_headers = {
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        await client.send(request("OPTIONS", "/notes", headers=preflight_headers))
        reply = await client.response()
        assert reply.status == 204
        assert reply.headers["access-control-allow-origin"] == APP_ORIGIN
        assert reply.headers["access-control-allow-methods"] == "POST"
        assert reply.headers["access-control-max-age"] == "600"

        hostile = {**preflight_headers, "Origin": "https://evil.example"}
        await client.send(request("OPTIONS", "/notes", headers=hostile))
        reply = await client.response()
        assert reply.status == 403
        assert not [name for name in reply.headers if name.startswith("access-control")]

        await client.send(
            request(
                "OPTIONS",
                "/notes",
                headers={"Origin": "null", **{"Access-Control-Request-Method": "POST"}},
            )
        )
        assert (await client.response()).status == 403

        long_origin = "https://" + "a" * 8000 + ".example"
        await client.send(
            request("OPTIONS", "/notes", headers={**preflight_headers, "Origin": long_origin})
        )
        assert (await client.response()).status == 403

        body = b'{"text": "hi"}'
        headers = {"Origin": APP_ORIGIN, "Content-Type": "application/json"}
        await client.send(request("POST", "/notes", body, headers))
        reply = await client.response()
        assert reply.status == 200, reply
        assert json.loads(reply.body) == {"saved": "hi"}
        assert reply.headers["access-control-allow-origin"] == APP_ORIGIN
        assert reply.headers["vary"] == "Origin"

        await client.send(request("POST", "/notes", body, {**headers, "Origin": "null"}))
        reply = await client.response()
        assert reply.status == 200
        assert "access-control-allow-origin" not in reply.headers
        assert reply.headers["vary"] == "Origin"

        await client.send(request("POST", "/notes", b"{", headers))  # an error answer too
        reply = await client.response()
        assert reply.status == 400
        assert reply.headers["access-control-allow-origin"] == APP_ORIGIN

        # A route without cors answers a preflight as a plain OPTIONS: no CORS headers.
        plain = {**preflight_headers, "Access-Control-Request-Method": "GET"}
        await client.send(request("OPTIONS", "/plain", headers=plain))
        reply = await client.response()
        assert reply.status == 204
        assert "access-control-allow-origin" not in reply.headers
        assert reply.headers["allow"] == "GET, HEAD, OPTIONS"

        # A preflight for a method the path does not serve: a plain OPTIONS answer.
        await client.send(
            request(
                "OPTIONS",
                "/notes",
                headers={**preflight_headers, "Access-Control-Request-Method": "DELETE\x7f"},
            )
        )
        reply = await client.response()
        assert "access-control-allow-origin" not in reply.headers


@pytest.mark.anyio
async def test_a_crlf_origin_never_reaches_the_wire() -> None:
    async with serving(cors_app()) as server, RawClient.connect(server.port) as client:
        raw = (
            b"OPTIONS /notes HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n"
            b"X: y\r\nAccess-Control-Request-Method: POST\r\n\r\n"
        )
        await client.send(raw)
        assert (await client.response()).status == 204
        split = b"POST /notes HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\rset-cookie: a\r\n"
        await client.send(split + b"Content-Length: 2\r\n\r\n{}")
        reply = await client.response()
        assert reply.status == 400  # the parser refuses a bare CR in a header value
        assert "set-cookie" not in reply.headers
