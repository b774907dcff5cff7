"""``python -m thaw.adapters.http APP [--host H] [--port P]``: serve an app's http triggers.

APP is an app directory, module file or snapshot, as for ``thaw run``. The app
runs on the in-process MemoryBackbone; SIGTERM or Ctrl-C drains and stops.
"""

from __future__ import annotations

import argparse
import logging
import sys

from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.server import HttpServer, run_app
from thaw.snapshots._revision import load_target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m thaw.adapters.http", description=__doc__)
    parser.add_argument("app", help="app directory, module file or snapshot")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = load_target(args.app)

    def ready(server: HttpServer) -> None:
        print(f"serving {app.name!r} on http://{server.host}:{server.port}", flush=True)

    config = HttpConfig(drain_timeout=args.drain_timeout)
    run_app(app, host=args.host, port=args.port, config=config, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
