# Entry points that work on a fresh machine with only the package index:
#   make demo   - the whole job offline (local S3 + local Ray + bundled corpus and model)
#   make test   - the test suite
#   make lint   - ruff (lint + format check), which CI runs before the tests
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

test: install
	$(PY) -m pytest -q

.PHONY: install demo lint test
