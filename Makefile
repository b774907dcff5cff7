# Two commands on a fresh Linux machine with python3 (3.11+), make and git:
#   make demo   set up .venv and serve the example apps on the embedded default
#   make test   set up .venv and run lint, type check and the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-core lint typecheck pytest bench compare lock clean edge browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check runtime adapters tests benchmarks examples
	$(VENV)/bin/ruff format --check runtime adapters tests benchmarks examples

# mypy knows a package by its folder's name, and runtime/ is the package thaw: it checks a
# tree of links (.venv/typecheck/thaw -> runtime/*, thaw/adapters -> adapters/), made anew.
typecheck: $(STAMP)
	@rm -rf $(VENV)/typecheck && mkdir -p $(VENV)/typecheck/thaw
	@for entry in runtime/*; do ln -s "$(CURDIR)/$$entry" $(VENV)/typecheck/thaw/; done
	@ln -s "$(CURDIR)/adapters" $(VENV)/typecheck/thaw/adapters
	$(VENV)/bin/mypy $(VENV)/typecheck/thaw

# Node, the pinned npm packages (Pyodide) and the wheels Pyodide needs, into .thaw/edge;
# a no-op when already current. Network only to PyPI and the npm registry, first run only.
edge: $(STAMP)
	$(PY) -m thaw.adapters.edge.prepare

pytest: $(STAMP) edge browser
	$(VENV)/bin/pytest -q

# Debian's chromium for the cost report's browser test (playwright drives it; it never
# downloads a browser). Without root the test fails saying how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } || \
	    echo "browser: could not install chromium: tests/test_cost_report.py will fail"; \
	  else echo "browser: chromium is missing (apt-get install -y chromium needs root): tests/test_cost_report.py will fail"; fi; }

# The portable core alone (tests/conftest.py says which files): no server, Node or child.
test-core: $(STAMP)
	$(VENV)/bin/pytest -q -m core

bench: $(STAMP) edge
	$(PY) benchmarks/invoke.py --json benchmarks/results/invoke.json
	$(PY) benchmarks/coldstart.py --json benchmarks/results/coldstart.json
	$(PY) benchmarks/coldstart_host.py --json benchmarks/results/coldstart_host.json
	$(PY) benchmarks/coldstart_shared.py --json benchmarks/results/coldstart_shared.json
	$(PY) benchmarks/host_boot.py --json benchmarks/results/host_boot.json
	@# wrk (Debian) is the HTTP load generator; without it http_bench.py uses a Python one.
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q wrk || { apt-get update -q && apt-get install -y -q wrk; } || \
	    echo "bench: could not install wrk: the HTTP benchmark uses its Python load generator"; \
	  else echo "bench: wrk is missing (apt-get install -y wrk needs root): the HTTP benchmark uses its Python load generator"; fi; }
	$(PY) benchmarks/http_bench.py --json benchmarks/results/http.json
	$(PY) benchmarks/edge.py --json benchmarks/results/edge.json
	$(PY) benchmarks/jetstream.py --json benchmarks/results/jetstream.json
	$(PY) benchmarks/rollout.py --json benchmarks/results/rollout.json
	$(PY) benchmarks/image_pipeline.py --json benchmarks/results/image_pipeline.json
	$(PY) benchmarks/fan_out.py --json benchmarks/results/fan_out.json

# Short hot-path benchmarks of two revisions, alternately: make compare A=<rev> B=<rev or .>
compare: $(STAMP)
	$(PY) benchmarks/compare.py $(or $(A),HEAD) $(or $(B),.)

lock: $(STAMP)
	{ echo '# Every package in the dev environment, pinned: a fresh machine gets what CI got.'; \
	  echo '# Regenerate with `make lock` after changing pyproject.toml.'; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^thaw'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
