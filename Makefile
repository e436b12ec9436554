# The two commands: `make serve` and `make test`. Both create the virtual
# environment when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.whitebox-installed

.PHONY: serve test lint format install bench train clean faults soak

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# zennit 1.0.0 (a test reference) declares Python >= 3.11.11 but is pure Python
	$(PY) -m pip install -q --no-deps --ignore-requires-python zennit==1.0.0
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/whitebox serve

# lint first (seconds), then the suite
test: lint
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m benchmarks

# the fault suite (real processes, loopback, bounded; also part of `make test`), its figures printed
faults: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -s tests/test_faults_*.py

# outside CI: 30 minutes of sync explain requests, RSS of gateway and worker per minute
soak: $(STAMP)
	$(PY) -m benchmarks.soak --minutes 30 --concurrency 4

train: $(STAMP)
	$(PY) -m workers.training.demo_model

clean:
	rm -rf $(VENV) .whitebox-data
