# The two set-up commands of README.md, plus what a contributor needs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench
install:
	bash deploy/install.sh

# serve the embedded backbone, play one real ScienceWorld episode through /act, print the result
demo: install
	$(VENV)/bin/glider demo

# pytest exits 5 when it collects nothing: that fails here like any other failure
test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint --config deploy/docker/.hadolint.yaml deploy/docker/Dockerfile

bench: install
	$(PY) bench/report.py --profile full
