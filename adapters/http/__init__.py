"""Thaw's HTTP/1.1 adapter on httptools: serve an app's ``http`` triggers.

    async with open_http_server(invoker) as server:   # or a Host from open_host
        print(server.port)

``run_app(app, port=8000)`` is the blocking entry point (uvloop when installed);
``python -m thaw.adapters.http APP_PATH --port 8000`` runs it from the shell.
"""

from thaw.adapters.http._wire import Request, Response, Service
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.protocol import HttpConnection
from thaw.adapters.http.routing import Route, Router, compile_router
from thaw.adapters.http.server import (
    HttpServer,
    open_http_server,
    open_service_server,
    run_app,
    serve_http,
)
from thaw.adapters.http.service import HttpService
from thaw.adapters.http.state import ServerStatistics

__all__ = [
    "HttpConfig",
    "HttpConnection",
    "HttpServer",
    "HttpService",
    "Request",
    "Response",
    "Route",
    "Router",
    "ServerStatistics",
    "Service",
    "compile_router",
    "open_http_server",
    "open_service_server",
    "run_app",
    "serve_http",
]
