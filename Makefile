# Two commands for a newcomer: `make lab` (JupyterLab on notebooks/) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888

.PHONY: lab demo test bench reliability clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Dashboards saved in a notebook reopen as the final table, not "model not found": JupyterLab and
# Notebook 7 of this venv save widget state with the notebook (ipywidgets' saveState, off by default).
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

$(VENV)/.jupyter-installed: pyproject.toml scripts/lab-overrides.json | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[jupyter]'
	install -D -m 0644 scripts/lab-overrides.json $(LAB_OVERRIDES)
	touch $@

$(VENV)/.test-installed: pyproject.toml scripts/lab-overrides.json | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	install -D -m 0644 scripts/lab-overrides.json $(LAB_OVERRIDES)
	touch $@ $(VENV)/.jupyter-installed

$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.test-installed
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

## make lab: install nbdist with Jupyter and open JupyterLab on notebooks/
lab: $(VENV)/.jupyter-installed
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root,)

## make demo: run a small array end to end and print each step's state, exit code and log
demo: $(VENV)/.jupyter-installed
	$(PY) scripts/demo.py

## make test: install the test dependencies and run everything (unit, integration, nbval, Slurm, browser)
test: $(VENV)/.test-installed
	scripts/run-tests.sh

## make bench: the local benchmark scripts (ratios against peers measured in the same run); the Slurm one
## (benchmarks/slurm_packed.py) needs scripts/slurm-local.sh start, the Jobmon one (benchmarks/jobmon_workflow.py)
## the Jobmon venv the test suite builds
bench: $(VENV)/.bench-installed
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/session_throughput.py
	$(PY) benchmarks/session_scale.py
	$(PY) benchmarks/python_map.py
	$(PY) benchmarks/python_libraries.py
	$(PY) benchmarks/blas_sweep.py
	$(PY) benchmarks/joblib_backend.py
	$(PY) benchmarks/python_memory.py
	$(PY) benchmarks/widget_refresh.py
	$(PY) benchmarks/load_100k.py

## make reliability: rerun the fault, load and bad-input suites and rewrite docs/RELIABILITY.md
reliability: $(VENV)/.test-installed
	$(PY) scripts/reliability_report.py

clean:
	rm -rf $(VENV) .nbdist build *.egg-info
