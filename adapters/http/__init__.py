"""Thaw's HTTP/1.1 adapter on httptools: serve an app's ``http`` triggers.

    async with open_http_server(invoker) as server:   # or a Host from open_host
        print(server.port)

``run_app(app, port=8000)`` is the blocking entry point (uvloop when installed);
``python -m adapters.http APP_PATH --port 8000`` runs it from the shell.
"""

from ._wire import Request, Response
from .config import HttpConfig
from .protocol import HttpConnection, Service
from .routing import Route, Router, compile_router
from .server import HttpServer, open_http_server, open_service_server, run_app, serve_http
from .service import HttpService
from .state import ServerStatistics

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
