# Two commands a new user needs:  `make demo`  (the iterative ToolACE-R demo)  and  `make test`  (the test suite).
# Both create .venv at the repo root and install everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: keeps pip from pulling a CUDA build on CPU-only machines
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/toolace-r run --config jobs/demo.yaml $(ARGS)

test: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python -m pytest tests $(ARGS)

test-fast: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python -m pytest tests -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
