# Two entry points that work on a fresh machine with only the package index:
#   make demo   - the whole job offline (local S3 + local Ray + bundled corpus and model)
#   make test   - the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first: a bare range would pull a multi-GB CUDA build.
	$(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pipeline demo

test: install
	$(PY) -m pytest -q

.PHONY: install demo test
