# The two commands: `make demo` (a whole simulated room) and `make test` (the full suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup firmware bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/smartroom demo

test: $(STAMP)
	$(PY) -m pytest -q

# Compile the firmware to .mpy with mpy-cross (what goes onto a board's flash).
firmware: $(STAMP)
	$(PY) -m controller.firmware_build build/firmware

bench: $(STAMP)
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) build .pytest_cache
