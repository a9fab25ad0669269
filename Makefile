# The README's commands. `make run` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA_DIR ?= .ouro
HOST ?= http://127.0.0.1:8000
PYTEST_ARGS ?=

# Nothing here may reach a model hub or phone home.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export RAY_USAGE_STATS_ENABLED := 0
# OpenMP threads that spin while waiting made torch 60-90x slower on busy shared cores.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: run test demo install install-test chart-check dashboards bench loadtest lint docs docs-build

$(VENV)/.installed: requirements.txt requirements-embedded.txt tools/install_torch.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	# torch first, its CPU build where pip can get one, else the default build with a note;
	# after everything, say which build it is (a different version fails).
	$(PY) -m tools.install_torch install
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-embedded.txt
	$(PY) -m tools.install_torch check
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	# promtool checks and unit-tests the chart's alert rules (tests/charts/test_alert_rules.py)
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(PY) -m serve --host 127.0.0.1 --port 8000 --data-dir $(DATA_DIR)

test: install-test chart-check docs-build
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Routed corrections measured on smollm2-135m (too long for `make test` on 2 shared cores,
# about 25 minutes): three cycles of 10 corrections, then 20 DailyDialog pairs; reliability,
# generality, locality and accumulation into loadtests/results/heal.json (docs/routing.md).
# DailyDialog is not in the repository: without the file the demo says where to get it;
# then `make demo DAILYDIALOG=path/to/dialogues_validation.txt`.
DAILYDIALOG ?= ../shared/datasets/dailydialog/dialogues_validation.txt
demo: install
	$(PY) -m loadtests.bench_heal --cycles 3 --per-cycle 10 --unrelated 50 \
		--dailydialog-pairs 20 --teach 48 --dailydialog $(DAILYDIALOG)

lint: install-test
	$(VENV)/bin/ruff check .

chart-check: install-test
	$(PY) -m tools.chart_check

# The Grafana dashboard, built as code (tools/dashboard.py) into charts/ouro/dashboards/,
# and the kustomize objects rendered from the chart (they hold a copy of it);
# tests/tools/test_dashboard.py fails when the committed JSON is not what it builds.
dashboards: install-test
	$(PY) -m tools.dashboard
	$(PY) -m tools.kustomize_base

# The documentation site (mkdocs.yml): served on 127.0.0.1:8001; built strictly (a broken
# link or a missing page fails) into the ignored .site/ by `make test`.
docs: install-test
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: install-test
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir .site

bench: install
	$(PY) -m loadtests.bench
	$(PY) -m loadtests.bench_decode_length

loadtest: install
	$(VENV)/bin/locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s --host $(HOST) \
		--stop-timeout 30 --csv loadtests/results/locust --html loadtests/results/locust.html
