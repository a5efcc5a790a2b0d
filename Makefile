# Each target makes its own virtual environment (.venv) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test stress bench clean

$(BIN)/statekit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/statekit
	$(BIN)/statekit demo

test: $(BIN)/statekit
	$(BIN)/python -m pytest -q

# the reliability harness at full size (RELIABILITY.md); the default suite runs its fast tier
stress: $(BIN)/statekit
	STATEKIT_STRESS=1 $(BIN)/python -m pytest -q -m reliability tests/reliability

bench: $(BIN)/statekit
	$(BIN)/python benchmarks/bench_writes.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
