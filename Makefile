# Each target makes its own virtual environment (.venv) on first use, with the
# exact versions in constraints.txt: the ones the suite was last tested with.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LOCK := constraints.txt
# every extra anyone installs, so 'pip install -c constraints.txt -e .[postgres]' is pinned too
LOCK_ARGS := pyproject.toml --extra dev --extra postgres --extra gcs --python-version 3.11 --python-platform linux \
	--custom-compile-command 'make lock' --quiet -o $(LOCK)

.PHONY: demo test stress bench lock upgrade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the stamp: installed again whenever pyproject.toml or the lock file changes
$(BIN)/statekit: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $@

demo: $(BIN)/statekit
	$(BIN)/statekit demo

# statekit's bytecode, written first: the suite starts hundreds of processes that import statekit (the
# CLI, workers), and where PYTHONDONTWRITEBYTECODE is set each one would compile all of it again
test: $(BIN)/statekit
	$(BIN)/python -m compileall -q statekit
	$(BIN)/python -m pytest -q -n auto --dist worksteal --cov --cov-report=term --cov-fail-under=85

# the reliability harness at full size (RELIABILITY.md), then the other tests the default suite runs
# smaller (kill -9 writers, the I/O faults' errnos, the hypothesis comparisons); the default suite runs their fast tier
stress: $(BIN)/statekit
	$(BIN)/python -m compileall -q statekit
	STATEKIT_STRESS=1 $(BIN)/python -m pytest -q -m reliability tests/reliability
	STATEKIT_STRESS=1 $(BIN)/python -m pytest -q -n auto tests/test_processes.py tests/test_faults.py tests/test_blockyaml.py \
		tests/test_ledger_model.py tests/test_parsing_fast.py tests/test_trusted.py

bench: $(BIN)/statekit
	$(BIN)/python benchmarks/bench_writes.py

# after changing dependencies in pyproject.toml: pins new packages, keeps the others' versions
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile $(LOCK_ARGS)

# every pin moved to the newest version pyproject.toml allows (then run make test)
upgrade: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile --upgrade $(LOCK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .coverage .coverage.* htmlcov
