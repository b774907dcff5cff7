"""Thaw at the edge: the core inside Pyodide (CPython on WebAssembly) under Node.

Two halves:

- the *host* (``host/thaw_edge.mjs``, JavaScript): boots Pyodide from a local
  ``node_modules``, unpacks the cached wheels, copies ``runtime/`` and the app into
  Pyodide's file system and exposes a fetch-style ``handle(Request) -> Response``;
- the *guest* (``_guest.py``, Python, runs inside Pyodide): opens the app on a
  MemoryBackbone host and answers requests through the HTTP adapter's
  transport-free service, so routing, contracts and problem details are the ones
  the native HTTP server uses.

Commands (``cli.py``, registered through the ``thaw.commands`` entry point):
``thaw edge serve APP`` runs the host on a local port; ``thaw edge build APP -o DIR``
(``bundle.py``) writes a self-contained folder: Pyodide's five files, the wheels,
Thaw's sources, the app, its snapshot built inside Pyodide (bytecode for Pyodide's
Python) and optionally a Pyodide memory snapshot the host boots from.

Nothing is fetched at run time: ``python -m thaw.adapters.edge.prepare`` fills
``.thaw/edge/`` (Node packages from ``package-lock.json``, wheels for Pyodide's
platform pinned by ``constraints.txt``) once, before tests or a bundle.
"""
