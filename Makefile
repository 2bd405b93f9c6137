# Set-up and entry points. `make demo` (main job) and `make test` (test suite) each install what
# they need on a fresh machine: Debian packages (espeak-ng, flite), a virtualenv in .venv, the package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GIN ?= gin/runs/demo.gin
ARGS ?=

.PHONY: setup apt test demo clean

apt:
	@command -v espeak-ng >/dev/null && command -v flite >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng flite >/dev/null; }

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: apt $(VENV)/.installed

# Test files run in parallel on every core (pytest-xdist); one file's tests stay together so
# their module fixtures are built once, and files are handed out in the order tests/conftest.py
# sets (the longest first).
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

demo: setup
	$(PY) -m slm_jax.demo --gin_file=$(GIN) $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info
