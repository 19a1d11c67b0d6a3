# Two commands on a fresh machine with only Python: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jaxalign theory --probs 0.5,0.3,0.2 --rewards 0,1,2 --length 64 --kl 4

test: $(STAMP)
	$(BIN)/ruff check jaxalign tests benchmarks
	$(BIN)/python -m pytest -n 2 -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampling.py

clean:
	rm -rf $(VENV)
