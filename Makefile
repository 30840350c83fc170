# The two set-up commands of the README: `make demo` and `make test`, each on a fresh clone.
PYTHON ?= python3
VENV ?= .venv

$(VENV)/.edge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[edge]"
	touch $@

$(VENV)/.dev: $(VENV)/.edge
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

.PHONY: demo test
demo: $(VENV)/.edge
	$(VENV)/bin/fer-edge demo

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q -n auto
