# Two commands on a fresh machine with only Python: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: the embedded best-of-N vs KL-RL sweep (Yang et al.), its summary table
# and figures in runs/demo. Running it again resumes (and reprints) the same run.
demo: $(STAMP)
	$(BIN)/jaxalign sweep --out runs/demo $(if $(wildcard runs/demo/config.json),--resume,)
	$(BIN)/jaxalign plot runs/demo

# Two workers, one test file each at a time (--dist loadfile): a file's tests share the
# programs its worker compiled (its tests use the same shapes), where spreading them over
# both workers compiled many twice.  The tests' CPU time: 726 -> 682 s on a first run,
# 394 -> 355 s on a later one; wall 391 -> 380 s and 216 -> 206 s (2-core CPU).  Files
# go out slowest first, in tests/conftest.py's order (--no-loadscope-reorder keeps it).
test: $(STAMP)
	$(BIN)/ruff check jaxalign tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# The paper notebooks as executed notebooks/*.ipynb (figures inline; built from the
# jupytext sources notebooks/*.py, which stay the only ones in git). Open them with
# Jupyter or VS Code. `make notebooks SMALL=1` runs the tiny versions in seconds.
notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb notebooks/*.py
	$(if $(SMALL),JAXALIGN_NOTEBOOK_SMALL=1 ,)$(BIN)/jupyter-execute --inplace notebooks/*.ipynb

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampling.py --breakdown
	$(BIN)/python benchmarks/bench_markov.py
	$(BIN)/python benchmarks/bench_exact.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_rl.py

clean:
	rm -rf $(VENV)
