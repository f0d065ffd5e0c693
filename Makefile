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

# Two test processes (pytest-xdist): many tests wait on subprocesses, SLURM or a server much of
# their time. A test module runs in one process (--dist loadfile: its module-scoped fixtures are made
# once); the shared micro workflow run is made once per process that needs it. `pytest -n 0` runs
# the tests one after another.
TEST_WORKERS ?= $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The embedded demo end to end on this machine: synthetic data, the five methods, the comparison,
# then the report. The console shows the progress (`--quiet rules`: not each job's description; every
# job's output is in results/logs/, and a failing job's log is printed). One thread per job: the demo's tiny networks finish sooner as one-thread jobs side
# by side than as multi-threaded jobs one after another.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --max-threads 1 --quiet rules
	@$(MAKE) --no-print-directory report

# results/report.html: every figure and table of the default target's jobs, each with its caption,
# then the comparison as text. It reports what the workflow made: a missing result stops it with
# the file's name (Snakemake's own output is shown only when it fails).
report: $(STAMP)
	@log=$$(mktemp); \
	if ! $(BIN)/snakemake --report results/report.html > $$log 2>&1; then \
		cat $$log >&2; \
		missing=$$(sed -n 's/^File \(.*\) marked for report but does not exist\.$$/\1/p' $$log | head -n 1); \
		if [ -n "$$missing" ]; then \
			echo "make report: $$missing does not exist: the workflow has not run to the end yet;" \
				"run it first ('make demo', or '$(BIN)/snakemake --cores $(CORES)' for the default target)" >&2; \
		fi; \
		rm -f $$log; exit 1; \
	fi; \
	rm -f $$log; echo "report: results/report.html (open it in a browser)"
	$(BIN)/python -m detnas report --html results/report.html

clean-results:
	rm -rf results .snakemake
