"""Shared set-up: anyio on asyncio, the hypothesis profile, and every test file's layer.

Each test file is in ``LAYERS`` with the markers of what it needs; collection adds
them to every test of the file, so ``pytest -m core`` runs the portable core alone
and ``pytest -m "not nats"`` runs without nats-servers. The table is the one place
layers are set:

- a test file missing from it, a name in it that is no file, or a layer marker
  set in a test file itself stops the collection with a usage error;
- inside Pyodide (the edge host's ``test`` command) only ``at_the_edge()`` files
  are collected: the ``core`` ones less ``NOT_AT_THE_EDGE``, plus the edge's own
  ``test_in_pyodide.py``. ``tests/test_edge.py`` checks the edge ran exactly those.

``slow`` is not a layer: single tests carry it where they take long.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

pytest.register_assert_rewrite("backbone_contract", "claims_contract")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TESTS = Path(__file__).resolve().parent

# CI machines are shared and noisy: never fail a property test for being slow.
settings.register_profile(
    "thaw", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("thaw")

# What a test file needs (pyproject.toml registers the markers and says what each means):
# core: the core and its in-memory parts only; http: the HTTP/ASGI adapters, mostly over
# real sockets; nats: nats-servers; edge: Node and Pyodide; process: Python children.
LAYERS: dict[str, tuple[str, ...]] = {
    "test_app.py": ("core",),
    "test_asgi.py": ("http", "process"),  # one test runs uvicorn as a child
    "test_bench_compare.py": ("process",),
    "test_budget.py": ("core",),
    "test_bound_streams.py": ("nats",),  # both backbones; needs the nats-server
    "test_claims.py": ("core",),
    "test_cost.py": ("http",),  # thaw cost; one test scrapes a /metrics on 127.0.0.1
    "test_cost_report.py": ("process",),  # drives Debian's chromium (make browser)
    "test_claims_nats.py": ("nats",),
    "test_change_triggers.py": ("core",),
    "test_chaos.py": ("nats", "process"),
    "test_cli.py": ("process",),
    "test_cli_ops.py": ("http", "process"),
    "test_cli_consumer_options.py": ("nats", "http", "process"),  # thaw serve children
    "test_context.py": ("core",),
    "test_cron.py": ("core",),
    "test_dead_letters.py": ("core",),
    "test_dead_letters_nats.py": ("nats",),
    "test_retention.py": ("core",),
    "test_retention_nats.py": ("nats",),
    "test_dead_letter_redaction.py": ("core",),
    "test_dlq_running_server.py": ("nats", "process"),
    "test_decisions.py": ("core",),
    "test_deep_nesting.py": ("core",),
    "test_delivery_fencing.py": ("core",),
    "test_deploy_cli.py": ("nats", "process"),  # deploy builds source in a child Python
    "test_deployments.py": ("process",),
    "test_deployments_nats.py": ("nats", "http", "process"),
    "test_deployments_workers_nats.py": ("nats", "http", "process"),
    "test_dev.py": ("http", "process"),
    "test_edge.py": ("edge", "process"),  # the snapshot build is a child Python
    "test_edge_cli.py": ("edge", "nats", "process"),
    "test_edge_nats.py": ("edge", "nats"),
    "test_example_bff.py": ("core",),
    "test_example_image_pipeline.py": ("core", "http"),  # uploads through TestHost.http
    "test_example_image_pipeline_nats.py": ("nats", "http", "process"),  # thaw serve as a child
    "test_example_nightly_reconciliation.py": ("core",),
    "test_example_nightly_reconciliation_nats.py": ("nats", "http", "process"),  # 2 thaw serve
    "test_example_notification_fanout.py": ("core",),
    "test_example_payment_webhook.py": ("core", "http"),  # one test: TestHost.http
    "test_example_payment_webhook_nats.py": ("nats", "http"),
    "test_example_uploads.py": ("core",),
    "test_examples.py": ("process",),
    "test_exports.py": ("core",),
    "test_fan_out.py": ("nats",),  # both backbones; needs the nats-server
    "test_fan_out_declarations.py": ("core",),
    "test_exports_children.py": ("process",),  # fresh child Pythons, the adapters' sources
    "test_fleet.py": ("nats", "http", "process"),  # 3 nodes, 3 thaw serve --deployed hosts
    "test_host.py": ("core",),
    "test_grafana_dashboard.py": ("http",),
    "test_http_access_log.py": ("http",),
    "test_http_cors.py": ("http",),
    "test_http_hostile.py": ("http",),
    "test_http_ids.py": ("http", "process"),  # one test forks
    "test_http_intake.py": ("http",),
    "test_http_metrics.py": ("http",),
    "test_http_openapi.py": ("http",),
    "test_http_protocol.py": ("http",),
    "test_http_readiness.py": ("http", "nats"),
    "test_http_routing.py": ("http",),  # no socket, but httptools (native) underneath
    "test_http_params_and_limits.py": ("http",),
    "test_http_server.py": ("http", "process"),
    "test_http_support.py": ("http",),
    "test_http_webhooks.py": ("http",),
    "test_http_webhooks_nats.py": ("http", "nats"),
    "test_http_workers.py": ("http", "process"),
    "test_metrics_workers.py": ("http", "process"),
    "test_metrics_triggers.py": ("http",),
    "test_metrics_serve_nats.py": ("nats", "http", "process"),
    "test_json_logs.py": ("http", "process"),
    "test_idempotency.py": ("core",),
    "test_identity.py": ("core",),
    "test_in_pyodide.py": ("edge",),  # copied in by the edge host; runs only there
    "test_instances.py": ("process",),  # snapshots are built by a child Python
    "test_invoker.py": ("core",),
    "test_run_sync.py": ("core",),
    "test_run_sync_pool.py": ("process",),  # real threads and a forkserver pool
    "test_invoker_properties.py": ("core",),
    "test_jetstream_backbone.py": ("nats",),
    "test_kv_idempotency.py": ("core",),
    "test_layout.py": ("process",),  # the import-name guards start child Pythons
    "test_loader.py": ("core",),
    "test_memory_backbone.py": ("core",),
    "test_nats_change_triggers.py": ("nats",),
    "test_nats_cluster.py": ("nats",),
    "test_nats_fixtures.py": ("nats",),
    "test_nats_muxer.py": ("nats",),
    "test_nats_reliability.py": ("nats", "process"),
    "test_nats_requests.py": ("nats",),
    "test_nats_schedule.py": ("nats", "process"),  # one test kills a host -9
    "test_nats_server.py": ("nats",),
    "test_nats_shutdown.py": ("nats", "process"),
    "test_nats_sizes.py": ("nats", "http", "process"),
    "test_nats_security.py": ("nats", "http", "process"),
    "test_policy_export.py": ("nats", "http", "process"),
    "test_nats_triggers.py": ("nats",),
    "test_policy.py": ("core",),
    "test_process.py": ("process",),
    "test_purity.py": ("process",),
    "test_requests.py": ("core",),
    "test_revisions.py": ("process",),
    "test_rollout.py": ("http", "process"),  # one test reads /readyz
    "test_schedule.py": ("core",),
    "test_host_contract.py": ("nats", "http"),  # both backbones; th.http in process
    "test_test_host.py": ("core",),
    "test_serve_apps.py": ("http", "process"),
    "test_serve_process_nats.py": ("nats", "http", "process"),
    "test_serve_trust.py": ("process",),
    "test_serving.py": ("core",),
    "test_serving_process.py": ("process",),
    "test_snapshot.py": ("process",),
    "test_snapshot_build.py": ("process",),  # builds snapshots in child Pythons, thaw CLI
    "test_snapshot_data_dir.py": ("process",),  # builds snapshots in a child Python
    "test_snapshot_resources.py": ("process",),  # builds snapshots in a child Python
    "test_snapshot_signing.py": ("process",),  # builds a snapshot in a child; cryptography
    "test_slo.py": ("core",),
    "test_nats_reader.py": ("nats",),  # nats-py's parser; two tests on a real server
    "test_registry.py": ("http", "process"),  # the shipped adapters; one child Python
    "test_slo_windows.py": ("core",),
    "test_slo_metrics.py": ("http",),
    "test_slo_cli.py": ("nats", "http", "process"),  # thaw serve child + canned hosts
    "test_subjects.py": ("core",),
    "test_trace.py": ("core",),
    "test_tracing.py": ("core", "http"),  # OpenTelemetry SDK; in-process HTTP
    "test_tracing_otlp.py": ("nats", "http", "process"),  # thaw serve -> a loopback collector
    "test_triggers.py": ("core",),
    "test_user_layouts.py": ("http", "process"),
    "test_version.py": ("core",),
    "test_worker.py": ("core",),
}

# Core files Pyodide cannot import, and why (each would fail its collection there).
NOT_AT_THE_EDGE: dict[str, str] = {
    "test_deep_nesting.py": "Pyodide's JS stack overflows before CPython's recursion limit",
    "test_test_host.py": "TestHost.settle reads asyncio's loop._ready; Pyodide's WebLoop lacks it",
    "test_example_notification_fanout.py": "one test uses TestHost (settle: as above)",
    "test_example_image_pipeline.py": "example_loader imports thaw.adapters.process; Pillow",
    "test_example_payment_webhook.py": "example_loader imports thaw.adapters.process",
    "test_example_uploads.py": "example_loader imports thaw.adapters.process",
    "test_tracing.py": "the OpenTelemetry SDK (the otel extra) is not in the Pyodide bundle",
    "test_example_nightly_reconciliation.py": "its TestHost settles by asyncio's loop._ready",
    "test_version.py": "the edge bundle carries neither pyproject.toml nor the package metadata",
}

# Files the edge host copies into tests/ inside Pyodide, and where they live here.
EDGE_ONLY: dict[str, Path] = {
    "test_in_pyodide.py": Path(ROOT, "adapters", "edge", "pyodide_tests", "test_in_pyodide.py"),
}

LAYER_MARKERS = frozenset({"core", "http", "nats", "edge", "process"})


def at_the_edge(name: str) -> bool:
    """Whether the test file ``name`` runs inside Pyodide."""
    if name in EDGE_ONLY:
        return True
    return "core" in LAYERS.get(name, ()) and name not in NOT_AT_THE_EDGE


def edge_files() -> list[str]:
    """The test files Pyodide runs, as paths relative to the repository."""
    return sorted(f"tests/{name}" for name in LAYERS if at_the_edge(name))


def _is_test_file(path: Path) -> bool:
    return path.parent == TESTS and path.name.startswith("test_") and path.suffix == ".py"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # In Pyodide the other files cannot even be imported (nats, sockets, processes).
    # A file missing from the table is collected, so that the check below names it.
    if sys.platform == "emscripten" and _is_test_file(collection_path):
        name = collection_path.name
        if name in LAYERS and not at_the_edge(name):
            return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = _table_problems()
    for item in items:
        path = Path(item.path)
        if not _is_test_file(path):
            continue
        if path.name not in LAYERS:
            problems.append(f"{path.name} is not in LAYERS: say which layers it needs")
            continue
        own = {mark.name for mark in item.iter_markers()} & LAYER_MARKERS
        if own:
            problems.append(f"{path.name} marks {sorted(own)} itself: layers come from LAYERS")
            continue
        for name in LAYERS[path.name]:
            item.add_marker(name)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise pytest.UsageError("tests/conftest.py:\n  " + "\n  ".join(unique))


def _table_problems() -> list[str]:
    problems = []
    for name, layers in LAYERS.items():
        where = EDGE_ONLY.get(name, TESTS / name)
        if not where.is_file() and not (TESTS / name).is_file():
            problems.append(f"LAYERS names {name}, which does not exist")
        if not layers or set(layers) - LAYER_MARKERS:
            problems.append(f"LAYERS gives {name} {layers!r}: use some of {sorted(LAYER_MARKERS)}")
    for name in NOT_AT_THE_EDGE:
        if "core" not in LAYERS.get(name, ()):
            problems.append(f"NOT_AT_THE_EDGE names {name}, which is not a core file")
    return problems


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Each test leaves ``os.environ`` as it found it.

    The ``thaw`` commands hand their settings to the processes they start through the
    environment (``THAW_NATS_*``, ``THAW_DLQ_MAX_AGE``, ...); a test calling ``main()``
    in process would otherwise pass them on to every later test's child processes.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
