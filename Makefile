# The README's two commands live here: `make demo` (set up, run the main job) and
# `make test` (set up, lint, type-check, run the whole default test suite).  `make venv` also
# builds the compiled implementation (swapd/_native, setup.py); SWAPD_IMPL picks one at run time.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test venv lint typecheck pytest clean

$(BIN)/swapd: pyproject.toml setup.py swapd/_native/_core.c .ci/debian-packages
	bash .ci/install-debian-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/swapd

venv: $(BIN)/swapd

demo: venv
	$(BIN)/swapd demo

lint: venv
	$(BIN)/ruff check swapd backends tests

typecheck: venv
	$(BIN)/mypy swapd backends

pytest: venv
	$(BIN)/pytest -q tests

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info swapd/_native/*.so swapd/_native/BUILD_ERROR.txt
