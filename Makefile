# Entry points that work on a fresh machine with only the package index:
#   make demo   - the whole job offline (local S3 + local Ray + bundled corpus and model)
#   make test      - the fast tiers (unit + integration): minutes; what a developer runs on each change
#   make test-unit - the unit tier alone (no Ray, no S3 server, no subprocess)
#   make test-scenario - the scenario tier: operator stories, several whole in-process runs on one output
#   make test-all  - every tier (+ e2e: whole-job subprocesses, kills, Ray Jobs, Airflow; + rehearsal:
#                    bench, scale, GPU scripts, the wheel): what CI runs (.ci/run)
#   make test-soak - the extra kill/resume seeds (marker `soak`), on demand
#   make test-gpu  - the gpu tier (bf16 parity, memory cap, packed, CUDA-graph buckets) on a GPU node
#   make lint      - ruff (lint + format check), which CI runs before the tests
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first: a bare range would pull a multi-GB CUDA build.
	$(PY) -m pip install -q $(TORCH_CPU)
	# The exact versions CI tested (constraints.txt): no backtracking through old releases.
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pipeline demo

lint: install
	$(VENV)/bin/ruff check pipeline e5tools tests jobs
	$(VENV)/bin/ruff format --check pipeline e5tools tests jobs

PYTEST := $(PY) -m pytest -q
DURATIONS ?= 25

test: install
	$(PYTEST) -m "unit or integration" --durations=$(DURATIONS)

test-unit: install
	$(PYTEST) -m unit --durations=$(DURATIONS)

test-scenario: install
	$(PYTEST) -m scenario --durations=$(DURATIONS)

test-all: install
	$(PYTEST) -m "not soak" --durations=$(DURATIONS)

test-soak: install
	$(PYTEST) -m soak --durations=$(DURATIONS)

test-gpu: install
	$(PYTEST) -m gpu --durations=$(DURATIONS)

.PHONY: install demo lint test test-unit test-scenario test-all test-soak test-gpu
