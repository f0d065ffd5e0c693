# Fresh machine: `make test` or `make demo` creates .venv, installs the project, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: install test demo report clean-results

install: $(STAMP)

# Re-installs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,slurm]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The embedded demo end to end on this machine: synthetic data, the five methods, the comparison.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/python -m detnas report

report: $(STAMP)
	$(BIN)/python -m detnas report

clean-results:
	rm -rf results .snakemake
