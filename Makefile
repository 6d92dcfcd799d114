# The two commands a newcomer needs (see README):
#   make demo   - every service plus a local Kafka broker, fed with a sample care journey
#   make test   - the whole test suite (starts its own broker; CI runs exactly this)
PYTHON ?= python3
SHELL := /bin/bash
# pip's own progress lines (what it fetches, builds, and "still running..." while mypyc compiles), not its chatter
PIP_PROGRESS := grep --line-buffered -E '^(Collecting|Downloading|Building|  Building|Installing collected|Successfully)' || true
VENV := .venv
PY := $(VENV)/bin/python

# The mapping hot path is compiled with mypyc (setup.py): rebuilt whenever one of its sources changes.
COMPILED_SOURCES := $(wildcard services/common/hl7v2/*.py services/mapper/hl7v2/*.py services/mapper/mapping/*.py) \
	services/common/fhir_ids.py services/common/fhir_validation.py services/common/security_labels.py services/mapper/result.py \
	services/mapper/pipeline.py setup.py

.PHONY: setup tools demo test bench soak faults fuzz lint schemas clean

setup: $(VENV)/.compiled

$(VENV)/.installed: pyproject.toml deploy/local/bootstrap.sh
	PYTHON=$(PYTHON) bash deploy/local/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 'setuptools>=77'
	@echo "installing carebus and compiling its mapping modules with mypyc (a minute or two)"
	set -o pipefail; $(VENV)/bin/pip install --progress-bar off -e '.[dev]' | { $(PIP_PROGRESS); }
	touch $@ $(VENV)/.compiled

$(VENV)/.compiled: $(VENV)/.installed $(COMPILED_SOURCES)
	@[ ! setup.py -nt $@ ] && $(PY) -c "from services.common.native import compiled_modules as c, \
	stale_compiled_modules as s; raise SystemExit(0 if c() and not s() else 1)" || { \
	echo "recompiling the mapping modules with mypyc (their sources or the list of them changed)"; \
	$(PY) -c "from services.common.native import remove_orphaned_extensions as r; r()"; \
	set -o pipefail; $(VENV)/bin/pip install --progress-bar off --no-deps --no-build-isolation -e . | { $(PIP_PROGRESS); }; }
	touch $@

demo: setup
	$(PY) -m devstack

# kustomize, promtool, the Strimzi CRDs and the AsyncAPI parser the suite checks the contracts with
tools:
	@bash deploy/local/tools.sh

test: setup tools
	$(PY) -m pytest

# 100,000 seeded hostile inputs through intake (HTTP, HL7 v2, MLLP, FHIR) and the mapping, with the PHI canary
# (tests/intake/fuzzing.py; `make test` runs a time-bounded part of it)
fuzz: setup
	$(PY) -m tests.intake.fuzzing --inputs 100000

bench: setup  # every benchmark in turn; each prints its figures (README: "Figures")
	$(PY) -m benchmarks.pipeline_bench
	$(PY) -m benchmarks.intake_bench
	$(PY) -m benchmarks.e2e_bench
	$(PY) -m benchmarks.scaleout_bench
	$(PY) -m benchmarks.hl7v2_bench
	$(PY) -m benchmarks.record_bench
	$(PY) -m benchmarks.side_channel_bench

# the fault suite alone (make test runs it too): real processes killed and restarted mid-stream
faults: setup
	$(PY) -m pytest tests/faults

# not in CI: SOAK_ARGS="--minutes 3 --rate 50 --store postgres"; the load generator, vegeta, is built from the Go
# module proxy into .cache/tools/bin (as deploy/local/tools.sh builds kustomize)
soak: setup
	@[ -x .cache/tools/bin/vegeta ] || { command -v go >/dev/null || apt-get install -y -q golang-go; \
	  echo "building vegeta v12.12.0 from the Go module proxy"; \
	  GOTOOLCHAIN=local GOBIN=$(CURDIR)/.cache/tools/bin go install github.com/tsenart/vegeta/v12@v12.12.0; }
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

lint: setup
	$(VENV)/bin/ruff check services devstack tests benchmarks
	$(VENV)/bin/mypy

schemas: setup
	$(PY) -m services.common.events.export
	$(PY) -m services.common.asyncapi

clean:
	rm -rf $(VENV) .cache build carebus_native__mypyc*
	find services -name '*.so' -delete
