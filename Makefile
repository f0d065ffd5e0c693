# Fresh machine: `make test` or `make demo` creates .venv, installs the project, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: install test demo clean-results

install: $(STAMP)

# Re-installs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,slurm]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results .snakemake
