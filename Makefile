# The two commands a newcomer needs (see README):
#   make demo   - every service plus a local Kafka broker, fed with a sample care journey
#   make test   - the whole test suite (starts its own broker; CI runs exactly this)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench lint schemas clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml deploy/local/bootstrap.sh
	bash deploy/local/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m services.stack

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks.run_all

lint: setup
	$(VENV)/bin/ruff check services tests benchmarks
	$(VENV)/bin/mypy

schemas: setup
	$(PY) -m services.common.events.export

clean:
	rm -rf $(VENV) .cache
