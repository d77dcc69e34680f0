# The README's two commands: `make demo` and `make test`. Both create .venv when missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CORES   ?= $(shell nproc 2>/dev/null || echo 2)   # the machine's cores: more 1-thread jobs than cores only contend

.PHONY: venv demo report test test-fast bench lint fmt clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $(STAMP)

## demo: run the whole workflow on the embedded demo dataset, then build the report
demo: venv
	$(VENV)/bin/snakemake --cores $(CORES) submission
	$(VENV)/bin/snakemake --report report.html submission

## test: unit tests + the demo workflow end to end (+ the Slurm test when Slurm runs)
test: venv
	$(VENV)/bin/pytest -ra

## test-fast: without the tests marked slow (end-to-end workflow runs) or slurm
test-fast: venv
	$(VENV)/bin/pytest -ra -m "not slow and not slurm"

## bench: the stage and DAG benchmarks, printed only (README, Benchmarks: the command that updates benchmarks/RESULTS.md)
bench: venv
	$(PY) -m benchmarks.run

## lint: the Snakemake catalog's checks (tests/workflow/test_style.py runs both in `make test`)
lint: venv
	$(VENV)/bin/snakefmt --check Snakefile rules/
	$(VENV)/bin/snakemake --lint

## fmt: format the workflow files the way `lint` checks them
fmt: venv
	$(VENV)/bin/snakefmt Snakefile rules/

clean:
	rm -rf results .snakemake report.html
