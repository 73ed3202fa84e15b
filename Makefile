# Two commands set up a fresh machine and run innergrad (see README):
#   make demo   -> own virtual environment in .venv, then `innergrad train` on the built-in data set
#   make test   -> same set-up, then the test suite
#   make check-install -> a plain `pip install` (no extras) in a fresh venv runs the CLI end to end
# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,triton
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint check-install bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(BIN)/innergrad train

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check innergrad tests benchmarks examples
	$(BIN)/python -m mypy   # settings and the not-yet-typed modules: [tool.mypy] in pyproject.toml

# A plain `pip install` (no extras) into a fresh venv, then train / eval / predict / export there.
check-install:
	bash .ci/plain_install

bench: setup
	$(BIN)/innergrad bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
